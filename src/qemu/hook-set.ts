// The lifecycle hooks the checkpoint and backup modules (and the daemon's
// job tap) register. A hook that throws is logged and does not stop the others:
// one module's failure must not keep a domain from starting or stopping.

import { errField, type Logger } from '../log.js';
import type { DomainObject } from './domain-object.js';
import type { DomainHooks } from './host.js';

export class HookSet {
  private readonly hooks = new Set<DomainHooks>();

  constructor(private readonly log: Logger) {}

  /** Register `h`; returns the function that removes it. */
  add(h: DomainHooks): () => void {
    this.hooks.add(h);
    return () => this.hooks.delete(h);
  }

  /** Run hook `name` of every registration, in order (`reason` for onStopped). */
  async run(dom: DomainObject, name: keyof DomainHooks, reason?: number): Promise<void> {
    for (const h of [...this.hooks]) {
      try {
        if (name === 'onStopped') await h.onStopped?.(dom, reason ?? 0);
        else await h[name]?.(dom);
      } catch (e) {
        this.log.warn({ ...errField(e), domain: dom.name, uuid: dom.uuid, hook: name }, `${name} hook failed`);
      }
    }
  }
}
