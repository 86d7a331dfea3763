// <domaincheckpoint>: parse, align with the domain's disks, format
// (libvirt's src/conf/checkpoint_conf.c, side by side like there).

import { virErr } from '../errors.js';
import { CHECKPOINT_XML_CHARS, DOMAIN_XML_CHARS, checkName, checkPath, checkXmlSize, clip } from './limits.js';
import { parseAndValidate, validateWithLibvirtDomainSchema } from './schema.js';
import { attr, childElements, childText, cloneElement, element, firstChild, formatXml } from './tree.js';
import type { XmlElement } from './tree.js';
import { domainElementUUID, stripDomainSecrets } from './domain.js';

export type CheckpointDiskType = 'bitmap' | 'no';

export interface CheckpointDiskDef {
  /** disk target after alignment (on input: a target or a source path) */
  name: string;
  checkpoint: CheckpointDiskType;
  /** bitmap name; defaults to the checkpoint name for 'bitmap' disks */
  bitmap: string | null;
  /** dirty bytes since the checkpoint: filled in by the driver, printed only with the SIZE flag */
  size?: number | null;
}

export interface CheckpointDef {
  name: string;
  description: string | null;
  /** name of the parent checkpoint (the "current" one when this was created) */
  parent: string | null;
  /** UNIX seconds */
  creationTime: number;
  disks: CheckpointDiskDef[];
  /** inactive <domain> captured at creation, kept as XML; null when not known */
  domain: XmlElement | null;
  /**
   * Our addition, not libvirt's: why the checkpoint's bitmaps are known to be
   * missing or broken; printed as <inconsistent reason='...'/> only when set.
   */
  inconsistent?: string | null;
}

export interface ParseCheckpointOptions {
  /** VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE: name and creationTime required, parent and domain taken from the XML */
  redefine: boolean;
  /**
   * Our metadata files: redefine rules, validated against our output
   * extension schema (which admits <inconsistent>).
   */
  internal?: boolean;
  /** creation time for a new checkpoint, UNIX seconds (default: now) */
  now?: number;
}

const CHECKPOINT_DOMAIN = 'DOMAIN_CHECKPOINT';

export function parseCheckpointXML(xml: string, opts: ParseCheckpointOptions): CheckpointDef {
  const internal = opts.internal === true;
  const redefine = opts.redefine || internal;
  const root = parseAndValidate(xml, 'domaincheckpoint', internal ? 'virtback-domaincheckpoint-output' : 'domaincheckpoint');

  let name = childText(root, 'name');
  if (name === null && redefine) {
    throw virErr('XML_ERROR', CHECKPOINT_DOMAIN, 'a redefined checkpoint must have a name');
  }
  const description = childText(root, 'description');
  // libvirt validates the embedded <domain> with its full domain grammar;
  // ours reads only the disks, so libvirt's installed schema judges the rest.
  const embedded = internal ? null : firstChild(root, 'domain');
  if (embedded !== null) validateWithLibvirtDomainSchema(formatXml(embedded));

  let creationTime: number;
  let parent: string | null = null;
  let domain: XmlElement | null = null;
  if (redefine) {
    const t = childText(root, 'creationTime');
    if (t === null || !/^[0-9]+$/.test(t.trim()) || !Number.isSafeInteger(Number(t.trim()))) {
      throw virErr('INTERNAL_ERROR', CHECKPOINT_DOMAIN, 'missing creationTime from existing checkpoint');
    }
    creationTime = Number(t.trim());
    const p = firstChild(root, 'parent');
    parent = p === null ? null : childText(p, 'name');
    domain = firstChild(root, 'domain');
  } else {
    // libvirt's moment post-parse: the creation time is "now", the default name is that time.
    creationTime = opts.now ?? Math.floor(Date.now() / 1000);
    name ??= String(creationTime);
  }

  const disksEl = firstChild(root, 'disks');
  const disks: CheckpointDiskDef[] = [];
  for (const d of disksEl === null ? [] : childElements(disksEl)) {
    const diskName = attr(d, 'name');
    if (diskName === null) {
      throw virErr('XML_ERROR', CHECKPOINT_DOMAIN, 'missing name from disk checkpoint element');
    }
    const type = attr(d, 'checkpoint') ?? 'bitmap';
    if (type !== 'bitmap' && type !== 'no') {
      throw virErr('XML_ERROR', CHECKPOINT_DOMAIN, `unknown checkpoint type '${type}' for disk '${diskName}'`);
    }
    disks.push({ name: diskName, checkpoint: type, bitmap: attr(d, 'bitmap') });
  }

  const def: CheckpointDef = { name: name as string, description, parent, creationTime, disks, domain };
  if (internal) {
    const marker = firstChild(root, 'inconsistent');
    if (marker !== null) def.inconsistent = attr(marker, 'reason');
  }
  if (!internal) checkCheckpointLimits(def);
  return def;
}

/**
 * The wire's limits (limits.ts), at create and redefine: names a listing can
 * carry, and an XML that, with the domain's definition, fits in one reply.
 * Our own metadata files are not checked: what was stored must stay loadable.
 */
export function checkCheckpointLimits(def: CheckpointDef): void {
  checkName(CHECKPOINT_DOMAIN, `checkpoint name '${clip(def.name)}'`, def.name);
  if (def.parent !== null) checkName(CHECKPOINT_DOMAIN, `parent checkpoint name '${clip(def.parent)}'`, def.parent);
  // a disk may be named by its source path until alignment turns it into a target
  for (const d of def.disks) checkPath(CHECKPOINT_DOMAIN, `checkpoint disk name '${clip(d.name)}'`, d.name);
  checkOwnSize(def);
  if (def.domain !== null) checkXmlSize(CHECKPOINT_DOMAIN, `domain definition in checkpoint '${def.name}'`, formatXml(def.domain), DOMAIN_XML_CHARS);
}

function checkOwnSize(def: CheckpointDef): void {
  const own = formatCheckpointXML({ ...def, domain: null, inconsistent: null }, { secure: true });
  checkXmlSize(CHECKPOINT_DOMAIN, `checkpoint '${def.name}' (its name, description and disks)`, own, CHECKPOINT_XML_CHARS);
}

// ---------------------------------------------------------------- alignment

/** What alignment needs to know of a domain disk; DiskDef and DomainDiskRef both fit. */
export interface AlignDiskInfo {
  target: string;
  source: string | null;
  readonly: boolean;
}

/**
 * libvirt's virDomainDiskByName without ambiguity: a name starting with '/'
 * is a source path (must match exactly one disk), anything else a target.
 */
export function findDomainDisk<D extends AlignDiskInfo>(disks: readonly D[], name: string): D | null {
  if (!name.startsWith('/')) return disks.find((d) => d.target === name) ?? null;
  const matches = disks.filter((d) => d.source === name);
  return matches.length === 1 ? (matches[0] as D) : null;
}

/** Give every bitmap disk without a bitmap name the checkpoint's name. */
export function assignCheckpointBitmapNames(def: CheckpointDef): void {
  for (const d of def.disks) {
    if (d.checkpoint === 'bitmap' && d.bitmap === null) d.bitmap = def.name;
  }
}

/**
 * libvirt's virDomainCheckpointAlignDisks: one entry per domain disk, in
 * domain order, names normalised to targets. Without <disks>, every writable
 * non-empty disk gets a bitmap; with <disks>, unlisted disks get 'no'.
 */
export function alignCheckpointDisks(def: CheckpointDef, domain: { disks: readonly AlignDiskInfo[] }): void {
  const domDisks = domain.disks;
  if (def.disks.length > domDisks.length) {
    throw virErr('CONFIG_UNSUPPORTED', CHECKPOINT_DOMAIN, 'too many disk checkpoint requests for domain');
  }
  if (domDisks.length === 0) {
    throw virErr('CONFIG_UNSUPPORTED', CHECKPOINT_DOMAIN, 'domain must have at least one disk to perform checkpoints');
  }
  const defaultType: CheckpointDiskType = def.disks.length === 0 ? 'bitmap' : 'no';

  const byTarget = new Map<string, CheckpointDiskDef>();
  for (const chk of def.disks) {
    const dom = findDomainDisk(domDisks, chk.name);
    if (dom === null) {
      throw virErr('CONFIG_UNSUPPORTED', CHECKPOINT_DOMAIN, `no disk named '${chk.name}'`);
    }
    if (byTarget.has(dom.target)) {
      throw virErr('CONFIG_UNSUPPORTED', CHECKPOINT_DOMAIN, `disk '${chk.name}' specified twice`);
    }
    byTarget.set(dom.target, chk);
    if ((dom.source === null || dom.readonly) && chk.checkpoint !== 'no') {
      throw virErr('CONFIG_UNSUPPORTED', CHECKPOINT_DOMAIN, `disk '${chk.name}' is empty or readonly`);
    }
    chk.name = dom.target;
  }

  def.disks = domDisks.map((dom) => {
    const existing = byTarget.get(dom.target);
    if (existing) return existing;
    const checkpoint: CheckpointDiskType = dom.source === null || dom.readonly ? 'no' : defaultType;
    return { name: dom.target, checkpoint, bitmap: null };
  });
  assignCheckpointBitmapNames(def);
  // one entry per domain disk now: the checkpoint's own XML may have grown
  checkOwnSize(def);
}

/** The UUID of the embedded domain, if any (REDEFINE checks it against the VM's). */
export function checkpointDomainUUID(def: CheckpointDef): string | null {
  return def.domain === null ? null : domainElementUUID(def.domain);
}

// ---------------------------------------------------------------- format

export interface FormatCheckpointOptions {
  /** VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN */
  noDomain?: boolean;
  /** VIR_DOMAIN_CHECKPOINT_XML_SECURE: keep secrets in the embedded domain */
  secure?: boolean;
  /** VIR_DOMAIN_CHECKPOINT_XML_SIZE: print each bitmap disk's size (when the driver filled it in) */
  size?: boolean;
}

/** libvirt's order: name, description, parent/name, creationTime, disks, domain; then our marker. */
export function formatCheckpointXML(def: CheckpointDef, opts: FormatCheckpointOptions = {}): string {
  const children: XmlElement[] = [element('name', [], [def.name])];
  if (def.description !== null && def.description !== '') children.push(element('description', [], [def.description]));
  if (def.parent !== null) children.push(element('parent', [], [element('name', [], [def.parent])]));
  children.push(element('creationTime', [], [String(def.creationTime)]));
  if (def.disks.length > 0) {
    children.push(
      element(
        'disks',
        [],
        def.disks.map((d) =>
          element('disk', [
            ['name', d.name],
            ['checkpoint', d.checkpoint],
            ['bitmap', d.bitmap],
            ['size', opts.size && d.bitmap !== null && d.size !== null && d.size !== undefined ? String(d.size) : null],
          ]),
        ),
      ),
    );
  }
  if (def.domain !== null && !opts.noDomain) {
    const dom = cloneElement(def.domain);
    if (!opts.secure) stripDomainSecrets(dom);
    children.push(dom);
  }
  if (def.inconsistent !== null && def.inconsistent !== undefined) {
    children.push(element('inconsistent', [['reason', def.inconsistent]]));
  }
  return formatXml(element('domaincheckpoint', [], children));
}
