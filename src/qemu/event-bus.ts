// The driver's event subscribers, and the events held back while a domain is
// being stopped: a hook that publishes during the stop (a backup job failing
// with its domain) must not reach a listener before the domain is shut off.

import type { DriverEvent, EventListener } from '../api/driver.js';
import { errField, type Logger } from '../log.js';

export class EventBus {
  private readonly listeners = new Set<EventListener>();
  /** per domain uuid: events held while it stops (see hold) */
  private readonly held = new Map<string, DriverEvent[]>();

  constructor(private readonly log: Logger) {}

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Publish to every subscriber, or queue it while its domain's events are held. */
  emit(ev: DriverEvent): void {
    const queue = this.held.get(ev.domain.uuid);
    if (queue) {
      queue.push(ev);
      return;
    }
    for (const l of [...this.listeners]) {
      try {
        l(ev);
      } catch (e) {
        this.log.warn({ ...errField(e), event: ev.type, domain: ev.domain.name }, 'event listener threw');
      }
    }
  }

  /** Run `fn` with the domain's events held; they are published (in order) once it settles. */
  async holding<T>(uuid: string, fn: () => Promise<T>): Promise<T> {
    const queue: DriverEvent[] = [];
    this.held.set(uuid, queue);
    try {
      return await fn();
    } finally {
      this.held.delete(uuid);
      for (const ev of queue) this.emit(ev);
    }
  }

  clear(): void {
    this.listeners.clear();
  }
}

/** A lifecycle event of `dom` (libvirt's event/detail pairs as words: 'stopped'/'crashed'). */
export function lifecycleEvent(dom: { name: string; uuid: string }, event: string, detail: string): DriverEvent {
  return { type: 'lifecycle', domain: { name: dom.name, uuid: dom.uuid }, event, detail };
}
