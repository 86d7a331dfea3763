// The QEMU command line for a domain definition: a pure function from
// (DomainDef, paths, accelerator) to argv, plus the names the rest of the
// driver needs afterwards (block node names and qdev ids per disk).
//
// Naming follows libvirt so QMP sequences read the same as libvirt's logs:
// - block nodes `libvirt-N-storage` (protocol) / `libvirt-N-format` (format),
//   N counting DOWN over the disks that have a source: the first such disk gets
//   the highest N, the last one gets 1 (libvirt's command lines do the same).
//   Nodes added later at run time (backup targets, scratch files) take
//   N = highest in use + 1 (see nextNodeIndex).
// - qdev ids are libvirt's aliases, derived from the target name like
//   libvirt's virDiskNameToIndex: bus scsi `scsi0-0-0-<unit>` (one virtio-scsi
//   controller `scsi0`, unit = target index: matches libvirt for sda..sdg,
//   where libvirt would move on to controller scsi1), bus sata `sata0-0-<port>`
//   (the q35 built-in AHCI, ports 0..5; on i440fx an ich9-ahci `sata0`), bus
//   ide `ide0-<bus>-<unit>` (the i440fx built-in IDE: hda/hdb on bus 0, hdc/hdd
//   on bus 1; q35 has none), bus virtio `virtio-disk<index>`.
//   HMP `qemu-io -d <qdev id>` works for scsi and sata disks, not virtio-blk.
// Structured options use QEMU's JSON syntax, so paths need no comma escaping.

import { virErr } from '../errors.js';
import { cpuArgs, cpuOf } from '../xml/domain-cpu.js';
import { diskBootIndexes, networkBootIndex } from '../xml/domain-boot.js';
import { AGENT_CHANNEL_NAME, osMachine, type DiskDef, type DomainDef } from '../xml/domain.js';
import type { XmlElement } from '../xml/tree.js';
import { peripheralArgs } from './console-args.js';
import { pflashArgs, type FirmwareFiles } from './firmware.js';

export const QEMU_BINARY = 'qemu-system-x86_64';

export interface CommandLineInput {
  def: DomainDef;
  /** 'kvm' only when /dev/kvm is usable and the domain asks for it; type='kvm' without it is refused */
  accel: 'kvm' | 'tcg';
  qmpSocket: string;
  /** QEMU writes its pid here once it has daemonized */
  pidFile: string;
  /** socket of the guest-agent channel; used only when def.agent is set */
  agentSocket: string | null;
  /** file that receives the guest's serial console, or null for no serial port */
  consoleLog: string | null;
  /** START_PAUSED: -S, the CPUs wait for QMP cont */
  paused?: boolean;
  /** UEFI code and NVRAM as pflash (firmware.ts); null/absent for BIOS */
  firmware?: FirmwareFiles | null;
}

/** Where a disk lives inside QEMU. */
export interface DiskNodes {
  /** <target dev=...> */
  target: string;
  /** qdev id of the guest device (HMP qemu-io -d, query-block "qdev") */
  qdevId: string;
  /** protocol (file) node; null for an empty cdrom */
  storageNode: string | null;
  /** format node: the disk's top node, where dirty bitmaps live; null for an empty cdrom */
  formatNode: string | null;
  /** the N of libvirt-N-*; null for an empty cdrom */
  nodeIndex: number | null;
}

export interface QemuCommandLine {
  binary: string;
  args: string[];
  disks: DiskNodes[];
}

const DISK_PREFIXES = ['fd', 'hd', 'vd', 'sd', 'xvd', 'ubd'];

/** libvirt's virDiskNameToIndex: 'sda' -> 0, 'sdz' -> 25, 'sdaa' -> 26; -1 if not a disk name. */
export function diskNameToIndex(name: string): number {
  const prefix = DISK_PREFIXES.find((p) => name.startsWith(p) && name.length > p.length);
  if (prefix === undefined) return -1;
  const letters = name.slice(prefix.length);
  if (!/^[a-z]+$/.test(letters)) return -1;
  let idx = 0;
  for (let i = 0; i < letters.length; i++) {
    idx = (idx + (i < 1 ? 0 : 1)) * 26 + (letters.charCodeAt(i) - 97);
  }
  return idx;
}

const SATA_PORTS = 6;
const IDE_UNITS = 4;

/** The i440fx machines ('pc'): built-in IDE, no built-in AHCI. */
function isI440fx(def: DomainDef): boolean {
  return /^pc($|-i440fx-)/.test(osMachine(def.os));
}

function targetIndex(disk: DiskDef): number {
  const idx = diskNameToIndex(disk.target);
  if (idx < 0) {
    throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `invalid disk target '${disk.target}': expected a name like 'sda' or 'vda'`);
  }
  return idx;
}

/**
 * The qdev id (libvirt alias) of the disk with target `target`:
 * scsi -> 'scsi0-0-0-<unit>', sata -> 'sata0-0-<port>', virtio -> 'virtio-disk<index>'.
 */
export function qdevIdForDisk(def: DomainDef, target: string): string {
  const disk = def.disks.find((d) => d.target === target);
  if (!disk) throw virErr('INVALID_ARG', 'QEMU', `no disk named '${target}'`);
  return qdevIdOf(disk);
}

function qdevIdOf(disk: DiskDef): string {
  const idx = targetIndex(disk);
  switch (disk.bus) {
    case 'scsi':
      return `scsi0-0-0-${idx}`;
    case 'sata':
      return `sata0-0-${idx}`;
    case 'virtio':
      return `virtio-disk${idx}`;
    case 'ide':
      return `ide0-${Math.floor(idx / 2)}-${idx % 2}`;
  }
}

/** Node names and qdev ids for every disk, in definition order (see the header for the numbering). */
export function assignDiskNodes(def: DomainDef): DiskNodes[] {
  let n = def.disks.filter((d) => d.source !== null).length;
  return def.disks.map((disk) => {
    const qdevId = qdevIdOf(disk);
    if (disk.source === null) {
      return { target: disk.target, qdevId, storageNode: null, formatNode: null, nodeIndex: null };
    }
    const index = n--;
    return {
      target: disk.target,
      qdevId,
      storageNode: `libvirt-${index}-storage`,
      formatNode: `libvirt-${index}-format`,
      nodeIndex: index,
    };
  });
}

/** The N for the next node added at run time: one above every N in use. */
export function nextNodeIndex(disks: readonly DiskNodes[], extraInUse: Iterable<number> = []): number {
  let max = 0;
  for (const d of disks) if (d.nodeIndex !== null && d.nodeIndex > max) max = d.nodeIndex;
  for (const i of extraInUse) if (i > max) max = i;
  return max + 1;
}

/** QemuOpts value escaping: a comma inside a value is written twice. */
export function escapeOptValue(v: string): string {
  return v.replace(/,/g, ',,');
}

function json(v: object): string {
  return JSON.stringify(v);
}

function textOf(el: XmlElement): string {
  return el.children.filter((c): c is string => typeof c === 'string').join('').trim();
}

/** <serial> of a disk (kept among its uninterpreted children): the guest sees it as the disk's serial number. */
function diskSerial(disk: DiskDef): string | null {
  const el = disk.extra.find((e) => e.name === 'serial');
  return el ? textOf(el) || null : null;
}

/** <on_reboot>destroy</on_reboot> -> -no-reboot (a rebooting or panicking guest ends QEMU). */
function onRebootDestroy(def: DomainDef): boolean {
  const el = def.extra.find((e) => e.name === 'on_reboot');
  return el !== undefined && textOf(el) === 'destroy';
}

function onPoweroffRestart(def: DomainDef): boolean {
  const el = def.extra.find((e) => e.name === 'on_poweroff');
  return el !== undefined && textOf(el) === 'restart';
}

/** <os><bootmenu enable='yes'/>: the firmware offers its boot menu. */
function bootMenu(def: DomainDef): boolean {
  const el = def.os.extra?.find((e) => e.name === 'bootmenu');
  return el !== undefined && el.attrs.some(([k, v]) => k === 'enable' && v === 'yes');
}

/**
 * type='kvm' runs on KVM or not at all: virtback accepts the definition (it may
 * come from a KVM host) and refuses the start with the message of libvirt's
 * start-time check (qemuProcessStartValidate); type='qemu' is TCG.
 */
function checkAccel(def: DomainDef, accel: CommandLineInput['accel']): void {
  if (def.type === 'kvm' && accel !== 'kvm') {
    throw virErr('CONFIG_UNSUPPORTED', 'QEMU',
      'Domain requires KVM, but it is not available. Check that virtualization is enabled in the host BIOS, ' +
      'and host configuration is setup to load the kvm modules.');
  }
}

function checkDisks(def: DomainDef): void {
  const seenTarget = new Set<string>();
  const seenId = new Map<string, string>();
  for (const disk of def.disks) {
    if (seenTarget.has(disk.target)) {
      throw virErr('XML_ERROR', 'DOMAIN', `target '${disk.target}' duplicated for disk sources`);
    }
    seenTarget.add(disk.target);
    const idx = targetIndex(disk);
    const id = qdevIdOf(disk);
    const other = seenId.get(id);
    if (other !== undefined) {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `disks '${other}' and '${disk.target}' map to the same device address '${id}'`);
    }
    seenId.set(id, disk.target);
    if (disk.bus === 'sata' && idx >= SATA_PORTS) {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU',
        `disk '${disk.target}': the q35 SATA controller has ports 0..${SATA_PORTS - 1} only (sda..sdf)`);
    }
    if (disk.bus === 'ide' && !isI440fx(def)) {
      // libvirt's words for an IDE disk on q35
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', 'IDE controllers are unsupported for this QEMU binary or machine type');
    }
    if (disk.bus === 'ide' && idx >= IDE_UNITS) {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `disk '${disk.target}': the IDE controller has units hda..hdd only`);
    }
    if (disk.device === 'cdrom' && disk.bus === 'virtio') {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `disk '${disk.target}': cdrom on bus virtio is not supported`);
    }
    if (disk.device === 'disk' && disk.source === null) {
      throw virErr('XML_ERROR', 'DOMAIN', `disk '${disk.target}' has no source`);
    }
    if (disk.device === 'disk' && disk.readonly && (disk.bus === 'sata' || disk.bus === 'ide')) {
      // ide-hd refuses a read-only block backend; libvirt rejects it the same way
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `disk '${disk.target}': readonly ide disks are not supported`);
    }
  }
}

function blockdevArgs(disk: DiskDef, nodes: DiskNodes): string[] {
  if (disk.source === null || nodes.storageNode === null || nodes.formatNode === null) return [];
  const readOnly = disk.readonly || disk.device === 'cdrom';
  const storage = {
    driver: disk.type === 'block' ? 'host_device' : 'file',
    filename: disk.source,
    'node-name': nodes.storageNode,
    'auto-read-only': true,
    discard: 'unmap',
  };
  const format = {
    'node-name': nodes.formatNode,
    'read-only': readOnly,
    driver: disk.format,
    file: nodes.storageNode,
  };
  return ['-blockdev', json(storage), '-blockdev', json(format)];
}

function deviceArg(disk: DiskDef, nodes: DiskNodes, bootindex: number | undefined, i440fx: boolean): string {
  const idx = targetIndex(disk);
  const drive = nodes.formatNode !== null ? { drive: nodes.formatNode } : {};
  const serial = diskSerial(disk);
  const extra = { ...(serial !== null ? { serial } : {}), ...(bootindex !== undefined ? { bootindex } : {}) };
  switch (disk.bus) {
    case 'scsi':
      return json({
        driver: disk.device === 'cdrom' ? 'scsi-cd' : 'scsi-hd',
        bus: 'scsi0.0', channel: 0, 'scsi-id': 0, lun: idx,
        ...drive, id: nodes.qdevId, ...extra,
      });
    case 'sata':
      return json({
        driver: disk.device === 'cdrom' ? 'ide-cd' : 'ide-hd',
        bus: i440fx ? `sata0.${idx}` : `ide.${idx}`,
        ...drive, id: nodes.qdevId, ...extra,
      });
    case 'ide':
      return json({
        driver: disk.device === 'cdrom' ? 'ide-cd' : 'ide-hd',
        bus: `ide.${Math.floor(idx / 2)}`, unit: idx % 2,
        ...drive, id: nodes.qdevId, ...extra,
      });
    case 'virtio':
      return json({ driver: 'virtio-blk-pci', ...drive, id: nodes.qdevId, ...extra });
  }
}

/** argv (without the binary) for starting `def` daemonized, and the per-disk names it uses. */
export function buildCommandLine(input: CommandLineInput): QemuCommandLine {
  const { def } = input;
  checkAccel(def, input.accel);
  checkDisks(def);
  const disks = assignDiskNodes(def);
  const pflash = input.firmware ? pflashArgs(input.firmware) : null;
  const args: string[] = [
    '-name', `guest=${escapeOptValue(def.name)},debug-threads=on`,
    '-uuid', def.uuid,
    '-machine', `${osMachine(def.os)}${pflash?.machineProps ?? ''}`,
    '-accel', input.accel,
    '-m', `size=${def.memoryKiB}k`,
    ...cpuArgs(cpuOf(def.extra), def.vcpu, input.accel),
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-daemonize', '-pidfile', input.pidFile,
    '-chardev', `socket,id=charmonitor,path=${escapeOptValue(input.qmpSocket)},server=on,wait=off`,
    '-mon', 'chardev=charmonitor,id=monitor,mode=control',
  ];
  if (pflash) args.push(...pflash.blockdevs);
  if (bootMenu(def)) args.push('-boot', 'menu=on');
  if (input.paused) args.push('-S');
  if (onRebootDestroy(def)) args.push('-no-reboot');
  // <on_poweroff>restart: QEMU pauses at the guest's power-off and the driver resets it (power.ts)
  if (onPoweroffRestart(def)) args.push('-action', 'shutdown=pause');
  if (def.os.kernel !== null) args.push('-kernel', def.os.kernel);
  if (def.os.initrd !== null) args.push('-initrd', def.os.initrd);
  if (def.os.cmdline !== null) args.push('-append', def.os.cmdline);
  args.push(...peripheralArgs(def.devicesExtra ?? [], input.consoleLog, networkBootIndex(def.os.extra ?? [])));
  if (def.disks.some((d) => d.bus === 'scsi')) {
    args.push('-device', json({ driver: 'virtio-scsi-pci', id: 'scsi0' }));
  }
  if (isI440fx(def) && def.disks.some((d) => d.bus === 'sata')) {
    args.push('-device', json({ driver: 'ich9-ahci', id: 'sata0' }));
  }
  const bootIndexes = diskBootIndexes(def.disks, def.os.extra ?? []);
  def.disks.forEach((disk, i) => {
    const nodes = disks[i]!;
    args.push(...blockdevArgs(disk, nodes), '-device', deviceArg(disk, nodes, bootIndexes.get(disk.target), isI440fx(def)));
  });
  if (def.agent !== null) {
    if (input.agentSocket === null) {
      throw virErr('INTERNAL_ERROR', 'QEMU', 'guest agent channel has no socket path');
    }
    args.push(
      '-device', json({ driver: 'virtio-serial-pci', id: 'virtio-serial0' }),
      '-chardev', `socket,id=charchannel0,path=${escapeOptValue(input.agentSocket)},server=on,wait=off`,
      '-device', json({
        driver: 'virtserialport', bus: 'virtio-serial0.0', nr: 1,
        chardev: 'charchannel0', id: 'channel0', name: AGENT_CHANNEL_NAME,
      }),
    );
  }
  return { binary: QEMU_BINARY, args, disks };
}
