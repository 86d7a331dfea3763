// NBD client for pull-mode reading: the handshake (handshake.ts: structured
// replies, metadata contexts, NBD_OPT_GO), then pipelined READ and
// BLOCK_STATUS requests keyed by cookie (and WRITE / WRITE_ZEROES / FLUSH, to
// fill new images). Wire details live in codec.ts; this file is the socket edge.

import * as net from 'node:net';
import { NbdDecoder, encodeRequest, type Extent32, type NbdMessage } from './codec.js';
import { NbdError, argError, connectionError, protocolError, serverError } from './errors.js';
import { DEFAULT_BLOCK_SIZES, Handshake, type BlockSizes } from './handshake.js';
import * as P from './protocol.js';
import { checkConnectOptions, openSocket, type NbdConnectOptions } from './connect.js';
import { readReplyHandlers, type ReplyHandlers } from './read-reply.js';
import { describeTarget, type NbdTarget } from './target.js';
import { checkTlsOptions, startTls, type NbdTlsOptions } from './tls.js';

export type { BlockSizes } from './handshake.js';
export type { NbdTlsOptions } from './tls.js';

export { describeTarget, type NbdTarget } from './target.js';
export type { NbdConnectOptions } from './connect.js';

export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

interface Pending extends ReplyHandlers {
  command: number;
  offset: number;
  length: number;
  /** readInto's destination: OFFSET_DATA payloads are decoded straight into it. */
  into?: Buffer;
  reject(e: NbdError): void;
}

const MAX_U32 = 0xffffffff;
/** Bytes one socket read may return (plain sockets): above what a unix or TCP socket usually holds. */
const READ_BUFFER = 256 * 1024;
/** A structured reply header and a data chunk's offset: read alone, the payload after it can land in place. */
const DATA_HEADER = 20 + 8;

export class NbdClient {
  readonly uri: string;
  readonly exportName: string;
  /** Export size in bytes. */
  size = 0;
  /** Transmission flags (NBD_FLAG_*). */
  flags = 0;
  /** Negotiated metadata contexts: name -> server-chosen id. */
  readonly metaContexts = new Map<string, number>();
  blockSizes: BlockSizes = DEFAULT_BLOCK_SIZES;
  structuredReplies = false;

  private socket: net.Socket;
  private readonly decoder = new NbdDecoder();
  /** The reused buffer socket reads land in, unless straight in a read's destination. */
  private readonly readBuffer = Buffer.allocUnsafe(READ_BUFFER);
  private readonly maxInFlight: number;
  private readonly pending = new Map<bigint, Pending>();
  private readonly slotWaiters: Array<() => void> = [];
  private inFlight = 0;
  /** Requests accepted by submit() and not yet settled, including those waiting for a slot. */
  private outstanding = 0;
  private nextCookie = 1n;
  private transmission = false;
  private closing = false;
  private dead: NbdError | undefined;
  private wakeHandshake: (() => void) | undefined;
  private idleWaiters: Array<() => void> = [];
  private closed!: Promise<void>;
  private readonly listeners = {
    data: (b: Buffer) => this.onData(b),
    error: (e: Error) => this.fail(this.lost(`failed (${e.message})`, e)),
    close: () => this.fail(this.closing && this.outstanding === 0 ? connectionError(`NBD connection to ${this.uri} is closed`) : this.lost('closed unexpectedly')),
  };

  private constructor(socket: net.Socket, uri: string, exportName: string, maxInFlight: number) {
    this.socket = socket;
    this.uri = uri;
    this.exportName = exportName;
    this.maxInFlight = maxInFlight;
    this.attach(socket);
  }

  /** Read replies from `socket` (the plain one, then the TLS one wrapping it). */
  private attach(socket: net.Socket): void {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    for (const [event, fn] of Object.entries(this.listeners)) socket.on(event, fn);
  }

  /** After the ACK to NBD_OPT_STARTTLS: the plain socket now carries TLS records, read by the TLS socket alone. */
  private async upgrade(tlsOpts: NbdTlsOptions, host: string | undefined): Promise<void> {
    const raw = this.socket;
    for (const [event, fn] of Object.entries(this.listeners)) raw.off(event, fn);
    // cleartext into one reused buffer, as plain sockets read (else 'data' events, a fresh buffer per TLS record)
    // (TLS records are decrypted in 16 KiB pieces anyway: no in-place reads, always the reused buffer)
    const onread = { buffer: this.readBuffer, callback: (n: number, buf: Uint8Array) => this.onRead(buf, n) };
    const { secure } = await startTls(raw, tlsOpts, host, this.uri, onread).catch((e: NbdError) => {
      raw.destroy();
      throw this.fail(e);
    });
    this.attach(secure);
  }

  private lost(how: string, cause?: unknown): NbdError {
    const n = this.pending.size;
    return connectionError(`NBD connection to ${this.uri} ${how}${n ? ` with ${n} request${n === 1 ? '' : 's'} in flight` : ''}`, cause);
  }

  /** Connect, negotiate, and enter transmission phase. */
  static async connect(target: NbdTarget, opts: NbdConnectOptions): Promise<NbdClient> {
    const uri = describeTarget(target, opts.exportName);
    if (opts.tls) checkTlsOptions(opts.tls, uri);
    const maxInFlight = checkConnectOptions(opts);
    // Plain sockets are read into one reused buffer (a fresh 64 KiB one per read was garbage
    // the collector chased at pull speed); a TLS socket, which takes the plain one over, emits 'data'.
    const holder: { client?: NbdClient } = {};
    const first = Buffer.allocUnsafe(READ_BUFFER);
    const socket = openSocket(
      target,
      opts.tls ? undefined : { buffer: () => holder.client?.nextReadBuffer() ?? first, callback: (n, buf) => holder.client!.onRead(buf, n) },
    );
    const client = (holder.client = new NbdClient(socket, uri, opts.exportName, maxInFlight));
    const timeoutMs = opts.handshakeTimeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      client.fail(connectionError(`NBD handshake with ${uri} timed out after ${timeoutMs} ms`));
      socket.destroy();
    }, timeoutMs);
    try {
      await client.waitConnected();
      if (!('socketPath' in target)) socket.setNoDelay(true);
      const tlsOpts = opts.tls;
      const upgrade = tlsOpts && (() => client.upgrade(tlsOpts, 'host' in target ? target.host : undefined));
      await client.negotiate(opts.metaContexts ?? [], upgrade);
      return client;
    } catch (e) {
      socket.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  get readOnly(): boolean {
    return (this.flags & P.NBD_FLAG_READ_ONLY) !== 0;
  }

  /** False once the connection failed or was closed. */
  get usable(): boolean {
    return this.dead === undefined && !this.closing;
  }

  /** Largest length one READ request may ask for (also a multiple of the minimum block size). */
  get maxRead(): number {
    const m = Math.min(this.blockSizes.maximum, P.DEFAULT_MAX_PAYLOAD);
    return m - (m % this.blockSizes.minimum);
  }

  // ------------------------------------------------------------ handshake

  private waitConnected(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onErr = (e: Error) => reject(connectionError(`cannot connect to NBD server ${this.uri}: ${e.message}`, e));
      // Destroyed without an error (handshake timeout): reject with the reason fail() recorded.
      const onClose = () => reject(this.dead ?? connectionError(`cannot connect to NBD server ${this.uri}: connection closed`));
      this.socket.once('connect', () => {
        this.socket.off('error', onErr);
        this.socket.off('close', onClose);
        resolve();
      });
      this.socket.once('error', onErr);
      this.socket.once('close', onClose);
    });
  }

  private async nextMessage(): Promise<NbdMessage> {
    for (;;) {
      if (this.dead) throw this.dead;
      let m: NbdMessage | undefined;
      try {
        m = this.decoder.next();
      } catch (e) {
        throw this.fail(e as NbdError);
      }
      if (m) return m;
      await new Promise<void>((resolve) => (this.wakeHandshake = resolve));
    }
  }

  /** The handshake's steps (handshake.ts), then the switch to transmission. */
  private async negotiate(contexts: string[], startTls?: () => Promise<void>): Promise<void> {
    const io = { write: (b: Buffer) => void this.socket.write(b), next: () => this.nextMessage(), fail: (e: NbdError) => this.fail(e), ...(startTls ? { startTls } : {}) };
    const agreed = await new Handshake(io, this.uri, this.exportName).run(contexts);
    this.structuredReplies = agreed.structuredReplies;
    for (const [name, id] of agreed.metaContexts) this.metaContexts.set(name, id);
    this.size = agreed.size;
    this.flags = agreed.flags;
    this.blockSizes = agreed.blockSizes;
    this.decoder.startTransmission({
      structuredReplies: this.structuredReplies,
      simpleReplyLength: (cookie) => {
        const p = this.pending.get(cookie);
        if (!p) return undefined;
        return p.command === P.NBD_CMD_READ && !this.structuredReplies ? p.length : 0;
      },
      dataSink: (cookie, offset, length) => {
        const p = this.pending.get(cookie);
        // Out-of-range chunks get no sink, so the read's own checks name the violation.
        if (!p?.into || offset < p.offset || offset + length > p.offset + p.length) return undefined;
        return p.into.subarray(offset - p.offset, offset - p.offset + length);
      },
    });
    this.transmission = true;
    this.drain();
  }

  // ------------------------------------------------------------ transmission

  /**
   * Where the next plain-socket read goes: straight into readInto's destination
   * while a data payload streams in (the kernel's copy is the only one), else
   * the reused buffer — just a data chunk's header from it when one is likely
   * next, so that the payload after it is read in place too.
   */
  private nextReadBuffer(): Buffer {
    if (!this.transmission || this.dead) return this.readBuffer;
    const direct = this.decoder.inPlaceTarget();
    if (direct && direct.length > 0) return direct;
    return this.decoder.expectsDataHeader ? this.readBuffer.subarray(0, DATA_HEADER) : this.readBuffer;
  }

  /** A read into the reused buffer: replies decoded at once, the undecoded rest copied out before the next read. */
  private onRead(buf: Uint8Array, n: number): true {
    if (this.transmission && buf.buffer !== this.readBuffer.buffer) {
      // read in place (nextReadBuffer): nothing to copy
      if (this.dead) return true;
      try {
        this.decoder.filledInPlace(n);
      } catch (e) {
        this.fail(protocolError(String(e), e));
        return true;
      }
      this.drain();
      return true;
    }
    const b = Buffer.from(buf.buffer, buf.byteOffset, n);
    // the handshake takes its messages later (awaiting them): it gets bytes of its own
    if (!this.transmission) this.onData(Buffer.from(b));
    else {
      this.onData(b);
      this.decoder.ownBuffered();
    }
    return true;
  }

  private onData(b: Buffer): void {
    if (this.dead) return;
    this.decoder.feed(b);
    if (!this.transmission) {
      const w = this.wakeHandshake;
      this.wakeHandshake = undefined;
      w?.();
      return;
    }
    this.drain();
  }

  private drain(): void {
    try {
      for (;;) {
        if (this.dead) return;
        const m = this.decoder.next();
        if (!m) return;
        this.dispatch(m);
      }
    } catch (e) {
      this.fail(e instanceof NbdError ? e : protocolError(String(e), e));
    }
  }

  private dispatch(m: NbdMessage): void {
    if (m.kind !== 'simpleReply' && m.kind !== 'chunk') throw protocolError(`${m.kind} received during transmission`);
    const p = this.pending.get(m.cookie);
    if (!p) throw protocolError(`reply for cookie ${m.cookie}, which is not in flight`);
    const last = m.kind === 'simpleReply' || m.done;
    if (last) this.finish(m.cookie);
    try {
      if (m.kind === 'simpleReply') p.onSimple(m.error, m.data);
      else p.onChunk(m);
    } catch (e) {
      // A violation in this reply: its own request fails too, even if already finished.
      p.reject(e as NbdError);
      throw e;
    }
  }

  private finish(cookie: bigint): void {
    this.pending.delete(cookie);
    this.inFlight--;
    this.slotWaiters.shift()?.();
  }

  /** Kill the connection: every pending and waiting request gets `e`. Returns the error that stuck. */
  private fail(e: NbdError): NbdError {
    if (this.dead) return this.dead;
    this.dead = e;
    const pend = [...this.pending.values()];
    this.pending.clear();
    this.inFlight = 0;
    for (const p of pend) p.reject(e);
    for (const w of this.slotWaiters.splice(0)) w();
    for (const w of this.idleWaiters.splice(0)) w();
    const h = this.wakeHandshake;
    this.wakeHandshake = undefined;
    h?.();
    if (!this.socket.destroyed) this.socket.destroy();
    return e;
  }

  private async acquireSlot(): Promise<void> {
    while (!this.dead && this.inFlight >= this.maxInFlight) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    if (this.dead) throw this.dead;
    this.inFlight++;
  }

  private async submit<T>(
    command: number,
    flags: number,
    offset: number,
    length: number,
    make: (resolve: (v: T) => void, reject: (e: NbdError) => void) => Omit<Pending, 'command' | 'offset' | 'length' | 'reject'>,
    payload?: Buffer,
    into?: Buffer,
  ): Promise<T> {
    if (this.dead) throw this.dead;
    if (this.closing) throw connectionError(`NBD connection to ${this.uri} is being closed`);
    this.outstanding++;
    try {
      await this.acquireSlot();
      const cookie = this.nextCookie++;
      return await new Promise<T>((resolve, reject) => {
        const handlers = make(resolve, reject);
        this.pending.set(cookie, { command, offset, length, reject, ...handlers, ...(into ? { into } : {}) });
        this.socket.write(encodeRequest({ flags, type: command, cookie, offset, length }));
        if (payload) this.socket.write(payload);
      });
    } finally {
      if (--this.outstanding === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private checkRange(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw argError(`${what}: offset ${offset} and length ${length} must be non-negative integers`);
    }
    if (offset + length > this.size) {
      throw argError(`${what}: range ${offset}+${length} is beyond the end of export '${this.exportName}' (${this.size} bytes)`);
    }
    const min = this.blockSizes.minimum;
    if (offset % min !== 0 || (length % min !== 0 && offset + length !== this.size)) {
      throw argError(`${what}: range ${offset}+${length} is not aligned to the export's minimum block size ${min}`);
    }
  }

  /** Read `length` bytes at `offset`; long reads are split into pipelined requests of at most `maxRead`. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange('read', offset, length);
    const out = Buffer.allocUnsafe(length);
    await this.readInto(offset, out);
    return out;
  }

  /**
   * Read `into.length` bytes at `offset` into `into` (a reused buffer): data is decoded straight
   * from the socket into it, holes zero-filled; long reads become pipelined requests of `maxRead`.
   */
  async readInto(offset: number, into: Buffer, maxRequest = this.maxRead): Promise<void> {
    this.checkRange('read', offset, into.length);
    const min = this.blockSizes.minimum;
    const max = Math.max(min, Math.min(maxRequest, this.maxRead) - (Math.min(maxRequest, this.maxRead) % min));
    if (into.length <= max) return this.readOne(offset, into);
    const parts: Promise<void>[] = [];
    for (let o = 0; o < into.length; o += max) parts.push(this.readOne(offset + o, into.subarray(o, Math.min(into.length, o + max))));
    // Settled all before rejecting: once readInto settles, no reply is still landing in `into`.
    const failed = (await Promise.allSettled(parts)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  private readOne(offset: number, into: Buffer): Promise<void> {
    const length = into.length;
    if (length === 0) return Promise.resolve();
    const what = `read of ${length} bytes at offset ${offset} from ${this.uri}`;
    return this.submit<void>(
      P.NBD_CMD_READ,
      0,
      offset,
      length,
      (resolve, reject) => readReplyHandlers({ what, offset, into, structuredReplies: this.structuredReplies, replyError: (e, m) => this.replyError(what, e, m) }, resolve, reject),
      undefined,
      into,
    );
  }

  /**
   * Extents of `context` starting at `offset`. The server may describe less than
   * `length` (callers loop from the end of the last extent); the result is clipped
   * to [offset, offset + length) and never empty on success.
   */
  async blockStatus(offset: number, length: number, context: string): Promise<Extent[]> {
    const id = this.metaContexts.get(context);
    if (id === undefined) {
      const have = [...this.metaContexts.keys()].map((c) => `'${c}'`).join(', ') || 'none';
      throw argError(`metadata context '${context}' was not negotiated on ${this.uri} (negotiated: ${have})`);
    }
    this.checkRange('block status', offset, length);
    if (length === 0) return [];
    const min = this.blockSizes.minimum;
    const ask = Math.min(length, MAX_U32 - (MAX_U32 % min));
    const all = await this.blockStatusAll(offset, ask);
    const descriptors = all.get(id);
    if (!descriptors) throw this.fail(protocolError(`block status reply for offset ${offset} has no chunk for context '${context}'`));
    const end = offset + ask;
    const out: Extent[] = [];
    let at = offset;
    for (const d of descriptors) {
      if (at >= end) throw this.fail(protocolError(`block status reply for context '${context}' has extents beyond the requested ${offset}+${ask}`));
      const n = Math.min(d.length, end - at);
      out.push({ offset: at, length: n, flags: d.flags });
      at += n;
    }
    return out;
  }

  /** One BLOCK_STATUS request; descriptors per negotiated context id, as sent. */
  private blockStatusAll(offset: number, length: number): Promise<Map<number, Extent32[]>> {
    const what = `block status of ${length} bytes at offset ${offset} from ${this.uri}`;
    const ids = new Set(this.metaContexts.values());
    return this.submit<Map<number, Extent32[]>>(P.NBD_CMD_BLOCK_STATUS, 0, offset, length, (resolve, reject) => {
      const got = new Map<number, Extent32[]>();
      let failure: NbdError | undefined;
      return {
        onSimple: (error) => {
          if (error !== 0) return reject(this.replyError(what, error, ''));
          throw protocolError(`simple reply without error to the ${what}`);
        },
        onChunk: ({ done, chunk }) => {
          if (chunk.type === 'blockStatus') {
            if (!ids.has(chunk.contextId)) throw protocolError(`block status chunk for unknown context id ${chunk.contextId}`);
            if (got.has(chunk.contextId)) throw protocolError(`two block status chunks for context id ${chunk.contextId}`);
            got.set(chunk.contextId, chunk.descriptors);
          } else if (chunk.type === 'error' || chunk.type === 'errorOffset') {
            failure ??= this.replyError(what, chunk.error, chunk.message);
          } else if (chunk.type !== 'none') {
            throw protocolError(`${chunk.type} chunk in reply to the ${what}`);
          }
          if (!done) return;
          if (failure) return reject(failure);
          resolve(got);
        },
      };
    });
  }

  // ------------------------------------------------------------ writes

  /** Largest payload one WRITE request may carry (also a multiple of the minimum block size). */
  get maxWrite(): number {
    return this.maxRead;
  }

  private checkWritable(what: string, flag?: number, flagName?: string): void {
    if (this.readOnly) throw argError(`${what}: export '${this.exportName}' at ${this.uri} is read-only`);
    if (flag !== undefined && !(this.flags & flag)) throw argError(`${what}: export '${this.exportName}' at ${this.uri} does not advertise ${flagName}`);
  }

  /** Write `data` at `offset`; long writes are split into pipelined requests of at most `maxWrite`. */
  async write(offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkWritable('write');
    this.checkRange('write', offset, data.length);
    if (opts.fua && !(this.flags & P.NBD_FLAG_SEND_FUA)) throw argError(`write: export '${this.exportName}' at ${this.uri} does not advertise NBD_FLAG_SEND_FUA`);
    const flags = opts.fua ? P.NBD_CMD_FLAG_FUA : 0;
    const max = this.maxWrite;
    const parts: Promise<void>[] = [];
    for (let o = 0; o < data.length; o += max) {
      const piece = data.subarray(o, Math.min(data.length, o + max));
      parts.push(this.noDataCommand(P.NBD_CMD_WRITE, flags, offset + o, piece.length, `write of ${piece.length} bytes at offset ${offset + o}`, piece));
    }
    await Promise.all(parts);
  }

  /**
   * Make [offset, offset + length) read as zeroes. With noHole the server must
   * allocate (NBD_CMD_FLAG_NO_HOLE); otherwise it may punch holes or set zero flags.
   */
  async writeZeroes(offset: number, length: number, opts: { noHole?: boolean; fua?: boolean } = {}): Promise<void> {
    this.checkWritable('write zeroes', P.NBD_FLAG_SEND_WRITE_ZEROES, 'NBD_FLAG_SEND_WRITE_ZEROES');
    this.checkRange('write zeroes', offset, length);
    const flags = (opts.noHole ? P.NBD_CMD_FLAG_NO_HOLE : 0) | (opts.fua ? P.NBD_CMD_FLAG_FUA : 0);
    const min = this.blockSizes.minimum;
    const max = MAX_U32 - (MAX_U32 % min);
    const parts: Promise<void>[] = [];
    for (let o = 0; o < length; o += max) {
      const n = Math.min(max, length - o);
      parts.push(this.noDataCommand(P.NBD_CMD_WRITE_ZEROES, flags, offset + o, n, `write zeroes of ${n} bytes at offset ${offset + o}`));
    }
    await Promise.all(parts);
  }

  /** Ask the server to make all completed writes persistent. */
  async flush(): Promise<void> {
    this.checkWritable('flush', P.NBD_FLAG_SEND_FLUSH, 'NBD_FLAG_SEND_FLUSH');
    await this.noDataCommand(P.NBD_CMD_FLUSH, 0, 0, 0, 'flush');
  }

  /** A command whose successful reply carries no data: simple reply or a single NONE chunk. */
  private noDataCommand(command: number, flags: number, offset: number, length: number, what: string, payload?: Buffer): Promise<void> {
    const desc = `${what} to ${this.uri}`;
    return this.submit<void>(
      command,
      flags,
      offset,
      length,
      (resolve, reject) => {
        let failure: NbdError | undefined;
        return {
          onSimple: (error) => (error !== 0 ? reject(this.replyError(desc, error, '')) : resolve()),
          onChunk: ({ done, chunk }) => {
            if (chunk.type === 'error' || chunk.type === 'errorOffset') failure ??= this.replyError(desc, chunk.error, chunk.message);
            else if (chunk.type !== 'none') throw protocolError(`${chunk.type} chunk in reply to the ${desc}`);
            if (!done) return;
            if (failure) return reject(failure);
            resolve();
          },
        };
      },
      payload,
    );
  }

  /** The error for a request the server failed; NBD_ESHUTDOWN also ends the connection. */
  private replyError(what: string, error: number, message: string): NbdError {
    const text = `NBD server failed the ${what}: ${P.nbdErrorName(error)}${message ? `: ${message}` : ''}`;
    if (error !== P.NBD_ESHUTDOWN) return serverError(text);
    this.onServerShutdown();
    return connectionError(`${text}; the server is shutting down`);
  }

  /** Spec: on NBD_ESHUTDOWN the client must initiate a soft disconnect. */
  private onServerShutdown(): void {
    if (this.closing) return;
    void this.disconnect().catch(() => undefined);
  }

  /**
   * Soft disconnect: stop taking requests, let in-flight ones finish, send
   * NBD_CMD_DISC and wait for the server to close (hard close after `timeoutMs`).
   */
  async disconnect(timeoutMs = 5000): Promise<void> {
    if (this.dead) {
      if (!this.socket.destroyed) this.socket.destroy();
      await this.closed;
      return;
    }
    if (this.closing) return this.closed; // a disconnect is already under way
    this.closing = true;
    if (this.outstanding > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    if (!this.dead) {
      this.socket.write(encodeRequest({ flags: 0, type: P.NBD_CMD_DISC, cookie: this.nextCookie++, offset: 0, length: 0 }));
      this.socket.end();
    }
    const timer = setTimeout(() => this.socket.destroy(), timeoutMs);
    await this.closed;
    clearTimeout(timer);
  }

  /** Hard disconnect now; pending requests fail. */
  destroy(): void {
    this.closing = true;
    this.fail(connectionError(`NBD connection to ${this.uri} was closed by the client`));
  }
}
