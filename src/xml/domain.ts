// <domain>: the subset of libvirt's domain XML that virtback runs.
// Parse and format live side by side here (like libvirt's domain_conf.c).
// Every element is honoured or refused at define (the table in
// domain-support.ts); what is kept and written back is only what runs
// (metadata, and defaults that ask for what the runtime does anyway).

import { randomUUID } from 'node:crypto';
import { virErr } from '../errors.js';
import { cpuOf, topologyCpus } from './domain-cpu.js';
import { DOMAIN_XML_CHARS, checkName, checkPath, checkXmlSize, clip } from './limits.js';
import { parseAndValidate } from './schema.js';
import {
  DEVICE_ELEMENTS, DOMAIN_ELEMENTS, checkDiskParts, checkElement, checkOsChild, unexpectedAttr, unsupported, withoutDropped,
  type SupportContext,
} from './domain-support.js';
import { completeDisplay } from './domain-graphics.js';
import { completeInterfaces } from './domain-net.js';
import { completeSerials } from './domain-serial.js';
import { checkBootOrder, firmwareToElements, parseBootOrder, parseFirmware, type FirmwareDef } from './domain-boot.js';
import { attr, childElements, childText, cloneElement, element, firstChild, formatXml, sortByRank, textContent } from './tree.js';
import type { XmlElement } from './tree.js';

export type DiskBus = 'scsi' | 'sata' | 'virtio' | 'ide';
export type DiskFormat = 'qcow2' | 'raw';

export interface DiskDef {
  type: 'file' | 'block';
  device: 'disk' | 'cdrom';
  /** <driver name='qemu' type=.../> */
  format: DiskFormat;
  /** <source file=.../> or <source dev=.../>; null for an empty cdrom */
  source: string | null;
  /** <target dev=.../> e.g. 'sda' */
  target: string;
  bus: DiskBus;
  readonly: boolean;
  /** kept children of <disk> the runtime applies without a field of their own: <serial> */
  extra: XmlElement[];
  /** attributes that ask for what the runtime does anyway, kept and written back (driver discard='unmap') */
  extraAttrs?: DiskExtraAttrs;
  /** <boot order='N'/> (domain-boot.ts) */
  bootOrder?: number | null;
}

export interface DiskExtraAttrs {
  driver?: [string, string][];
}

/** A guest-agent channel: <channel type='unix'><source mode='bind' path=.../><target type='virtio' name='org.qemu.guest_agent.0'/></channel> */
export interface AgentChannelDef {
  /** socket path; null means "let the driver choose one in its run directory" */
  path: string | null;
}

export interface OsDef {
  /** <os><kernel>, <initrd>, <cmdline>: direct kernel boot (the tiny test guest) */
  kernel: string | null;
  initrd: string | null;
  cmdline: string | null;
  /** <type> (its machine is run: see osMachine), <boot dev='hd'/>, <bootmenu enable='no'/>; kept and written back */
  extra?: XmlElement[];
  /** attributes of <os> (firmware='bios' or 'efi'), kept and written back */
  attrs?: [string, string][];
  /** UEFI: <os firmware='efi'>, <loader>, <nvram> (domain-boot.ts); null for BIOS */
  firmware?: FirmwareDef | null;
}

export interface DomainDef {
  type: 'qemu' | 'kvm';
  name: string;
  uuid: string;
  /** <memory unit=...> normalised to KiB */
  memoryKiB: number;
  vcpu: number;
  os: OsDef;
  disks: DiskDef[];
  agent: AgentChannelDef | null;
  /**
   * Other top-level children, kept and written back in document order:
   * metadata, defaults (domain-support.ts), <currentMemory> and <on_reboot>
   * (command-line.ts runs destroy as -no-reboot).
   */
  extra: XmlElement[];
  /** other children of <devices> the table accepts (emulator, default controllers, ...), without <address>/<alias> */
  devicesExtra?: XmlElement[];
  /** attributes of <vcpu> (placement='static', current equal to the count), kept and written back */
  vcpuAttrs?: [string, string][];
  /** namespace declarations on <domain> (e.g. xmlns:qemu), kept and written back */
  extraAttrs?: [string, string][];
}

export const AGENT_CHANNEL_NAME = 'org.qemu.guest_agent.0';

// libvirt's element order when it formats a domain (virDomainDefFormatInternal);
// our own and unknown elements are placed by this table, so the output looks like libvirt's.
const DOMAIN_ORDER = [
  'name', 'uuid', 'genid', 'title', 'description', 'metadata', 'maxMemory', 'memory', 'currentMemory',
  'blkiotune', 'memtune', 'memoryBacking', 'vcpu', 'vcpus', 'iothreads', 'iothreadids', 'defaultiothread',
  'cputune', 'numatune', 'resource', 'sysinfo', 'bootloader', 'bootloader_args', 'os', 'idmap', 'features',
  'cpu', 'clock', 'on_poweroff', 'on_reboot', 'on_crash', 'on_lockfailure', 'pm', 'perf', 'devices',
  'seclabel', 'keywrap', 'launchSecurity',
] as const;

const OS_ORDER = [
  'type', 'firmware', 'loader', 'nvram', 'varstore', 'kernel', 'initrd', 'cmdline', 'shim', 'dtb', 'acpi',
  'init', 'initarg', 'initenv', 'initdir', 'inituser', 'initgroup', 'boot', 'bootmenu', 'smbios', 'bios',
] as const;

const DEVICES_ORDER = [
  'emulator', 'disk', 'controller', 'lease', 'filesystem', 'interface', 'smartcard', 'serial', 'parallel',
  'console', 'channel', 'input', 'tpm', 'graphics', 'sound', 'audio', 'video', 'hostdev', 'redirdev',
  'redirfilter', 'hub', 'watchdog', 'memballoon', 'rng', 'panic', 'shmem', 'memory', 'iommu', 'vsock',
  'crypto', 'pstore',
] as const;

const DISK_ORDER = [
  'driver', 'auth', 'source', 'backingStore', 'backenddomain', 'geometry', 'blockio', 'mirror', 'target',
  'iotune', 'readonly', 'shareable', 'transient', 'serial', 'wwn', 'vendor', 'product', 'encryption', 'boot',
  'alias', 'address',
] as const;

// ---------------------------------------------------------------- parse

export interface ParseDomainOptions {
  /** UUID generator for a domain without <uuid>; tests pass a fixed one. */
  generateUUID?: () => string;
}

/** Parse <domain> XML: well-formedness, our domain.rng, then libvirt's semantic checks (VirError codes). */
export function parseDomainXML(xml: string, opts: ParseDomainOptions = {}): DomainDef {
  const root = parseAndValidate(xml, 'domain', 'domain');
  return parseDomainElement(root, opts);
}

/** The semantic part of parseDomainXML, for a <domain> element that already passed the schema. */
export function parseDomainElement(root: XmlElement, opts: ParseDomainOptions = {}): DomainDef {
  const type = attr(root, 'type');
  if (type !== 'qemu' && type !== 'kvm') {
    throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `unexpected domain type ${type ?? '(none)'}, expecting one of these: qemu, kvm`);
  }
  const name = parseDomainName(root);
  const rootWhy = unexpectedAttr(root, { type: null, id: null });
  if (rootWhy !== null) throw unsupported('domain', element('domain', root.attrs), rootWhy);

  const uuidText = childText(root, 'uuid');
  const uuid = uuidText === null ? (opts.generateUUID ?? randomUUID)() : normaliseUUID(uuidText);

  const memEl = firstChild(root, 'memory');
  const memoryKiB = memEl === null ? 0 : parseMemoryKiB(memEl);
  if (memoryKiB === 0) {
    throw virErr('XML_ERROR', 'DOMAIN', 'Memory size must be specified via <memory> or in the <numa> configuration');
  }

  const vcpuEl = firstChild(root, 'vcpu');
  const vcpu = vcpuEl === null ? 1 : parseVcpu(vcpuEl);
  const os = parseOs(firstChild(root, 'os'));
  const { disks, agent, devicesExtra } = parseDevices(firstChild(root, 'devices'));
  checkDuplicateTargets(disks);
  checkBootOrder(disks, os.extra ?? []);
  const extra = parseTopLevel(root, memoryKiB, type);
  checkCpuTopology(extra, vcpu);

  const def: DomainDef = {
    type,
    name,
    uuid,
    memoryKiB,
    vcpu,
    os,
    disks,
    agent,
    extra,
    devicesExtra,
    vcpuAttrs: vcpuEl === null ? [] : vcpuEl.attrs.map(([k, v]) => [k, v]),
    extraAttrs: root.attrs.filter(([k]) => k === 'xmlns' || k.startsWith('xmlns:')),
  };
  // A checkpoint keeps a copy of it: it must fit in a reply beside the checkpoint's own XML.
  checkXmlSize('DOMAIN', `definition of domain '${name}'`, formatDomainXML(def, { secure: true }), DOMAIN_XML_CHARS);
  return def;
}

// parsed into their own DomainDef fields
const INTERPRETED = new Set(['name', 'uuid', 'memory', 'vcpu', 'os', 'devices']);

/**
 * The other top-level elements, checked against the table; those kept
 * (metadata, defaults, <on_reboot>, <currentMemory>) are returned in order.
 */
function parseTopLevel(root: XmlElement, memoryKiB: number, virtType: string): XmlElement[] {
  const kept: XmlElement[] = [];
  for (const c of childElements(root)) {
    checkElement(DOMAIN_ELEMENTS, c.name, c, { scsiDisk: false, agentChannel: false, virtType });
    if (INTERPRETED.has(c.name)) continue;
    if (c.name === 'currentMemory') {
      const cur = parseMemoryKiB(c);
      if (cur < memoryKiB) {
        throw unsupported('currentMemory', c, `${cur} KiB is below <memory> (${memoryKiB} KiB) and there is no balloon device to hold it there`);
      }
      // libvirt clamps a larger value to <memory>; print what runs
      kept.push(element('currentMemory', [['unit', 'KiB']], [String(memoryKiB)]));
      continue;
    }
    kept.push(c);
  }
  return kept;
}

/** libvirt's domain_validate.c: a <cpu><topology> holds exactly the <vcpu> count. */
function checkCpuTopology(extra: readonly XmlElement[], vcpu: number): void {
  const t = cpuOf(extra)?.topology;
  if (t && topologyCpus(t) !== vcpu) throw virErr('XML_ERROR', 'DOMAIN', "CPU topology doesn't match maximum vcpu count");
}

/** <name>: present, short enough to quote, and usable as a file name. */
function parseDomainName(root: XmlElement): string {
  const name = childText(root, 'name');
  if (name === null || name.trim() === '') {
    throw virErr('XML_ERROR', 'DOMAIN', 'missing domain name');
  }
  // Before any message that quotes it: an error must fit in a reply too.
  checkName('DOMAIN', `domain name '${clip(name)}'`, name);
  if (name.includes('/')) {
    throw virErr('XML_ERROR', 'DOMAIN', `name '${name}' cannot contain '/'`);
  }
  if (name.includes('\n')) {
    throw virErr('XML_ERROR', 'DOMAIN', `name '${name}' cannot contain '\\n'`);
  }
  return name;
}

/** <vcpu>: a positive count that fits in 32 bits; all of them online, not pinned. */
function parseVcpu(vcpuEl: XmlElement): number {
  const t = textContent(vcpuEl).trim();
  if (!/^[0-9]+$/.test(t) || Number(t) > 0xffffffff) {
    throw virErr('XML_ERROR', 'DOMAIN', `maximum vcpus count must be an integer, not '${t}'`);
  }
  const vcpu = Number(t);
  if (vcpu === 0) throw virErr('XML_ERROR', 'DOMAIN', 'at least one vCPU is required (<vcpu> is 0)');
  const current = attr(vcpuEl, 'current');
  const why = unexpectedAttr(vcpuEl, { placement: ['static'], current: null }) ??
    (current !== null && current.trim() !== t ? `current='${current}' is not supported (vCPU hotplug): only all ${vcpu} online` : null);
  if (why !== null) throw unsupported('vcpu', vcpuEl, why);
  return vcpu;
}

/** <os>: BIOS boot from the first disk, or direct kernel boot; <type> names the machine. */
function parseOs(osEl: XmlElement | null): OsDef {
  const osExtra: XmlElement[] = [];
  const os: OsDef = { kernel: null, initrd: null, cmdline: null, extra: osExtra, attrs: [] };
  if (osEl !== null) {
    const why = unexpectedAttr(osEl, { firmware: ['bios', 'efi'] });
    if (why !== null) throw unsupported('os', element('os', osEl.attrs), why);
    os.attrs = osEl.attrs.map(([k, v]) => [k, v]);
    os.firmware = parseFirmware(attr(osEl, 'firmware'), firstChild(osEl, 'loader'), firstChild(osEl, 'nvram'));
    for (const c of childElements(osEl)) {
      if (c.name === 'loader' || c.name === 'nvram') continue;
      if (c.name === 'kernel') os.kernel = textContent(c);
      else if (c.name === 'initrd') os.initrd = textContent(c);
      else if (c.name === 'cmdline') os.cmdline = textContent(c);
      else osExtra.push(checkOsChild(c, osExtra));
    }
  }
  // libvirt's post-parse default, and what command-line.ts runs: without it
  // the <os> we print would not pass libvirt's own domain schema.
  if (!osExtra.some((c) => c.name === 'type')) osExtra.push(element('type', [['arch', 'x86_64'], ['machine', 'q35']], ['hvm']));
  return os;
}

/** The machine type QEMU runs: <os><type machine=...>, q35 when it names none. */
export function osMachine(os: OsDef): string {
  const type = (os.extra ?? []).find((e) => e.name === 'type');
  return (type === undefined ? null : attr(type, 'machine')) ?? 'q35';
}

/** <devices>: disks, the guest-agent channel, and devices the table accepts (kept in document order). */
function parseDevices(devicesEl: XmlElement | null): { disks: DiskDef[]; agent: AgentChannelDef | null; devicesExtra: XmlElement[] } {
  const disks: DiskDef[] = [];
  const others: XmlElement[] = [];
  let agent: AgentChannelDef | null = null;
  if (devicesEl !== null) {
    for (const c of childElements(devicesEl)) {
      if (c.name === 'disk') {
        disks.push(parseDisk(c));
      } else if (c.name === 'channel') {
        if (!isAgentChannel(c)) throw unsupported('devices/channel', c, 'only the guest-agent channel is supported');
        if (agent !== null) {
          throw virErr('XML_ERROR', 'DOMAIN', `more than one guest agent channel named '${AGENT_CHANNEL_NAME}'`);
        }
        agent = parseAgentChannel(c);
      } else {
        others.push(c);
      }
    }
  }
  const ctx: SupportContext = { scsiDisk: disks.some((d) => d.bus === 'scsi'), agentChannel: agent !== null };
  const devicesExtra = others.map((c) => {
    const kept = withoutDropped(c);
    checkElement(DEVICE_ELEMENTS, `devices/${c.name}`, kept, ctx);
    return kept;
  });
  // network, serial and display devices: checked, and completed as libvirt does at define (MACs, console pairing, default video)
  completeInterfaces(devicesExtra);
  completeSerials(devicesExtra);
  completeDisplay(devicesExtra);
  return { disks, agent, devicesExtra };
}

function normaliseUUID(s: string): string {
  const hex = s.trim().replace(/-/g, '').toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(hex)) {
    throw virErr('XML_ERROR', 'DOMAIN', `malformed uuid element '${s}'`);
  }
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// libvirt's virScaleInteger suffixes: powers of 1024 (k, KiB, ...) and of 1000 (KB, MB, ...).
const UNIT_EXPONENT: Record<string, number> = { k: 1, m: 2, g: 3, t: 4, p: 5, e: 6 };

function unitBytes(unit: string): bigint {
  const u = unit.toLowerCase();
  if (u === 'b' || u === 'byte' || u === 'bytes') return 1n;
  const exp = UNIT_EXPONENT[u[0] ?? ''];
  if (exp === undefined || u.length > 3 || (u.length === 2 && u[1] !== 'b') || (u.length === 3 && u.slice(1) !== 'ib')) {
    throw virErr('XML_ERROR', 'DOMAIN', `unknown suffix '${unit}' in <memory unit=...>`);
  }
  const base = u.length === 2 ? 1000n : 1024n; // 'KB' is decimal; 'k' and 'KiB' are binary
  return base ** BigInt(exp);
}

/** A <memory>-like element (value + unit) in KiB, rounded up as libvirt does. */
export function parseMemoryKiB(el: XmlElement): number {
  const text = textContent(el).trim();
  if (!/^[0-9]+$/.test(text)) {
    throw virErr('XML_ERROR', 'DOMAIN', `invalid value '${text}' for element 'memory'`);
  }
  const unit = attr(el, 'unit') ?? 'KiB';
  const bytes = BigInt(text) * unitBytes(unit);
  const kib = (bytes + 1023n) / 1024n; // libvirt rounds up to whole KiB
  if (kib > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw virErr('XML_ERROR', 'DOMAIN', `memory size '${text}' ${unit} is too large`);
  }
  return Number(kib);
}

function isAgentChannel(el: XmlElement): boolean {
  const target = firstChild(el, 'target');
  return target !== null && attr(target, 'type') === 'virtio' && attr(target, 'name') === AGENT_CHANNEL_NAME;
}

function parseAgentChannel(el: XmlElement): AgentChannelDef {
  if (attr(el, 'type') !== 'unix') {
    throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `guest agent channel must be of type 'unix', not '${attr(el, 'type') ?? ''}'`);
  }
  const source = firstChild(el, 'source');
  const mode = source === null ? null : attr(source, 'mode');
  if (mode !== null && mode !== 'bind') {
    throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `guest agent channel source mode must be 'bind', not '${mode}'`);
  }
  const target = firstChild(el, 'target')!;
  // state='connected' is libvirt's live report, not configuration
  const why = unexpectedAttr(el, { type: null }) ??
    (source === null ? null : unexpectedAttr(source, { mode: null, path: null })) ??
    unexpectedAttr(target, { type: null, name: null, state: null }) ??
    childElements(withoutDropped(el)).filter((c) => c.name !== 'source' && c.name !== 'target').map((c) => `child <${c.name}> is not supported`)[0] ??
    null;
  if (why !== null) throw unsupported('devices/channel', el, why);
  const path = source === null ? null : attr(source, 'path');
  if (path !== null && !path.startsWith('/')) {
    throw virErr('XML_ERROR', 'DOMAIN', `guest agent channel path '${path}' must be absolute`);
  }
  return { path };
}

// libvirt picks the bus from the target name when <target bus> is absent.
function defaultBus(target: string): DiskBus | null {
  if (target.startsWith('vd')) return 'virtio';
  if (target.startsWith('sd')) return 'scsi';
  if (target.startsWith('hd')) return 'ide';
  return null;
}

function parseDisk(el: XmlElement): DiskDef {
  const targetEl = firstChild(el, 'target');
  const target = targetEl === null ? null : attr(targetEl, 'dev');
  if (targetEl === null || target === null) {
    throw virErr('XML_ERROR', 'DOMAIN', 'missing target information for device');
  }
  checkName('DOMAIN', `disk target '${clip(target)}'`, target);

  const type = attr(el, 'type') ?? 'file';
  if (type !== 'file' && type !== 'block') {
    throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `unsupported disk type '${type}' for disk '${target}'`);
  }
  const device = attr(el, 'device') ?? 'disk';
  if (device !== 'disk' && device !== 'cdrom') {
    throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `unsupported disk device '${device}' for disk '${target}'`);
  }

  const driverEl = firstChild(el, 'driver');
  let format: DiskFormat = 'raw';
  if (driverEl !== null) {
    const driverName = attr(driverEl, 'name');
    if (driverName !== null && driverName !== 'qemu') {
      throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `unsupported driver name '${driverName}' for disk '${target}'`);
    }
    const f = attr(driverEl, 'type');
    if (f !== null) {
      if (f !== 'qcow2' && f !== 'raw') {
        throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `unsupported disk format '${f}' for disk '${target}'`);
      }
      format = f;
    }
  }

  const sourceEl = firstChild(el, 'source');
  const sourceAttr = type === 'file' ? 'file' : 'dev';
  const source = sourceEl === null ? null : attr(sourceEl, sourceAttr);
  if (source === null && device === 'disk') {
    throw virErr('XML_ERROR', 'DOMAIN', `missing source for disk '${target}' (<source ${sourceAttr}=.../>)`);
  }
  if (source !== null) checkPath('DOMAIN', `source of disk '${target}'`, source);
  if (source !== null && !source.startsWith('/')) {
    throw virErr('XML_ERROR', 'DOMAIN', `disk source '${source}' of disk '${target}' must be an absolute path`);
  }

  const busAttr = attr(targetEl, 'bus');
  const bus = busAttr ?? defaultBus(target);
  if (bus !== 'scsi' && bus !== 'sata' && bus !== 'virtio' && bus !== 'ide') {
    throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `unsupported disk bus '${bus ?? '(none)'}' for disk '${target}'`);
  }

  checkDiskParts(el, target, sourceAttr);
  const bootEl = firstChild(el, 'boot');
  const readonly = device === 'cdrom' || firstChild(el, 'readonly') !== null;
  return {
    type,
    device,
    format,
    source,
    target,
    bus,
    readonly,
    extra: childElements(el).filter((c) => c.name === 'serial'),
    extraAttrs: { driver: driverEl === null ? [] : driverEl.attrs.filter(([k]) => k === 'discard') },
    bootOrder: bootEl === null ? null : parseBootOrder(bootEl, 'disk'),
  };
}

function checkDuplicateTargets(disks: readonly DiskDef[]): void {
  const seen = new Map<string, DiskDef>();
  for (const d of disks) {
    const prev = seen.get(d.target);
    if (prev) {
      throw virErr('XML_ERROR', 'DOMAIN', `target '${d.target}' duplicated for disk sources '${prev.source ?? '<null>'}' and '${d.source ?? '<null>'}'`);
    }
    seen.set(d.target, d);
  }
}

// ---------------------------------------------------------------- format

export interface FormatDomainOptions {
  /** include security-sensitive data (graphics passwords), like VIR_DOMAIN_XML_SECURE */
  secure?: boolean;
}

export function formatDomainXML(def: DomainDef, opts: FormatDomainOptions = {}): string {
  return formatXml(domainToElement(def, opts));
}

/** The <domain> element as a tree (what a checkpoint embeds). */
export function domainToElement(def: DomainDef, opts: FormatDomainOptions = {}): XmlElement {
  const top: XmlElement[] = [
    element('name', [], [def.name]),
    element('uuid', [], [def.uuid]),
    element('memory', [['unit', 'KiB']], [String(def.memoryKiB)]),
    element('vcpu', def.vcpuAttrs ?? [], [String(def.vcpu)]),
    osToElement(def.os),
    devicesToElement(def),
    ...def.extra.map(cloneElement),
  ];
  const root = element('domain', [['type', def.type], ...(def.extraAttrs ?? [])], sortByRank(top, DOMAIN_ORDER));
  if (!opts.secure) stripDomainSecrets(root);
  return root;
}

function osToElement(os: OsDef): XmlElement {
  const children: XmlElement[] = (os.extra ?? []).map(cloneElement);
  if (os.kernel !== null) children.push(element('kernel', [], [os.kernel]));
  if (os.initrd !== null) children.push(element('initrd', [], [os.initrd]));
  if (os.cmdline !== null) children.push(element('cmdline', [], [os.cmdline]));
  children.push(...firmwareToElements(os.firmware));
  return element('os', os.attrs ?? [], sortByRank(children, OS_ORDER));
}

function devicesToElement(def: DomainDef): XmlElement {
  const children: XmlElement[] = [];
  const extras = (def.devicesExtra ?? []).map(cloneElement);
  children.push(...extras.filter((e) => e.name === 'emulator'));
  children.push(...def.disks.map(diskToElement));
  children.push(...extras.filter((e) => e.name !== 'emulator'));
  if (def.agent !== null) children.push(agentToElement(def.agent));
  return element('devices', [], sortByRank(children, DEVICES_ORDER));
}

function diskToElement(d: DiskDef): XmlElement {
  const sourceAttr = d.type === 'file' ? 'file' : 'dev';
  const children: XmlElement[] = [element('driver', [['name', 'qemu'], ['type', d.format], ...(d.extraAttrs?.driver ?? [])])];
  if (d.source !== null) children.push(element('source', [[sourceAttr, d.source]]));
  children.push(element('target', [['dev', d.target], ['bus', d.bus]]));
  if (d.readonly) children.push(element('readonly'));
  if (d.bootOrder != null) children.push(element('boot', [['order', String(d.bootOrder)]]));
  children.push(...d.extra.map(cloneElement));
  return element('disk', [['type', d.type], ['device', d.device]], sortByRank(children, DISK_ORDER));
}

function agentToElement(a: AgentChannelDef): XmlElement {
  return element('channel', [['type', 'unix']], [
    element('source', [['mode', 'bind'], ['path', a.path]]),
    element('target', [['type', 'virtio'], ['name', AGENT_CHANNEL_NAME]]),
  ]);
}

/** Remove what only VIR_DOMAIN_XML_SECURE may show: graphics passwords (libvirt's rule). */
export function stripDomainSecrets(root: XmlElement): void {
  const walk = (el: XmlElement): void => {
    if (el.name === 'graphics') el.attrs = el.attrs.filter(([k]) => k !== 'passwd');
    for (const c of el.children) if (typeof c !== 'string') walk(c);
  };
  walk(root);
}

// ---------------------------------------------------------------- disks of any domain XML

export { domainDiskRefs, type DomainDiskRef } from './domain-disks.js';

/** The <uuid> of a <domain> element, normalised; null when absent or malformed. */
export function domainElementUUID(domain: XmlElement): string | null {
  const t = childText(domain, 'uuid');
  if (t === null) return null;
  try {
    return normaliseUUID(t);
  } catch {
    return null;
  }
}
