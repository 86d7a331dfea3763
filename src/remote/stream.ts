// Console streams over a virtbackd connection (virDomainOpenConsole): the
// call domainOpenConsole opens one and returns its id; then `stream`
// messages carry bytes both ways (base64, STREAM_CHUNK_BYTES at most) and
// `stream-end` ends it from either side. Bounded like the rest of the
// socket: a read-only connection gets no console (the procedure mutates),
// a connection holds few streams, guest output stops being read while the
// client does not take it, and the console itself bounds queued input.

import type { ConsoleStream } from '../api/console-stream.js';
import type { Driver } from '../api/driver.js';
import { VirError, virErr } from '../errors.js';
import { STREAM_CHUNK_BYTES, type StreamMessage } from './protocol.js';

/** Streams one connection may hold open. */
export const MAX_STREAMS_PER_CONNECTION = 8;

/** Output queued for a client beyond which the console is paused until the socket drains. */
const HIGH_WATER_BYTES = 256 * 1024;

/** Guest output a client keeps for a stream it has not attached yet (the reply and the first bytes race). */
const MAX_EARLY_BYTES = 1 << 20;

function chunks(data: Uint8Array): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += STREAM_CHUNK_BYTES) out.push(Buffer.from(data.subarray(i, i + STREAM_CHUNK_BYTES)));
  return out;
}

export function isStreamMessage(raw: unknown): boolean {
  const t = (raw as { type?: unknown } | null)?.type;
  return t === 'stream' || t === 'stream-end';
}

/** What a server-side stream table needs of its connection. */
export interface StreamPeer {
  send(msg: StreamMessage): void;
  /** bytes queued for the client */
  readonly queuedBytes: number;
  /** run `fn` once the client has taken the queued output */
  onDrain(fn: () => void): void;
}

/** The streams one client connection has open, on the daemon's side. */
export class ServerStreams {
  private readonly open = new Map<number, ConsoleStream>();
  private nextId = 1;

  constructor(private readonly peer: StreamPeer) {}

  async openConsole(driver: Driver, uuid: string, devName: string | null, flags: number): Promise<number> {
    if (driver.openConsole === undefined) throw virErr('NO_SUPPORT', 'RPC', 'this driver has no consoles');
    if (this.open.size >= MAX_STREAMS_PER_CONNECTION) {
      throw virErr('OPERATION_FAILED', 'RPC', `too many streams open on this connection (${MAX_STREAMS_PER_CONNECTION})`);
    }
    const stream = await driver.openConsole(uuid, devName, flags);
    const id = this.nextId++;
    this.open.set(id, stream);
    stream.onData((d) => {
      for (const c of chunks(d)) this.peer.send({ type: 'stream', id, data: c.toString('base64') });
      if (this.peer.queuedBytes > HIGH_WATER_BYTES) {
        stream.pause();
        this.peer.onDrain(() => stream.resume());
      }
    });
    stream.onEnd((err) => {
      if (!this.open.delete(id)) return; // the client ended it
      this.peer.send(err === null ? { type: 'stream-end', id } : { type: 'stream-end', id, error: err.toJSON() });
    });
    return id;
  }

  /** A stream message from the client; one for a stream that is gone is dropped (it may have just ended). */
  receive(msg: StreamMessage): void {
    const stream = this.open.get(msg.id);
    if (stream === undefined) return;
    if (msg.type === 'stream') stream.write(Buffer.from(msg.data, 'base64'));
    else {
      this.open.delete(msg.id);
      stream.close();
    }
  }

  /** The connection is gone: every stream ends. */
  closeAll(): void {
    const all = [...this.open.values()];
    this.open.clear();
    for (const s of all) s.close();
  }
}

/** One stream on the client's side. */
class RemoteConsole implements ConsoleStream {
  private readonly dataListeners: ((d: Uint8Array) => void)[] = [];
  private readonly endListeners: ((e: VirError | null) => void)[] = [];
  ended = false;
  private endError: VirError | null = null;
  /** output that came before anyone listened */
  private early: Buffer[] = [];

  constructor(private readonly id: number, private readonly table: ClientStreams) {}

  onData(l: (d: Uint8Array) => void): void {
    this.dataListeners.push(l);
    for (const d of this.early.splice(0)) l(d);
  }
  onEnd(l: (e: VirError | null) => void): void {
    if (this.ended) l(this.endError);
    else this.endListeners.push(l);
  }
  write(data: Uint8Array): void {
    if (this.ended) return;
    for (const c of chunks(data)) this.table.send({ type: 'stream', id: this.id, data: c.toString('base64') });
  }
  // The daemon pauses the console when this connection does not read; nothing to do here.
  pause(): void {}
  resume(): void {}
  close(): void {
    if (this.ended) return;
    this.table.send({ type: 'stream-end', id: this.id });
    this.end(null);
  }

  deliver(d: Buffer): void {
    if (this.dataListeners.length === 0) {
      if (this.early.reduce((n, b) => n + b.length, 0) + d.length <= MAX_EARLY_BYTES) this.early.push(d);
      return;
    }
    for (const l of this.dataListeners) l(d);
  }

  end(err: VirError | null): void {
    if (this.ended) return;
    this.ended = true;
    this.endError = err;
    this.table.forget(this.id);
    for (const l of this.endListeners.splice(0)) l(err);
  }
}

/** The streams a remote driver has open, by id. */
export class ClientStreams {
  private readonly streams = new Map<number, RemoteConsole>();
  /** ids rise: a message for an id at or below the last attached one that is not open is late, and dropped */
  private lastAttached = 0;

  constructor(readonly send: (msg: StreamMessage) => void) {}

  /** The stream `id` (just returned by domainOpenConsole); messages that came first are in it already. */
  attach(id: number): ConsoleStream {
    this.lastAttached = Math.max(this.lastAttached, id);
    return this.get(id);
  }

  private get(id: number): RemoteConsole {
    let s = this.streams.get(id);
    if (s === undefined) {
      s = new RemoteConsole(id, this);
      this.streams.set(id, s);
    }
    return s;
  }

  receive(msg: StreamMessage): void {
    if (msg.id <= this.lastAttached && !this.streams.has(msg.id)) return;
    const s = this.get(msg.id);
    if (msg.type === 'stream') s.deliver(Buffer.from(msg.data, 'base64'));
    else s.end(msg.error === undefined ? null : VirError.fromJSON(msg.error));
  }

  forget(id: number): void {
    this.streams.delete(id);
  }

  /** The connection failed: every stream ends with its error. */
  failAll(err: VirError): void {
    for (const s of [...this.streams.values()]) s.end(err);
  }
}
