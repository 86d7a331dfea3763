// The remote driver: the Driver interface over a connection to virtbackd.
// Calls are matched to replies by serial; every pending call is rejected when
// the connection goes away; events are dispatched to local subscribers, and
// the daemon is asked for events only while someone here listens.

import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Driver, DriverEvent, EventListener } from '../api/driver.js';
import { entryPointNames, type EntryMethods } from '../api/entry-points.js';
import { VirError, toVirError, virErr } from '../errors.js';
import { PendingCalls } from '../util/pending-calls.js';
import type { ConsoleStream } from '../api/console-stream.js';
import { FrameDecoder, MAX_FRAME_BYTES, encodeFrame } from './frame.js';
import { ClientStreams } from './stream.js';
import {
  DriverEventSchema,
  PROTOCOL_VERSION,
  ServerMessageSchema,
  procedures,
  type ProcArgs,
  type ProcName,
  type ProcResult,
} from './protocol.js';

export interface RemoteConnectOptions {
  /** The URI reported by `uri` (defaults to the daemon's). */
  uri?: string;
  maxFrame?: number;
  /** Name sent in hello, for the daemon's log. */
  clientName?: string;
}

export interface RemoteTlsOptions extends RemoteConnectOptions {
  host: string;
  port: number;
  cert: string | Buffer;
  key: string | Buffer;
  ca: string | Buffer;
  /** Name expected in the daemon's certificate (default: host). */
  servername?: string;
}

// The entry-point methods are installed on the prototype below, from the table.
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging, @typescript-eslint/no-empty-object-type
export interface RemoteDriver extends EntryMethods {}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class RemoteDriver implements Driver {
  private readonly decoder: FrameDecoder;
  /** serial -> the procedure called, whose result schema checks the reply */
  private readonly pending = new PendingCalls<number, unknown, ProcName>();
  private readonly listeners = new Set<EventListener>();
  private nextSerial = 1;
  private closed = false;
  private closeError: VirError | null = null;
  private wireSubscribed = false;
  /** Serialises subscribe/unsubscribe calls so the daemon's state follows ours. */
  private subscription: Promise<void> = Promise.resolve();
  private daemonUri = '';
  private daemonReadOnly = false;
  /** console streams open on this connection */
  private readonly streams = new ClientStreams((msg) => {
    if (!this.closed) this.socket.write(encodeFrame(Buffer.from(JSON.stringify(msg), 'utf8'), this.opts.maxFrame));
  });

  private constructor(
    private readonly socket: net.Socket,
    private readonly opts: RemoteConnectOptions,
    private readonly endpoint: string,
  ) {
    this.decoder = new FrameDecoder(opts.maxFrame ?? MAX_FRAME_BYTES);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.fail(virErr('RPC', 'RPC', `connection to virtbackd at ${endpoint} failed: ${e.message}`)));
    socket.on('close', () => this.fail(virErr('RPC', 'RPC', `connection to virtbackd at ${endpoint} closed`)));
  }

  /** Connects to a daemon's unix socket and says hello. */
  static async connectUnix(path: string, opts: RemoteConnectOptions = {}): Promise<RemoteDriver> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(path);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    }).catch((e: NodeJS.ErrnoException) => {
      throw virErr('NO_CONNECT', 'RPC', `Failed to connect socket to '${path}': ${e.code ?? e.message}`, e);
    });
    return RemoteDriver.start(socket, opts, path);
  }

  /** Connects over TCP with TLS, presenting a client certificate. */
  static async connectTls(opts: RemoteTlsOptions): Promise<RemoteDriver> {
    const endpoint = `${opts.host}:${opts.port}`;
    const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({
        host: opts.host,
        port: opts.port,
        cert: opts.cert,
        key: opts.key,
        ca: opts.ca,
        servername: opts.servername ?? opts.host,
      });
      s.once('secureConnect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    }).catch((e: NodeJS.ErrnoException) => {
      throw virErr('NO_CONNECT', 'RPC', `Failed to connect to virtbackd at ${endpoint}: ${e.code ?? e.message}`, e);
    });
    return RemoteDriver.start(socket, opts, endpoint);
  }

  /** Wraps an already connected stream (tests, embedding). */
  static async start(socket: net.Socket, opts: RemoteConnectOptions, endpoint = 'socket'): Promise<RemoteDriver> {
    const d = new RemoteDriver(socket, opts, endpoint);
    try {
      const hello = await d.call('hello', { version: PROTOCOL_VERSION, client: opts.clientName ?? 'virtback' });
      d.daemonUri = hello.uri;
      d.daemonReadOnly = hello.readOnly;
    } catch (e) {
      d.socket.destroy();
      throw e;
    }
    return d;
  }

  get uri(): string {
    return this.opts.uri ?? this.daemonUri;
  }

  /** True when the daemon serves this connection read-only (the -ro socket). */
  get readOnly(): boolean {
    return this.daemonReadOnly;
  }

  /** Calls one procedure; args and result are typed and size-checked by the shared table. */
  async call<P extends ProcName>(proc: P, ...args: ProcArgs<P>): Promise<ProcResult<P>> {
    if (this.closed) throw this.closeError ?? virErr('NO_CONNECT', 'RPC', 'not connected to virtbackd');
    const checked = procedures[proc].args.safeParse(args);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      throw virErr(
        'INVALID_ARG',
        'RPC',
        `invalid arguments for procedure '${proc}': args${issue?.path.map((p) => `[${String(p)}]`).join('') ?? ''}: ${issue?.message ?? 'invalid'}`,
      );
    }
    const serial = this.nextSerial;
    this.nextSerial = this.nextSerial >= 0x7fffffff ? 1 : this.nextSerial + 1;
    const frame = encodeFrame(Buffer.from(JSON.stringify({ type: 'call', serial, proc, args }), 'utf8'), this.opts.maxFrame);
    const reply = this.pending.add(serial, proc);
    this.socket.write(frame);
    return reply as Promise<ProcResult<P>>;
  }

  private onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.fail(toVirError(e, 'RPC'));
      this.socket.destroy();
      return;
    }
    for (const f of frames) this.onFrame(f);
  }

  private onFrame(frame: Buffer): void {
    let parsed;
    try {
      parsed = ServerMessageSchema.safeParse(JSON.parse(frame.toString('utf8')));
    } catch {
      parsed = null;
    }
    if (!parsed?.success) {
      this.fail(virErr('RPC', 'RPC', 'malformed message from virtbackd'));
      this.socket.destroy();
      return;
    }
    const msg = parsed.data;
    if (msg.type === 'stream' || msg.type === 'stream-end') {
      this.streams.receive(msg);
      return;
    }
    if (msg.type === 'event') {
      const ev = DriverEventSchema.safeParse(msg.event);
      if (!ev.success) return; // an event kind newer than us: ignore it
      for (const l of [...this.listeners]) {
        try {
          l(ev.data as DriverEvent);
        } catch {
          // one listener's failure is not the connection's
        }
      }
      return;
    }
    const p = this.pending.take(msg.serial);
    if (!p) return; // serial 0 (connection-level error) or a call we gave up on
    if (msg.type === 'error') {
      p.reject(VirError.fromJSON(msg.error));
      return;
    }
    const result = procedures[p.context].result.safeParse(msg.result);
    if (!result.success) {
      p.reject(virErr('RPC', 'RPC', `reply to '${p.context}' does not match the protocol`));
      return;
    }
    p.resolve(result.data);
  }

  private fail(err: VirError): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    this.pending.rejectAll(err);
    this.streams.failAll(err);
  }

  /** virDomainOpenConsole over the daemon's socket (remote/stream.ts). */
  async openConsole(uuid: string, devName: string | null, flags: number): Promise<ConsoleStream> {
    return this.streams.attach(await this.call('domainOpenConsole', uuid, devName, flags));
  }

  async close(): Promise<void> {
    this.listeners.clear();
    this.fail(virErr('NO_CONNECT', 'RPC', 'connection to virtbackd was closed by the client'));
    await new Promise<void>((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    });
  }

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    this.syncSubscription();
    return () => {
      this.listeners.delete(listener);
      this.syncSubscription();
    };
  }

  /** Resolves once the daemon's subscription state matches whether anyone listens here. */
  whenSubscribed(): Promise<void> {
    return this.subscription;
  }

  private syncSubscription(): void {
    this.subscription = this.subscription.then(async () => {
      const want = this.listeners.size > 0;
      if (want === this.wireSubscribed || this.closed) return;
      try {
        await this.call(want ? 'subscribe' : 'unsubscribe');
        this.wireSubscribed = want;
      } catch {
        // connection gone: nothing to keep in sync
      }
    });
  }
}

// The Driver methods: one per entry point (api/entry-points.ts), each one call
// of its procedure, typed by the table.
for (const name of entryPointNames) {
  Object.defineProperty(RemoteDriver.prototype, name, {
    value: function (this: RemoteDriver, ...args: unknown[]) {
      // the args are checked against the procedure's schema in call()
      return (this.call as (proc: string, ...a: unknown[]) => Promise<unknown>)(name, ...args);
    },
    writable: true,
    configurable: true,
  });
}
