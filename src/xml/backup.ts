// <domainbackup>: parse, align with the domain's disks, format
// (libvirt's src/conf/backup_conf.c, side by side like there). The same code
// reads and writes our job status files with `internal` (libvirt's status
// XML: per-disk state, TLS object aliases, and our job id).

import { virErr } from '../errors.js';
import { parseAndValidate } from './schema.js';
import { attr, childElements, childText, cloneElement, element, firstChild, formatXml, sortByRank } from './tree.js';
import type { XmlElement } from './tree.js';

export type BackupMode = 'push' | 'pull';
export type BackupTransport = 'tcp' | 'unix' | 'fd';
export type BackupDiskMode = 'full' | 'incremental';
/** Per-disk job state, internal (status) XML only. */
export type BackupDiskState = 'running' | 'complete' | 'failed' | 'cancelling' | 'cancelled';
export type BackupStoreType = 'file' | 'block';

export interface BackupServerDef {
  transport: BackupTransport;
  /** tcp host name or address */
  name: string | null;
  /** tcp port; null when not given (libvirt prints it only when non-zero) */
  port: number | null;
  /** unix socket path (absolute) */
  socket: string | null;
  /** fd transport: the FD group name (libvirt 11.3) */
  fdgroup: string | null;
  /** tls='yes'|'no'; null when absent */
  tls: boolean | null;
}

export interface BackupDiskDef {
  /** disk target, e.g. 'vda' */
  name: string;
  backup: boolean;
  /** internal only */
  state: BackupDiskState | null;
  /** backupmode; null until alignment fills the default */
  backupmode: BackupDiskMode | null;
  /** checkpoint name for an incremental backup of this disk */
  incremental: string | null;
  /** pull only */
  exportname: string | null;
  /** pull only */
  exportbitmap: string | null;
  /** type of the target (push) / scratch (pull) store; null when backup is 'no' */
  type: BackupStoreType | null;
  /** <driver type=...>: image format of the target/scratch; null when not given */
  format: string | null;
  /** path of the target/scratch file or block device; null when not given (alignment generates one) */
  path: string | null;
  /** children of <target>/<scratch> (<seclabel>, <encryption>), kept as XML and written back */
  storeExtra: XmlElement[];
  /** internal only: libvirt's index='N' of the store */
  index: number | null;
}

export interface BackupDef {
  mode: BackupMode;
  /** checkpoint the whole backup is incremental from */
  incremental: string | null;
  /** pull only */
  server: BackupServerDef | null;
  disks: BackupDiskDef[];
  /** Our addition: the job id, printed as id='N' on <domainbackup> when set. */
  id: number | null;
  /** internal only: aliases of the TLS objects (libvirt's <privateData>) */
  tlsAlias: string | null;
  tlsSecretAlias: string | null;
}

export interface ParseBackupOptions {
  /** status XML: no schema validation, accepts state/index/id/<privateData> (libvirt's PARSE_INTERNAL) */
  internal?: boolean;
}

const D = 'DOMAIN';

const DISK_STATES: readonly string[] = ['running', 'complete', 'failed', 'cancelling', 'cancelled'];
// libvirt's virStorageType names other than file/block: known but not usable for a backup store.
const OTHER_STORAGE_TYPES: readonly string[] = ['dir', 'network', 'volume', 'nvme', 'vhostuser', 'vhostvdpa'];
// libvirt's virStorageFileFormat names (the ones a <driver type> may carry).
const STORAGE_FORMATS: readonly string[] = [
  'raw', 'dir', 'bochs', 'cloop', 'dmg', 'iso', 'vpc', 'vdi', 'fat', 'vhd', 'ploop', 'cow', 'qcow', 'qcow2', 'qed', 'vmdk', 'luks',
];

function invalidAttr(name: string, el: string, value: string): Error {
  return virErr('XML_ERROR', D, `Invalid value for attribute '${name}' in element '${el}': '${value}'.`);
}

function parseYesNo(el: XmlElement, name: string): boolean | null {
  const v = attr(el, name);
  if (v === null) return null;
  if (v === 'yes') return true;
  if (v === 'no') return false;
  throw invalidAttr(name, el.name, v);
}

function parseUInt(el: XmlElement, name: string): number | null {
  const v = attr(el, name);
  if (v === null) return null;
  if (!/^[0-9]+$/.test(v) || Number(v) > 0xffffffff) throw invalidAttr(name, el.name, v);
  return Number(v);
}

export function parseBackupXML(xml: string, opts: ParseBackupOptions = {}): BackupDef {
  const internal = opts.internal === true;
  // libvirt validates user input against the schema, never its own status XML.
  const root = parseAndValidate(xml, 'domainbackup', internal ? null : 'domainbackup');
  return parseBackupElement(root, internal);
}

function parseBackupElement(root: XmlElement, internal: boolean): BackupDef {
  const modeAttr = attr(root, 'mode');
  let mode: BackupMode = 'push';
  if (modeAttr !== null) {
    if (modeAttr !== 'push' && modeAttr !== 'pull') {
      throw virErr('CONFIG_UNSUPPORTED', D, `unknown backup mode '${modeAttr}'`);
    }
    mode = modeAttr;
  }
  const push = mode === 'push';

  const def: BackupDef = {
    mode,
    incremental: childText(root, 'incremental'),
    server: null,
    disks: [],
    id: internal ? parseUInt(root, 'id') : null,
    tlsAlias: null,
    tlsSecretAlias: null,
  };

  const serverEl = firstChild(root, 'server');
  if (serverEl !== null) {
    if (mode !== 'pull') {
      throw virErr('CONFIG_UNSUPPORTED', D, 'use of <server> requires pull mode backup');
    }
    def.server = parseServer(serverEl);
  }

  const disksEl = firstChild(root, 'disks');
  for (const d of disksEl === null ? [] : childElements(disksEl)) {
    def.disks.push(parseDisk(d, push, internal));
  }

  if (internal) {
    const objects = firstChild(firstChild(root, 'privateData') ?? element('privateData'), 'objects');
    if (objects !== null) {
      const secret = childElements(objects, 'secret').find((s) => attr(s, 'type') === 'tlskey');
      def.tlsSecretAlias = secret === undefined ? null : attr(secret, 'alias');
      const tls = firstChild(objects, 'TLSx509');
      def.tlsAlias = tls === null ? null : attr(tls, 'alias');
    }
  }
  return def;
}

function parseServer(el: XmlElement): BackupServerDef {
  const transportAttr = attr(el, 'transport');
  const transport = transportAttr ?? 'tcp';
  if (transport === 'rdma') {
    throw virErr('CONFIG_UNSUPPORTED', D, 'transport rdma is not supported for <server>');
  }
  if (transport !== 'tcp' && transport !== 'unix' && transport !== 'fd') {
    throw virErr('CONFIG_UNSUPPORTED', D, `unknown protocol transport type '${transport}'`);
  }
  const server: BackupServerDef = { transport, name: null, port: null, socket: attr(el, 'socket'), fdgroup: null, tls: null };
  if (transport === 'unix') {
    if (server.socket === null) throw virErr('XML_ERROR', D, 'missing socket for unix transport');
    if (!server.socket.startsWith('/')) {
      throw virErr('XML_ERROR', D, `backup socket path '${server.socket}' must be absolute`);
    }
  } else if (server.socket !== null) {
    throw virErr('XML_ERROR', D, `transport '${transport}' does not support socket attribute`);
  }
  if (transport === 'tcp') {
    server.name = attr(el, 'name');
    if (server.name === null) throw virErr('XML_ERROR', D, 'missing name for host');
    server.port = parseUInt(el, 'port');
  }
  if (transport === 'fd') {
    server.fdgroup = attr(el, 'fdgroup');
    if (server.fdgroup === null) throw virErr('XML_ERROR', D, 'missing fdgroup for fd transport');
  }
  server.tls = parseYesNo(el, 'tls');
  return server;
}

/** A disk entry with nothing but its name and whether it is backed up; the rest is filled by parse or align. */
function blankDisk(name: string, backup: boolean): BackupDiskDef {
  return {
    name, backup, state: null, backupmode: null, incremental: null, exportname: null, exportbitmap: null,
    type: null, format: null, path: null, storeExtra: [], index: null,
  };
}

function parseDisk(el: XmlElement, push: boolean, internal: boolean): BackupDiskDef {
  const name = attr(el, 'name');
  if (name === null) throw virErr('XML_ERROR', D, 'missing name from disk backup element');
  const disk = blankDisk(name, parseYesNo(el, 'backup') ?? true);
  if (internal) {
    const state = attr(el, 'state');
    if (state !== null) {
      if (!DISK_STATES.includes(state)) throw invalidAttr('state', 'disk', state);
      disk.state = state as BackupDiskState;
    }
  }
  // As libvirt: nothing else is read from a disk that is not backed up.
  if (!disk.backup) return disk;

  if (!push) {
    disk.exportname = attr(el, 'exportname');
    disk.exportbitmap = attr(el, 'exportbitmap');
  }
  const mode = attr(el, 'backupmode');
  if (mode !== null) {
    if (mode !== 'full' && mode !== 'incremental') throw invalidAttr('backupmode', 'disk', mode);
    disk.backupmode = mode;
  }
  disk.incremental = attr(el, 'incremental');

  const type = attr(el, 'type') ?? 'file';
  if (type !== 'file' && type !== 'block') {
    if (OTHER_STORAGE_TYPES.includes(type)) throw virErr('XML_ERROR', D, `unsupported disk backup type '${type}'`);
    throw virErr('XML_ERROR', D, `unknown storage source type '${type}'`);
  }
  disk.type = type;

  const driver = firstChild(el, 'driver');
  const format = driver === null ? null : attr(driver, 'type');
  if (format !== null && format !== '') {
    if (!STORAGE_FORMATS.includes(format)) throw virErr('XML_ERROR', D, `unknown storage source format '${format}'`);
    disk.format = format;
  }
  if (internal) disk.index = parseUInt(el, 'index');

  const store = firstChild(el, push ? 'target' : 'scratch');
  if (store !== null) {
    disk.path = attr(store, type === 'file' ? 'file' : 'dev');
    disk.storeExtra = childElements(store);
  }
  return disk;
}

// ---------------------------------------------------------------- alignment

/** What alignment needs to know of a domain disk; DiskDef fits. */
export interface BackupAlignDisk {
  target: string;
  /** source path; null when the drive is empty */
  source: string | null;
  readonly: boolean;
  /** only 'file' sources get a generated target/scratch name */
  type: string;
}

function assignStore(disk: BackupDiskDef, dom: BackupAlignDisk, suffix: string): void {
  if (dom.source === null) {
    throw virErr('CONFIG_UNSUPPORTED', D, `disk '${disk.name}' has no media`);
  }
  if (disk.path === null) {
    if (dom.type !== 'file') {
      throw virErr('CONFIG_UNSUPPORTED', D, `refusing to generate file name for disk '${disk.name}'`);
    }
    disk.type = 'file';
    disk.path = `${dom.source}.${suffix}`;
  }
}

/**
 * libvirt's virDomainBackupAlignDisks: check the named disks, generate missing
 * target/scratch file names ("<source>.<suffix>"), append every other domain
 * disk (backed up only when no <disks> were given and it is writable and not
 * empty), and resolve each disk's backup mode and checkpoint.
 */
export function alignBackupDisks(def: BackupDef, domain: { disks: readonly BackupAlignDisk[] }, suffix: string): void {
  const domDisks = domain.disks;
  if (domDisks.length === 0) {
    throw virErr('CONFIG_UNSUPPORTED', D, 'domain must have at least one disk to perform backup');
  }
  const named = new Set<string>();
  for (const disk of def.disks) {
    const dom = domDisks.find((d) => d.target === disk.name);
    if (dom === undefined) {
      throw virErr('CONFIG_UNSUPPORTED', D, `no disk named '${disk.name}'`);
    }
    if (named.has(disk.name)) {
      throw virErr('CONFIG_UNSUPPORTED', D, `disk '${disk.name}' specified twice`);
    }
    named.add(disk.name);
    if (disk.backupmode === 'incremental' && disk.incremental === null && def.incremental === null) {
      throw virErr(
        'CONFIG_UNSUPPORTED',
        D,
        `'incremental' backup mode of disk '${disk.name}' requires setting 'incremental' field for disk or backup`,
      );
    }
    if (disk.backup) assignStore(disk, dom, suffix);
  }

  const backupAll = def.disks.length === 0;
  for (const dom of domDisks) {
    if (named.has(dom.target)) continue;
    const disk = blankDisk(dom.target, false);
    if (backupAll && dom.source !== null && !dom.readonly) {
      disk.backup = true;
      assignStore(disk, dom, suffix);
    }
    def.disks.push(disk);
  }

  for (const disk of def.disks) {
    if (!disk.backup) continue;
    disk.backupmode ??= def.incremental !== null || disk.incremental !== null ? 'incremental' : 'full';
    if (disk.incremental === null && disk.backupmode === 'incremental') disk.incremental = def.incremental;
  }
}

/** Format of a target or scratch image when <driver type> is absent (libvirt: qcow2). */
export const DEFAULT_BACKUP_FORMAT = 'qcow2';

/**
 * The bitmap a backup of `disk` exposes (pull: exportbitmap's default) or
 * copies through (push: the temporary bitmap libvirt names the same way).
 */
export function backupBitmapName(disk: string): string {
  return `backup-${disk}`;
}

/**
 * Every per-disk default the backup job runs with, in one place, after
 * alignment (libvirt applies them in qemuBackupPrepare/-DiskPrepareOne): the
 * store format, a pull's export name, and an incremental pull's export bitmap.
 * The job's XML (backupGetXMLDesc) shows them.
 */
export function applyBackupDefaults(def: BackupDef): void {
  for (const disk of def.disks) {
    if (!disk.backup) continue;
    disk.format ??= DEFAULT_BACKUP_FORMAT;
    if (def.mode !== 'pull') continue;
    disk.exportname ??= disk.name;
    if (disk.backupmode === 'incremental') disk.exportbitmap ??= backupBitmapName(disk.name);
  }
}

// ---------------------------------------------------------------- format

export interface FormatBackupOptions {
  /** status XML: also per-disk state, index and <privateData> */
  internal?: boolean;
}

// libvirt writes security labels before encryption inside a disk source.
const STORE_CHILD_ORDER = ['seclabel', 'encryption'] as const;

/** libvirt's virDomainBackupDefFormat, attribute for attribute; plus our job id on the root. */
export function formatBackupXML(def: BackupDef, opts: FormatBackupOptions = {}): string {
  return formatXml(backupToElement(def, opts));
}

export function backupToElement(def: BackupDef, opts: FormatBackupOptions = {}): XmlElement {
  const internal = opts.internal === true;
  const push = def.mode === 'push';
  const children: XmlElement[] = [];
  if (def.incremental !== null) children.push(element('incremental', [], [def.incremental]));
  if (def.server !== null) {
    const s = def.server;
    children.push(
      element('server', [
        ['transport', s.transport],
        ['tls', s.tls === null ? null : s.tls ? 'yes' : 'no'],
        ['name', s.name],
        ['port', s.port !== null && s.port !== 0 ? String(s.port) : null],
        ['socket', s.socket],
        ['fdgroup', s.fdgroup],
      ]),
    );
  }
  if (def.disks.length > 0) {
    children.push(element('disks', [], def.disks.map((d) => diskToElement(d, push, internal))));
  }
  if (internal && (def.tlsSecretAlias !== null || def.tlsAlias !== null)) {
    const objects: XmlElement[] = [];
    if (def.tlsSecretAlias !== null) objects.push(element('secret', [['type', 'tlskey'], ['alias', def.tlsSecretAlias]]));
    if (def.tlsAlias !== null) objects.push(element('TLSx509', [['alias', def.tlsAlias]]));
    children.push(element('privateData', [], [element('objects', [], objects)]));
  }
  return element('domainbackup', [['mode', def.mode], ['id', def.id === null ? null : String(def.id)]], children);
}

function diskToElement(d: BackupDiskDef, push: boolean, internal: boolean): XmlElement {
  const attrs: [string, string | null][] = [
    ['name', d.name],
    ['backup', d.backup ? 'yes' : 'no'],
    ['state', internal ? d.state : null],
  ];
  const children: XmlElement[] = [];
  if (d.backup) {
    const type = d.type ?? 'file';
    attrs.push(
      ['type', type],
      ['backupmode', d.backupmode],
      ['incremental', d.incremental],
      ['exportname', d.exportname],
      ['exportbitmap', d.exportbitmap],
      ['index', internal && d.index !== null && d.index !== 0 ? String(d.index) : null],
    );
    if (d.format !== null) children.push(element('driver', [['type', d.format]]));
    const storeChildren = sortByRank(d.storeExtra.map(cloneElement), STORE_CHILD_ORDER);
    if (d.path !== null || storeChildren.length > 0) {
      children.push(element(push ? 'target' : 'scratch', [[type === 'file' ? 'file' : 'dev', d.path]], storeChildren));
    }
  }
  return element('disk', attrs, children);
}
