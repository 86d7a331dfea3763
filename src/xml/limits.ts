// What a stored definition must fit in so that it can always be listed, shown
// and removed again: the wire protocol's limits (src/remote/protocol.ts takes
// its LIMITS for these from here), enforced where XML is parsed, at
// define and create, so nothing is stored that a reply could not carry.
// Lengths are JavaScript string lengths, as the protocol's schemas count them.

import { virErr, type ErrorDomainName } from '../errors.js';

/** Limits of the wire protocol that stored names, paths and documents meet. */
export const WIRE_LIMITS = {
  /** domain and checkpoint names, disk targets (listings, lookups, events) */
  nameChars: 256,
  /** disk source paths (block-job events carry them) */
  pathChars: 4096,
  /** any XML document in a reply (domain, checkpoint dumpxml) */
  xmlChars: 1024 * 1024,
} as const;

/**
 * A checkpoint's XML embeds the domain's definition as it was at creation:
 * the domain gets half of a reply, the checkpoint's own part (name,
 * description, parent, disks) most of the rest, leaving room for the XML_SIZE
 * attributes and the wrapper.
 */
export const DOMAIN_XML_CHARS = WIRE_LIMITS.xmlChars / 2;
export const CHECKPOINT_XML_CHARS = (WIRE_LIMITS.xmlChars * 7) / 16;

/** The start of a long value, for a message about it. */
export function clip(value: string): string {
  return value.length <= 40 ? value : `${value.slice(0, 40)}...`;
}

/** XML_ERROR naming what is too long, its length and the limit. */
function tooLong(domain: ErrorDomainName, what: string, length: number, max: number, unit: string): never {
  throw virErr('XML_ERROR', domain, `${what} is too long: ${length} ${unit}, at most ${max}`);
}

export function checkName(domain: ErrorDomainName, what: string, name: string): void {
  if (name.length > WIRE_LIMITS.nameChars) tooLong(domain, what, name.length, WIRE_LIMITS.nameChars, 'characters');
}

export function checkPath(domain: ErrorDomainName, what: string, path: string): void {
  if (path.length > WIRE_LIMITS.pathChars) tooLong(domain, what, path.length, WIRE_LIMITS.pathChars, 'characters');
}

/** `xml` is the document as it will be stored and shown. */
export function checkXmlSize(domain: ErrorDomainName, what: string, xml: string, max: number): void {
  if (xml.length > max) tooLong(domain, what, xml.length, max, 'characters of XML');
}
