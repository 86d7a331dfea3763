// Checkpoints on QEMU (libvirt's qemu_checkpoint.c): one persistent, recording
// dirty bitmap per checkpoint and disk, named after the checkpoint, on the
// disk's format node; metadata in <stateDir>/checkpoints/<uuid>/ (checkpoint-store.ts).
//
// Beyond libvirt: the metadata is compared with the bitmaps QEMU (or the
// image, when shut off) really holds on every driver start, domain start and
// stop, and before each use; a checkpoint whose bitmap is missing or broken is marked
// inconsistent with the reason, refused as an incremental base, and removable.

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { UnknownBitmap } from '../api/driver.js';
import { virErr } from '../errors.js';
import {
  checkFlags,
  CheckpointCreateFlags as Create,
  CheckpointDeleteFlags as Delete,
  CheckpointListFlags as List,
  CheckpointXMLFlags as XmlFlags,
} from '../flags.js';
import {
  alignCheckpointDisks,
  checkpointDomainUUID,
  formatCheckpointXML,
  parseCheckpointXML,
  type CheckpointDef,
} from '../xml/checkpoint.js';
import { domainDiskRefs, domainToElement, type DomainDef } from '../xml/domain.js';
import {
  bitmapProblem,
  bitmapsFromImageInfo,
  findBitmap,
  isTempBitmap,
  nodeBitmapsFromQmp,
  SIZE_BITMAP,
  type NodeBitmaps,
} from './bitmaps.js';
import { CheckpointStore } from './checkpoint-store.js';
import { CheckpointTree } from './checkpoint-tree.js';
import type { DomainObject } from './domain-object.js';
import type { CheckpointAccess, CheckpointOps, DomainHost, PreparedCheckpoint } from './host.js';
import { qmpErrorToVirError, type QmpClient } from './qmp/client.js';
import type { TransactionAction } from './qmp/commands.js';
import { removeFileDurably } from './state.js';
import { errField } from '../log.js';

const run = promisify(execFile);
const CP = 'DOMAIN_CHECKPOINT';

/** What backupBegin needs to create a checkpoint in its own transaction. */
export type { PreparedCheckpoint } from './host.js';

export class QemuCheckpoints implements CheckpointOps, CheckpointAccess {
  constructor(private readonly driver: DomainHost) {
    driver.addHooks({
      onLoaded: async (dom) => {
        const store = new CheckpointStore(this.dirFor(dom.uuid), this.driver.log);
        await store.load();
        dom.checkpoints = store;
        // A domain with a status file may still be running (reconnect comes next):
        // its images are then checked through QMP, not read behind QEMU's back.
        if (!dom.active && !existsSync(this.driver.paths.status(dom.uuid))) {
          await this.refreshOffline(dom).catch((e) => this.checkFailed(dom, e));
        }
      },
      onStarted: (dom) => this.refreshLive(dom).then(() => undefined, (e) => this.checkFailed(dom, e)),
      onReconnected: (dom) => this.refreshLive(dom).then(() => undefined, (e) => this.checkFailed(dom, e)),
      // QEMU is gone: what its images hold now is what the checkpoints are worth
      // (a crash leaves bitmaps unsaved), so mark them at once, not at the next start.
      onStopped: (dom) => this.refreshOffline(dom).catch((e) => this.checkFailed(dom, e)),
      // a transient domain that stopped, or an undefined one: its metadata goes with it
      onRemoved: (dom) => this.discardAllMetadata(dom),
    });
  }

  private checkFailed(dom: DomainObject, e: unknown): void {
    this.driver.log.warn({ ...errField(e), domain: dom.name, uuid: dom.uuid }, 'checking checkpoints against the disks failed');
  }

  private dirFor(uuid: string): string {
    return path.join(this.driver.paths.dirs.stateDir, 'checkpoints', uuid);
  }

  store(dom: DomainObject): CheckpointStore {
    if (dom.checkpoints instanceof CheckpointStore) return dom.checkpoints;
    const store = new CheckpointStore(this.dirFor(dom.uuid), this.driver.log);
    dom.checkpoints = store;
    return store;
  }

  // ------------------------------------------------------------ consistency

  private async queryBitmaps(qmp: QmpClient): Promise<NodeBitmaps> {
    try {
      return nodeBitmapsFromQmp(await qmp.execute('query-named-block-nodes', { flat: true }));
    } catch (e) {
      throw qmpErrorToVirError(e, 'cannot query block nodes');
    }
  }

  /** Compare every checkpoint with the bitmaps on the running domain's disks; persist changed marks. */
  async refreshLive(dom: DomainObject): Promise<NodeBitmaps> {
    const qmp = await this.driver.monitor(dom.uuid);
    const nodes = await this.queryBitmaps(qmp);
    const formatNode = new Map(dom.disks.map((d) => [d.target, d.formatNode]));
    await this.applyCheck(dom, (disk, bitmap) => {
      const node = formatNode.get(disk);
      if (node === undefined) return null; // disk no longer in the domain: nothing to check (libvirt tolerates it)
      if (node === null) return 'disk has no media';
      return bitmapProblem(findBitmap(nodes, node, bitmap));
    }, (disk) => {
      const node = formatNode.get(disk);
      return node ? (nodes.get(node) ?? []).map((b) => b.name) : [];
    });
    return nodes;
  }

  /** Same check for a shut-off domain, reading the qcow2 images with qemu-img. */
  async refreshOffline(dom: DomainObject): Promise<void> {
    const store = this.store(dom);
    if (store.count() === 0) return;
    const byDisk = new Map<string, ReturnType<typeof bitmapsFromImageInfo> | null>();
    for (const disk of dom.def.disks) {
      if (disk.source === null || disk.format !== 'qcow2') continue;
      try {
        const { stdout } = await run('qemu-img', ['info', '--output=json', '--force-share', disk.source]);
        byDisk.set(disk.target, bitmapsFromImageInfo(JSON.parse(stdout)));
      } catch {
        byDisk.set(disk.target, null);
      }
    }
    await this.applyCheck(dom, (disk, bitmap) => {
      if (!byDisk.has(disk)) return null;
      const list = byDisk.get(disk);
      if (list === null || list === undefined) return 'image unreadable';
      return bitmapProblem(list.find((b) => b.name === bitmap));
    }, (disk) => (byDisk.get(disk) ?? []).map((b) => b.name));
  }

  private async applyCheck(
    dom: DomainObject,
    problemOf: (disk: string, bitmap: string) => string | null,
    bitmapsOf: (disk: string) => string[],
  ): Promise<void> {
    const store = this.store(dom);
    const known = new Set<string>();
    const disks = new Set<string>();
    for (const def of store.defs.values()) {
      const problems: string[] = [];
      for (const d of def.disks) {
        if (d.checkpoint !== 'bitmap' || d.bitmap === null) continue;
        known.add(d.bitmap);
        disks.add(d.name);
        const p = problemOf(d.name, d.bitmap);
        if (p !== null) problems.push(`disk ${d.name}, bitmap ${d.bitmap}: ${p}`);
      }
      const mark = problems.length ? problems.join('; ') : null;
      if ((def.inconsistent ?? null) !== mark) {
        def.inconsistent = mark;
        await store.save(def);
      }
    }
    for (const disk of dom.liveDef?.disks ?? dom.def.disks) disks.add(disk.target);
    store.unknownBitmaps = [];
    for (const disk of disks) {
      for (const b of bitmapsOf(disk)) {
        if (!known.has(b) && !isTempBitmap(b)) store.unknownBitmaps.push({ disk, bitmap: b });
      }
    }
  }

  /**
   * Before a checkpoint is used as an incremental base: re-check it against QEMU
   * and refuse it with CHECKPOINT_INCONSISTENT naming disk and bitmap.
   */
  async ensureUsable(dom: DomainObject, name: string, disk: string): Promise<{ bitmap: string; granularity: number }> {
    const store = this.store(dom);
    const def = store.defs.get(name);
    if (!def) {
      throw virErr('NO_DOMAIN_CHECKPOINT', CP, `Checkpoint '${name}' for incremental backup of disk '${disk}' not found`);
    }
    const nodes = await this.refreshLive(dom);
    const cd = def.disks.find((d) => d.name === disk);
    const bitmap = cd?.checkpoint === 'bitmap' && cd.bitmap ? cd.bitmap : name;
    const node = dom.disks.find((d) => d.target === disk)?.formatNode ?? null;
    const state = node === null ? undefined : findBitmap(nodes, node, bitmap);
    const problem = cd?.checkpoint === 'bitmap' ? bitmapProblem(state) : 'disk not part of the checkpoint';
    if (problem !== null || state === undefined) {
      throw virErr('CHECKPOINT_INCONSISTENT', 'QEMU', `missing or broken bitmap '${bitmap}' for disk '${disk}': ${problem}`);
    }
    return { bitmap, granularity: state.granularity };
  }

  /** Bitmaps in the disks that no checkpoint knows (re-checked now when the domain runs). */
  async listUnknownBitmaps(uuid: string): Promise<UnknownBitmap[]> {
    const dom = this.driver.getDomain(uuid);
    if (dom.active) await this.refreshLive(dom);
    return [...this.store(dom).unknownBitmaps];
  }

  // ------------------------------------------------------------ create

  /**
   * Parse, align and check a new checkpoint of a running domain, and build the
   * bitmap-add actions; checkpointCreateXML and backupBegin both use this.
   * The caller holds the domain lock.
   */
  prepare(dom: DomainObject, xml: string, opts: { noMetadata?: boolean } = {}): PreparedCheckpoint {
    if (!dom.active || dom.liveDef === null) {
      throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot create checkpoint for inactive domain');
    }
    const store = this.store(dom);
    const def = parseCheckpointXML(xml, { redefine: false });
    if (store.defs.has(def.name)) {
      throw virErr('OPERATION_INVALID', CP, `checkpoint '${def.name}' already exists`);
    }
    const live: DomainDef = dom.liveDef;
    alignCheckpointDisks(def, live);
    const actions: TransactionAction[] = [];
    for (const d of def.disks) {
      if (d.checkpoint !== 'bitmap') continue;
      if (d.bitmap !== def.name) {
        throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `bitmap for disk '${d.name}' must match checkpoint name '${def.name}'`);
      }
      const disk = live.disks.find((x) => x.target === d.name)!;
      if (disk.format !== 'qcow2') {
        throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `checkpoint for disk ${d.name} unsupported for storage type ${disk.format}`);
      }
      const node = dom.disks.find((x) => x.target === d.name)?.formatNode;
      if (!node) throw virErr('INTERNAL_ERROR', 'QEMU', `no block node for disk '${d.name}'`);
      actions.push({ type: 'block-dirty-bitmap-add', data: { node, name: def.name, persistent: true, disabled: false } });
    }
    if (actions.length === 0) {
      throw virErr('CONFIG_UNSUPPORTED', CP, 'no disks selected for checkpoint');
    }
    def.parent = store.tree.current;
    def.domain = domainToElement(dom.def, { secure: true });
    return {
      def,
      actions,
      commit: async () => {
        if (opts.noMetadata) return;
        try {
          await store.save(def);
        } catch (e) {
          throw virErr('INTERNAL_ERROR', 'QEMU', `unable to save metadata for checkpoint ${def.name}`, e);
        }
        store.defs.set(def.name, def);
        store.tree.add({ name: def.name, creationTime: def.creationTime, parent: def.parent });
        await store.saveCurrent();
      },
    };
  }

  async checkpointCreateXML(uuid: string, xml: string, flags: number): Promise<string> {
    checkFlags(flags, Create.REDEFINE | Create.REDEFINE_VALIDATE | Create.QUIESCE, 'virDomainCheckpointCreateXML');
    return this.driver.withDomainLock(uuid, async (dom) => {
      if (flags & Create.REDEFINE) return this.redefine(dom, xml, flags);
      const prep = this.prepare(dom, xml);
      const qmp = await this.driver.monitor(uuid);
      const transaction = async (): Promise<void> => {
        try {
          await qmp.execute('transaction', { actions: prep.actions });
        } catch (e) {
          throw qmpErrorToVirError(e, `cannot create checkpoint '${prep.def.name}'`);
        }
      };
      if (flags & Create.QUIESCE) await this.quiesced(dom, transaction);
      else await transaction();
      try {
        await prep.commit();
      } catch (e) {
        // Better than libvirt: do not leave bitmaps that no metadata describes.
        await qmp.execute('transaction', {
          actions: prep.actions.map((a) => ({ type: 'block-dirty-bitmap-remove' as const, data: { node: (a.data as { node: string }).node, name: prep.def.name } })),
        }).catch(() => {});
        throw e;
      }
      return prep.def.name;
    });
  }

  /** Freeze the guest's file systems around `fn`, always thawing (QUIESCE). */
  async quiesced<T>(dom: DomainObject, fn: () => Promise<T>): Promise<T> {
    if (dom.liveDef?.agent == null) {
      throw virErr('ARGUMENT_UNSUPPORTED', 'QEMU', 'QEMU guest agent is not configured: cannot quiesce the guest');
    }
    return this.driver.withAgent(dom.uuid, async (agent) => {
      await agent.fsfreezeFreeze();
      try {
        return await fn();
      } finally {
        await agent.fsfreezeThaw();
      }
    });
  }

  private async redefine(dom: DomainObject, xml: string, flags: number): Promise<string> {
    const store = this.store(dom);
    const def = parseCheckpointXML(xml, { redefine: true });
    const uuid = checkpointDomainUUID(def);
    if (def.domain !== null && uuid !== dom.uuid) {
      throw virErr('INVALID_ARG', CP, `definition for checkpoint ${def.name} must use uuid ${dom.uuid}`);
    }
    if (def.parent !== null) {
      if (def.parent === def.name) throw virErr('INVALID_ARG', CP, `cannot set checkpoint ${def.name} as its own parent`);
      if (!store.defs.has(def.parent)) {
        throw virErr('INVALID_ARG', CP, `parent ${def.parent} for checkpoint ${def.name} not found`);
      }
    }
    if (def.domain !== null) {
      alignCheckpointDisks(def, { disks: domainDiskRefs(def.domain) });
    } else {
      // libvirt would only name the bitmaps and keep a checkpoint without disks;
      // aligning against the domain makes "adopt this bitmap" a one-liner.
      alignCheckpointDisks(def, dom.liveDef ?? dom.def);
      def.domain = domainToElement(dom.def, { secure: true });
    }
    if (flags & Create.REDEFINE_VALIDATE) {
      if (!dom.active) throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not running');
      const qmp = await this.driver.monitor(dom.uuid);
      const nodes = await this.queryBitmaps(qmp);
      for (const d of def.disks) {
        if (d.checkpoint !== 'bitmap' || d.bitmap === null) continue;
        const disk = dom.disks.find((x) => x.target === d.name);
        if (!disk) continue; // a disk that left the domain is tolerated, as in libvirt
        if (!disk.formatNode || bitmapProblem(findBitmap(nodes, disk.formatNode, d.bitmap)) !== null) {
          throw virErr('CHECKPOINT_INCONSISTENT', 'QEMU', `missing or broken bitmap '${d.bitmap}' for disk '${d.name}'`);
        }
      }
    }
    const old = store.defs.get(def.name);
    store.tree.redefine({ name: def.name, parent: def.parent, creationTime: def.creationTime });
    def.inconsistent = old?.inconsistent ?? null;
    await store.save(def);
    store.defs.set(def.name, def);
    await store.saveCurrent();
    // Re-check against the images so a redefined checkpoint shows its true state at once.
    if (dom.active) await this.refreshLive(dom).catch(() => {});
    else await this.refreshOffline(dom).catch(() => {});
    return def.name;
  }

  // ------------------------------------------------------------ queries

  async checkpointGetXMLDesc(uuid: string, name: string, flags: number): Promise<string> {
    checkFlags(flags, XmlFlags.SECURE | XmlFlags.NO_DOMAIN | XmlFlags.SIZE, 'virDomainCheckpointGetXMLDesc');
    const dom = this.driver.getDomain(uuid);
    const def = this.store(dom).get(name);
    if (!(flags & XmlFlags.SIZE)) {
      return formatCheckpointXML(def, { secure: !!(flags & XmlFlags.SECURE), noDomain: !!(flags & XmlFlags.NO_DOMAIN) });
    }
    return this.driver.withDomainLock(uuid, async (d) => {
      if (!d.active) throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not running');
      const sized: CheckpointDef = { ...def, disks: def.disks.map((x) => ({ ...x, size: null })) };
      const qmp = await this.driver.monitor(uuid);
      const nodes = await this.refreshLive(d);
      for (const disk of sized.disks) {
        if (disk.checkpoint !== 'bitmap' || disk.bitmap === null) continue;
        const node = d.disks.find((x) => x.target === disk.name)?.formatNode;
        if (!node) continue;
        const state = findBitmap(nodes, node, disk.bitmap);
        if (bitmapProblem(state) !== null || state === undefined) continue; // no size for a broken chain, as libvirt
        disk.size = await this.dirtyBytes(qmp, node, disk.bitmap, state.granularity, nodes);
      }
      return formatCheckpointXML({ ...sized, inconsistent: def.inconsistent ?? null }, {
        secure: !!(flags & XmlFlags.SECURE), noDomain: !!(flags & XmlFlags.NO_DOMAIN), size: true,
      });
    });
  }

  /** Dirty bytes since a checkpoint, through a temporary merged bitmap that is always removed. */
  private async dirtyBytes(qmp: QmpClient, node: string, bitmap: string, granularity: number, nodes: NodeBitmaps): Promise<number> {
    if (findBitmap(nodes, node, SIZE_BITMAP)) {
      await qmp.execute('block-dirty-bitmap-remove', { node, name: SIZE_BITMAP });
    }
    try {
      await qmp.execute('transaction', {
        actions: [
          { type: 'block-dirty-bitmap-add', data: { node, name: SIZE_BITMAP, persistent: false, disabled: true, granularity } },
          { type: 'block-dirty-bitmap-merge', data: { node, target: SIZE_BITMAP, bitmaps: [{ node, name: bitmap }] } },
        ],
      });
      const after = nodeBitmapsFromQmp(await qmp.execute('query-named-block-nodes', { flat: true }));
      return findBitmap(after, node, SIZE_BITMAP)?.count ?? 0;
    } catch (e) {
      throw qmpErrorToVirError(e, `cannot compute the size of checkpoint '${bitmap}'`);
    } finally {
      await qmp.execute('block-dirty-bitmap-remove', { node, name: SIZE_BITMAP }).catch(() => {});
    }
  }

  async listAllCheckpoints(uuid: string, flags: number): Promise<string[]> {
    checkFlags(flags, List.ROOTS | List.TOPOLOGICAL | List.LEAVES | List.NO_LEAVES, 'virDomainListAllCheckpoints');
    return this.store(this.driver.getDomain(uuid)).tree.list(flags);
  }

  async checkpointListAllChildren(uuid: string, name: string, flags: number): Promise<string[]> {
    checkFlags(flags, List.DESCENDANTS | List.TOPOLOGICAL | List.LEAVES | List.NO_LEAVES, 'virDomainCheckpointListAllChildren');
    return this.store(this.driver.getDomain(uuid)).tree.list(flags, name);
  }

  async checkpointLookupByName(uuid: string, name: string, flags: number): Promise<string> {
    checkFlags(flags, 0, 'virDomainCheckpointLookupByName');
    return this.store(this.driver.getDomain(uuid)).get(name).name;
  }

  async checkpointGetParent(uuid: string, name: string, flags: number): Promise<string> {
    checkFlags(flags, 0, 'virDomainCheckpointGetParent');
    const parent = this.store(this.driver.getDomain(uuid)).tree.get(name).parent;
    if (parent === null) throw virErr('NO_DOMAIN_CHECKPOINT', CP, `checkpoint '${name}' does not have a parent`);
    return parent;
  }

  /** The inconsistency reason of a checkpoint, or null (for listings). */
  inconsistency(uuid: string, name: string): string | null {
    return this.store(this.driver.getDomain(uuid)).get(name).inconsistent ?? null;
  }

  // ------------------------------------------------------------ delete

  async checkpointDelete(uuid: string, name: string, flags: number): Promise<void> {
    checkFlags(flags, Delete.CHILDREN | Delete.METADATA_ONLY | Delete.CHILDREN_ONLY, 'virDomainCheckpointDelete');
    if ((flags & Delete.CHILDREN) && (flags & Delete.CHILDREN_ONLY)) {
      throw virErr('INVALID_ARG', CP, "flags 'children' and 'children-only' are mutually exclusive");
    }
    await this.driver.withDomainLock(uuid, async (dom) => {
      const store = this.store(dom);
      store.get(name);
      const plan = store.tree.planDelete(name, flags);
      if (!(flags & Delete.METADATA_ONLY)) {
        if (!dom.active) throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot delete checkpoint for inactive domain');
        const qmp = await this.driver.monitor(uuid);
        const nodes = await this.refreshLive(dom);
        const actions: TransactionAction[] = [];
        for (const gone of plan.remove) {
          const def = store.get(gone);
          for (const d of def.disks) {
            if (d.checkpoint !== 'bitmap' || d.bitmap === null) continue;
            const node = dom.disks.find((x) => x.target === d.name)?.formatNode;
            if (!node) continue; // the disk left the domain
            if (findBitmap(nodes, node, d.bitmap)) {
              actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name: d.bitmap } });
            } else if (!def.inconsistent) {
              throw virErr('INTERNAL_ERROR', 'QEMU', `bitmap '${d.bitmap}' not found in backing chain of '${d.name}'`);
            }
          }
        }
        if (actions.length) {
          try {
            await qmp.execute('transaction', { actions });
          } catch (e) {
            throw qmpErrorToVirError(e, `cannot delete checkpoint '${name}'`);
          }
        }
      }
      store.tree.applyDelete(plan);
      for (const gone of plan.remove) {
        store.defs.delete(gone);
        await removeFileDurably(store.file(gone));
      }
      for (const [child, parent] of plan.reparent) {
        const def = store.get(child);
        def.parent = parent;
        await store.save(def);
      }
      await store.saveCurrent();
    });
  }

  async discardAllMetadata(dom: DomainObject): Promise<void> {
    const store = this.store(dom);
    await rm(store.dir, { recursive: true, force: true });
    store.defs.clear();
    store.tree = new CheckpointTree();
  }
}

