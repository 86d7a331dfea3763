// A small generic XML tree: what the concept modules (domain, checkpoint,
// backup) read from and write to. Parsing is done by libxml2 (libxml2-wasm);
// this module only converts its DOM to plain values and formats them back.
//
// Safety: every document passes checkXmlInput() before libxml2 sees it (size,
// NUL bytes, DTD/entity declarations), and the converted tree is depth-limited,
// so hostile input ends as a VirError XML_ERROR, never a crash or a hang.

import { XmlCData, XmlDocument, XmlElement as LibXmlElement, XmlEntityReference, XmlLibError, XmlText, XmlXPath } from 'libxml2-wasm';
import { VirError, virErr } from '../errors.js';
import type { XmlElement, XmlNode } from './node.js';

export * from './node.js';

/** Largest document we accept (bytes of UTF-8). libvirt's own limit is 10 MiB; ours are much smaller. */
export const XML_MAX_BYTES = 1024 * 1024;
/** Deepest element nesting we accept; libvirt's formats need about 8. */
export const XML_MAX_DEPTH = 64;

// ---------------------------------------------------------------- parsing

/**
 * Reject what must never reach libxml2: oversize input, NUL characters (the
 * string crosses into C), and any DTD (entity expansion attacks; libvirt's
 * formats have no DTD). Cheap, linear, no regex backtracking.
 */
export function checkXmlInput(xml: string): void {
  if (typeof xml !== 'string') {
    throw virErr('XML_ERROR', 'NONE', 'XML document must be a string');
  }
  // A UTF-16 code unit encodes to at most 3 UTF-8 bytes: only measure when it could matter.
  if (xml.length > XML_MAX_BYTES / 3 && Buffer.byteLength(xml, 'utf8') > XML_MAX_BYTES) {
    throw virErr('XML_ERROR', 'NONE', `XML document is too large: more than ${XML_MAX_BYTES} bytes`);
  }
  const nul = xml.indexOf('\0');
  if (nul >= 0) {
    throw virErr('XML_ERROR', 'NONE', `XML document contains a NUL character ${position(xml, nul)}`);
  }
  for (const decl of ['<!DOCTYPE', '<!ENTITY']) {
    const at = xml.indexOf(decl);
    if (at >= 0) {
      throw virErr('XML_ERROR', 'NONE', `XML document must not contain ${decl} declarations ${position(xml, at)}`);
    }
  }
  if (xml.trim() === '') {
    throw virErr('XML_ERROR', 'NONE', 'XML document is empty');
  }
}

function position(xml: string, index: number): string {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < index; i++) {
    if (xml.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return `at line ${line}, column ${index - lineStart + 1}`;
}

/**
 * Parse with libxml2 and hand the document to `use`; the document is always
 * disposed. libxml2's parse errors become XML_ERROR with line/column.
 */
export function withXmlDocument<T>(xml: string, use: (doc: XmlDocument) => T): T {
  checkXmlInput(xml);
  let doc: XmlDocument;
  try {
    // encoding: the string is already Unicode; ignore any encoding= in the declaration.
    doc = XmlDocument.fromString(xml, { encoding: 'utf-8' });
  } catch (e) {
    throw libxmlParseError(e);
  }
  try {
    if (doc.dtd !== null) {
      throw virErr('XML_ERROR', 'NONE', 'XML document must not contain <!DOCTYPE declarations');
    }
    return use(doc);
  } finally {
    doc.dispose();
  }
}

function libxmlParseError(e: unknown): Error {
  if (e instanceof XmlLibError) {
    const first = e.details.find((d) => d.level >= 2) ?? e.details[0];
    if (first) {
      const where = first.line > 0 ? ` at line ${first.line}, column ${first.col}` : '';
      return virErr('XML_ERROR', 'NONE', `malformed XML document${where}: ${first.message.trim()}`, e);
    }
    return virErr('XML_ERROR', 'NONE', `malformed XML document: ${e.message.trim()}`, e);
  }
  const msg = e instanceof Error ? e.message : String(e);
  return virErr('XML_ERROR', 'NONE', `malformed XML document: ${msg}`, e);
}

/** Parse a document into the plain tree (no schema validation). */
export function parseXml(xml: string): XmlElement {
  return withXmlDocument(xml, (doc) => documentToTree(doc));
}

/** Convert an already-parsed libxml2 document to the plain tree. */
export function documentToTree(doc: XmlDocument): XmlElement {
  try {
    return convertElement(doc.root, 1);
  } catch (e) {
    if (e instanceof VirError) throw e;
    // a node kind the wasm binding cannot represent: still the caller's input, not our crash
    throw virErr('XML_ERROR', 'NONE', `cannot read XML document: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

function qualifiedName(name: string, prefix: string): string {
  return prefix ? `${prefix}:${name}` : name;
}

let childNodes: XmlXPath | null = null;

function convertElement(el: LibXmlElement, depth: number): XmlElement {
  if (depth > XML_MAX_DEPTH) {
    throw virErr('XML_ERROR', 'NONE', `XML document is nested too deeply: more than ${XML_MAX_DEPTH} levels at element '${el.name}' (line ${el.line})`);
  }
  const attrs: [string, string][] = [];
  // Namespace declarations first, as they were written, so prefixed elements survive a round trip.
  for (const [prefix, uri] of Object.entries(el.nsDeclarations)) {
    attrs.push([prefix ? `xmlns:${prefix}` : 'xmlns', uri]);
  }
  for (const a of el.attrs) {
    attrs.push([qualifiedName(a.name, a.prefix), a.value]);
  }
  const raw: XmlNode[] = [];
  let hasElement = false;
  // XPath, not firstChild/next: libxml2-wasm's processing-instruction nodes have no `next`.
  childNodes ??= XmlXPath.compile('node()');
  for (const c of el.find(childNodes)) {
    if (c instanceof LibXmlElement) {
      hasElement = true;
      raw.push(convertElement(c, depth + 1));
    } else if (c instanceof XmlText || c instanceof XmlCData) {
      const text = c.content;
      const last = raw[raw.length - 1];
      if (typeof last === 'string') raw[raw.length - 1] = last + text;
      else raw.push(text);
    } else if (c instanceof XmlEntityReference) {
      // Only possible with a DTD, which we refuse; keep the guard anyway.
      throw virErr('XML_ERROR', 'NONE', `XML document must not use entity references ('&${c.name};')`);
    }
    // comments and processing instructions are dropped, as libvirt does
  }
  // Whitespace between child elements is layout, not content (libvirt parses
  // with keepBlanks off); text in an element without child elements is content.
  const children = hasElement ? raw.filter((n) => typeof n !== 'string' || n.trim() !== '') : raw.filter((n) => n !== '');
  return { name: qualifiedName(el.name, el.prefix), attrs, children };
}

