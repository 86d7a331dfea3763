// The first two stages of backupBegin (libvirt's qemuBackupBegin before it
// touches QEMU): prepare parses the <domainbackup>, aligns it with the domain
// and applies every default, checks everything that can be refused and finds
// the usable bitmaps of incremental bases; allocate then spends what cannot be
// given back (node indexes, the job id, a TCP port). Nothing here creates
// anything in QEMU or on disk, so a refusal needs no undo.

import { existsSync } from 'node:fs';
import { lstat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { virErr } from '../errors.js';
import { BackupBeginFlags } from '../flags.js';
import { alignBackupDisks, applyBackupDefaults, parseBackupXML, type BackupDef } from '../xml/backup.js';
import { previousBackup, type FinishedTarget } from './backup-job.js';
import { blockDeviceSize } from './block-device.js';
import { checkBackupDef, type BackupTlsInput, type PlanDiskInput } from './backup-plan.js';
import { pushSpaceNeed, type PushSpaceInput, type SpaceHolding, type SpaceLedger } from './backup-space.js';
import type { DomainObject } from './domain-object.js';
import type { CheckpointAccess, DomainHost, PreparedCheckpoint } from './host.js';
import { qmpErrorToVirError, type QmpClient } from './qmp/client.js';
import type { BlockDeviceInfo } from './qmp/commands.js';

/** A backup definition ready to be planned, every default applied and every check passed. */
export interface PreparedBackup {
  def: BackupDef;
  checkpoint: PreparedCheckpoint | null;
  /** the selected disks, as the planner needs them (node indexes come with allocate) */
  disks: Omit<PlanDiskInput, 'nodeIndex'>[];
  reuseExternal: boolean;
  quiesce: boolean;
  /** pull over TLS: where the credentials are (qemu.conf backup_tls_x509_*) */
  tls: { dir: string; verifyPeer: boolean } | null;
  /** pull over tcp without a port: we pick a free one (and another if QEMU finds it taken) */
  autoPort: boolean;
}

export interface BackupTlsConfig {
  dir: string | null;
  verify: boolean;
}

/** Finds a push backup by its manifest when the job history lost it (injected: qemu/ does not read manifests). */
export type LocatePreviousBackup = (q: {
  uuid: string; disk: string; checkpoint: string; dirs: readonly string[];
}) => Promise<{ path: string; format: string } | null>;

/**
 * The backup an incremental push continues (its target gets it as backing
 * file): from the job history, else from the manifests near the new target
 * and the disk. None: refused before anything is created, since a target
 * backed by the live disk is no backup that restore can use.
 */
async function chainParent(
  dom: DomainObject,
  req: { finished: readonly FinishedTarget[]; locate: LocatePreviousBackup | null },
  d: { disk: string; checkpoint: string; target: string | null; source: string },
): Promise<{ path: string; format: string }> {
  const known = previousBackup(req.finished, d.disk, d.checkpoint, existsSync);
  if (known) return known;
  const dirs = [d.target, d.source].filter((p): p is string => p !== null).map((p) => path.dirname(p));
  const found = await req.locate?.({ uuid: dom.uuid, disk: d.disk, checkpoint: d.checkpoint, dirs });
  if (found) return found;
  throw virErr('OPERATION_INVALID', 'QEMU',
    `incremental backup of disk '${d.disk}' since checkpoint '${d.checkpoint}' needs the push backup taken with ` +
    `'${d.checkpoint}' (e.g. '${d.source}.${d.checkpoint}'), which was not found: take a full backup, ` +
    'or give your own target with REUSE_EXTERNAL');
}

/** The empty <domainbackup>: push every disk. */
function defaultBackupDef(): BackupDef {
  return { mode: 'push', incremental: null, server: null, disks: [], id: null, tlsAlias: null, tlsSecretAlias: null };
}

/**
 * Parse, align, apply defaults, check. The domain lock is held; `finished`
 * are the domain's finished push targets (the previous backup of a chain).
 */
export async function prepareBackup(
  host: DomainHost, checkpoints: CheckpointAccess, dom: DomainObject,
  req: {
    backupXml: string | null; checkpointXml: string | null; flags: number; tls: BackupTlsConfig;
    finished: readonly FinishedTarget[]; locate: LocatePreviousBackup | null;
    /** refuse a push whose targets may not fit, and hold their room in `holding` (backup-space.ts); absent: no check */
    space?: { ledger: SpaceLedger; holding: SpaceHolding } | null;
  },
): Promise<PreparedBackup> {
  const live = dom.liveDef;
  if (!dom.active || live === null) {
    throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot perform disk backup for inactive domain');
  }
  const reuse = (req.flags & BackupBeginFlags.REUSE_EXTERNAL) !== 0;
  const def = req.backupXml === null ? defaultBackupDef() : parseBackupXML(req.backupXml);
  const checkpoint = req.checkpointXml === null
    ? null
    : checkpoints.prepare(dom, req.checkpointXml, { noMetadata: (req.flags & BackupBeginFlags.NO_METADATA) !== 0 });
  // generated file names end in the checkpoint's name, else the time (libvirt)
  alignBackupDisks(def, live, checkpoint ? checkpoint.def.name : String(Math.floor(Date.now() / 1000)));
  applyBackupDefaults(def);
  checkBackupDef(def, { tlsConfigured: req.tls.dir !== null });
  const pull = def.mode === 'pull';

  if (pull && def.server?.socket) await refuseExistingPath(def.server.socket);
  const qmp = await host.monitor(dom.uuid);
  const nodes = await queryNodes(qmp);
  const disks: PreparedBackup['disks'] = [];
  const room: PushSpaceInput[] = [];
  for (const bd of def.disks) {
    if (!bd.backup) continue;
    const dn = dom.disks.find((d) => d.target === bd.name);
    const ld = live.disks.find((d) => d.target === bd.name);
    if (!dn?.formatNode || !ld || ld.source === null) {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `disk '${bd.name}' has no media`);
    }
    const incremental = bd.backupmode === 'incremental' ? bd.incremental : null;
    const base = incremental !== null ? await checkpoints.ensureUsable(dom, incremental, bd.name) : null;
    const node = nodes.find((n) => n['node-name'] === dn.formatNode);
    if (!node) throw virErr('INTERNAL_ERROR', 'QEMU', `block node '${dn.formatNode}' of disk '${bd.name}' not found`);
    const virtualSize = node.image['virtual-size'];
    const storeSize = bd.type === 'block' ? await checkBlockStore(bd.path as string, bd.name, bd.format, virtualSize) : null;
    if (!reuse && bd.type === 'file' && bd.path !== null && existsSync(bd.path)) {
      throw virErr('INVALID_ARG', 'QEMU', `store '${bd.path}' for backup of '${bd.name}' exists`);
    }
    const prev = !pull && !reuse && incremental !== null && bd.format === 'qcow2'
      ? await chainParent(dom, req, { disk: bd.name, checkpoint: incremental, target: bd.path, source: ld.source })
      : null;
    if (!pull && req.space) {
      const need: PushSpaceInput = { disk: bd.name, target: bd.path as string, format: bd.format as 'qcow2' | 'raw', virtualSize, node, base };
      if (storeSize === null) room.push(need);
      else checkDeviceRoom(need, storeSize);
    }
    disks.push({
      target: bd.name,
      diskNode: dn.formatNode,
      qdevId: dn.qdevId,
      diskPath: ld.source,
      diskFormat: ld.format,
      virtualSize,
      base,
      previous: prev ? { path: prev.path, format: prev.format } : null,
      storeSize,
    });
  }
  if (req.space) await req.space.ledger.check(req.space.holding, room, reuse);
  return {
    def,
    checkpoint,
    disks,
    reuseExternal: reuse,
    quiesce: (req.flags & BackupBeginFlags.QUIESCE) !== 0,
    tls: pull && def.server?.tls === true && req.tls.dir !== null ? { dir: path.resolve(req.tls.dir), verifyPeer: req.tls.verify } : null,
    autoPort: pull && def.server?.transport === 'tcp' && (def.server.port ?? 0) === 0,
  };
}

/**
 * A block-device target or scratch must exist (it is never created) and be a
 * block device; a raw one must hold the whole disk. A qcow2 one is not
 * measured: it grows as clusters are written, and an incremental needs only
 * the changed ones. Its size in bytes.
 */
async function checkBlockStore(dev: string, disk: string, format: string | null, virtualSize: number): Promise<number> {
  const size = await blockDeviceSize(dev);
  if (size === 'missing') throw virErr('INVALID_ARG', 'QEMU', `block device '${dev}' for backup of '${disk}' does not exist`);
  if (size === 'not-block') throw virErr('INVALID_ARG', 'QEMU', `'${dev}' for backup of '${disk}' is not a block device`);
  if (format === 'raw' && size < virtualSize) {
    throw virErr('INVALID_ARG', 'QEMU', `block device '${dev}' (${size} bytes) is smaller than disk '${disk}' (${virtualSize} bytes)`);
  }
  return size;
}

/** A qcow2 target on a block device has the device's size and no more. */
function checkDeviceRoom(d: PushSpaceInput, size: number): void {
  const need = pushSpaceNeed(d);
  if (d.format === 'qcow2' && need > size) {
    throw virErr('OPERATION_FAILED', 'QEMU',
      `block device '${d.target}' (${size} bytes) may be too small for the backup of disk '${d.disk}': it may need up to ${need} bytes`);
  }
}

/**
 * QEMU unlinks a unix socket's path before it binds, whatever is there, and
 * the job's end removes the socket it made: a path that exists (a file, a
 * directory, a symlink, someone's socket) is refused, so neither ever
 * deletes something that is not ours.
 */
async function refuseExistingPath(socket: string): Promise<void> {
  const st = await lstat(socket).catch(() => null);
  if (st === null) return;
  const what = st.isSocket() ? 'a socket' : st.isDirectory() ? 'a directory' : st.isSymbolicLink() ? 'a symbolic link' : 'a file';
  throw virErr('INVALID_ARG', 'QEMU', `socket path '${socket}' for the NBD server already exists (${what}): remove it or choose another path`);
}

async function queryNodes(qmp: QmpClient): Promise<BlockDeviceInfo[]> {
  try {
    return await qmp.execute('query-named-block-nodes', { flat: true });
  } catch (e) {
    throw qmpErrorToVirError(e, 'cannot query block nodes');
  }
}

/** What allocate hands out: spent even if the backup fails later (ids and node indexes are never reused). */
export interface BackupAllocation {
  id: number;
  disks: PlanDiskInput[];
  port: number | null;
  tls: BackupTlsInput | null;
}

/** QOM id of a pull's TLS credentials (libvirt's objlibvirt_backup_tls0; ours names the job). */
export function tlsObjectId(jobId: number): string {
  return `virtback-backup-tls-${jobId}`;
}

export async function allocateBackup(
  host: DomainHost, dom: DomainObject, p: PreparedBackup, nextJobId: () => Promise<number>,
): Promise<BackupAllocation> {
  const disks: PlanDiskInput[] = [];
  for (const d of p.disks) disks.push({ ...d, nodeIndex: await host.allocateNodeIndex(dom.uuid) });
  const id = await nextJobId();
  const port = p.autoPort ? await freePort(p.def.server?.name ?? 'localhost') : null;
  const tls = p.tls ? { id: tlsObjectId(id), ...p.tls } : null;
  return { id, disks, port, tls };
}

/** A TCP port that is free right now on `host` (bind 0, read, release). */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}
