// The NBD server's socket edge: read-only exports of BlockSources over a unix
// socket (0600) or TCP (loopback unless told otherwise). The handshake is
// decided by server-options.ts and the bytes framed by server-codec.ts; here a
// connection pumps bytes, runs requests against the source and enforces the
// per-connection bounds. A client that breaks the protocol loses its own
// connection and nothing else.

import * as fs from 'node:fs';
import * as net from 'node:net';
import { virErr } from '../errors.js';
import { errField, silentLogger, type Logger } from '../log.js';
import type { BlockExtent, BlockSource } from './block-source.js';
import * as P from './protocol.js';
import {
  ServerDecoder,
  encodeBlockStatus,
  encodeDoneChunk,
  encodeErrorChunk,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeSimpleReply,
  type ClientMessage,
} from './server-codec.js';
import { BASE_ALLOCATION_ID, HANDSHAKE_FLAGS, OptionNegotiation, type Agreed, type ExportInfo } from './server-options.js';

export interface ServedExport {
  source: BlockSource;
  /** NBD_INFO_BLOCK_SIZE's preferred size; 4096 unless the source has a natural unit (a repository's chunk). */
  preferredBlockSize?: number;
}

export interface NbdServerLimits {
  /** Connections served at once; more are closed at accept. */
  maxConnections?: number;
  /** Requests of one connection being answered at once; its socket is paused beyond that. */
  maxInFlight?: number;
  /** A connection must finish the handshake within this. */
  handshakeTimeoutMs?: number;
  /** A connection silent this long in transmission is closed; 0 = never (a VM's backing file may sit idle). */
  idleTimeoutMs?: number;
  /** Largest option payload. */
  maxOption?: number;
  /** Largest READ (and skipped WRITE payload); NBD_INFO_BLOCK_SIZE's maximum. */
  maxPayload?: number;
  /** Largest span one BLOCK_STATUS reply describes (the client asks again for the rest). */
  maxStatusSpan?: number;
}

export type NbdListen = { socket: string; mode?: number } | { host?: string; port: number };

const DEFAULTS: Required<NbdServerLimits> = {
  maxConnections: 32,
  maxInFlight: 16,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 0,
  maxOption: 16 * 1024,
  maxPayload: P.DEFAULT_MAX_PAYLOAD,
  maxStatusSpan: 1 << 30,
};

/** NBD's errno for a failure of the source. */
const EIO = P.NBD_EIO;

export class NbdServer {
  private readonly limits: Required<NbdServerLimits>;
  private readonly infos: Map<string, ExportInfo>;
  private readonly connections = new Set<Connection>();
  private listener: net.Server | undefined;
  private socketPath: string | undefined;

  constructor(
    private readonly exports: ReadonlyMap<string, ServedExport>,
    limits: NbdServerLimits = {},
    private readonly log: Logger = silentLogger,
  ) {
    this.limits = { ...DEFAULTS, ...limits };
    this.infos = new Map([...exports].map(([name, e]) => [name, { size: e.source.size, preferredBlockSize: e.preferredBlockSize ?? 4096 }]));
  }

  /** Starts listening; resolves with the address (a socket path, or host:port with the port chosen when 0 was asked). */
  async listen(at: NbdListen): Promise<{ socket: string } | { host: string; port: number }> {
    const server = net.createServer((s) => this.accept(s));
    if ('socket' in at) {
      removeStaleSocket(at.socket);
      // Created under a tight umask so that it is never reachable with looser permissions.
      const oldMask = process.umask(0o177);
      try {
        await listenOn(server, (cb) => server.listen(at.socket, cb));
      } finally {
        process.umask(oldMask);
      }
      fs.chmodSync(at.socket, at.mode ?? 0o600);
      this.socketPath = at.socket;
    } else {
      await listenOn(server, (cb) => server.listen(at.port, at.host ?? '127.0.0.1', cb));
    }
    server.on('error', (e) => this.log.error(errField(e), 'NBD listener failed'));
    this.listener = server;
    if (this.socketPath) return { socket: this.socketPath };
    const a = server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Stops listening, drops every connection and closes the sources. */
  async close(): Promise<void> {
    const l = this.listener;
    this.listener = undefined;
    for (const c of this.connections) c.destroy();
    if (l) await new Promise<void>((resolve) => l.close(() => resolve()));
    if (this.socketPath) removeStaleSocket(this.socketPath);
    for (const e of this.exports.values()) await e.source.close?.();
  }

  private accept(socket: net.Socket): void {
    if (this.connections.size >= this.limits.maxConnections) {
      this.log.warn({ limit: this.limits.maxConnections }, 'NBD connection refused: too many connections');
      socket.destroy();
      return;
    }
    const c = new Connection(socket, this.exports, new OptionNegotiation(this.infos, this.limits.maxPayload), this.limits, this.log);
    this.connections.add(c);
    socket.once('close', () => this.connections.delete(c));
  }
}

function listenOn(server: net.Server, start: (cb: () => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    start(() => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Removes a leftover socket at `path`; anything else there is refused rather than deleted. */
function removeStaleSocket(path: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw virErr('OPERATION_INVALID', 'NBD', `${path} exists and is not a socket`);
  fs.unlinkSync(path);
}

type Request = ClientMessage & { kind: 'request' };

class Connection {
  private readonly decoder: ServerDecoder;
  private agreed: Agreed | undefined;
  private source: BlockSource | undefined;
  private inFlight = 0;
  private disconnecting = false;
  private closed = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private drain: Promise<void> | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly exports: ReadonlyMap<string, ServedExport>,
    private readonly negotiation: OptionNegotiation,
    private readonly limits: Required<NbdServerLimits>,
    private readonly log: Logger,
  ) {
    this.decoder = new ServerDecoder({ maxOption: limits.maxOption, maxPayload: limits.maxPayload });
    socket.setNoDelay(true);
    socket.on('data', (b: Buffer) => {
      this.decoder.feed(b);
      this.pump();
    });
    socket.on('error', (e) => this.log.debug(errField(e), 'NBD connection failed'));
    socket.on('close', () => {
      this.closed = true;
      clearTimeout(this.handshakeTimer);
    });
    this.handshakeTimer = setTimeout(() => this.drop('handshake took too long'), limits.handshakeTimeoutMs);
    socket.write(encodeGreeting(HANDSHAKE_FLAGS));
  }

  destroy(): void {
    this.socket.destroy();
  }

  private drop(why: string, e?: unknown): void {
    if (this.closed) return;
    this.log.info({ ...(e ? errField(e) : {}), remote: this.socket.remoteAddress ?? 'unix' }, `NBD connection closed: ${why}`);
    this.closed = true;
    this.socket.destroy();
  }

  /** Decodes and handles what has arrived, as long as the in-flight cap allows. */
  private pump(): void {
    try {
      while (!this.closed && !this.disconnecting && this.inFlight < this.limits.maxInFlight) {
        const m = this.decoder.next();
        if (!m) break;
        this.handle(m);
      }
    } catch (e) {
      this.drop('bad frame', e);
      return;
    }
    // Stop reading while at the cap: a client cannot queue unbounded work.
    if (this.inFlight >= this.limits.maxInFlight || this.disconnecting) this.socket.pause();
    else if (!this.closed) this.socket.resume();
  }

  private handle(m: ClientMessage): void {
    switch (m.kind) {
      case 'clientFlags':
        if (!this.negotiation.clientFlags(m.flags)) this.drop(`client flags 0x${m.flags.toString(16)} are not fixed newstyle`);
        return;
      case 'option': {
        const out = this.negotiation.option(m.option, m.data);
        for (const b of out.reply) this.socket.write(b);
        if ('close' in out) {
          this.closed = true;
          this.socket.end();
        } else if ('go' in out) {
          this.startTransmission(out.go);
        }
        return;
      }
      case 'request':
        this.inFlight++;
        void this.request(m).then(
          () => this.finished(),
          (e: unknown) => {
            this.drop('request failed', e);
          },
        );
    }
  }

  private startTransmission(agreed: Agreed): void {
    clearTimeout(this.handshakeTimer);
    this.agreed = agreed;
    this.source = this.exports.get(agreed.exportName)!.source;
    this.decoder.startTransmission();
    if (this.limits.idleTimeoutMs > 0) {
      this.socket.setTimeout(this.limits.idleTimeoutMs, () => {
        if (this.inFlight === 0) this.drop('idle');
      });
    }
  }

  private finished(): void {
    this.inFlight--;
    if (this.disconnecting) {
      if (this.inFlight === 0) this.socket.end();
      return;
    }
    this.pump();
  }

  /** Answers one request; resolves once its reply is written and the socket has room again. */
  private async request(r: Request): Promise<void> {
    const size = this.source!.size;
    const inRange = r.offset + r.length <= size;
    switch (r.type) {
      case P.NBD_CMD_READ:
        if (!inRange) return this.fail(r, P.NBD_EINVAL, `read of ${r.length} at ${r.offset} is past the end (${size})`);
        if (r.length > this.limits.maxPayload) return this.fail(r, P.NBD_EINVAL, `read of ${r.length} exceeds ${this.limits.maxPayload}`);
        await this.read(r);
        break;
      case P.NBD_CMD_BLOCK_STATUS:
        if (!this.agreed!.baseAllocation) return this.fail(r, P.NBD_EINVAL, 'no metadata context was negotiated');
        if (!inRange || r.length === 0) return this.fail(r, P.NBD_EINVAL, `block status of ${r.length} at ${r.offset} is outside the export (${size})`);
        await this.blockStatus(r);
        break;
      case P.NBD_CMD_FLUSH:
        this.ok(r);
        break;
      case P.NBD_CMD_DISC:
        // No reply; answer what is in flight, then close.
        this.disconnecting = true;
        this.socket.pause();
        return;
      case P.NBD_CMD_WRITE:
      case P.NBD_CMD_TRIM:
      case P.NBD_CMD_WRITE_ZEROES:
        return this.fail(r, P.NBD_EPERM, 'the export is read-only');
      default:
        return this.fail(r, P.NBD_EINVAL, `command ${r.type} is not supported`);
    }
    await this.drained();
  }

  private async read(r: Request): Promise<void> {
    const src = this.source!;
    if (!this.agreed!.structuredReplies) {
      let data: Buffer;
      try {
        data = await src.read(r.offset, r.length);
      } catch (e) {
        this.log.warn(errField(e), 'NBD read failed');
        return this.fail(r, EIO, 'read failed');
      }
      this.write(encodeSimpleReply(r.cookie, 0), data);
      return;
    }
    if (r.length === 0) return this.write(encodeDoneChunk(r.cookie));
    // Zero runs go out as holes; DF (don't fragment) asks for one data chunk.
    const runs = src.extents && (r.flags & P.NBD_CMD_FLAG_DF) === 0 ? await this.extentsOf(r.offset, r.length) : [{ offset: r.offset, length: r.length, zero: false }];
    for (let i = 0; i < runs.length; i++) {
      const run = runs[i]!;
      const done = i === runs.length - 1;
      if (run.zero) {
        this.write(encodeOffsetHole(r.cookie, run.offset, run.length, done));
        continue;
      }
      let data: Buffer;
      try {
        data = await src.read(run.offset, run.length);
      } catch (e) {
        this.log.warn(errField(e), 'NBD read failed');
        return this.fail(r, EIO, `read of ${run.length} at ${run.offset} failed`);
      }
      this.write(encodeOffsetDataHeader(r.cookie, run.offset, data.length, done), data);
    }
  }

  private async blockStatus(r: Request): Promise<void> {
    const length = Math.min(r.length, this.limits.maxStatusSpan);
    let runs: BlockExtent[];
    try {
      runs = await this.extentsOf(r.offset, length);
    } catch (e) {
      this.log.warn(errField(e), 'NBD block status failed');
      return this.fail(r, EIO, 'block status failed');
    }
    if ((r.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0) runs = runs.slice(0, 1);
    const flags = (zero: boolean) => (zero ? P.NBD_STATE_HOLE | P.NBD_STATE_ZERO : 0);
    this.write(encodeBlockStatus(r.cookie, BASE_ALLOCATION_ID, runs.map((e) => ({ length: e.length, flags: flags(e.zero) })), true));
  }

  /** The source's runs over exactly [offset, offset+length): clipped, gaps as data, never empty. */
  private async extentsOf(offset: number, length: number): Promise<BlockExtent[]> {
    const src = this.source!;
    if (!src.extents) return [{ offset, length, zero: false }];
    const end = offset + length;
    const out: BlockExtent[] = [];
    let at = offset;
    for (const e of await src.extents(offset, length)) {
      const s = Math.max(e.offset, at);
      const t = Math.min(e.offset + e.length, end);
      if (t <= s) continue;
      if (s > at) out.push({ offset: at, length: s - at, zero: false });
      const last = out[out.length - 1];
      if (last && last.zero === e.zero) last.length += t - s;
      else out.push({ offset: s, length: t - s, zero: e.zero });
      at = t;
    }
    if (at < end) out.push({ offset: at, length: end - at, zero: false });
    return out;
  }

  private ok(r: Request): void {
    this.write(this.agreed!.structuredReplies ? encodeDoneChunk(r.cookie) : encodeSimpleReply(r.cookie, 0));
  }

  private fail(r: Request, error: number, message: string): void {
    // With structured replies a READ must be answered by chunks; the others may use either.
    const chunk = this.agreed!.structuredReplies && (r.type === P.NBD_CMD_READ || r.type === P.NBD_CMD_BLOCK_STATUS);
    this.write(chunk ? encodeErrorChunk(r.cookie, error, message) : encodeSimpleReply(r.cookie, error));
  }

  private write(...parts: Buffer[]): void {
    if (this.closed) return;
    for (const p of parts) this.socket.write(p);
  }

  /** One shared wait per connection: every request held at the cap waits for the same drain. */
  private drained(): Promise<void> {
    if (this.closed || !this.socket.writableNeedDrain) return Promise.resolve();
    this.drain ??= new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        this.drain = undefined;
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
    return this.drain;
  }
}
