// QMP client: one unix-socket connection to a QEMU monitor. Replies are
// matched to pending calls by id (several may be in flight); events go, in
// arrival order, to filtered listeners as soon as they are decoded, so a
// caller that subscribes before sending a command also sees the events QEMU
// emits before that command's reply (QEMU-NOTES.md §1).

import net from 'node:net';
import {
  QmpDecoder,
  QmpDecodeError,
  encodeCommand,
  isErrorReply,
  isEvent,
  isGreeting,
  type QmpErrorReply,
  type QmpEvent,
  type QmpGreeting,
  type QmpMessage,
  type QmpReturn,
} from './codec.js';
import { errField, silentLogger, type Logger } from '../../log.js';
import { PendingCalls } from '../../util/pending-calls.js';
import type { QmpCommands, QmpEventName, QmpTypedEvent } from './commands.js';
import { QmpCommandError, QmpConnectionError, QmpTimeoutError } from './errors.js';

export { QmpCommandError, QmpConnectionError, QmpTimeoutError, qmpErrorToVirError } from './errors.js';
export type { QmpEvent, QmpGreeting, QmpMessage } from './codec.js';
export type { QmpCommands, QmpEvents } from './commands.js';

export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

export interface QmpConnectOptions {
  /** Default per-call timeout (30 s); 0 or Infinity = none. */
  timeoutMs?: number;
  /** Connect + greeting + qmp_capabilities (10 s). */
  connectTimeoutMs?: number;
  /** Largest message accepted from QEMU (16 MiB); a larger one closes the connection. */
  maxMessageBytes?: number;
  /** Where exceptions thrown by event listeners are reported (warn; default: nowhere). */
  log?: Logger;
}

export interface CallOptions {
  timeoutMs?: number;
}

type EventListener = (ev: QmpEvent) => void;

/** What an error reply needs to name the command it answers. */
interface Sent {
  command: string;
  args: unknown;
}

function hasTimeout(ms: number): boolean {
  return ms > 0 && Number.isFinite(ms);
}

export class QmpClient {
  private readonly socket: net.Socket;
  private readonly decoder: QmpDecoder;
  private readonly defaultTimeoutMs: number;
  private readonly log: Logger;
  private readonly pending = new PendingCalls<string, unknown, Sent>();
  private readonly listeners = new Map<string, Set<EventListener>>();
  private readonly closeListeners = new Set<(err?: Error) => void>();
  private nextId = 1;
  private closed = false;
  private closeError: Error | undefined;
  private closedPromise: Promise<void>;
  private greetingValue: QmpGreeting | undefined;
  private onGreeting: ((g: QmpGreeting) => void) | undefined;

  private constructor(socket: net.Socket, opts: QmpConnectOptions) {
    this.socket = socket;
    this.decoder = new QmpDecoder({ maxBuffer: opts.maxMessageBytes });
    this.defaultTimeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.log = opts.log ?? silentLogger;
    this.closedPromise = new Promise((resolve) => {
      socket.once('close', () => {
        this.shutdown(new QmpConnectionError('End of file from qemu monitor'));
        resolve();
      });
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A peer that dies with unread input resets the connection: that is its end of file too.
      const eof = err.code === 'ECONNRESET' || err.code === 'EPIPE';
      const message = eof ? 'End of file from qemu monitor' : `Unable to read from monitor: ${err.message}`;
      this.shutdown(new QmpConnectionError(message, { cause: err }));
    });
  }

  /** Connect, read the greeting and leave capabilities negotiation mode. */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const socket = net.createConnection({ path: socketPath });
    let client: QmpClient | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      const ready = (async () => {
        await new Promise<void>((resolve, reject) => {
          socket.once('connect', resolve);
          socket.once('error', (err) =>
            reject(new QmpConnectionError(`failed to connect to monitor socket '${socketPath}': ${err.message}`, { cause: err })),
          );
        });
        const c = new QmpClient(socket, opts);
        client = c;
        await new Promise<void>((resolve, reject) => {
          c.onGreeting = () => resolve();
          c.onClose((err) => reject(err ?? new QmpConnectionError('monitor closed before its greeting')));
        });
        await c.execute('qmp_capabilities', undefined, { timeoutMs: 0 });
        return c;
      })();
      const timeout = new Promise<never>((_, reject) => {
        if (!hasTimeout(connectTimeoutMs)) return;
        timer = setTimeout(() => {
          const msg = `timed out after ${connectTimeoutMs} ms connecting to monitor socket '${socketPath}'`;
          reject(new QmpTimeoutError(msg, undefined, connectTimeoutMs));
        }, connectTimeoutMs);
      });
      ready.catch(() => {}); // the loser of the race must not become an unhandled rejection
      return await Promise.race([ready, timeout]);
    } catch (e) {
      socket.destroy();
      if (client) client.shutdown(e as Error);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  get greeting(): QmpGreeting {
    if (!this.greetingValue) throw new QmpConnectionError('no QMP greeting received');
    return this.greetingValue;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Send a typed command; resolves with its "return", rejects with QmpCommandError on an "error" reply. */
  execute<K extends keyof QmpCommands>(
    cmd: K,
    args?: QmpCommands[K]['args'],
    opts?: CallOptions,
  ): Promise<QmpCommands[K]['ret']> {
    return this.executeRaw(cmd, args, opts) as Promise<QmpCommands[K]['ret']>;
  }

  executeRaw(cmd: string, args?: object, opts?: CallOptions): Promise<unknown> {
    if (this.closed) {
      return Promise.reject(this.closeError ?? new QmpConnectionError('monitor connection is closed'));
    }
    const id = `vb-${this.nextId++}`;
    const timeoutMs = opts?.timeoutMs ?? this.defaultTimeoutMs;
    const reply = this.pending.add(id, { command: cmd, args }, {
      ms: timeoutMs,
      error: () => new QmpTimeoutError(`timed out after ${timeoutMs} ms waiting for QEMU reply to '${cmd}'`, cmd, timeoutMs),
    });
    this.socket.write(encodeCommand(cmd, args, id));
    return reply;
  }

  /** human-monitor-command. HMP reports most failures in the returned text, not as an error. */
  hmp(commandLine: string, opts?: CallOptions): Promise<string> {
    return this.execute('human-monitor-command', { 'command-line': commandLine }, opts);
  }

  /** Listen to one event name, or '*' for all. Returns the unsubscribe function. */
  on<K extends QmpEventName>(event: K, listener: (ev: QmpTypedEvent<K>) => void): () => void;
  on(event: string, listener: (ev: QmpEvent) => void): () => void;
  on(event: string, listener: (ev: QmpEvent) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    // Wrap so the same function may be subscribed twice and unsubscribed independently.
    const entry: EventListener = (ev) => listener(ev);
    set.add(entry);
    return () => {
      set.delete(entry);
    };
  }

  /**
   * The first event (from now on) that matches. Call it BEFORE sending the
   * command that causes the event. Rejects with QmpTimeoutError after
   * timeoutMs (default: none) and with QmpConnectionError when the socket closes.
   */
  waitForEvent(
    match: (ev: QmpEvent) => boolean,
    opts?: { timeoutMs?: number },
  ): { promise: Promise<QmpEvent>; cancel(): void } {
    let cancel: () => void = () => {};
    const promise = new Promise<QmpEvent>((resolve, reject) => {
      if (this.closed) {
        reject(this.closeError ?? new QmpConnectionError('monitor connection is closed'));
        return;
      }
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        clearTimeout(timer);
        off();
        offClose();
      };
      const off = this.on('*', (ev) => {
        if (!match(ev)) return;
        done();
        resolve(ev);
      });
      const offClose = this.onClose((err) => {
        done();
        reject(err ?? new QmpConnectionError('monitor connection is closed'));
      });
      const timeoutMs = opts?.timeoutMs ?? 0;
      if (hasTimeout(timeoutMs)) {
        timer = setTimeout(() => {
          done();
          reject(new QmpTimeoutError(`timed out after ${timeoutMs} ms waiting for a QMP event`, undefined, timeoutMs));
        }, timeoutMs);
      }
      cancel = () => {
        done();
        reject(new QmpConnectionError('wait for QMP event cancelled'));
      };
    });
    // A cancelled wait that nobody awaits must not become an unhandled rejection.
    promise.catch(() => {});
    return { promise, cancel: () => cancel() };
  }

  /**
   * Called once when the connection ends: with a QmpConnectionError when QEMU
   * closed it or it failed, without an error after close(). Registered after
   * the end, it is called on the next microtask.
   */
  onClose(listener: (err?: Error) => void): () => void {
    if (this.closed) {
      const err = this.closeError;
      queueMicrotask(() => listener(err));
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => {
      this.closeListeners.delete(listener);
    };
  }

  /** Close our end (QEMU keeps running). Pending calls reject with QmpConnectionError. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.shutdown(undefined);
      this.socket.end();
      // Do not wait forever for a peer that never finishes the close handshake.
      const t = setTimeout(() => this.socket.destroy(), 1000);
      await this.closedPromise;
      clearTimeout(t);
    } else {
      this.socket.destroy();
      await this.closedPromise;
    }
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let messages: QmpMessage[];
    let failure: QmpDecodeError | undefined;
    try {
      messages = this.decoder.push(chunk);
    } catch (e) {
      if (!(e instanceof QmpDecodeError)) throw e;
      failure = e;
      messages = e.messages;
    }
    for (const m of messages) {
      if (this.closed) return;
      this.dispatch(m);
    }
    if (failure) {
      this.shutdown(new QmpConnectionError(`invalid data from qemu monitor: ${failure.message}`, { cause: failure }));
      this.socket.destroy();
    }
  }

  private dispatch(m: QmpMessage): void {
    if (isEvent(m)) {
      this.emit(m);
      return;
    }
    if (isGreeting(m)) {
      if (this.greetingValue) return; // only the first one counts
      this.greetingValue = m;
      this.onGreeting?.(m);
      return;
    }
    const reply = m as QmpReturn | QmpErrorReply;
    // Replies without our string id (e.g. QEMU's answer to unparseable input) cannot be matched.
    if (typeof reply.id !== 'string') return;
    const p = this.pending.take(reply.id);
    if (!p) return; // timed out earlier: drop the late reply
    if (isErrorReply(reply)) p.reject(new QmpCommandError(p.context.command, p.context.args, reply));
    else p.resolve(reply.return);
  }

  private emit(ev: QmpEvent): void {
    const targets = [...(this.listeners.get(ev.event) ?? []), ...(this.listeners.get('*') ?? [])];
    for (const l of targets) {
      try {
        l(ev);
      } catch (err) {
        try {
          this.log.warn({ event: ev.event, ...errField(err) }, 'QMP event listener threw');
        } catch {
          // The logger itself failed; the pump must go on regardless.
        }
      }
    }
  }

  /** Mark closed once: reject every pending call and tell the close listeners. */
  private shutdown(err: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    this.pending.rejectAll(err ?? new QmpConnectionError('monitor connection closed by client'));
    const ls = [...this.closeListeners];
    this.closeListeners.clear();
    for (const l of ls) {
      try {
        l(err);
      } catch {
        // A close listener must not prevent the others from running.
      }
    }
  }
}
