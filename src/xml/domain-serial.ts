// <serial> and <console>: the guest's ISA serial ports, checked at define
// and read back as SerialDef for the command line.
//
// libvirt pairs a <console> with target type 'serial' with the serial port
// of the same number: a console alone gives the domain that serial port, and
// serial port 0 always has its console. Both are written into the stored
// definition, as libvirt does, so dumpxml shows what runs.
// Backends: type='pty' (the live definition names the pty, <source
// path='/dev/pts/N'/> and tty=, as libvirt's does) and type='file'; either
// may carry <log file=... append='on|off'/>.

import { virErr } from '../errors.js';
import { checkPath, clip } from './limits.js';
import { unexpectedAttr, unsupported } from './domain-support.js';
import { attr, childElements, cloneElement, element, firstChild } from './node.js';
import type { XmlElement } from './node.js';

export interface SerialDef {
  type: 'pty' | 'file';
  /** ISA port 0..3 (ttyS<N> in the guest) */
  port: number;
  /** type='file': the file; type='pty': the pty, in a live definition only */
  path: string | null;
  log: { file: string; append: boolean } | null;
}

const MAX_PORTS = 4;
const PATH_CHILDREN = ['source', 'target', 'log'];

function refuse(path: string, el: XmlElement, why: string | null): void {
  if (why !== null) throw unsupported(path, el, why);
}

function absolute(what: string, p: string | null): string | null {
  if (p === null) return null;
  checkPath('DOMAIN', what, p);
  if (!p.startsWith('/')) throw virErr('XML_ERROR', 'DOMAIN', `${what} '${clip(p)}' must be an absolute path`);
  return p;
}

function portOf(el: XmlElement, target: XmlElement | null, fallback: number): number {
  const p = target === null ? null : attr(target, 'port');
  if (p === null) return fallback;
  if (!/^[0-9]$/.test(p) || Number(p) >= MAX_PORTS) {
    throw unsupported(`devices/${el.name}/target`, target!, `port='${clip(p)}' is not supported (ISA serial ports 0..${MAX_PORTS - 1})`);
  }
  return Number(p);
}

/** Backend and log of a <serial> or <console> (both carry the same ones). */
function backend(el: XmlElement): Pick<SerialDef, 'type' | 'path' | 'log'> {
  const path = `devices/${el.name}`;
  const type = attr(el, 'type');
  if (type !== 'pty' && type !== 'file') {
    throw unsupported(path, element(el.name, el.attrs), `type='${clip(type ?? '')}' is not supported`, "type='pty' or type='file'");
  }
  refuse(path, element(el.name, el.attrs), unexpectedAttr(el, { type: null, tty: type === 'pty' ? null : [] }));
  const bad = childElements(el).find((c) => !PATH_CHILDREN.includes(c.name));
  if (bad !== undefined) refuse(`${path}/${bad.name}`, bad, 'not supported');
  const source = firstChild(el, 'source');
  if (source !== null) refuse(`${path}/source`, source, unexpectedAttr(source, { path: null, append: type === 'file' ? ['on', 'off'] : [] }));
  const sourcePath = absolute(`${el.name} source path`, source === null ? null : attr(source, 'path'));
  if (type === 'file' && sourcePath === null) throw virErr('XML_ERROR', 'DOMAIN', `${el.name} of type 'file' needs <source path=.../>`);
  const logEl = firstChild(el, 'log');
  let log: SerialDef['log'] = null;
  if (logEl !== null) {
    refuse(`${path}/log`, logEl, unexpectedAttr(logEl, { file: null, append: ['on', 'off'] }));
    const file = absolute(`${el.name} log file`, attr(logEl, 'file'));
    if (file === null) throw virErr('XML_ERROR', 'DOMAIN', `missing file in <${el.name}><log>`);
    log = { file, append: attr(logEl, 'append') === 'on' };
  }
  return { type, path: sourcePath, log };
}

/** A checked <serial>. */
export function serialDef(el: XmlElement, index: number): SerialDef {
  const target = firstChild(el, 'target');
  if (target !== null) {
    refuse('devices/serial/target', target, unexpectedAttr(target, { type: ['isa-serial'], port: null }));
    const model = childElements(target).find((c) => c.name !== 'model' || unexpectedAttr(c, { name: ['isa-serial'] }) !== null);
    if (model !== undefined) refuse('devices/serial/target', model, "only <model name='isa-serial'/> is supported");
  }
  return { ...backend(el), port: portOf(el, target, index) };
}

/** The serial port a <console> stands for (target type 'serial', the default). */
function consolePort(el: XmlElement): number {
  const target = firstChild(el, 'target');
  if (target !== null) {
    refuse('devices/console/target', target, unexpectedAttr(target, { type: ['serial'], port: null }));
    if (childElements(target).length > 0) refuse('devices/console/target', target, 'child elements are not supported');
  }
  return portOf(el, target, 0);
}

function serialTarget(port: number): XmlElement {
  return element('target', [['type', 'isa-serial'], ['port', String(port)]], [element('model', [['name', 'isa-serial']])]);
}

function consoleFor(serial: XmlElement, port: number): XmlElement {
  const copy = cloneElement(serial);
  const children = copy.children.filter((c) => typeof c !== 'string' && c.name !== 'target');
  return element('console', copy.attrs, [...children, element('target', [['type', 'serial'], ['port', String(port)]])]);
}

/**
 * Check the <serial> and <console> elements of `devices` and pair them as
 * libvirt does (in place): a console without its serial port adds that port,
 * serial port 0 gets its console. Ports must be unique.
 */
export function completeSerials(devices: XmlElement[]): void {
  const serials = devices.filter((e) => e.name === 'serial');
  const ports = new Map<number, XmlElement>();
  serials.forEach((s, i) => {
    const def = serialDef(s, i);
    if (ports.has(def.port)) throw virErr('XML_ERROR', 'DOMAIN', `serial port ${def.port} is defined twice`);
    ports.set(def.port, s);
    if (firstChild(s, 'target') === null) s.children.push(serialTarget(def.port));
  });
  const consoles = devices.filter((e) => e.name === 'console');
  if (consoles.length > 1) throw unsupported('devices/console', consoles[1]!, 'only one console is supported');
  const console = consoles[0];
  if (console !== undefined) {
    const port = consolePort(console);
    const b = backend(console);
    const serial = ports.get(port);
    if (serial === undefined) {
      const s = element('serial', console.attrs, [...childElements(console).filter((c) => c.name !== 'target').map(cloneElement), serialTarget(port)]);
      devices.splice(devices.indexOf(console), 0, s);
      ports.set(port, s);
    } else if (serialDef(serial, 0).type !== b.type) {
      throw virErr('CONFIG_UNSUPPORTED', 'DOMAIN', `console type '${b.type}' differs from serial port ${port}'s type: the console is that serial port`);
    }
    if (firstChild(console, 'target') === null) console.children.push(element('target', [['type', 'serial'], ['port', String(port)]]));
  } else if (ports.has(0)) {
    devices.push(consoleFor(ports.get(0)!, 0));
  }
}

/** The serial ports among `devices`, in document order. */
export function serialsOf(devices: readonly XmlElement[]): SerialDef[] {
  return devices.filter((e) => e.name === 'serial').map((e, i) => serialDef(e, i));
}

/** The live form of a pty serial or console: <source path='/dev/pts/N'/> and tty=, as libvirt shows them. */
export function withPty(el: XmlElement, pty: string): XmlElement {
  const children = el.children.filter((c) => typeof c === 'string' || c.name !== 'source');
  return element(el.name, [...el.attrs.filter(([k]) => k !== 'tty'), ['tty', pty]], [element('source', [['path', pty]]), ...children]);
}

/** The port number a <serial> or <console> element stands for. */
export function elementPort(el: XmlElement, index: number): number {
  return el.name === 'console' ? consolePort(el) : serialDef(el, index).port;
}
