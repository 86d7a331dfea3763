// One connection to a libvirt daemon (libvirtd, or virtbackd's libvirt socket)
// as a libvirt client speaks it: the handshake (auth list, keepalive probe,
// CONNECT_OPEN, event-callback probe), calls matched to replies by serial
// (replies may come in any order), keepalive (every PING answered with PONG;
// we PING an idle peer and give up on a silent one), event MESSAGEs handed to
// one listener, and every pending call failed when the stream ends or breaks.

import type { Duplex } from 'node:stream';
import { VirError, toVirError, virErr } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { PendingCalls } from '../util/pending-calls.js';
import {
  KeepaliveProc,
  MAX_MESSAGE_BYTES,
  MessageStatus,
  MessageType,
  PROGRAM_VERSION,
  PacketDecoder,
  Program,
  encodePacket,
  type Packet,
} from './packet.js';
import {
  AuthType,
  CONNECT_RO,
  DriverFeature,
  remoteError,
  remoteProcedures,
  type ProcArgs,
  type ProcRet,
  type Procedure,
  type RemoteProcedureName,
} from './procedures.js';
import { fromWireError } from './semantics.js';
import { decode, encode } from './xdr.js';

export interface LibvirtClientOptions {
  /** e.g. the socket path or "ssh host", for error messages */
  endpoint?: string;
  log?: Logger;
  /** largest message accepted from the peer (default libvirt's 32 MiB) */
  maxMessage?: number;
  /** PING the peer after this much silence (default 5 s, virsh's); 0: never */
  keepaliveIntervalMs?: number;
  /** unanswered PINGs before the peer is declared dead (default 5, libvirt's) */
  keepaliveCount?: number;
}

/** An asynchronous MESSAGE of the REMOTE program: an event, still XDR. */
export type MessageListener = (proc: number, payload: Buffer) => void;

interface CallContext {
  prog: number;
  row: Procedure;
}

export class LibvirtClient {
  private readonly decoder: PacketDecoder;
  private readonly pending = new PendingCalls<number, unknown, CallContext>();
  private readonly log: Logger;
  private readonly endpoint: string;
  private nextSerial = 0;
  private closed = false;
  private closeError: VirError | null = null;
  private messageListener: MessageListener | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  /** the peer granted PROGRAM_KEEPALIVE: it answers our PINGs */
  private peerKeepalive = false;
  private lastHeard = Date.now();
  private pingsUnanswered = 0;
  private readonly endWaiters: (() => void)[] = [];

  constructor(
    private readonly stream: Duplex,
    private readonly opts: LibvirtClientOptions = {},
  ) {
    this.endpoint = opts.endpoint ?? 'libvirt';
    this.log = opts.log ?? silentLogger;
    this.decoder = new PacketDecoder(opts.maxMessage ?? MAX_MESSAGE_BYTES);
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('error', (e: Error) => this.fail(e instanceof VirError ? e : virErr('RPC', 'RPC', `connection to ${this.endpoint} failed: ${e.message}`)));
    stream.on('end', () => this.fail(virErr('RPC', 'RPC', `End of file while reading data from ${this.endpoint}: the connection was closed`)));
    stream.on('close', () => {
      this.fail(virErr('RPC', 'RPC', `connection to ${this.endpoint} closed`));
      for (const w of this.endWaiters.splice(0)) w();
    });
  }

  /**
   * libvirt's client handshake: AUTH_LIST (only "none" is spoken: a unix
   * socket's file mode is the access control), the keepalive probe,
   * CONNECT_OPEN with `name` and RO, then the event-callback probe (events
   * are only taken in the callback form).
   */
  async open(name: string, readOnly: boolean): Promise<void> {
    const { types } = await this.call('authList', undefined);
    if (!types.includes(AuthType.NONE)) {
      throw virErr('NO_SUPPORT', 'RPC', `${this.endpoint} asks for authentication (${types.join(', ')}), which this client does not offer`);
    }
    const keepalive = await this.call('connectSupportsFeature', { feature: DriverFeature.PROGRAM_KEEPALIVE });
    await this.call('connectOpen', { name, flags: readOnly ? CONNECT_RO : 0 });
    const callbacks = await this.call('connectSupportsFeature', { feature: DriverFeature.REMOTE_EVENT_CALLBACK });
    if (callbacks.supported !== 1) {
      throw virErr('NO_SUPPORT', 'RPC', `${this.endpoint} does not offer event callbacks (libvirt older than 1.3)`);
    }
    this.peerKeepalive = keepalive.supported === 1;
    this.startKeepalive();
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Where MESSAGEs of the REMOTE program (events) go. */
  onMessage(listener: MessageListener | null): void {
    this.messageListener = listener;
  }

  /** Calls one REMOTE procedure; arguments and result are typed and checked by the shared table. */
  call<N extends RemoteProcedureName>(name: N, args: ProcArgs<N>): Promise<ProcRet<N>> {
    return this.callRow(Program.REMOTE, remoteProcedures[name] as Procedure, args) as Promise<ProcRet<N>>;
  }

  /** Calls a procedure of any program (the QEMU program's monitor command, procedures not in the shared table). */
  callRow<A, R>(prog: number, row: Procedure<A, R>, args: A): Promise<R> {
    if (this.closed) return Promise.reject(this.closeError ?? virErr('NO_CONNECT', 'RPC', `not connected to ${this.endpoint}`));
    let payload: Buffer;
    let message: Buffer;
    const serial = this.nextSerial;
    try {
      payload = encode(row.args, args);
      message = encodePacket(
        { prog, vers: PROGRAM_VERSION, proc: row.proc, type: MessageType.CALL, serial, status: MessageStatus.OK },
        payload,
      );
    } catch (e) {
      return Promise.reject(toVirError(e, 'RPC'));
    }
    this.nextSerial = (this.nextSerial + 1) >>> 0;
    const reply = this.pending.add(serial, { prog, row: row as Procedure });
    this.stream.write(message);
    return reply as Promise<R>;
  }

  private onData(chunk: Buffer): void {
    this.lastHeard = Date.now();
    this.pingsUnanswered = 0;
    let packets: Packet[];
    try {
      packets = this.decoder.push(chunk);
    } catch (e) {
      // the framing is lost (an impossible length): nothing after it can be read
      this.fail(virErr('RPC', 'RPC', `malformed message from ${this.endpoint}: ${(e as Error).message}`));
      this.stream.destroy();
      return;
    }
    for (const p of packets) this.onPacket(p);
  }

  private onPacket({ header, payload }: Packet): void {
    if (header.prog === Program.KEEPALIVE) {
      if (header.proc === KeepaliveProc.PING) this.send(Program.KEEPALIVE, KeepaliveProc.PONG);
      return;
    }
    if (header.type === MessageType.MESSAGE) {
      if (header.prog !== Program.REMOTE) return;
      try {
        this.messageListener?.(header.proc, payload);
      } catch (e) {
        this.log.warn({ proc: header.proc, err: e }, 'libvirt event not understood');
      }
      return;
    }
    if (header.type !== MessageType.REPLY) {
      this.log.debug({ type: header.type, proc: header.proc }, 'unexpected message type from libvirt ignored');
      return;
    }
    const call = this.pending.take(header.serial);
    if (!call) {
      // not a call of ours (or one already failed): nothing to settle
      this.log.debug({ serial: header.serial, proc: header.proc }, 'libvirt reply to no pending call ignored');
      return;
    }
    const { prog, row } = call.context;
    if (header.prog !== prog || header.proc !== row.proc) {
      call.reject(virErr('RPC', 'RPC', `reply with serial ${header.serial} is for program ${header.prog} procedure ${header.proc}, not ${row.api}`));
      return;
    }
    try {
      if (header.status === MessageStatus.ERROR) call.reject(fromWireError(decode(remoteError, payload, 'remote_error')));
      else if (header.status === MessageStatus.OK) call.resolve(decode(row.ret, payload, `${row.api} reply`));
      else call.reject(virErr('RPC', 'RPC', `unexpected status ${header.status} in the reply to ${row.api}`));
    } catch (e) {
      call.reject(virErr('RPC', 'RPC', `Unable to decode message payload of the reply to ${row.api}: ${(e as Error).message}`));
    }
  }

  /** A payload-less MESSAGE (keepalive PING/PONG: serial 0, status OK). */
  private send(prog: number, proc: number): void {
    if (this.closed) return;
    const header = { prog, vers: PROGRAM_VERSION, proc, type: MessageType.MESSAGE, serial: 0, status: MessageStatus.OK };
    this.stream.write(encodePacket(header, Buffer.alloc(0)));
  }

  private startKeepalive(): void {
    const interval = this.opts.keepaliveIntervalMs ?? 5000;
    if (!this.peerKeepalive || interval <= 0) return;
    const count = this.opts.keepaliveCount ?? 5;
    this.keepaliveTimer = setInterval(() => {
      if (Date.now() - this.lastHeard < interval) return;
      if (this.pingsUnanswered >= count) {
        this.fail(virErr('RPC', 'RPC', `connection to ${this.endpoint} lost: no keepalive response in ${((count + 1) * interval) / 1000} s`));
        this.stream.destroy();
        return;
      }
      this.pingsUnanswered++;
      this.send(Program.KEEPALIVE, KeepaliveProc.PING);
    }, interval);
    // an idle connection must not keep the process alive
    this.keepaliveTimer.unref();
  }

  private fail(err: VirError): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.pending.rejectAll(err);
  }

  /** CONNECT_CLOSE (best effort), then the stream is ended; pending calls fail. */
  async close(): Promise<void> {
    if (!this.closed) {
      await Promise.race([
        this.call('connectClose', undefined).catch(() => {}),
        new Promise((r) => setTimeout(r, 2000).unref()),
      ]);
    }
    this.fail(virErr('NO_CONNECT', 'RPC', `connection to ${this.endpoint} was closed by the client`));
    if (this.stream.destroyed) return;
    await new Promise<void>((resolve) => {
      this.endWaiters.push(resolve);
      this.stream.end();
      setTimeout(() => this.stream.destroy(), 1000).unref();
    });
  }
}
