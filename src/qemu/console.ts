// The consoles of running domains: what QEMU chose at start (a serial port's
// pty, the VNC port) written into the live definition as libvirt shows it,
// and console sessions on a pty (virDomainOpenConsole): one per domain, a
// second one refused unless FORCE, which ends the first (libvirt's
// virChrdevOpen).

import { constants as fsc, open } from 'node:fs';
import { promisify } from 'node:util';
import tty from 'node:tty';
import { ConsoleFlags, type ConsoleStream } from '../api/console-stream.js';
import { virErr, type VirError } from '../errors.js';
import type { Logger } from '../log.js';
import type { DomainDef } from '../xml/domain.js';
import { liveGraphics, vncOf } from '../xml/domain-graphics.js';
import { elementPort, serialsOf, withPty } from '../xml/domain-serial.js';
import type { XmlElement } from '../xml/tree.js';
import { serialChardevId } from './console-args.js';
import type { QmpClient } from './qmp/client.js';

interface ChardevInfo {
  label: string;
  filename: string;
}

interface VncInfo {
  enabled: boolean;
  host?: string;
  service?: string;
}

/** Input a console may queue for a guest that does not read (a 0666 socket's client is on the other end). */
const MAX_PENDING_INPUT = 1 << 20;

/**
 * The live definition once QEMU runs: pty serial ports and their console
 * name their /dev/pts/N, the VNC display its port. `def` itself when
 * nothing changes.
 */
export async function withLiveConsoles(qmp: QmpClient, def: DomainDef): Promise<DomainDef> {
  const devices = def.devicesExtra ?? [];
  const ptys = serialsOf(devices).filter((s) => s.type === 'pty');
  const vnc = vncOf(devices);
  if (ptys.length === 0 && vnc === null) return def;
  const paths = new Map<number, string>();
  if (ptys.length > 0) {
    const chardevs = (await qmp.executeRaw('query-chardev')) as ChardevInfo[];
    for (const s of ptys) {
      const c = chardevs.find((x) => x.label === serialChardevId(s.port));
      if (c?.filename.startsWith('pty:')) paths.set(s.port, c.filename.slice(4));
    }
  }
  let port: number | null = null;
  if (vnc !== null) {
    const info = (await qmp.executeRaw('query-vnc')) as VncInfo;
    port = info.enabled && info.service !== undefined ? Number(info.service) : null;
  }
  let serialIndex = 0;
  const live = devices.map((el): XmlElement => {
    if (el.name === 'graphics' && port !== null && vnc !== null) return liveGraphics(el, port, vnc.listen);
    if (el.name !== 'serial' && el.name !== 'console') return el;
    const pty = paths.get(elementPort(el, el.name === 'serial' ? serialIndex++ : 0));
    return pty === undefined ? el : withPty(el, pty);
  });
  return { ...def, devicesExtra: live };
}

/** The serial port `devName` names: null or 'console0' = the console's (else the first serial port), 'serialN' = N. */
function namedPort(devices: readonly XmlElement[], devName: string | null): number | null {
  const console = devices.find((e) => e.name === 'console');
  if (devName === null || devName === 'console0') {
    return console !== undefined ? elementPort(console, 0) : (devName === null ? (serialsOf(devices)[0]?.port ?? null) : null);
  }
  const m = /^serial([0-9])$/.exec(devName);
  return m === null ? null : Number(m[1]);
}

/** The pty of console `devName` in a live definition. */
function consolePty(def: DomainDef, devName: string | null): string {
  const devices = def.devicesExtra ?? [];
  const port = namedPort(devices, devName);
  const serial = serialsOf(devices).find((s) => s.port === port);
  if (serial === undefined) throw virErr('OPERATION_FAILED', 'QEMU', `cannot find character device ${devName ?? '<null>'}`);
  if (serial.type !== 'pty' || serial.path === null) {
    throw virErr('OPERATION_FAILED', 'QEMU', `character device ${devName ?? `serial${serial.port}`} is not using a PTY`);
  }
  return serial.path;
}

class PtyConsole implements ConsoleStream {
  private readonly dataListeners: ((d: Uint8Array) => void)[] = [];
  private readonly endListeners: ((e: VirError | null) => void)[] = [];
  private ended = false;

  constructor(private readonly stream: tty.ReadStream, private readonly onClosed: () => void) {
    stream.on('data', (d: Buffer) => {
      for (const l of this.dataListeners) l(d);
    });
    stream.on('end', () => this.finish(null));
    // EIO: QEMU closed the pty (the domain stopped)
    stream.on('error', (e: NodeJS.ErrnoException) => this.finish(e.code === 'EIO' ? null : virErr('SYSTEM_ERROR', 'QEMU', `console: ${e.message}`)));
    stream.on('close', () => this.finish(null));
  }

  onData(l: (d: Uint8Array) => void): void {
    this.dataListeners.push(l);
  }
  onEnd(l: (e: VirError | null) => void): void {
    if (this.ended) l(null);
    else this.endListeners.push(l);
  }
  write(data: Uint8Array): void {
    if (this.ended) return;
    if (this.stream.writableLength > MAX_PENDING_INPUT) {
      this.finish(virErr('OPERATION_FAILED', 'QEMU', 'console input is not being read by the guest: session closed'));
      return;
    }
    this.stream.write(data);
  }
  pause(): void {
    this.stream.pause();
  }
  resume(): void {
    this.stream.resume();
  }
  close(): void {
    this.finish(null);
  }

  /** End the session: another one forced its way in. */
  takenOver(): void {
    this.finish(virErr('OPERATION_FAILED', 'QEMU', 'console session taken over by another client (force)'));
  }

  private finish(err: VirError | null): void {
    if (this.ended) return;
    this.ended = true;
    this.stream.destroy();
    this.onClosed();
    for (const l of this.endListeners.splice(0)) l(err);
  }
}

/** The console sessions of one driver, one per domain. */
export class ConsoleSessions {
  private readonly sessions = new Map<string, PtyConsole>();

  constructor(private readonly log: Logger) {}

  async open(uuid: string, liveDef: DomainDef | null, devName: string | null, flags: number): Promise<ConsoleStream> {
    if (liveDef === null) throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not running');
    const pty = consolePty(liveDef, devName);
    const current = this.sessions.get(uuid);
    if (current !== undefined) {
      if (!(flags & ConsoleFlags.FORCE)) throw virErr('OPERATION_FAILED', 'QEMU', 'Active console session exists for this domain');
      current.takenOver();
    }
    const fd = await promisify(open)(pty, fsc.O_RDWR | fsc.O_NOCTTY).catch((e: Error) => {
      throw virErr('OPERATION_FAILED', 'QEMU', `cannot open console ${pty}: ${e.message}`, e);
    });
    const session: PtyConsole = new PtyConsole(new tty.ReadStream(fd), () => {
      if (this.sessions.get(uuid) === session) this.sessions.delete(uuid);
      this.log.info({ uuid, pty }, 'console closed');
    });
    this.sessions.set(uuid, session);
    this.log.info({ uuid, pty }, 'console opened');
    return session;
  }

  /** The domain stopped: its session ends. */
  stopped(uuid: string): void {
    this.sessions.get(uuid)?.close();
  }
}
