// <interface>: the network devices virtback's runtime runs, checked at
// define and read back as InterfaceDef for the command line.
//
// - type='user': QEMU's user networking (slirp). libvirt offers port
//   forwarding only with the passt backend (<portForward> + <backend
//   type='passt'/>); virtback has no passt and runs the same <portForward>
//   element as slirp hostfwd rules, so a definition says what reaches the
//   guest the way libvirt's does.
// - type='bridge': a tap the runtime creates (vnetN, as libvirt names them),
//   attaches to <source bridge=...> and removes when the domain stops.
// - type='ethernet': an existing tap named by <target dev=... managed='no'/>.
// The MAC is generated once, at define, with libvirt's 52:54:00 prefix, and
// kept in the stored definition.

import { randomBytes } from 'node:crypto';
import { virErr } from '../errors.js';
import { clip } from './limits.js';
import { unexpectedAttr, unsupported } from './domain-support.js';
import { attr, childElements, element, firstChild } from './node.js';
import type { XmlElement } from './node.js';

export type InterfaceType = 'user' | 'bridge' | 'ethernet';
export const NIC_MODELS = ['virtio', 'e1000', 'rtl8139'] as const;
export type NicModel = (typeof NIC_MODELS)[number];

/** One host port (or range) forwarded to the guest: hostfwd=proto:address:hostPort-:guestPort */
export interface PortForward {
  proto: 'tcp' | 'udp';
  /** host address to listen on; null = every address (passt's default) */
  address: string | null;
  hostPort: number;
  guestPort: number;
}

export interface InterfaceDef {
  type: InterfaceType;
  mac: string;
  model: NicModel;
  /** type='bridge': the bridge the tap joins */
  bridge: string | null;
  /** the tap: given for type='ethernet'; the runtime's vnetN for type='bridge' (live definition) */
  tap: string | null;
  portForwards: PortForward[];
}

/** libvirt's default for an interface without <model> on x86 q35 is rtl8139; we follow it. */
const DEFAULT_MODEL: NicModel = 'rtl8139';

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
// Linux interface names: at most 15 bytes, no '/', ':' or whitespace
const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

const REFUSED_TYPES: Record<string, string> = {
  network: "it needs libvirt's network driver, which virtback does not have: use type='bridge' with <source bridge=...> (the network's bridge) or type='user'",
  direct: 'macvtap is not supported',
  hostdev: 'PCI passthrough is not supported',
  vhostuser: 'vhost-user is not supported',
  vdpa: 'vDPA is not supported',
  server: 'socket networking is not supported',
  client: 'socket networking is not supported',
  mcast: 'socket networking is not supported',
  udp: 'socket networking is not supported',
};

/** A MAC with libvirt's prefix (the QEMU OUI 52:54:00) and three random bytes. */
export function generateMac(): string {
  return ['52', '54', '00', ...[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

function refuse(el: XmlElement, why: string | null, path = 'devices/interface'): void {
  if (why !== null) throw unsupported(path, el, why);
}

function port(el: XmlElement, name: string): number | null {
  const v = attr(el, name);
  if (v === null) return null;
  if (!/^[0-9]{1,5}$/.test(v) || Number(v) < 1 || Number(v) > 65535) {
    throw virErr('XML_ERROR', 'DOMAIN', `invalid port '${clip(v)}' in <portForward><range ${name}=...>`);
  }
  return Number(v);
}

/** <portForward proto=... address=...><range start= [end=] [to=]/></portForward> as hostfwd rules. */
function parsePortForward(pf: XmlElement): PortForward[] {
  refuse(pf, unexpectedAttr(pf, { proto: ['tcp', 'udp'], address: null }), 'devices/interface/portForward');
  const proto = attr(pf, 'proto') as 'tcp' | 'udp' | null;
  if (proto === null) throw virErr('XML_ERROR', 'DOMAIN', "missing proto in <portForward> (tcp or udp)");
  const address = attr(pf, 'address');
  if (address !== null && !/^[0-9a-fA-F.:]{2,45}$/.test(address)) {
    throw virErr('XML_ERROR', 'DOMAIN', `invalid address '${clip(address)}' in <portForward>`);
  }
  const out: PortForward[] = [];
  for (const r of childElements(pf)) {
    if (r.name !== 'range') refuse(r, 'only <range> is supported', 'devices/interface/portForward');
    refuse(r, unexpectedAttr(r, { start: null, end: null, to: null, exclude: ['no'] }), 'devices/interface/portForward/range');
    const start = port(r, 'start');
    if (start === null) throw virErr('XML_ERROR', 'DOMAIN', 'missing start in <portForward><range>');
    const end = port(r, 'end') ?? start;
    const to = port(r, 'to') ?? start;
    if (end < start || to + (end - start) > 65535 || end - start >= 256) {
      throw virErr('XML_ERROR', 'DOMAIN', `invalid port range ${start}-${end} (to ${to}) in <portForward>`);
    }
    for (let p = start; p <= end; p++) out.push({ proto, address, hostPort: p, guestPort: to + (p - start) });
  }
  if (out.length === 0) throw virErr('XML_ERROR', 'DOMAIN', '<portForward> needs at least one <range>');
  return out;
}

function interfaceType(el: XmlElement): InterfaceType {
  const type = attr(el, 'type') ?? '';
  if (type === 'user' || type === 'bridge' || type === 'ethernet') return type;
  throw unsupported('devices/interface', element('interface', el.attrs),
    REFUSED_TYPES[type] ?? `type='${clip(type)}' is not supported`, "type='user', 'bridge' or 'ethernet'");
}

const CHILDREN: Record<InterfaceType, readonly string[]> = {
  user: ['mac', 'model', 'portForward'],
  bridge: ['mac', 'model', 'source', 'target'],
  ethernet: ['mac', 'model', 'target'],
};

/** Read a checked <interface> (its <mac> present). */
export function interfaceDef(el: XmlElement): InterfaceDef {
  const type = interfaceType(el);
  refuse(element('interface', el.attrs), unexpectedAttr(el, { type: null }));
  const bad = childElements(el).find((c) => !CHILDREN[type].includes(c.name));
  if (bad !== undefined) refuse(bad, `<${bad.name}> is not supported for type='${type}'`, `devices/interface/${bad.name}`);

  const macEl = firstChild(el, 'mac');
  const mac = macEl === null ? null : (attr(macEl, 'address') ?? '').toLowerCase();
  if (macEl !== null) refuse(macEl, unexpectedAttr(macEl, { address: null }), 'devices/interface/mac');
  if (mac === null || !MAC_RE.test(mac)) throw virErr('XML_ERROR', 'DOMAIN', `unable to parse mac address '${clip(mac ?? '')}'`);
  if (parseInt(mac.slice(0, 2), 16) & 1) throw virErr('XML_ERROR', 'DOMAIN', `expected unicast mac address, found multicast '${mac}'`);

  const modelEl = firstChild(el, 'model');
  if (modelEl !== null) refuse(modelEl, unexpectedAttr(modelEl, { type: NIC_MODELS }), 'devices/interface/model');
  const model = (modelEl === null ? null : attr(modelEl, 'type')) as NicModel | null;

  let bridge: string | null = null;
  let tap: string | null = null;
  const source = firstChild(el, 'source');
  if (type === 'bridge') {
    if (source !== null) refuse(source, unexpectedAttr(source, { bridge: null }), 'devices/interface/source');
    bridge = source === null ? null : attr(source, 'bridge');
    if (bridge === null || !IFNAME_RE.test(bridge)) {
      throw virErr('XML_ERROR', 'DOMAIN', `interface of type 'bridge' needs <source bridge=.../> naming a bridge (got '${clip(bridge ?? '')}')`);
    }
  }
  const target = firstChild(el, 'target');
  if (target !== null) {
    refuse(target, unexpectedAttr(target, { dev: null, managed: type === 'ethernet' ? ['no'] : [] }), 'devices/interface/target');
    tap = attr(target, 'dev');
    if (tap !== null && !IFNAME_RE.test(tap)) throw virErr('XML_ERROR', 'DOMAIN', `invalid interface name '${clip(tap)}' in <target dev=...>`);
  }
  if (type === 'ethernet' && tap === null) {
    throw unsupported('devices/interface', element('interface', el.attrs),
      "type='ethernet' needs an existing tap: <target dev='TAP' managed='no'/> (virtback does not create or script taps)");
  }
  const portForwards = type === 'user' ? childElements(el, 'portForward').flatMap(parsePortForward) : [];
  return { type, mac, model: model ?? DEFAULT_MODEL, bridge, tap, portForwards };
}

/**
 * Check every <interface> of `devices` and give those without one a <mac>
 * and the default <model> (libvirt writes both into the definition at
 * define); MACs must be unique within the domain.
 */
export function completeInterfaces(devices: XmlElement[], newMac: () => string = generateMac): void {
  const seen = new Set<string>();
  for (const el of devices) {
    if (el.name !== 'interface') continue;
    interfaceType(el);
    if (firstChild(el, 'mac') === null) el.children.unshift(element('mac', [['address', newMac()]]));
    if (firstChild(el, 'model') === null) el.children.push(element('model', [['type', DEFAULT_MODEL]]));
    const def = interfaceDef(el);
    if (seen.has(def.mac)) throw virErr('XML_ERROR', 'DOMAIN', `mac address '${def.mac}' is used by more than one interface`);
    seen.add(def.mac);
  }
}

/** The interfaces among `devices`, in order (the N of net<N>/hostnet<N>). */
export function interfacesOf(devices: readonly XmlElement[]): InterfaceDef[] {
  return devices.filter((e) => e.name === 'interface').map(interfaceDef);
}
