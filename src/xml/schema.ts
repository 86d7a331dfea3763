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

/**
 * Where libvirt installs its own schemas (Debian package libvirt0). The
 * domain embedded in a checkpoint is checked against libvirt's full domain
 * grammar from here, when installed: that document may describe a VM of a
 * libvirt host, and libvirt's schema is the only faithful judge of it.
 * VIRTBACK_LIBVIRT_SCHEMAS points elsewhere (tests use an empty folder to
 * see the fallback).
 */
export function libvirtSchemasDir(): string {
  return process.env.VIRTBACK_LIBVIRT_SCHEMAS || '/usr/share/libvirt/schemas';
}

let providerRegistered = false;

// libxml2 (in wasm) cannot open files by itself; this provider serves
// <include href=...> of our schema files and of libvirt's installed ones, nothing else.
function registerSchemaProvider(): void {
  if (providerRegistered) return;
  const toPath = (f: string): string => (f.startsWith('file://') ? fileURLToPath(f) : f);
  xmlRegisterInputProvider({
    match: (f) => {
      const p = path.resolve(toPath(f));
      const dirs = [schemasDir(), libvirtSchemasDir()].map((d) => path.resolve(d) + path.sep);
      return dirs.some((dir) => p.startsWith(dir)) && p.endsWith('.rng') && fs.existsSync(p);
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

/** Compiled validators by schema file (ours and libvirt's installed ones). */
const validators = new Map<string, RelaxNGValidator>();

function validator(name: SchemaName): RelaxNGValidator {
  return validatorFor(schemaPath(name));
}

function validatorFor(file: string): RelaxNGValidator {
  const cached = validators.get(file);
  if (cached) return cached;
  registerSchemaProvider();
  let rng: XmlDocument;
  try {
    rng = XmlDocument.fromString(fs.readFileSync(file, 'utf8'), { url: file });
  } catch (e) {
    throw virErr('INTERNAL_ERROR', 'NONE', `cannot load schema ${file}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  try {
    const v = RelaxNGValidator.fromDoc(rng);
    validators.set(file, v);
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
  validateWith(doc, validator(name), SCHEMAS[name]);
}

function validateWith(doc: XmlDocument, v: RelaxNGValidator, label: string): void {
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
    throw virErr('XML_INVALID_SCHEMA', 'NONE', `XML document failed to validate against schema: Unable to validate doc against ${label}: ${why}`, e);
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

/**
 * Validate a `<domain>` document against libvirt's own installed domain
 * schema, as libvirt checks the domain inside a checkpoint. Returns false,
 * checking nothing, when libvirt's schemas are not installed (our own
 * domain.rng has already checked the parts virtback reads).
 */
export function validateWithLibvirtDomainSchema(xml: string): boolean {
  const file = path.join(libvirtSchemasDir(), 'domain.rng');
  if (!fs.existsSync(file)) return false;
  const v = validatorFor(file);
  withXmlDocument(xml, (doc) => validateWith(doc, v, file));
  return true;
}
