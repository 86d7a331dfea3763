// RelaxNG validation with our own schemas (schemas/*.rng at the package
// root), run before any semantic check, as libvirt does with its schemas:
// what libvirt's schema rejects we reject with XML_INVALID_SCHEMA (92).
// Compiled validators are cached for the life of the process.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RelaxNGValidator, XmlDocument, XmlLibError, xmlRegisterInputProvider } from 'libxml2-wasm';
import { virErr } from '../errors.js';
import { documentToTree, withXmlDocument } from './tree.js';
import type { XmlElement } from './tree.js';

/** The schemas we ship. The `virtback-*` ones extend the libvirt-compatible ones with our additions. */
export const SCHEMAS = {
  domain: 'domain.rng',
  domaincheckpoint: 'domaincheckpoint.rng',
  domainbackup: 'domainbackup.rng',
  /** <domainbackup> as we print it: adds the job id on the root element. */
  'virtback-domainbackup-output': 'virtback-domainbackup-output.rng',
  /** <domaincheckpoint> as we print it: adds the <inconsistent reason=.../> marker. */
  'virtback-domaincheckpoint-output': 'virtback-domaincheckpoint-output.rng',
} as const;

export type SchemaName = keyof typeof SCHEMAS;

export function isSchemaName(s: string): s is SchemaName {
  return Object.prototype.hasOwnProperty.call(SCHEMAS, s);
}

let packageRootCache: string | null = null;

/** The directory holding package.json: found by walking up, so it works from src/ (tsx) and dist/src/ (tsc). */
export function packageRoot(): string {
  if (packageRootCache !== null) return packageRootCache;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) {
      packageRootCache = dir;
      return dir;
    }
    const up = path.dirname(dir);
    if (up === dir) throw virErr('INTERNAL_ERROR', 'NONE', `cannot find package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

export function schemasDir(): string {
  return path.join(packageRoot(), 'schemas');
}

export function schemaPath(name: SchemaName): string {
  return path.join(schemasDir(), SCHEMAS[name]);
}

let providerRegistered = false;

// libxml2 (in wasm) cannot open files by itself; this provider serves
// <include href=...> of our schema files and nothing else.
function registerSchemaProvider(): void {
  if (providerRegistered) return;
  const dir = schemasDir() + path.sep;
  const toPath = (f: string): string => (f.startsWith('file://') ? fileURLToPath(f) : f);
  xmlRegisterInputProvider({
    match: (f) => {
      const p = path.resolve(toPath(f));
      return p.startsWith(dir) && p.endsWith('.rng') && fs.existsSync(p);
    },
    open: (f) => {
      try {
        return fs.openSync(toPath(f), 'r');
      } catch {
        return undefined;
      }
    },
    read: (fd, buf) => {
      try {
        return fs.readSync(fd, buf, 0, buf.byteLength, null);
      } catch {
        return -1;
      }
    },
    close: (fd) => {
      try {
        fs.closeSync(fd);
      } catch {
        // nothing to do: the read already finished
      }
      return true;
    },
  });
  providerRegistered = true;
}

const validators = new Map<SchemaName, RelaxNGValidator>();

function validator(name: SchemaName): RelaxNGValidator {
  const cached = validators.get(name);
  if (cached) return cached;
  registerSchemaProvider();
  const file = schemaPath(name);
  let rng: XmlDocument;
  try {
    rng = XmlDocument.fromString(fs.readFileSync(file, 'utf8'), { url: file });
  } catch (e) {
    throw virErr('INTERNAL_ERROR', 'NONE', `cannot load schema ${file}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  try {
    const v = RelaxNGValidator.fromDoc(rng);
    validators.set(name, v);
    return v;
  } catch (e) {
    throw virErr('INTERNAL_ERROR', 'NONE', `cannot compile schema ${file}: ${e instanceof Error ? e.message.trim() : String(e)}`, e);
  } finally {
    rng.dispose();
  }
}

/**
 * Validate a parsed document; XML_INVALID_SCHEMA naming the element libxml2
 * complains about (libvirt's wording: "Unable to validate doc against ...").
 */
export function validateDocument(doc: XmlDocument, name: SchemaName): void {
  const v = validator(name);
  try {
    v.validate(doc);
  } catch (e) {
    const details = e instanceof XmlLibError ? e.details : [];
    const lines = details
      .map((d) => {
        const msg = d.message.trim().replace(/\s*\n\s*/g, '; ');
        return d.line > 0 ? `${msg} (line ${d.line})` : msg;
      })
      .filter((m) => m !== '');
    const why = lines.length > 0 ? lines.join('; ') : e instanceof Error ? e.message.trim() : String(e);
    throw virErr('XML_INVALID_SCHEMA', 'NONE', `XML document failed to validate against schema: Unable to validate doc against ${SCHEMAS[name]}: ${why}`, e);
  }
}

/**
 * libvirt's virXMLParse(..., rootelement, schema, validate): well-formedness,
 * the root element name (XML_ERROR), then the schema (XML_INVALID_SCHEMA).
 */
export function parseAndValidate(xml: string, root: string, schema: SchemaName | null): XmlElement {
  return withXmlDocument(xml, (doc) => {
    const rootName = doc.root.prefix ? `${doc.root.prefix}:${doc.root.name}` : doc.root.name;
    if (rootName !== root) {
      throw virErr('XML_ERROR', 'NONE', `expecting root element of '${root}', not '${rootName}'`);
    }
    if (schema !== null) validateDocument(doc, schema);
    return documentToTree(doc);
  });
}

/** Validate a string against one of our schemas (well-formedness first). */
export function validateXml(xml: string, schema: SchemaName): void {
  withXmlDocument(xml, (doc) => validateDocument(doc, schema));
}
