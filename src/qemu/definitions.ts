// Persistent domain definitions (domains/<uuid>.xml): loaded at open(),
// defined, undefined, and their autostart mark (autostart/<uuid>). A running
// domain undefined becomes transient and goes away when it stops
// (lifecycle.ts removes it then).

import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { DomainRef } from '../api/driver.js';
import { virErr } from '../errors.js';
import { UndefineFlags } from '../flags.js';
import { errField, type Logger } from '../log.js';
import { formatDomainXML, parseDomainXML, type DomainDef } from '../xml/domain.js';
import { DomainObject } from './domain-object.js';
import { undefineNvram } from './firmware.js';
import { lifecycleEvent, type EventBus } from './event-bus.js';
import type { CheckpointOps } from './host.js';
import type { DomainRegistry } from './registry.js';
import { listIds, removeFileDurably, writeFileAtomic, type StatePaths } from './state.js';

export interface DefinitionsEnv {
  paths: StatePaths;
  log: Logger;
  bus: EventBus;
  registry: DomainRegistry;
  /** drops an inactive domain's checkpoint metadata on undefine (null: no checkpoint module) */
  checkpoints: () => Pick<CheckpointOps, 'discardAllMetadata'> | null;
}

export class DomainDefinitions {
  constructor(private readonly env: DefinitionsEnv) {}

  /** Load every definition file; a broken or clashing one is logged and skipped. */
  async load(): Promise<void> {
    const { paths, registry, log } = this.env;
    for (const id of await listIds(paths.domainsDir, '.xml')) {
      const file = paths.definition(id);
      let def: DomainDef;
      try {
        def = parseDomainXML(await readFile(file, 'utf8'));
      } catch (e) {
        log.warn({ ...errField(e), file }, 'cannot load domain definition');
        continue;
      }
      def.uuid = def.uuid.toLowerCase();
      if (def.uuid !== id || registry.findByName(def.name)) {
        log.warn({ file, domain: def.name, uuid: def.uuid }, 'ignoring domain definition: uuid or name clash');
        continue;
      }
      const dom = new DomainObject(def, true);
      dom.autostart = existsSync(paths.autostart(def.uuid));
      await registry.add(dom);
    }
  }

  /** virDomainSetAutostart: mark (or unmark) a persistent domain, on disk first. */
  setAutostart(uuid: string, autostart: boolean): Promise<void> {
    return this.env.registry.withDomainLock(uuid, async (dom) => {
      if (!dom.persistent) {
        throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: cannot set autostart for transient domain');
      }
      const file = this.env.paths.autostart(dom.uuid);
      if (autostart) await writeFileAtomic(file, `${dom.name}\n`);
      else await removeFileDurably(file);
      if (dom.autostart !== autostart) this.env.log.info({ domain: dom.name, uuid: dom.uuid, autostart }, 'autostart changed');
      dom.autostart = autostart;
    });
  }

  /** Define a new domain or replace the persistent definition of an existing one (same uuid and name). */
  define(def: DomainDef): Promise<DomainRef> {
    const { registry } = this.env;
    def.uuid = def.uuid.toLowerCase();
    return registry.defineLock.run(async () => {
      const existing = registry.find(def.uuid);
      if (existing && existing.name !== def.name) {
        throw virErr('OPERATION_FAILED', 'QEMU',
          `operation failed: domain '${existing.name}' is already defined with uuid ${def.uuid}`);
      }
      const sameName = registry.findByName(def.name);
      if (sameName && sameName.uuid !== def.uuid) {
        throw virErr('OPERATION_FAILED', 'QEMU',
          `operation failed: domain '${def.name}' already exists with uuid ${sameName.uuid}`);
      }
      if (existing) await existing.lock.run(() => this.redefine(existing, def));
      else {
        await this.writeDefinition(def);
        await registry.add(new DomainObject(def, true));
        this.defined(def, 'added');
      }
      return { name: def.name, uuid: def.uuid };
    });
  }

  private async redefine(dom: DomainObject, def: DomainDef): Promise<void> {
    await this.writeDefinition(def);
    dom.def = def;
    dom.persistent = true;
    if (dom.run && !dom.run.status.persistent) {
      // a running transient domain defined again becomes persistent again
      dom.run.status.persistent = true;
      await dom.run.save();
    }
    this.defined(def, 'updated');
  }

  private writeDefinition(def: DomainDef): Promise<void> {
    return writeFileAtomic(this.env.paths.definition(def.uuid), formatDomainXML(def, { secure: true }));
  }

  private defined(def: DomainDef, detail: 'added' | 'updated'): void {
    this.env.log.info({ domain: def.name, uuid: def.uuid, detail }, 'domain defined');
    this.env.bus.emit(lifecycleEvent(def, 'defined', detail));
  }

  /** Remove the persistent definition; a running domain stays, transient, until it stops. */
  async undefine(uuid: string, flags: number): Promise<void> {
    const { registry } = this.env;
    await registry.defineLock.run(() => registry.withDomainLock(uuid, async (dom) => {
      if (!dom.persistent) {
        throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: cannot undefine transient domain');
      }
      // libvirt refuses only for an inactive domain: a running one keeps its
      // checkpoints in memory until it stops (qemuDomainUndefineFlags).
      await undefineNvram(dom.def, this.env.paths.nvramDir, flags);
      if (!dom.active) await this.dropCheckpoints(dom, flags);
      // libvirt drops the autostart link with the definition
      await removeFileDurably(this.env.paths.autostart(dom.uuid));
      dom.autostart = false;
      await removeFileDurably(this.env.paths.definition(dom.uuid));
      this.env.log.info({ domain: dom.name, uuid: dom.uuid, running: dom.active }, 'domain undefined');
      this.env.bus.emit(lifecycleEvent(dom, 'undefined', 'removed'));
      if (dom.run) {
        dom.persistent = false;
        dom.run.status.persistent = false;
        await dom.run.save();
      } else {
        await registry.remove(dom);
      }
    }));
  }

  private async dropCheckpoints(dom: DomainObject, flags: number): Promise<void> {
    const n = dom.checkpoints?.count() ?? 0;
    if (n === 0) return;
    if (!(flags & UndefineFlags.CHECKPOINTS_METADATA)) {
      throw virErr('OPERATION_INVALID', 'QEMU',
        `Requested operation is not valid: cannot delete inactive domain with ${n} checkpoints`);
    }
    const checkpoints = this.env.checkpoints();
    if (!checkpoints) {
      throw virErr('NO_SUPPORT', 'QEMU', 'this function is not supported by the connection driver: virDomainUndefineFlags with checkpoints');
    }
    await checkpoints.discardAllMetadata(dom);
  }
}
