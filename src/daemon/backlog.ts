// The daemon's startup backlog: events the driver published while it was
// being opened (jobs recovered after a restart: a push that finished while no
// daemon ran, a QEMU that died meanwhile). Nobody was subscribed then, so
// each client that subscribes later is sent them once. Kept for a bounded
// time and count: an event about a restart long ago is noise, and a backlog
// must not grow without limit.

import type { Driver, DriverEvent } from '../api/driver.js';

export interface BacklogOptions {
  /** how long after its arrival an event is still replayed (default 10 minutes) */
  ttlMs?: number;
  /** most events kept; the oldest go first (default 1000) */
  maxEvents?: number;
  /** clock in ms (tests) */
  now?: () => number;
}

export const DEFAULT_BACKLOG_TTL_MS = 10 * 60_000;
export const DEFAULT_BACKLOG_MAX_EVENTS = 1000;

export class EventBacklog {
  private readonly entries: { at: number; event: DriverEvent }[] = [];
  private readonly ttlMs: number;
  private readonly maxEvents: number;
  private readonly now: () => number;

  constructor(opts: BacklogOptions = {}) {
    this.ttlMs = opts.ttlMs ?? DEFAULT_BACKLOG_TTL_MS;
    this.maxEvents = opts.maxEvents ?? DEFAULT_BACKLOG_MAX_EVENTS;
    this.now = opts.now ?? Date.now;
  }

  add(events: readonly DriverEvent[]): void {
    const at = this.now();
    for (const event of events) this.entries.push({ at, event });
    if (this.entries.length > this.maxEvents) this.entries.splice(0, this.entries.length - this.maxEvents);
  }

  /** The events still within their time, oldest first (expired ones are dropped for good). */
  current(): DriverEvent[] {
    const limit = this.now() - this.ttlMs;
    let drop = 0;
    while (drop < this.entries.length && this.entries[drop]!.at < limit) drop++;
    if (drop > 0) this.entries.splice(0, drop);
    return this.entries.map((e) => e.event);
  }

  get size(): number {
    return this.entries.length;
  }
}

/** The events a driver kept from its own open() (Driver.recoveredEvents); drivers without the capability have none. */
export function drainRecoveredEvents(driver: Driver): DriverEvent[] {
  return driver.recoveredEvents?.() ?? [];
}
