// Live updates for the console: one subscription to the daemon's events
// (domain lifecycle, job completion, block jobs) plus console task progress,
// fanned out to the open Server-Sent-Event streams. Bounded: a hostile local
// user may open many streams, so past the cap the oldest is closed; one
// session holds at most a few (its own oldest goes first), so a session that
// opens streams in a loop churns its own, not other users' consoles. Pings
// every 25 s keep proxies from timing a stream out; with no stream open no
// timer runs, so an idle daemon pays nothing.

import type { DriverEvent } from '../api/driver.js';

export interface SseClient {
  /** the session it belongs to (closed when that session ends) */
  session: string;
  send(event: string, data: unknown): void;
  close(): void;
}

export interface DomainEventView {
  type: DriverEvent['type'];
  domain: { uuid: string; name: string };
  detail: Record<string, unknown>;
  time: string;
}

export const PING_INTERVAL_MS = 25_000;
/** streams one session keeps: a few tabs (browsers hold ~6 connections per host anyway) */
export const STREAMS_PER_SESSION = 8;

export function domainEventView(ev: DriverEvent): DomainEventView {
  const { type, domain, ...rest } = ev;
  return { type, domain: { uuid: domain.uuid, name: domain.name }, detail: rest, time: new Date().toISOString() };
}

export class EventHub {
  private readonly clients = new Set<SseClient>();
  private ping: NodeJS.Timeout | null = null;

  constructor(
    private readonly max: number,
    private readonly pingMs = PING_INTERVAL_MS,
    private readonly perSession = STREAMS_PER_SESSION,
  ) {}

  get size(): number {
    return this.clients.size;
  }

  add(c: SseClient): () => void {
    // Set order is opening order: the first found is the oldest
    const own = [...this.clients].filter((x) => x.session === c.session);
    for (const old of own.slice(0, Math.max(0, own.length - this.perSession + 1))) this.remove(old);
    while (this.clients.size >= this.max) this.remove(this.clients.values().next().value!);
    this.clients.add(c);
    this.ping ??= setInterval(() => this.broadcast('ping', { time: new Date().toISOString() }), this.pingMs);
    return () => this.remove(c);
  }

  broadcast(event: string, data: unknown): void {
    for (const c of [...this.clients]) {
      try {
        c.send(event, data);
      } catch {
        this.remove(c);
      }
    }
  }

  /** Close the streams of one session (logout, expiry). */
  closeSession(session: string): void {
    for (const c of [...this.clients]) if (c.session === session) this.remove(c);
  }

  closeAll(): void {
    for (const c of [...this.clients]) this.remove(c);
  }

  private remove(c: SseClient): void {
    if (!this.clients.delete(c)) return;
    try {
      c.close();
    } catch {
      // already gone
    }
    if (this.clients.size === 0 && this.ping) {
      clearInterval(this.ping);
      this.ping = null;
    }
  }
}
