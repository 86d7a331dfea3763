// A backed-up domain definition pointed at its restored disks (pure). Read
// leniently as a tree, since the definition may come from a libvirt host with
// devices virtback does not run; only what a restore changes is touched. Under
// a new name the copy also gets a new UUID and new MAC addresses, and its unix
// channels lose their paths (the driver picks fresh ones), so it can run next
// to the original.

import { virErr } from '../errors.js';
import { attr, childElements, element, firstChild, formatXml, parseXml, type XmlElement } from '../xml/tree.js';

export interface RestoredDisk {
  path: string;
  format: 'qcow2' | 'raw';
  /** `path` is a host block device (type='block', <source dev>) */
  block?: boolean;
}

export interface NewIdentity {
  name: string;
  uuid: string;
  /** a fresh MAC address per call */
  mac: () => string;
}

function setAttr(el: XmlElement, name: string, value: string): void {
  const at = el.attrs.find(([k]) => k === name);
  if (at) at[1] = value;
  else el.attrs.push([name, value]);
}

function setText(root: XmlElement, name: string, text: string): void {
  const el = firstChild(root, name);
  if (el === null) root.children.unshift(element(name, [], [text]));
  else el.children = [text];
}

/** A writable disk that was not restored must not stay in a definition that points elsewhere. */
function isWritableDisk(d: XmlElement): boolean {
  return (attr(d, 'device') ?? 'disk') === 'disk' && firstChild(d, 'readonly') === null && firstChild(d, 'source') !== null;
}

function rewriteDisk(d: XmlElement, r: RestoredDisk): void {
  setAttr(d, 'type', r.block === true ? 'block' : 'file');
  const driver = firstChild(d, 'driver');
  if (driver === null) d.children.unshift(element('driver', [['name', 'qemu'], ['type', r.format]]));
  else setAttr(driver, 'type', r.format);
  const source = element('source', [[r.block === true ? 'dev' : 'file', r.path]]);
  const i = d.children.findIndex((c) => typeof c !== 'string' && c.name === 'source');
  if (i >= 0) d.children[i] = source;
  else d.children.splice(d.children.findIndex((c) => typeof c !== 'string' && c.name === 'driver') + 1, 0, source);
  // the restored image is standalone
  d.children = d.children.filter((c) => typeof c === 'string' || c.name !== 'backingStore');
}

/**
 * The definition with each restored disk (by target) at its new path and
 * format; writable disks not restored are dropped; with `identity`, renamed.
 */
export function rewriteDomainXml(xml: string, disks: ReadonlyMap<string, RestoredDisk>, identity: NewIdentity | null): string {
  const root = parseXml(xml);
  if (root.name !== 'domain') throw virErr('XML_ERROR', 'DOMAIN', `a point's domain definition has root <${root.name}>, not <domain>`);
  const devices = firstChild(root, 'devices');
  if (devices !== null) {
    devices.children = devices.children.filter((c) => {
      if (typeof c === 'string' || c.name !== 'disk') return true;
      const target = firstChild(c, 'target');
      const r = target === null ? undefined : disks.get(attr(target, 'dev') ?? '');
      if (r !== undefined) rewriteDisk(c, r);
      return r !== undefined || !isWritableDisk(c);
    });
    if (identity !== null) {
      for (const nic of childElements(devices, 'interface')) {
        const mac = firstChild(nic, 'mac');
        if (mac !== null) setAttr(mac, 'address', identity.mac());
      }
      for (const ch of childElements(devices, 'channel')) {
        const src = firstChild(ch, 'source');
        if (attr(ch, 'type') === 'unix' && src !== null) src.attrs = src.attrs.filter(([k]) => k !== 'path');
      }
    }
  }
  if (identity !== null) {
    setText(root, 'uuid', identity.uuid);
    setText(root, 'name', identity.name);
    root.attrs = root.attrs.filter(([k]) => k !== 'id');
  }
  return formatXml(root);
}

/** A locally administered unicast MAC in QEMU's 52:54:00 range from 3 random bytes. */
export function macFromBytes(b: Uint8Array): string {
  return ['52', '54', '00', ...Array.from(b.subarray(0, 3), (x) => x.toString(16).padStart(2, '0'))].join(':');
}
