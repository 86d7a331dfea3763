// A raw libvirt RPC client for tests: frames built with our codecs and written
// to a real unix socket, replies matched by serial, asynchronous MESSAGEs
// (events, keepalive) collected in arrival order. It does only what a test
// asks: no handshake of its own, no keepalive answers.

import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import type { TestContext } from 'node:test';
import { TestDriver } from '../../src/api/test-driver.js';
import { LibvirtServer, type LibvirtServerOptions } from '../../src/libvirt/server.js';
import {
  KeepaliveProc,
  MessageStatus,
  MessageType,
  PROGRAM_VERSION,
  PacketDecoder,
  Program,
  encodePacket,
  type Header,
  type Packet,
} from '../../src/libvirt/packet.js';
import { remoteError, remoteProcedures, type ProcArgs, type ProcRet, type RemoteProcedureName, type WireError } from '../../src/libvirt/procedures.js';
import { decode, encode } from '../../src/libvirt/xdr.js';

export interface LibvirtSetup {
  driver: TestDriver;
  server: LibvirtServer;
  /** the read-write and read-only socket paths */
  rw: string;
  ro: string;
}

/** A LibvirtServer on both sockets in a scratch directory, serving `driver`; all closed after the test. */
export async function startLibvirtServer(
  t: TestContext,
  opts: LibvirtServerOptions = {},
  driver = new TestDriver({ pushDurationMs: 20 }),
): Promise<LibvirtSetup> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-lvs-'));
  const server = new LibvirtServer(driver, { hostname: 'host.example', hypervisorVersion: 7002022, ...opts });
  const rw = path.join(dir, 'libvirt-sock');
  const ro = path.join(dir, 'libvirt-sock-ro');
  await server.listenUnix(rw, { readOnly: false, mode: 0o600 });
  await server.listenUnix(ro, { readOnly: true, mode: 0o666 });
  t.after(async () => {
    await server.close();
    await driver.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { driver, server, rw, ro };
}

export class WireClient {
  private readonly decoder = new PacketDecoder();
  private readonly waiting = new Map<number, { resolve: (p: Packet) => void; reject: (e: Error) => void }>();
  /** MESSAGE packets received, in order */
  readonly messages: Packet[] = [];
  /** every packet received, in order */
  readonly received: Packet[] = [];
  private messageWaiters: Array<() => void> = [];
  private serial = 0;
  ended = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const p of this.decoder.push(chunk)) {
        this.received.push(p);
        if (p.header.type === MessageType.REPLY) {
          const w = this.waiting.get(p.header.serial);
          this.waiting.delete(p.header.serial);
          w?.resolve(p);
        } else {
          this.messages.push(p);
          for (const w of this.messageWaiters.splice(0)) w();
        }
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.ended = true;
      for (const w of this.waiting.values()) w.reject(new Error('connection closed before the reply'));
      this.waiting.clear();
      for (const w of this.messageWaiters.splice(0)) w();
    });
  }

  static async connect(path: string): Promise<WireClient> {
    const socket = net.createConnection(path);
    await once(socket, 'connect');
    return new WireClient(socket);
  }

  /** Resolves when the server has closed the connection (or after `ms`, false). */
  async closedByServer(ms = 3000): Promise<boolean> {
    if (this.ended) return true;
    const closed = once(this.socket, 'close').then(() => true);
    const timeout = new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref());
    return Promise.race([closed, timeout]);
  }

  close(): void {
    this.socket.destroy();
  }

  nextSerial(): number {
    return this.serial++;
  }

  /** Sends raw bytes; resolves the reply to `serial` if given. */
  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** The reply to `serial`, whenever it comes. */
  replyTo(serial: number): Promise<Packet> {
    return new Promise((resolve, reject) => this.waiting.set(serial, { resolve, reject }));
  }

  /** A CALL with a raw payload: the whole reply packet. */
  callRaw(header: Partial<Header> & { proc: number }, payload: Buffer = Buffer.alloc(0)): Promise<Packet> {
    const serial = header.serial ?? this.nextSerial();
    const reply = this.replyTo(serial);
    const h: Header = { prog: Program.REMOTE, vers: PROGRAM_VERSION, type: MessageType.CALL, status: MessageStatus.OK, ...header, serial };
    this.write(encodePacket(h, payload));
    return reply;
  }

  /** A REMOTE call by name: its decoded result, or a thrown WireCallError. */
  async call<N extends RemoteProcedureName>(name: N, args: ProcArgs<N>): Promise<ProcRet<N>> {
    const row = remoteProcedures[name];
    const reply = await this.callRaw({ proc: row.proc }, encode(row.args as never, args as never));
    if (reply.header.status !== MessageStatus.OK) throw new WireCallError(decode(remoteError, reply.payload));
    return decode(row.ret as never, reply.payload) as ProcRet<N>;
  }

  /** The remote_error of a failed call (the test fails when the call succeeded). */
  async error<N extends RemoteProcedureName>(name: N, args: ProcArgs<N>): Promise<WireError> {
    try {
      await this.call(name, args);
    } catch (e) {
      if (e instanceof WireCallError) return e.wire;
      throw e;
    }
    throw new Error(`${name} succeeded where an error was expected`);
  }

  /** virsh's prologue: AUTH_LIST, keepalive feature, CONNECT_OPEN, the two callback features. */
  async handshake(opts: { readOnly?: boolean; name?: string | null } = {}): Promise<void> {
    await this.call('authList', undefined);
    await this.call('connectSupportsFeature', { feature: 10 });
    await this.call('connectOpen', { name: opts.name === undefined ? 'qemu:///system' : opts.name, flags: opts.readOnly ? 1 : 0 });
    await this.call('connectSupportsFeature', { feature: 14 });
    await this.call('connectSupportsFeature', { feature: 15 });
  }

  ping(): void {
    this.write(encodePacket({ prog: Program.KEEPALIVE, vers: 1, proc: KeepaliveProc.PING, type: MessageType.MESSAGE, serial: 0, status: 0 }, Buffer.alloc(0)));
  }

  /** Waits until `pred` holds for the MESSAGEs received, or `ms` passes. */
  async waitMessages(pred: (m: Packet[]) => boolean, ms = 3000): Promise<Packet[]> {
    const deadline = Date.now() + ms;
    while (!pred(this.messages) && !this.ended && Date.now() < deadline) {
      await new Promise<void>((r) => {
        this.messageWaiters.push(r);
        setTimeout(r, Math.max(1, deadline - Date.now())).unref();
      });
    }
    return this.messages;
  }
}

export class WireCallError extends Error {
  constructor(readonly wire: WireError) {
    super(`libvirt error ${wire.code}/${wire.domain}: ${wire.message ?? ''}`);
  }
}
