// Shared by the xml-*.test.ts files: the project's own fixtures
// (test/fixtures/xml), the schemas of the installed libvirt (Debian package
// libvirt0) used as the oracle, and small helpers around them.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DiskDef } from '../../src/xml/domain.js';
import type { XmlElement, XmlNode } from '../../src/xml/tree.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'xml');
export const OUR_SCHEMAS = path.join(REPO_ROOT, 'schemas');
/** Where Debian's libvirt0 installs libvirt's RelaxNG schemas. */
export const LIBVIRT_SCHEMAS = '/usr/share/libvirt/schemas';

/** Path of one of libvirt's installed schemas; fails with the fix when libvirt0 is missing. */
export function libvirtSchema(file: 'domainbackup.rng' | 'domaincheckpoint.rng', dir = LIBVIRT_SCHEMAS): string {
  const p = path.join(dir, file);
  if (!fs.existsSync(p)) {
    throw new Error(
      `libvirt's schema ${p} is missing: install the Debian package libvirt0 ` +
        '(apt-get install libvirt0; scripts/ensure-deps.sh does it)',
    );
  }
  return p;
}

export function fixturePath(rel: string): string {
  return path.join(FIXTURES, rel);
}

export function readFixture(rel: string): string {
  return fs.readFileSync(fixturePath(rel), 'utf8');
}

/** Fixture base names (without .xml) in a folder, sorted. */
export function fixtureNames(dir: string): string[] {
  return fs
    .readdirSync(fixturePath(dir))
    .filter((f) => f.endsWith('.xml'))
    .map((f) => f.slice(0, -4))
    .sort();
}

/** Every fixture path, relative to FIXTURES. */
export function allFixtures(): string[] {
  const out: string[] = [];
  for (const dir of ['backup/in', 'backup/out', 'checkpoint/in', 'checkpoint/out']) {
    for (const n of fixtureNames(dir)) out.push(`${dir}/${n}.xml`);
  }
  return out;
}

// ---------------------------------------------------------------- mutations


/** Names and values that occur in libvirt's backup/checkpoint formats: mutations draw from these so they hit the schema's alternatives. */
export const ELEMENT_POOL = [
  'domainbackup', 'domaincheckpoint', 'incremental', 'server', 'disks', 'disk', 'target', 'scratch', 'driver',
  'seclabel', 'encryption', 'secret', 'label', 'name', 'description', 'creationTime', 'parent', 'privateData', 'bogus',
];
export const ATTR_POOL = [
  'mode', 'name', 'backup', 'type', 'backupmode', 'incremental', 'exportname', 'exportbitmap', 'transport', 'port',
  'socket', 'fdgroup', 'tls', 'file', 'dev', 'checkpoint', 'bitmap', 'size', 'state', 'index', 'id', 'format', 'relabel',
];
export const VALUE_POOL = [
  'yes', 'no', 'push', 'pull', 'default', 'file', 'block', 'network', 'full', 'incremental', 'tcp', 'unix', 'fd', 'rdma',
  '/abs/path', 'relative/path', 'vda', 'vdb', 'sdz', 'hda', 'vdx', 'qcow2', 'raw', 'vmdk', '10809', '-1', '99999999999',
  '', ' ', '1525889631', '../escape', 'c1', 'bitmap', 'luks', 'passphrase', 'running', 'localhost', '::1', '192.168.1.300',
];

/** Small deterministic PRNG (mulberry32), so failures reproduce. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T>(rand: () => number, xs: readonly T[]): T {
  return xs[Math.floor(rand() * xs.length)] as T;
}

function allElements(root: XmlElement): XmlElement[] {
  const out: XmlElement[] = [root];
  for (let i = 0; i < out.length; i++) {
    for (const c of (out[i] as XmlElement).children) if (typeof c !== 'string') out.push(c);
  }
  return out;
}

function clone(el: XmlElement): XmlElement {
  return { name: el.name, attrs: el.attrs.map(([k, v]) => [k, v]), children: el.children.map((c) => (typeof c === 'string' ? c : clone(c))) };
}

/** One structural mutation of a tree (in a copy): drop/duplicate/rename elements, drop/rename/change/add attributes, change text. */
export function mutateTree(root: XmlElement, rand: () => number): XmlElement {
  const copy = clone(root);
  const els = allElements(copy);
  const el = pick(rand, els);
  const parents = els.filter((p) => p.children.some((c) => typeof c !== 'string'));
  switch (Math.floor(rand() * 9)) {
    case 0: {
      // drop a child element
      const p = parents.length ? pick(rand, parents) : null;
      if (p) p.children.splice(p.children.findIndex((c) => typeof c !== 'string'), 1);
      break;
    }
    case 1: {
      // duplicate a child element
      const p = parents.length ? pick(rand, parents) : null;
      if (p) {
        const i = Math.floor(rand() * p.children.length);
        const c = p.children[i];
        if (c !== undefined && typeof c !== 'string') p.children.splice(i, 0, clone(c));
      }
      break;
    }
    case 2:
      el.name = pick(rand, ELEMENT_POOL);
      break;
    case 3:
      if (el.attrs.length) el.attrs.splice(Math.floor(rand() * el.attrs.length), 1);
      break;
    case 4:
      if (el.attrs.length) {
        const a = pick(rand, el.attrs);
        const n = pick(rand, ATTR_POOL);
        if (!el.attrs.some(([k]) => k === n)) a[0] = n;
      }
      break;
    case 5:
    case 6:
      if (el.attrs.length) pick(rand, el.attrs)[1] = pick(rand, VALUE_POOL);
      break;
    case 7: {
      const n = pick(rand, ATTR_POOL);
      if (!el.attrs.some(([k]) => k === n)) el.attrs.push([n, pick(rand, VALUE_POOL)]);
      break;
    }
    case 8: {
      // add or replace text, or add an empty child
      if (rand() < 0.5) {
        const elements: XmlNode[] = el.children.filter((c) => typeof c !== 'string');
        el.children = el.children.length ? elements : [pick(rand, VALUE_POOL)];
      }
      else el.children.push({ name: pick(rand, ELEMENT_POOL), attrs: [], children: [] });
      break;
    }
  }
  return copy;
}

/** The harness domain's disk that no fixture names: alignment adds it to every backup. */
export const EXTRA_DISK = 'vdx';
/** Suffix alignment appends to a push target it generates (/vm/<name>.qcow2.<suffix>). */
export const TARGET_SUFFIX = 'bk1';

/** The shape of libvirt's testCompareBackupXML domain: one qcow2 file disk /vm/<name>.qcow2 per named disk, then EXTRA_DISK. */
export function harnessDomain(names: readonly string[], extraDisk = true): { disks: DiskDef[] } {
  const disk = (target: string): DiskDef => ({
    type: 'file',
    device: 'disk',
    format: 'qcow2',
    source: `/vm/${target}.qcow2`,
    target,
    bus: 'virtio',
    readonly: false,
    extra: [],
  });
  return { disks: [...names.map(disk), ...(extraDisk ? [disk(EXTRA_DISK)] : [])] };
}
