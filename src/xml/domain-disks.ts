// The disks of a <domain> tree read leniently (no schema, no parser): what
// checkpoint alignment and domblklist need, usable without loading libxml2.

import { attr, childElements, firstChild, type XmlElement } from './node.js';

/** What checkpoint/backup alignment needs to know about a domain disk. */
export interface DomainDiskRef {
  target: string;
  /** source path; null when the drive is empty */
  source: string | null;
  readonly: boolean;
  /** 'file' when the source is a plain file (only those get generated backup file names) */
  type: string;
  /** 'disk', 'cdrom', ... */
  device: string;
}

/**
 * Disks of a <domain> element read leniently: used for the domain embedded in
 * a redefined checkpoint, which may come from a libvirt host and use buses or
 * formats virtback does not run (ide, network disks, ...).
 */
export function domainDiskRefs(domain: XmlElement): DomainDiskRef[] {
  const devices = firstChild(domain, 'devices');
  if (devices === null) return [];
  const refs: DomainDiskRef[] = [];
  for (const d of childElements(devices, 'disk')) {
    const target = firstChild(d, 'target');
    const dev = target === null ? null : attr(target, 'dev');
    if (dev === null) continue;
    const type = attr(d, 'type') ?? 'file';
    const src = firstChild(d, 'source');
    const source = src === null ? null : attr(src, type === 'block' ? 'dev' : type === 'dir' ? 'dir' : type === 'volume' ? 'volume' : 'file') ?? attr(src, 'name');
    const device = attr(d, 'device') ?? 'disk';
    refs.push({ target: dev, source, readonly: device === 'cdrom' || firstChild(d, 'readonly') !== null, type, device });
  }
  return refs;
}
