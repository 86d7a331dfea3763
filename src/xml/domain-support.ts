// Which parts of libvirt's <domain> virtback's QEMU runtime runs. One table,
// so that define refuses (CONFIG_UNSUPPORTED, naming the element) what would
// otherwise be stored, echoed by dumpxml and silently ignored. The VM-runtime
// work (issue 13) extends it as the runtime learns more: move a row from
// 'refused' to 'honoured' together with the command-line code that runs it.
//
// Handlings:
// - honoured: interpreted by domain.ts; the runtime does what it says.
// - metadata: kept and echoed; by nature it has no runtime effect.
// - default:  accepted only in the form that asks for what the runtime does
//             anyway (check() says why not otherwise); kept and echoed.
// - dropped:  accepted, not kept: libvirt's record of its own run (device
//             <address> and <alias>): virtback does not place guest devices
//             by address nor name them by alias, so echoing them would claim
//             an effect they do not have.
// - refused:  CONFIG_UNSUPPORTED at define.

import { virErr, type VirError } from '../errors.js';
import { checkCpu } from './domain-cpu.js';
import { clip } from './limits.js';
import { attr, childElements, element, firstChild, textContent } from './node.js';
import type { XmlElement } from './node.js';

export type Handling = 'honoured' | 'metadata' | 'default' | 'dropped' | 'refused';

/** What a check may look at besides the element itself. */
export interface SupportContext {
  /** a disk on bus scsi exists (the runtime then creates the virtio-scsi controller) */
  scsiDisk: boolean;
  /** the guest-agent channel exists (the runtime then creates the virtio-serial controller) */
  agentChannel: boolean;
  /** <domain type>: what <cpu> may ask for depends on it */
  virtType?: string;
}

export interface ElementRule {
  handling: Handling;
  /** the accepted form, for docs/xml.md and refusal messages */
  accepts?: string;
  /** null when `el` asks only for what the runtime does; else the reason it is refused */
  check?: (el: XmlElement, ctx: SupportContext) => string | null;
}

/** libvirt's namespace for <qemu:commandline> and friends: libvirt's, but never run by virtback. */
export const QEMU_NAMESPACE = 'http://libvirt.org/schemas/domain/qemu/1.0';

// ---------------------------------------------------------------- check helpers

/** The first attribute of `el` not in `allowed` (name -> accepted values, null = any value), as a reason. */
export function unexpectedAttr(el: XmlElement, allowed: Record<string, readonly string[] | null>): string | null {
  for (const [k, v] of el.attrs) {
    if (k === 'xmlns' || k.startsWith('xmlns:')) continue;
    if (!(k in allowed)) return `attribute ${k}='${clip(v)}' is not supported`;
    const values = allowed[k];
    if (values && !values.includes(v)) return `${k}='${clip(v)}' is not supported (only ${values.map((x) => `'${x}'`).join(', ')})`;
  }
  return null;
}

/** The first child element whose name is not in `names`, as a reason. */
function unexpectedChild(el: XmlElement, names: readonly string[]): string | null {
  const c = childElements(el).find((x) => !names.includes(x.name));
  return c === undefined ? null : `child <${c.name}> is not supported`;
}

function textIs(el: XmlElement, values: readonly string[]): string | null {
  const t = textContent(el).trim();
  return values.includes(t) ? null : `'${clip(t)}' is not supported (only ${values.join(', ')})`;
}

function all(...reasons: (() => string | null)[]): string | null {
  for (const r of reasons) {
    const why = r();
    if (why !== null) return why;
  }
  return null;
}

const refused: ElementRule = { handling: 'refused' };
const honoured: ElementRule = { handling: 'honoured' };
const metadata: ElementRule = { handling: 'metadata' };

function lifecycleAction(values: readonly string[]): (el: XmlElement) => string | null {
  return (el) => all(() => unexpectedAttr(el, {}), () => unexpectedChild(el, []), () => textIs(el, values));
}

// ---------------------------------------------------------------- <domain> children

const FEATURES = ['acpi', 'apic', 'pae'];

/** Top-level elements of libvirt's <domain>, by name. */
export const DOMAIN_ELEMENTS: Readonly<Record<string, ElementRule>> = {
  name: honoured,
  uuid: honoured,
  memory: honoured,
  currentMemory: { handling: 'honoured', accepts: 'equal to <memory> (there is no balloon to lower it)' },
  vcpu: { handling: 'honoured', accepts: "placement='static'; current equal to the count" },
  os: honoured,
  devices: honoured,
  on_reboot: {
    handling: 'honoured',
    accepts: 'restart, or destroy (QEMU runs with -no-reboot)',
    check: lifecycleAction(['restart', 'destroy']),
  },
  title: metadata,
  description: metadata,
  metadata,
  on_poweroff: {
    handling: 'honoured',
    accepts: 'destroy, or restart (the guest powering off is reset)',
    check: lifecycleAction(['destroy', 'restart']),
  },
  // a guest crash is seen only through a <panic> device, which is refused: only QEMU dying is a crash here
  on_crash: { handling: 'default', accepts: 'destroy', check: lifecycleAction(['destroy']) },
  clock: {
    handling: 'default',
    accepts: "offset='utc' without timers (QEMU's RTC runs in UTC)",
    check: (el) => all(() => unexpectedAttr(el, { offset: ['utc'] }), () => unexpectedChild(el, [])),
  },
  features: {
    handling: 'default',
    accepts: '<acpi/>, <apic/>, <pae/> (q35 and the default CPU provide them)',
    check: (el) => all(
      () => unexpectedAttr(el, {}),
      () => unexpectedChild(el, FEATURES),
      () => childElements(el).map((c) => unexpectedAttr(c, {}) ?? unexpectedChild(c, [])).find((r) => r !== null) ?? null,
    ),
  },
  cpu: {
    handling: 'honoured',
    accepts: "mode='custom' (<model>, <feature policy>), 'host-model' or 'host-passthrough' (KVM only), with <topology>",
    check: (el, ctx) => checkCpu(el, ctx.virtType ?? 'qemu'),
  },
  seclabel: {
    handling: 'default',
    accepts: "type='none' (no security driver confines QEMU)",
    check: (el) => all(() => unexpectedAttr(el, { type: ['none'], model: ['none'] }), () => (attr(el, 'type') === null ? "type='none' is required" : null), () => unexpectedChild(el, [])),
  },
  genid: refused,
  maxMemory: refused,
  blkiotune: refused,
  memtune: refused,
  memoryBacking: refused,
  vcpus: refused,
  iothreads: refused,
  iothreadids: refused,
  defaultiothread: refused,
  cputune: refused,
  numatune: refused,
  resource: refused,
  sysinfo: refused,
  bootloader: refused,
  bootloader_args: refused,
  idmap: refused,
  on_lockfailure: refused,
  pm: refused,
  perf: refused,
  keywrap: refused,
  launchSecurity: refused,
  throttlegroups: refused,
};

// ---------------------------------------------------------------- <devices> children

/** What the runtime starts (command-line.ts QEMU_BINARY, from PATH; Debian installs it here). */
const QEMU_EMULATOR = '/usr/bin/qemu-system-x86_64';
const EMULATORS = [QEMU_EMULATOR, 'qemu-system-x86_64'];

function indexZero(el: XmlElement): string | null {
  const i = attr(el, 'index');
  return i === null || i === '0' ? null : `index='${clip(i)}' is not supported (only '0')`;
}

/** The controllers q35 or the runtime provides by themselves; any other is refused. */
function checkController(el: XmlElement, ctx: SupportContext): string | null {
  const type = attr(el, 'type');
  const model = attr(el, 'model');
  const plain = (allowed: Record<string, readonly string[] | null>): string | null =>
    all(() => unexpectedAttr(el, allowed), () => indexZero(el), () => unexpectedChild(el, []));
  switch (type) {
    case 'pci':
      return plain({ type: null, index: null, model: ['pcie-root', 'pci-root'] }) ?? (model === null ? "model='pcie-root' or 'pci-root' is required" : null);
    case 'sata':
    case 'ide':
      return plain({ type: null, index: null });
    case 'usb':
      return plain({ type: null, index: null, model: ['none'] }) ?? (model === null ? "model='none' is required (there is no USB controller)" : null);
    case 'scsi':
      return plain({ type: null, index: null, model: ['virtio-scsi'] }) ??
        (model === null ? "model='virtio-scsi' is required" : null) ??
        (ctx.scsiDisk ? null : 'the virtio-scsi controller exists only with a disk on bus scsi');
    case 'virtio-serial':
      return plain({ type: null, index: null }) ??
        (ctx.agentChannel ? null : 'the virtio-serial controller exists only with the guest-agent channel');
    default:
      return `type='${clip(type ?? '')}' is not supported`;
  }
}

/** Children of <devices> in libvirt's <domain>, by name. */
export const DEVICE_ELEMENTS: Readonly<Record<string, ElementRule>> = {
  emulator: {
    handling: 'honoured',
    accepts: `${EMULATORS.join(' or ')} (the binary the runtime runs)`,
    check: (el) => unexpectedAttr(el, {}) ?? textIs(el, EMULATORS),
  },
  disk: honoured,
  channel: { handling: 'honoured', accepts: "the guest-agent channel (type='unix', target name 'org.qemu.guest_agent.0')" },
  controller: {
    handling: 'default',
    accepts: "pci pcie-root (q35) or pci-root (pc); sata or ide index 0; usb model='none'; scsi model='virtio-scsi' with a scsi disk; virtio-serial with the agent channel",
    check: checkController,
  },
  input: {
    handling: 'default',
    accepts: "type='mouse' or 'keyboard' on bus 'ps2' (q35's i8042)",
    check: (el) => all(() => unexpectedAttr(el, { type: ['mouse', 'keyboard'], bus: ['ps2'] }), () => unexpectedChild(el, [])),
  },
  memballoon: {
    handling: 'default',
    accepts: "model='none'",
    check: (el) => all(() => unexpectedAttr(el, { model: ['none'] }), () => (attr(el, 'model') === null ? "model='none' is required" : null), () => unexpectedChild(el, [])),
  },
  audio: {
    handling: 'default',
    accepts: "type='none'",
    check: (el) => all(() => unexpectedAttr(el, { id: null, type: ['none'] }), () => unexpectedChild(el, [])),
  },
  lease: refused,
  filesystem: refused,
  interface: { handling: 'honoured', accepts: "type='user' (with <portForward>), 'bridge' or 'ethernet'; models virtio, e1000, rtl8139 (domain-net.ts)" },
  smartcard: refused,
  serial: { handling: 'honoured', accepts: "type='pty' or 'file' on an ISA port, with <log> (domain-serial.ts)" },
  parallel: refused,
  console: { handling: 'honoured', accepts: "type='pty' or 'file' with target type 'serial' (domain-serial.ts)" },
  tpm: refused,
  graphics: { handling: 'honoured', accepts: "type='vnc' with port or autoport and one listen address (domain-graphics.ts)" },
  sound: refused,
  video: { handling: 'honoured', accepts: "model vga, virtio or cirrus (domain-graphics.ts)" },
  hostdev: refused,
  redirdev: refused,
  redirfilter: refused,
  hub: refused,
  watchdog: refused,
  rng: refused,
  panic: refused,
  shmem: refused,
  memory: refused,
  iommu: refused,
  vsock: refused,
  crypto: refused,
  pstore: refused,
};

/** Children every device may carry that are libvirt's run-time record, not configuration we apply. */
export const DROPPED_DEVICE_CHILDREN: readonly string[] = ['address', 'alias'];

// ---------------------------------------------------------------- parts of <os> and <disk>

// The machines command-line.ts runs: q35 or i440fx ('pc', which has the IDE
// controller), the latest or a versioned one.
const MACHINE = /^(q35|pc-q35-[0-9]+\.[0-9]+|pc|pc-i440fx-[0-9]+\.[0-9]+)$/;

export function checkOsChild(c: XmlElement, before: readonly XmlElement[]): XmlElement {
  const path = `os/${c.name}`;
  const noChildren = childElements(c).length === 0 ? null : `child <${childElements(c)[0]!.name}> is not supported`;
  let why: string | null;
  switch (c.name) {
    case 'type': {
      const machine = attr(c, 'machine');
      why = unexpectedAttr(c, { arch: ['x86_64'], machine: null }) ?? noChildren ??
        (textContent(c).trim() === 'hvm' ? null : `os type '${textContent(c).trim()}' is not supported (only hvm)`) ??
        (machine === null || MACHINE.test(machine) ? null : `machine '${machine}' is not supported (only q35, pc-q35-X.Y, pc or pc-i440fx-X.Y)`);
      break;
    }
    case 'boot':
      // the first disk (hd), CD-ROM drive (cdrom) or interface (network) gets the next bootindex (domain-boot.ts)
      why = unexpectedAttr(c, { dev: ['hd', 'cdrom', 'network'] }) ?? noChildren ??
        (attr(c, 'dev') === null ? "dev='hd', dev='cdrom' or dev='network' is required" : null) ??
        (before.filter((b) => b.name === 'boot').length >= 4 ? 'at most 4 <boot dev> elements' : null);
      break;
    case 'bootmenu':
      why = unexpectedAttr(c, { enable: ['yes', 'no'] }) ?? noChildren;
      break;
    default:
      throw unsupported(path, c);
  }
  if (why !== null) throw unsupported(path, c, why);
  return c;
}


// Children of <disk> the runtime applies; <address>/<alias> are dropped, an
// empty <backingStore/> (libvirt's "no backing chain") too: QEMU opens the
// image's own chain from its header.
const DISK_CHILDREN = ['driver', 'source', 'target', 'readonly', 'serial', 'boot'];

/** Attributes and children of a disk that the runtime would not apply. */
export function checkDiskParts(el: XmlElement, target: string, sourceAttr: string): void {
  const refuse = (path: string, at: XmlElement, why: string | null): void => {
    if (why !== null) throw unsupported(`devices/disk${path}`, at, `${why} (disk '${target}')`);
  };
  refuse('', element('disk', el.attrs), unexpectedAttr(el, { type: null, device: null }));
  for (const c of childElements(el)) {
    if (DISK_CHILDREN.includes(c.name) || c.name === 'address' || c.name === 'alias') continue;
    if (c.name === 'backingStore' && c.attrs.length === 0 && c.children.length === 0) continue;
    throw unsupported(`devices/disk/${c.name}`, c, `not supported (disk '${target}')`);
  }
  const driver = firstChild(el, 'driver');
  // discard='unmap' is what the runtime always sets
  if (driver !== null) refuse('/driver', driver, unexpectedAttr(driver, { name: null, type: null, discard: ['unmap'] }));
  const source = firstChild(el, 'source');
  if (source !== null) {
    // index='N' is libvirt's live numbering of the chain, not configuration
    refuse('/source', source, unexpectedAttr(source, { [sourceAttr]: null, index: null }));
    refuse('/source', source, childElements(source).map((c) => `child <${c.name}> is not supported`)[0] ?? null);
  }
  const t = firstChild(el, 'target')!;
  refuse('/target', t, unexpectedAttr(t, { dev: null, bus: null }));
  for (const name of ['readonly', 'serial']) {
    const c = firstChild(el, name);
    if (c !== null) refuse(`/${name}`, c, unexpectedAttr(c, {}) ?? (childElements(c).length > 0 ? 'child elements are not supported' : null));
  }
}

// ---------------------------------------------------------------- refusing

/** `<name a='v' ...>` (or `<name>text</name>` for a short text-only element), to name what is refused. */
export function describeElement(el: XmlElement): string {
  const attrs = el.attrs.filter(([k]) => k !== 'xmlns' && !k.startsWith('xmlns:')).map(([k, v]) => ` ${k}='${clip(v)}'`).join('');
  const text = textContent(el).trim();
  if (childElements(el).length === 0 && text !== '' && text.length <= 40) return `<${el.name}${attrs}>${text}</${el.name}>`;
  return `<${el.name}${attrs}>`;
}

/** CONFIG_UNSUPPORTED naming the element and its path (e.g. devices/interface), with the reason. */
export function unsupported(path: string, el: XmlElement, why?: string | null, accepts?: string): VirError {
  const reason = why ? `: ${why}` : '';
  const only = accepts ? `; virtback accepts ${accepts}` : '';
  return virErr('CONFIG_UNSUPPORTED', 'DOMAIN',
    `${describeElement(el)} (${path}) is not supported by virtback's QEMU runtime${reason}${only}`);
}

/**
 * The rule for a child of <domain> or <devices>, applied: throws for a refused
 * element or a 'default' one asking for something else. An element missing
 * from the table is refused too (the schema has already refused names that
 * are not libvirt's).
 */
export function checkElement(table: Readonly<Record<string, ElementRule>>, path: string, el: XmlElement, ctx: SupportContext): ElementRule {
  const rule = Object.hasOwn(table, el.name) ? table[el.name]! : refused;
  if (rule.handling === 'refused') throw unsupported(path, el);
  const why = rule.check?.(el, ctx) ?? null;
  // the reason names the accepted values already when it says "(only ...)"
  if (why !== null) throw unsupported(path, el, why, why.includes('(only') ? undefined : rule.accepts);
  return rule;
}

/** A copy of a device without its dropped children (<address>, <alias>). */
export function withoutDropped(el: XmlElement): XmlElement {
  return { ...el, children: el.children.filter((c) => typeof c === 'string' || !DROPPED_DEVICE_CHILDREN.includes(c.name)) };
}
