// Guest agent (qemu-ga) client on the QMP codec. qemu-ga speaks QMP's JSON but
// sends no greeting and knows no qmp_capabilities; after connecting, and after
// any timeout, we resynchronise with guest-sync-delimited (0xFF resets its
// parser; its reply is prefixed by 0xFF) and drop every reply until ours.
// One command at a time: qemu-ga serves requests in order on one channel.
// Every error that leaves is a VirError with libvirt's wording (qemu_agent.c).

import net from 'node:net';
import { randomInt } from 'node:crypto';
import { virErr, type VirError } from '../../errors.js';
import { PendingCalls } from '../../util/pending-calls.js';
import { QmpDecoder, QmpDecodeError, encodeCommand, isErrorReply, isReturn, type QmpMessage } from './codec.js';

export const DEFAULT_AGENT_TIMEOUT_MS = 30_000;
export const DEFAULT_AGENT_SYNC_TIMEOUT_MS = 5_000;
/** Resend the sync request this often: a guest that is still booting drops bytes. */
const SYNC_RETRY_MS = 1_000;
const SYNC_RETRY_MAX_MS = 5_000;
/** qemu-ga answers small messages; anything larger means a broken stream. */
const AGENT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface GuestAgentOptions {
  /** Per-command timeout (30 s); 0 or Infinity = none. */
  timeoutMs?: number;
  /** How long to wait for the agent to answer guest-sync-delimited (5 s). */
  syncTimeoutMs?: number;
}

export type FsFreezeStatus = 'frozen' | 'thawed';

function unresponsive(detail: string, cause?: unknown): VirError {
  return virErr('AGENT_UNRESPONSIVE', 'QEMU', `Guest agent is not responding: ${detail}`, cause);
}

function hasTimeout(ms: number): boolean {
  return ms > 0 && Number.isFinite(ms);
}

/**
 * A sync is answered by a return of its id; a command by a reply carrying its
 * id, or (before the agent showed that it echoes ids) one without id.
 */
type CallKind = 'sync' | 'command';

export class GuestAgentClient {
  private readonly socket: net.Socket;
  private readonly decoder = new QmpDecoder({ maxBuffer: AGENT_MAX_MESSAGE_BYTES, syncDelimiter: true });
  private readonly timeoutMs: number;
  private readonly syncTimeoutMs: number;
  /** At most one call: execute() and sync() are serialised. */
  private readonly pending = new PendingCalls<string | number, QmpMessage, CallKind>();
  private closeError: VirError | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private needsSync = true;
  private nextId = 1;
  private echoesIds = false;

  private constructor(socket: net.Socket, opts: GuestAgentOptions) {
    this.socket = socket;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS;
    this.syncTimeoutMs = opts.syncTimeoutMs ?? DEFAULT_AGENT_SYNC_TIMEOUT_MS;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(unresponsive('Guest agent disappeared while executing command', err)));
    socket.on('close', () => this.shutdown(unresponsive('Guest agent disappeared while executing command')));
  }

  /** Connect to the agent's socket and synchronise. */
  static async connect(socketPath: string, opts: GuestAgentOptions = {}): Promise<GuestAgentClient> {
    const socket = net.createConnection({ path: socketPath });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
    } catch (e) {
      socket.destroy();
      throw unresponsive('QEMU guest agent is not connected', e);
    }
    const agent = new GuestAgentClient(socket, opts);
    try {
      await agent.sync();
    } catch (e) {
      agent.close();
      throw e;
    }
    return agent;
  }

  get isClosed(): boolean {
    return this.closeError !== undefined;
  }

  /** Discard stale replies until the agent echoes a fresh random id. */
  sync(timeoutMs = this.syncTimeoutMs): Promise<void> {
    return this.serialized(() => this.doSync(timeoutMs));
  }

  /** Run one agent command; resolves with its "return". */
  execute(cmd: string, args?: object, opts?: { timeoutMs?: number }): Promise<unknown> {
    return this.serialized(async () => {
      if (this.needsSync) await this.doSync(this.syncTimeoutMs);
      const id = `vb-ga-${this.nextId++}`;
      const timeoutMs = opts?.timeoutMs ?? this.timeoutMs;
      const reply = await this.await(id, 'command', encodeCommand(cmd, args, id), timeoutMs);
      if (isErrorReply(reply)) {
        throw virErr('INTERNAL_ERROR', 'QEMU', `unable to execute QEMU agent command '${cmd}': ${reply.error.desc}`);
      }
      return isReturn(reply) ? reply.return : undefined;
    });
  }

  async ping(opts?: { timeoutMs?: number }): Promise<void> {
    await this.execute('guest-ping', undefined, opts);
  }

  /** Freeze all file systems, or only these mount points. Resolves with the number frozen. */
  async fsfreezeFreeze(mountpoints?: string[], opts?: { timeoutMs?: number }): Promise<number> {
    const ret =
      mountpoints === undefined
        ? await this.execute('guest-fsfreeze-freeze', undefined, opts)
        : await this.execute('guest-fsfreeze-freeze-list', { mountpoints }, opts);
    return this.expectNumber('guest-fsfreeze-freeze', ret);
  }

  /** Resolves with the number of file systems thawed. */
  async fsfreezeThaw(opts?: { timeoutMs?: number }): Promise<number> {
    return this.expectNumber('guest-fsfreeze-thaw', await this.execute('guest-fsfreeze-thaw', undefined, opts));
  }

  async fsfreezeStatus(opts?: { timeoutMs?: number }): Promise<FsFreezeStatus> {
    const ret = await this.execute('guest-fsfreeze-status', undefined, opts);
    if (ret !== 'frozen' && ret !== 'thawed') {
      throw virErr('INTERNAL_ERROR', 'QEMU', `unexpected reply to guest agent command 'guest-fsfreeze-status': ${JSON.stringify(ret)}`);
    }
    return ret;
  }

  close(): void {
    this.shutdown(unresponsive('QEMU guest agent is not connected'));
    this.socket.destroy();
  }

  private expectNumber(cmd: string, ret: unknown): number {
    if (typeof ret !== 'number') {
      throw virErr('INTERNAL_ERROR', 'QEMU', `unexpected reply to guest agent command '${cmd}': ${JSON.stringify(ret)}`);
    }
    return ret;
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private async doSync(timeoutMs: number): Promise<void> {
    const deadline = hasTimeout(timeoutMs) ? Date.now() + timeoutMs : Infinity;
    let interval = SYNC_RETRY_MS;
    for (;;) {
      // A fresh id per attempt, and only the latest one counts: replies come in
      // order, so waiting for it also swallows the answers to earlier attempts
      // (and the parse errors their 0xFF bytes draw) that a booting guest
      // delivers all at once.
      const id = randomInt(1, 2 ** 31);
      const request = Buffer.concat([
        Buffer.from([0xff]),
        Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n'),
      ]);
      const attempt = Math.min(interval, deadline - Date.now());
      try {
        await this.await(id, 'sync', request, Math.max(1, attempt));
        this.needsSync = false;
        return;
      } catch (e) {
        if (this.closeError || Date.now() >= deadline) throw e;
      }
      interval = Math.min(interval * 1.5, SYNC_RETRY_MAX_MS);
    }
  }

  /** Send `request` and wait for the reply that answers call `id`. */
  private await(id: string | number, kind: CallKind, request: Buffer, timeoutMs: number): Promise<QmpMessage> {
    if (this.closeError) return Promise.reject(this.closeError);
    const reply = this.pending.add(id, kind, {
      ms: timeoutMs,
      error: () => {
        // A late reply could be taken for the next command's: resync first.
        this.needsSync = true;
        return unresponsive('Guest agent not available for now');
      },
    });
    this.socket.write(request);
    return reply;
  }

  private onData(chunk: Buffer): void {
    let messages: QmpMessage[];
    try {
      messages = this.decoder.push(chunk);
    } catch (e) {
      messages = e instanceof QmpDecodeError ? e.messages : [];
      for (const m of messages) this.deliver(m);
      this.shutdown(unresponsive(`invalid data from guest agent: ${(e as Error).message}`, e));
      this.socket.destroy();
      return;
    }
    for (const m of messages) this.deliver(m);
  }

  private deliver(m: QmpMessage): void {
    const call = this.pending.oldest();
    if (!call || !(isReturn(m) || isErrorReply(m))) return; // stale reply or event: drop
    const [id, kind] = call;
    if (kind === 'sync') {
      if (isReturn(m) && m.return === id) this.pending.take(id)!.resolve(m);
      return;
    }
    // qemu-ga echoes ids; once seen, an id-less reply is stale (e.g. the parse error of a sync's 0xFF).
    if (m.id === id) {
      this.echoesIds = true;
      this.pending.take(id)!.resolve(m);
    } else if (m.id === undefined && !this.echoesIds) {
      this.pending.take(id)!.resolve(m);
    }
  }

  private shutdown(err: VirError): void {
    if (this.closeError) return;
    this.closeError = err;
    this.pending.rejectAll(err);
  }
}
