// The driver's domains by uuid and by name (libvirt's virDomainObjList), the
// lock that keeps both maps consistent while a definition file is written, and
// the per-domain lock every mutating operation runs under.

import { virErr } from '../errors.js';
import type { DomainObject } from './domain-object.js';
import type { HookSet } from './hook-set.js';
import { AsyncMutex } from './mutex.js';

export class DomainRegistry {
  private readonly byUuid = new Map<string, DomainObject>();
  private readonly byName = new Map<string, DomainObject>();
  /** guards the name/uuid maps while a definition file is written */
  readonly defineLock = new AsyncMutex();

  constructor(private readonly hooks: HookSet) {}

  /** The domain, or NO_DOMAIN. */
  get(uuid: string): DomainObject {
    const dom = this.find(uuid);
    if (!dom) throw virErr('NO_DOMAIN', 'QEMU', `Domain not found: no domain with matching uuid '${uuid}'`);
    return dom;
  }

  find(uuid: string): DomainObject | undefined {
    return this.byUuid.get(String(uuid).toLowerCase());
  }

  /** The domain called `name`, or NO_DOMAIN. */
  getByName(name: string): DomainObject {
    const dom = this.byName.get(name);
    if (!dom) throw virErr('NO_DOMAIN', 'QEMU', `Domain not found: no domain with matching name '${name}'`);
    return dom;
  }

  findByName(name: string): DomainObject | undefined {
    return this.byName.get(name);
  }

  /** Every domain, by name. */
  all(): DomainObject[] {
    return [...this.byUuid.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Run `fn` holding the domain's mutex. The domain is looked up again inside,
   * so `fn` never sees a domain that was removed while it waited.
   */
  withDomainLock<T>(uuid: string, fn: (dom: DomainObject) => Promise<T>): Promise<T> {
    const dom = this.get(uuid);
    return dom.lock.run(async () => {
      if (dom.removed) this.get(uuid); // throws NO_DOMAIN
      return fn(dom);
    });
  }

  /** Enter a new domain and let the modules attach their per-domain state (onLoaded). */
  async add(dom: DomainObject): Promise<void> {
    this.byUuid.set(dom.uuid, dom);
    this.byName.set(dom.name, dom);
    await dom.lock.run(() => this.hooks.run(dom, 'onLoaded'));
  }

  /** Forget the domain (undefined while inactive, or transient and stopped). Its lock is held. */
  async remove(dom: DomainObject): Promise<void> {
    dom.removed = true;
    if (this.byUuid.get(dom.uuid) === dom) this.byUuid.delete(dom.uuid);
    if (this.byName.get(dom.name) === dom) this.byName.delete(dom.name);
    await this.hooks.run(dom, 'onRemoved');
  }
}
