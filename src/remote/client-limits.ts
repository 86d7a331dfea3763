// What a daemon socket bounds for untrusted clients, shared by virtbackd's own
// protocol (remote/server.ts) and libvirt's (libvirt/server.ts): a cap on
// connections, a daemon-wide budget of bytes held for all clients together,
// and per client a cap on calls in flight and on replies it leaves untaken
// (reading pauses while either holds; a client that takes nothing for a
// while, or lets too much pile up, is dropped). A slow or hostile client
// costs only itself.

import type * as net from 'node:net';

export interface ClientLimitOptions {
  /** Bytes queued for one client beyond which that client is dropped (default 64 MiB). */
  maxQueuedBytes?: number;
  /**
   * Bytes held for all clients together (unread input and queued output)
   * beyond which the heaviest client is dropped (default 256 MiB): many
   * clients each under their own bound must not add up to the daemon's memory.
   */
  maxTotalBufferedBytes?: number;
  /** Connections beyond which new ones are closed at once (default 1024). */
  maxClients?: number;
  /** How long a client may leave its queued replies untaken before it is dropped (default 10 s). */
  stalledReaderMs?: number;
  /** Calls of one client in flight beyond which its socket is no longer read (default 32). */
  maxInflight?: number;
}

export type ClientLimitValues = Required<ClientLimitOptions>;

export function clientLimits(opts: ClientLimitOptions): ClientLimitValues {
  return {
    maxQueuedBytes: opts.maxQueuedBytes ?? 64 * 1024 * 1024,
    maxTotalBufferedBytes: opts.maxTotalBufferedBytes ?? 256 * 1024 * 1024,
    maxClients: opts.maxClients ?? 1024,
    stalledReaderMs: opts.stalledReaderMs ?? 10_000,
    maxInflight: opts.maxInflight ?? 32,
  };
}

/** A connection as the limits see it. */
export interface LimitedClient {
  /** Bytes held for it: input waiting for the rest of a message, output it has not taken. */
  readonly bufferedBytes: number;
  /** Closes it now, logging why; idempotent. */
  drop(reason: string): void;
}

/** Below this many bytes held, a client is not worth a scan of all clients' buffers. */
const BUDGET_SCAN_FLOOR = 256 * 1024;

/** The connections of one server, under its connection cap and its buffered-bytes budget. */
export class ClientPool<C extends LimitedClient> {
  readonly limits: ClientLimitValues;
  private readonly clients = new Set<C>();

  constructor(opts: ClientLimitOptions = {}) {
    this.limits = clientLimits(opts);
  }

  get size(): number {
    return this.clients.size;
  }

  /** At the connection cap: the caller closes a new connection at once. */
  get full(): boolean {
    return this.clients.size >= this.limits.maxClients;
  }

  add(client: C): void {
    this.clients.add(client);
  }

  delete(client: C): void {
    this.clients.delete(client);
  }

  /** A snapshot, so callers may drop clients while iterating. */
  all(): C[] {
    return [...this.clients];
  }

  clear(): void {
    this.clients.clear();
  }

  /** Bytes held for all clients now (unread input, queued output). */
  get bufferedBytes(): number {
    let total = 0;
    for (const c of this.clients) total += c.bufferedBytes;
    return total;
  }

  /**
   * The daemon-wide bound on what clients make it hold: over it, the client
   * holding the most is dropped. Scanned only when `client` itself holds a
   * fair amount (below the floor, all clients together stay under
   * maxClients × floor).
   */
  checkBudget(client: C): void {
    if (client.bufferedBytes < BUDGET_SCAN_FLOOR) return;
    let total = 0;
    let heaviest = client;
    for (const c of this.clients) {
      total += c.bufferedBytes;
      if (c.bufferedBytes > heaviest.bufferedBytes) heaviest = c;
    }
    const max = this.limits.maxTotalBufferedBytes;
    if (total > max) heaviest.drop(`clients hold ${total} bytes, over the daemon's ${max}; this one held ${heaviest.bufferedBytes}`);
  }
}

/**
 * One client's reading: paused while it has too many calls in flight or
 * leaves its replies in the socket's queue (each queued write costs far
 * more memory than its bytes), resumed when neither holds.
 */
export class FlowControl<C extends LimitedClient> {
  private inflight = 0;
  private paused = false;
  /** replies are waiting in the socket's queue: reading is paused until it drains */
  private waitingDrain = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly pool: ClientPool<C>,
    private readonly client: C,
  ) {}

  /** Calls read but not yet answered. */
  get callsInFlight(): number {
    return this.inflight;
  }

  callStarted(): void {
    this.inflight++;
    if (this.inflight >= this.pool.limits.maxInflight) this.pause();
  }

  callEnded(): void {
    this.inflight--;
    this.maybeResume();
  }

  /** After bytes were read: input waiting for the rest of a message counts against the budget. */
  received(): void {
    this.pool.checkBudget(this.client);
  }

  /** After `socket.write()` returned `flushed`: hold reading, or drop a client that lets too much pile up. */
  wrote(flushed: boolean): void {
    if (!flushed) this.holdUntilDrained();
    const max = this.pool.limits.maxQueuedBytes;
    if (this.socket.writableLength > max) this.client.drop(`outgoing queue over ${max} bytes (client not reading)`);
    else this.pool.checkBudget(this.client);
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private holdUntilDrained(): void {
    if (this.waitingDrain) return;
    this.waitingDrain = true;
    this.pause();
    const ms = this.pool.limits.stalledReaderMs;
    const stalled = setTimeout(() => this.client.drop(`took none of its replies for ${ms} ms`), ms);
    stalled.unref();
    this.socket.once('drain', () => {
      clearTimeout(stalled);
      this.waitingDrain = false;
      this.maybeResume();
    });
  }

  /** Read the client's calls again once neither too many are in flight nor its replies wait. */
  private maybeResume(): void {
    if (this.paused && !this.socket.destroyed && !this.waitingDrain && this.inflight < this.pool.limits.maxInflight) {
      this.paused = false;
      this.socket.resume();
    }
  }
}
