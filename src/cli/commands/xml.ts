// `virtback xml-validate FILE [TYPE]`: check a domain, checkpoint or backup
// document the way the API would (well-formedness and safety limits, our
// RelaxNG schema, then the semantic checks of the parser).

import fs from 'node:fs';
import { Argument, type Command } from 'commander';
import { virErr } from '../../errors.js';
import type { XmlElement } from '../../xml/node.js';

export const XML_TYPES = ['domain', 'domaincheckpoint', 'domainbackup'] as const;
export type XmlType = (typeof XML_TYPES)[number];

/** Validate one document; throws a VirError naming the problem. */
export async function validateDocumentText(xml: string, type?: XmlType): Promise<XmlType> {
  // The parsers and schemas (libxml2-wasm) load only for this command.
  const kind = type ?? guessType(xml, (await import('../../xml/tree.js')).parseXml);
  switch (kind) {
    case 'domain':
      // a fixed UUID generator: validation must not depend on randomness
      (await import('../../xml/domain.js')).parseDomainXML(xml, { generateUUID: () => '00000000-0000-0000-0000-000000000000' });
      break;
    case 'domaincheckpoint':
      (await import('../../xml/checkpoint.js')).parseCheckpointXML(xml, { redefine: false, now: 0 });
      break;
    case 'domainbackup':
      (await import('../../xml/backup.js')).parseBackupXML(xml);
      break;
  }
  return kind;
}

function guessType(xml: string, parseXml: (xml: string) => XmlElement): XmlType {
  const root = parseXml(xml).name;
  if ((XML_TYPES as readonly string[]).includes(root)) return root as XmlType;
  throw virErr('XML_ERROR', 'NONE', `cannot tell the document type from root element '${root}': expected one of ${XML_TYPES.join(', ')}`);
}

function readDocument(file: string): string {
  try {
    return file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw virErr('SYSTEM_ERROR', 'NONE', `cannot read '${file}': ${why}`, e);
  }
}

export function register(program: Command): void {
  program
    .command('xml-validate')
    .description('check a <domain>, <domaincheckpoint> or <domainbackup> document; prints nothing when it is valid')
    .argument('<file>', "XML file ('-' for standard input)")
    .addArgument(new Argument('[type]', 'document type (default: guessed from the root element)').choices(XML_TYPES))
    .action(async (file: string, type: XmlType | undefined) => {
      await validateDocumentText(readDocument(file), type);
    });
}
