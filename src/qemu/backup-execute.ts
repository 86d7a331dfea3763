// The I/O stage of backupBegin: the planned steps run one by one through the
// write-ahead log (backup-steps.ts), so whatever happens between two of them
// (a QEMU error, a lost monitor, a killed driver) the record names everything
// that may exist. The caller undoes the log when this throws.

import { formatBackupXML, type BackupDef } from '../xml/backup.js';
import type { BackupJobDisk, BackupJobRecord, BackupResource, BackupStep } from './backup-job.js';
import type { BackupPlan } from './backup-plan.js';
import type { SavedReservation } from './backup-space.js';
import { createFile, creationName, runCreateJob, type StepLog } from './backup-steps.js';
import type { PreparedCheckpoint } from './host.js';
import { QmpCommandError, type QmpClient } from './qmp/client.js';

/** A step of one QMP command: QEMU's error reply means it created nothing. */
const atomic = { atomic: true };

/** The job's record before its first step: phase 'starting', an empty log. */
export function newJobRecord(
  id: number, def: BackupDef, plan: BackupPlan, checkpoint: string | null, sources: Map<string, string>, space: SavedReservation[] = [],
): BackupJobRecord {
  return {
    id,
    mode: def.mode,
    phase: 'starting',
    startedAt: Date.now(),
    endedAt: null,
    xml: formatBackupXML(def),
    checkpoint,
    disks: plan.disks.map((p): BackupJobDisk => ({
      target: p.target,
      source: sources.get(p.target) ?? '',
      diskNode: p.diskNode,
      jobId: p.jobId,
      path: p.path,
      format: p.format,
      formatNode: p.formatNode,
      storageNode: p.storageNode,
      incremental: p.incremental,
      backingFile: p.backingFile,
      virtualSize: p.virtualSize,
      createdFile: p.createFile,
      ...(p.snapshot ? { snapshot: { cbwNode: p.snapshot.cbwNode, snapNode: p.snapshot.snapNode } } : {}),
      state: 'running',
      current: 0,
      total: 0,
      error: null,
    })),
    steps: [],
    stopping: null,
    end: null,
    errmsg: null,
    // saved with the record's first save: a restarted daemon holds it again (QemuBackups.recover)
    ...(space.length > 0 ? { space } : {}),
  };
}

export interface ExecuteInput {
  qmp: QmpClient;
  plan: BackupPlan;
  log: StepLog;
  def: BackupDef;
  checkpoint: PreparedCheckpoint | null;
  /** runs the transaction (inside a guest freeze with QUIESCE) */
  transaction: (run: () => Promise<void>) => Promise<void>;
  /** pull over tcp with a port we picked: another free one when QEMU finds it taken */
  nextPort: (() => Promise<number>) | null;
  /** told while the vCPUs are paused for a pull's instant (its STOP and RESUME are no state change) */
  instantPause?: (on: boolean) => void;
}

/**
 * Everything the plan creates, in the order it runs (the write-ahead log's
 * one save of intents). `pausing`: the vCPUs will be paused for the instant.
 */
export function plannedSteps(plan: BackupPlan, checkpoint: PreparedCheckpoint | null, jobId: number, pausing = false): BackupResource[] {
  const out: BackupResource[] = [];
  for (const d of plan.disks) {
    if (d.createFile) out.push(fileStep(d.path, jobId));
    out.push({ kind: 'node', name: d.storageNode });
    if (d.create) out.push({ kind: 'job', id: d.create.jobId });
    out.push({ kind: 'node', name: d.formatNode });
    if (d.snapshot) out.push({ kind: 'node', name: d.snapshot.cbwNode });
  }
  if (plan.tlsCreds) out.push({ kind: 'object', id: plan.tlsCreds.id });
  if (plan.nbdServer) out.push({ kind: 'nbd-server', socket: plan.nbdServer.addr.type === 'unix' ? plan.nbdServer.addr.data.path : null });
  out.push(...transactionSteps(plan, checkpoint));
  if (pausing) out.push({ kind: 'pause' });
  out.push(...deviceSteps(plan));
  for (const d of plan.disks) if (d.snapshot) out.push({ kind: 'node', name: d.snapshot.snapNode });
  for (const d of plan.disks) if (d.export) out.push({ kind: 'export', id: d.export.id });
  return out;
}

/** A pull's moves of the guest devices onto their filters. */
function deviceSteps(plan: BackupPlan): (BackupResource & { kind: 'device' })[] {
  return plan.disks.flatMap((d) => (d.snapshot ? [{ kind: 'device' as const, path: d.snapshot.device, node: d.diskNode, filter: d.snapshot.cbwNode }] : []));
}

function fileStep(file: string, jobId: number): BackupResource {
  return { kind: 'file', path: file, temp: creationName(file, jobId) };
}

/** Run the plan; on return every QEMU job runs and every export is up. */
export async function executePlan(x: ExecuteInput): Promise<void> {
  // a paused domain (by its user, an I/O error) has no guest writes to hold back
  const pausing = x.plan.pauseAtInstant && (await x.qmp.execute('query-status')).running;
  await x.log.intendAll(plannedSteps(x.plan, x.checkpoint, x.log.rec.id, pausing));
  await attachTargets(x);
  if (x.plan.tlsCreds) {
    const creds = x.plan.tlsCreds;
    await x.log.run([{ kind: 'object', id: creds.id }], () => x.qmp.execute('object-add', creds), atomic);
  }
  if (x.plan.nbdServer) await startNbdServer(x);
  await startJobs(x, pausing);
  for (const d of x.plan.disks) {
    const exp = d.export;
    if (exp) await x.log.run([{ kind: 'export', id: exp.id }], () => x.qmp.execute('block-export-add', exp), atomic);
  }
}

/** Per disk: [file] -> storage node -> [blockdev-create job] -> format node. */
async function attachTargets({ qmp, plan, log }: ExecuteInput): Promise<void> {
  for (const d of plan.disks) {
    if (d.createFile) {
      await log.run([fileStep(d.path, log.rec.id)], ([s]) => createFile(s as BackupStep & { kind: 'file' }, d.target, d.format === 'raw' ? d.virtualSize : 0));
    }
    await log.run([{ kind: 'node', name: d.storageNode }], () => qmp.execute('blockdev-add', d.addStorage), atomic);
    const create = d.create;
    if (create) {
      await log.run([{ kind: 'job', id: create.jobId }], () => runCreateJob(qmp, create.jobId, create.options));
      log.drop((s) => s.kind === 'job' && s.id === create.jobId); // dismissed
    }
    await log.run([{ kind: 'node', name: d.formatNode }], () => qmp.execute('blockdev-add', d.addFormat), atomic);
    const snap = d.snapshot;
    if (snap) await log.run([{ kind: 'node', name: snap.cbwNode }], () => qmp.execute('blockdev-add', snap.addCbw), atomic);
  }
}

async function startNbdServer(x: ExecuteInput): Promise<void> {
  const server = x.plan.nbdServer;
  if (!server) return;
  const socket = server.addr.type === 'unix' ? server.addr.data.path : null;
  for (let attempt = 0; ; attempt++) {
    try {
      await x.log.run([{ kind: 'nbd-server', socket }], () => x.qmp.execute('nbd-server-start', server), atomic);
      return;
    } catch (e) {
      const busy = e instanceof QmpCommandError && /in use/i.test(e.desc);
      if (x.nextPort === null || !busy || attempt >= 5 || server.addr.type !== 'inet') throw e;
      const port = await x.nextPort();
      server.addr.data.port = String(port);
      x.def.server!.port = port;
      x.log.rec.xml = formatBackupXML(x.def);
    }
  }
}

/**
 * The one transaction (checkpoint bitmaps, temporary bitmaps, the jobs), then
 * the checkpoint's metadata. Its bitmaps leave the log once the metadata is
 * committed: from then on the checkpoint stays, whatever happens to the
 * backup (libvirt); recovery asks the checkpoint module about a bitmap whose
 * commit it cannot tell.
 */
function transactionSteps(plan: BackupPlan, checkpoint: PreparedCheckpoint | null): BackupResource[] {
  const created: BackupResource[] = [];
  for (const a of checkpoint?.actions ?? []) {
    if (a.type === 'block-dirty-bitmap-add') created.push({ kind: 'bitmap', node: a.data.node, name: a.data.name, checkpoint: checkpoint!.def.name });
  }
  for (const d of plan.disks) {
    // a pull has no job; its temporary bitmap lives on the snapshot-access node and goes with it
    if (d.snapshot) continue;
    if (d.tempBitmap) created.push({ kind: 'bitmap', ...d.tempBitmap });
    created.push({ kind: 'job', id: d.jobId });
  }
  return created;
}

async function startJobs(x: ExecuteInput, pausing: boolean): Promise<void> {
  const { qmp, plan, log, checkpoint } = x;
  await x.transaction(async () => {
    // QEMU's transaction is all or nothing
    const steps = transactionSteps(plan, checkpoint);
    if (plan.transaction.length > 0) await log.run(steps, () => qmp.execute('transaction', { actions: plan.transaction }), atomic);
    if (plan.mode === 'pull') await moveDevices(x, pausing);
  });
  if (checkpoint) {
    await checkpoint.commit();
    log.drop((s) => s.kind === 'bitmap' && s.checkpoint !== undefined);
  }
  // a snapshot-access node is a reader the device's writes must pass: it joins once they do
  // (earlier, QEMU refuses it: the filter would have to deny the device's write permission)
  for (const d of plan.disks) {
    const snap = d.snapshot;
    if (snap) await log.run([{ kind: 'node', name: snap.snapNode }], () => qmp.execute('blockdev-add', snap.addSnap), atomic);
  }
  // writes before the instant are in the checkpoint's bitmap: merged after it, nothing is missed
  if (plan.afterInstant.length > 0) await qmp.execute('transaction', { actions: plan.afterInstant });
}

/**
 * A pull's instant: every guest device moves onto its copy-before-write
 * filter; from then on the snapshot-access nodes read the disks as they were.
 * Several disks: with the vCPUs paused around the moves (milliseconds), so
 * the disks share that instant; resumed whatever happens.
 */
async function moveDevices({ qmp, plan, log, instantPause }: ExecuteInput, pausing: boolean): Promise<void> {
  const moves = async (): Promise<void> => {
    for (const s of deviceSteps(plan)) {
      await log.run([s], () => qmp.execute('qom-set', { path: s.path, property: 'drive', value: s.filter }), atomic);
    }
  };
  if (!pausing) return moves();
  instantPause?.(true);
  try {
    await log.run([{ kind: 'pause' }], () => qmp.execute('stop'), atomic);
    try {
      await moves();
    } finally {
      await qmp.execute('cont');
      log.drop((s) => s.kind === 'pause');
    }
  } finally {
    instantPause?.(false);
  }
}
