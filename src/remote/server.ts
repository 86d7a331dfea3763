// Serves a Driver over stream sockets (unix, or TLS with client
// certificates) using the protocol in remote/protocol.ts. Each client has its
// own decoder, a bound on calls in flight (reading pauses beyond it) and a
// bound on bytes queued for it (overflow drops that client), so a slow or
// hostile client costs only itself. Every call goes through CheckedDriver,
// read-only for the read-only socket.

import type * as net from 'node:net';
import * as tls from 'node:tls';
import type { Driver, DriverEvent } from '../api/driver.js';
import { CheckedDriver, READ_ONLY_MESSAGE } from '../api/checked-driver.js';
import { VirError, toVirError, virErr } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { AutoDestroyTracker } from './autodestroy.js';
import { ClientPool, FlowControl, type ClientLimitOptions, type LimitedClient } from './client-limits.js';
import { FrameDecoder, MAX_FRAME_BYTES, MAX_READ_ONLY_FRAME_BYTES, encodeFrame, jsonShapeRefusal } from './frame.js';
import {
  CallMessageSchema,
  HelloArgsSchema,
  StreamMessageSchema,
  LIMITS,
  PROTOCOL_VERSION,
  isProcName,
  procedures,
  type CallMessage,
  type DriverProcName,
  type ServerMessage,
} from './protocol.js';
import { ServerStreams, isStreamMessage } from './stream.js';
import { listenUnixSocket, removeSocketFiles } from './unix-socket.js';

export interface ServerOptions extends ClientLimitOptions {
  /** Largest frame accepted or sent. */
  maxFrame?: number;
  /** Largest frame accepted from a read-only client (default MAX_READ_ONLY_FRAME_BYTES). */
  maxReadOnlyFrame?: number;
  /** daemon log (default: silent); client lines carry `client` (a per-server connection number) */
  logger?: Logger;
  /**
   * Events a client receives once, right after its first `subscribe` (the
   * daemon's backlog of events published while nobody could listen, e.g.
   * jobs recovered at startup). Called per subscribing client.
   */
  backlog?: () => DriverEvent[];
}

export interface TlsListenOptions {
  host: string;
  port: number;
  cert: string | Buffer;
  key: string | Buffer;
  /** CA that signs the client certificates we accept. */
  ca: string | Buffer;
}

/** Formats a zod issue list as "args[0]: Too big: …; …". */
function describeIssues(issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }>, prefix: string): string {
  return issues
    .slice(0, 5)
    .map((i) => `${prefix}${i.path.map((p) => `[${String(p)}]`).join('')}: ${i.message}`)
    .join('; ');
}

class ClientConnection implements LimitedClient {
  private readonly decoder: FrameDecoder;
  private readonly flow: FlowControl<ClientConnection>;
  closed = false;
  subscribed = false;
  /** the backlog was sent (each connection gets it once) */
  private replayed = false;
  private readonly log: Logger;
  /** console streams open on this connection */
  private readonly streams: ServerStreams;

  constructor(
    private readonly server: RemoteServer,
    readonly socket: net.Socket,
    readonly readOnly: boolean,
    readonly id: number,
    private readonly driver: CheckedDriver,
  ) {
    this.decoder = new FrameDecoder(readOnly ? Math.min(server.maxFrame, server.maxReadOnlyFrame) : server.maxFrame);
    this.log = server.log.child({ client: id });
    this.flow = new FlowControl(socket, server.pool, this);
    this.streams = new ServerStreams({
      send: (msg) => this.send(msg),
      get queuedBytes() {
        return socket.writableLength;
      },
      onDrain: (fn) => socket.once('drain', fn),
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.log.debug({ error: e.message }, 'client socket error'));
    socket.on('close', () => this.onClose());
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Buffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      // The stream has lost its framing: nothing after this can be trusted.
      this.drop(toVirError(e).message);
      return;
    }
    this.flow.received();
    if (this.closed) return;
    for (const frame of frames) {
      if (this.closed) return;
      this.onFrame(frame);
    }
  }

  private onFrame(frame: Buffer): void {
    const refusal = jsonShapeRefusal(frame);
    if (refusal !== null) {
      this.sendError(0, virErr('RPC', 'RPC', `malformed message: ${refusal}`));
      return;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(frame.toString('utf8'));
    } catch {
      this.sendError(0, virErr('RPC', 'RPC', 'malformed message: not JSON'));
      return;
    }
    if (isStreamMessage(raw)) {
      const msg = StreamMessageSchema.safeParse(raw);
      if (msg.success) this.streams.receive(msg.data);
      else this.sendError(0, virErr('RPC', 'RPC', `malformed stream message: ${describeIssues(msg.error.issues, 'message')}`));
      return;
    }
    const parsed = CallMessageSchema.safeParse(raw);
    if (!parsed.success) {
      const serial = typeof (raw as { serial?: unknown })?.serial === 'number' ? (raw as { serial: number }).serial : 0;
      const s = Number.isInteger(serial) && serial >= 0 && serial <= 0x7fffffff ? serial : 0;
      this.sendError(s, virErr('RPC', 'RPC', `malformed call message: ${describeIssues(parsed.error.issues, 'message')}`));
      return;
    }
    this.startCall(parsed.data);
  }

  private startCall(msg: CallMessage): void {
    this.flow.callStarted();
    this.runCall(msg)
      .then(
        (result) => {
          this.send({ type: 'reply', serial: msg.serial, result });
          if (msg.proc === 'subscribe') this.replayBacklog();
        },
        (e: unknown) => this.sendError(msg.serial, e),
      )
      .finally(() => this.flow.callEnded());
  }

  private async runCall(msg: CallMessage): Promise<unknown> {
    if (!isProcName(msg.proc)) throw virErr('RPC', 'RPC', `unknown procedure '${msg.proc}'`);
    const proc = procedures[msg.proc];
    // Refused before the arguments are even looked at: a read-only client learns nothing more.
    if (this.readOnly && proc.mutating) throw virErr('OPERATION_DENIED', 'RPC', READ_ONLY_MESSAGE);
    const args = proc.args.safeParse(msg.args);
    if (!args.success) {
      throw virErr('INVALID_ARG', 'RPC', `invalid arguments for procedure '${msg.proc}': ${describeIssues(args.error.issues, 'args')}`);
    }
    if (this.readOnly && proc.deniedReadOnly) {
      const denial = (proc.deniedReadOnly as (a: unknown) => string | null)(args.data);
      if (denial !== null) throw virErr('OPERATION_DENIED', 'RPC', denial);
    }
    switch (msg.proc) {
      case 'hello': {
        const hello = HelloArgsSchema.parse(args.data[0]);
        if (hello.version !== PROTOCOL_VERSION) {
          throw virErr('RPC', 'RPC', `protocol version ${hello.version} not supported (daemon speaks ${PROTOCOL_VERSION})`);
        }
        this.log.debug({ clientName: hello.client ?? 'unnamed client' }, 'client hello');
        return { version: PROTOCOL_VERSION, uri: this.driver.uri, readOnly: this.readOnly };
      }
      case 'subscribe':
        this.subscribed = true;
        return undefined;
      case 'unsubscribe':
        this.subscribed = false;
        return undefined;
      case 'domainOpenConsole': {
        const [uuid, devName, flags] = args.data as [string, string | null, number];
        return this.streams.openConsole(this.driver.inner, uuid, devName, flags);
      }
    }
    const name = msg.proc as DriverProcName;
    const method = this.driver[name] as (...a: unknown[]) => Promise<unknown>;
    const result = await method.apply(this.driver, args.data as unknown[]);
    if (name === 'domainCreate') {
      const [uuid, flags] = args.data as [string, number];
      await this.server.autoDestroy.domainStarted(this, uuid, flags);
    }
    const checked = procedures[name].result.safeParse(result);
    if (!checked.success) {
      this.log.error({ proc: name, issues: describeIssues(checked.error.issues, 'result') }, 'procedure returned a result outside the protocol');
      throw virErr('INTERNAL_ERROR', 'RPC', `procedure '${name}' produced a result the protocol cannot carry`);
    }
    return result;
  }

  sendError(serial: number, e: unknown): void {
    const err = toVirError(e, 'RPC');
    if (!(e instanceof VirError)) this.log.warn({ err: e instanceof Error ? e : err }, 'non-VirError from driver');
    const message = err.message.length > LIMITS.messageChars ? `${err.message.slice(0, LIMITS.messageChars - 3)}...` : err.message;
    this.send({ type: 'error', serial, error: { code: err.code, domain: err.domain, message } });
  }

  private replayBacklog(): void {
    if (this.replayed || !this.subscribed) return;
    this.replayed = true;
    for (const ev of this.server.backlog()) this.sendEvent(ev);
  }

  sendEvent(event: DriverEvent): void {
    if (this.subscribed) this.send({ type: 'event', event });
  }

  send(msg: ServerMessage): void {
    if (this.closed) return;
    let frame: Buffer;
    try {
      frame = encodeFrame(Buffer.from(JSON.stringify(msg), 'utf8'), this.server.maxFrame);
    } catch (e) {
      if (msg.type === 'event') return;
      // A reply too large for a frame becomes an error reply, which always fits.
      if (msg.type === 'reply') this.sendError(msg.serial, e);
      return;
    }
    this.flow.wrote(this.socket.write(frame));
  }

  /** Bytes held for this client: input waiting for the rest of a frame, output not yet taken by it. */
  get bufferedBytes(): number {
    return this.decoder.pendingBytes + this.socket.writableLength;
  }

  drop(reason: string): void {
    if (this.closed) return;
    this.log.warn({ reason }, 'client dropped');
    this.closed = true;
    this.socket.destroy();
    this.streams.closeAll();
    this.server.forget(this);
  }

  private onClose(): void {
    if (!this.closed) this.log.debug('client disconnected');
    this.closed = true;
    this.streams.closeAll();
    this.server.forget(this);
  }
}

export class RemoteServer {
  readonly maxFrame: number;
  readonly maxReadOnlyFrame: number;
  /** @internal the connections and their limits */
  readonly pool: ClientPool<ClientConnection>;
  readonly log: Logger;
  readonly backlog: () => DriverEvent[];
  private readonly rw: CheckedDriver;
  private readonly ro: CheckedDriver;
  /** START_AUTODESTROY domains, by the connection that started them */
  readonly autoDestroy: AutoDestroyTracker;
  private readonly listeners: net.Server[] = [];
  private readonly socketPaths: string[] = [];
  private unsubscribe: (() => void) | null = null;
  private nextClientId = 1;

  constructor(driver: Driver, opts: ServerOptions = {}) {
    this.maxFrame = opts.maxFrame ?? MAX_FRAME_BYTES;
    this.maxReadOnlyFrame = opts.maxReadOnlyFrame ?? MAX_READ_ONLY_FRAME_BYTES;
    this.pool = new ClientPool(opts);
    this.log = opts.logger ?? silentLogger;
    this.backlog = opts.backlog ?? (() => []);
    this.rw = new CheckedDriver(driver, false);
    this.ro = new CheckedDriver(driver, true);
    this.autoDestroy = new AutoDestroyTracker(driver, this.log);
    this.unsubscribe = driver.subscribe((event) => {
      for (const c of this.pool.all()) c.sendEvent(event);
    });
  }

  get clientCount(): number {
    return this.pool.size;
  }

  /** Listens on a unix socket with exactly `mode` (see remote/unix-socket.ts). */
  async listenUnix(path: string, opts: { readOnly: boolean; mode: number }): Promise<void> {
    const server = await listenUnixSocket(path, opts.mode, (socket) => this.accept(socket, opts.readOnly), this.log);
    this.listeners.push(server);
    this.socketPaths.push(path);
    this.log.info({ socket: path, readOnly: opts.readOnly }, 'listening');
  }

  /** TCP with TLS; only clients presenting a certificate signed by `ca` get through. */
  async listenTls(opts: TlsListenOptions): Promise<net.AddressInfo> {
    const server = tls.createServer(
      { cert: opts.cert, key: opts.key, ca: opts.ca, requestCert: true, rejectUnauthorized: true },
      (socket) => this.accept(socket, false),
    );
    server.on('tlsClientError', (e) => this.log.warn({ error: e.message }, 'TLS client refused'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (e) => this.log.error({ err: e }, 'TLS listener failed'));
    this.listeners.push(server);
    const addr = server.address() as net.AddressInfo;
    this.log.info({ tcp: `${addr.address}:${addr.port}`, tls: true }, 'listening');
    return addr;
  }

  private accept(socket: net.Socket, readOnly: boolean): void {
    if (this.pool.full) {
      this.log.warn({ readOnly, clients: this.pool.size }, 'connection refused: too many clients');
      socket.destroy();
      return;
    }
    const id = this.nextClientId++;
    const client = new ClientConnection(this, socket, readOnly, id, readOnly ? this.ro : this.rw);
    this.pool.add(client);
    this.log.debug({ client: id, readOnly, peer: socket.remoteAddress ?? 'unix' }, 'client connected');
  }

  /** Bytes held for all clients now (unread input, queued output). */
  get bufferedBytes(): number {
    return this.pool.bufferedBytes;
  }

  /** @internal */
  forget(client: ClientConnection): void {
    this.pool.delete(client);
    void this.autoDestroy.connectionClosed(client);
  }

  /** Stops listening, removes the socket files and disconnects every client. The driver stays open. */
  async close(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    const closing = this.listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    for (const c of this.pool.all()) {
      c.closed = true;
      c.socket.destroy();
      void this.autoDestroy.connectionClosed(c);
    }
    this.pool.clear();
    await Promise.all(closing);
    await this.autoDestroy.idle();
    this.listeners.length = 0;
    removeSocketFiles(this.socketPaths);
  }
}
