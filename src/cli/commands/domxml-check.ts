// virtback domxml-check FILE [--json]: what a definition would need changed
// before virtbackd runs it (src/xml/domain-check.ts); exit 0 when nothing is
// refused (what virtback changes by itself is listed, and needs no edit).

import fs from 'node:fs';
import type { Command } from 'commander';
import { virErr } from '../../errors.js';
import { json, out } from '../output.js';

function readDefinition(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    throw virErr('SYSTEM_ERROR', 'NONE', `cannot read '${file}': ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

export function registerDomxmlCheck(program: Command): void {
  program
    .command('domxml-check')
    .description('list what of a <domain> definition (e.g. virsh dumpxml of a libvirt VM) virtback would refuse or change')
    .argument('<file>', "domain XML file ('-' for standard input)")
    .option('--json', 'the findings as JSON')
    .action(async (file: string, o: { json?: boolean }) => {
      const text = readDefinition(file);
      // the domain parser and schema (libxml2-wasm) load only for this command
      const { checkDomainXML, formatDomainCheck } = await import('../../xml/domain-check.js');
      const findings = checkDomainXML(text);
      if (o.json) json(findings);
      else out(formatDomainCheck(findings));
      // what virtback changes by itself (dropped addresses, a clamped currentMemory) needs no edit
      const refused = findings.filter((f) => f.kind === 'refused').length;
      if (refused > 0) {
        throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `${refused} part${refused === 1 ? '' : 's'} of the definition would be refused`);
      }
    });
}
