// Backup jobs on QEMU (libvirt's qemu_backup.c, in the original job-id shape
// plus libvirt's later getJobStats/abortJob). backupBegin is libvirt's
// pipeline: prepare (parse, defaults, checks; backup-prepare.ts) -> allocate
// (node indexes, job id, port) -> plan once (pure; backup-plan.ts) -> execute
// write-ahead-logged steps (backup-execute.ts, backup-steps.ts) -> on failure
// undo the log in reverse. A driver killed inside backupBegin leaves a log
// that the next start (or the domain's stop) undoes.
// Completion arrives as JOB_STATUS_CHANGE events and is reconciled with
// query-jobs; targets are closed (blockdev-del flushes) before job-completed
// is published, so a listener may open them at once.

import { rm, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { DriverEvent, JobStats } from '../api/driver.js';
import { toVirError, virErr } from '../errors.js';
import { BackupBeginFlags, BackupEndFlags, BlockJobStatus, BlockJobType, checkFlags, JobStatsFlags, JobType } from '../flags.js';
import { errField } from '../log.js';
import {
  applyQemuJobs,
  BackupJob,
  BackupJobTable,
  BackupMetaStore,
  decideEnd,
  firstError,
  jobFields,
  jobStats,
  logJobEnd,
  measureScratch,
  readJobRecord,
  stoppedWhy,
  type BackupJobRecord,
  type PushCompleteInfo,
} from './backup-job.js';
import { executePlan, newJobRecord } from './backup-execute.js';
import { DEFAULT_TARGET_WRITEBACK_MS, TargetWriteback } from './backup-flush.js';
import { TIMELINE_MSG } from './backup-timeline.js';
import { planBackup, type PushTargetOptions } from './backup-plan.js';
import { allocateBackup, freePort, prepareBackup, type LocatePreviousBackup } from './backup-prepare.js';
import { failBrokenSnapshots } from './backup-probe.js';
import { SpaceLedger, type SpaceHolding } from './backup-space.js';
import { dropCreationNames, StepLog, undoSteps, type UndoOptions } from './backup-steps.js';
import type { BackupPerf } from './qmp/commands.js';
import type { DomainObject } from './domain-object.js';
import type { BackupOps, CheckpointAccess, DomainHost } from './host.js';
import { qmpErrorToVirError, type QmpClient } from './qmp/client.js';
import type { JobInfo } from './qmp/commands.js';

export type { PushCompleteInfo } from './backup-job.js';
export { freePort } from './backup-prepare.js';

export interface QemuBackupsOptions {
  /** called after a push completed and its targets are closed; runs in the background (one at a time), backupEnd waits for it */
  afterPushComplete?: (info: PushCompleteInfo) => Promise<void>;
  /** finds the previous backup of an incremental push by its manifest when the job history lost it */
  locatePreviousBackup?: LocatePreviousBackup;
  /** initial rate limit of every push disk job, bytes/s (default none; tests slow jobs down with it) */
  speed?: number;
  /** refuse a push whose targets may not fit on their filesystems (backup-space.ts; default true) */
  spaceCheck?: boolean;
  /** blockdev-backup x-perf options (default BACKUP_PERF; null = QEMU's defaults) */
  perf?: BackupPerf | null;
  /** how push targets are opened and formatted (default PUSH_TARGET) */
  pushTarget?: PushTargetOptions;
  /**
   * push targets written back by the daemon (backup-flush.ts): ms between
   * rounds while the job copies; 0 (the default): once, at conclusion; null:
   * never (QEMU's flush alone)
   */
  targetWriteback?: number | null;
  /**
   * qemu.conf backup_tls_x509_cert_dir: ca-cert.pem, server-*.pem for pull exports with <server tls='yes'>
   * (unset: refused); client-*.pem: the end's probe of the frozen view (backup-probe.ts)
   */
  tlsX509CertDir?: string | null;
  /** qemu.conf backup_tls_x509_verify: clients must present a certificate signed by the CA (default true) */
  tlsX509Verify?: boolean;
}

const EXTRA_KEY = 'backupJob';
/** the last job id handed out, kept in the status file too (meta.json may be lost) */
const LAST_JOB_ID_KEY = 'lastBackupJobId';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class QemuBackups implements BackupOps {
  private readonly watchers = new Map<string, { qmp: QmpClient; off: () => void }>();
  /** domains whose job is being recovered inside QemuDriver.open() */
  private readonly recovering = new Set<string>();
  private readonly recoveredList: DriverEvent[] = [];
  /** manifest writing after pushes: one at a time, in completion order */
  private afterPushQueue: Promise<void> = Promise.resolve();
  /** per finished push job (uuid/id): its manifests are written once this settles */
  private readonly afterPushDone = new Map<string, Promise<void>>();
  /** domains this instance saw running (started or reconnected); a stop of any other one was found by open() */
  private readonly seenLive = new Set<string>();
  /** room held by running pushes (their targets' bounds), counted by every later push's check */
  private readonly space = new SpaceLedger();

  constructor(
    private readonly driver: DomainHost,
    private readonly checkpoints: CheckpointAccess,
    private readonly opts: QemuBackupsOptions = {},
  ) {
    driver.addHooks({
      onLoaded: async (dom) => {
        const table = new BackupJobTable(new BackupMetaStore(this.metaDir(dom.uuid), this.driver.log));
        await table.store.load();
        dom.backupJobs = table;
        // manifests of pushes that finished before a daemon stop got in their way
        for (const info of table.store.meta.pendingAfterPush) this.queueAfterPush(table.store, info);
      },
      onStarted: (dom) => {
        this.seenLive.add(dom.uuid);
        if (dom.run?.qmp) this.watch(dom, dom.run.qmp);
      },
      onReconnected: (dom) => {
        this.seenLive.add(dom.uuid);
        if (dom.run?.qmp) this.watch(dom, dom.run.qmp);
        return this.recover(dom);
      },
      onRemoved: (dom) => rm(this.metaDir(dom.uuid), { recursive: true, force: true }),
      onStopped: async (dom, reason) => {
        const foundAtOpen = !this.seenLive.delete(dom.uuid);
        if (foundAtOpen) this.recovering.add(dom.uuid);
        try {
          await this.domainStopped(dom, reason);
        } finally {
          if (foundAtOpen) this.recovering.delete(dom.uuid);
        }
      },
    });
  }

  /**
   * Events published while QemuDriver.open() recovered jobs (a push that
   * finished while no driver ran): nobody may have listened yet, so a daemon
   * replays these to its subscribers. Drains the list.
   */
  recoveredEvents(): DriverEvent[] {
    return this.recoveredList.splice(0);
  }

  private metaDir(uuid: string): string {
    return path.join(this.driver.paths.dirs.stateDir, 'backups', uuid);
  }

  private table(dom: DomainObject): BackupJobTable {
    if (dom.backupJobs instanceof BackupJobTable) return dom.backupJobs;
    const t = new BackupJobTable(new BackupMetaStore(this.metaDir(dom.uuid), this.driver.log));
    dom.backupJobs = t;
    return t;
  }

  private publish(dom: DomainObject, ev: DriverEvent): void {
    if (this.recovering.has(dom.uuid)) this.recoveredList.push(ev);
    this.driver.emit(ev);
  }

  /** Persist the job record in the domain's status file (atomically, by the driver). */
  private async persist(dom: DomainObject, rec: BackupJobRecord | null): Promise<void> {
    if (!dom.run) return;
    if (rec === null) delete dom.run.status.extra[EXTRA_KEY];
    else dom.run.status.extra[EXTRA_KEY] = structuredClone(rec);
    await this.driver.saveStatus(dom);
  }

  /** Follow JOB_STATUS_CHANGE of our jobs on the domain's current monitor. */
  private watch(dom: DomainObject, qmp: QmpClient): void {
    const w = this.watchers.get(dom.uuid);
    if (w?.qmp === qmp) return;
    w?.off();
    const off = qmp.on('JOB_STATUS_CHANGE', (ev) => {
      const { id, status } = ev.data;
      if (!id.startsWith('backup-')) return;
      // QEMU's own instant of the change (ms since the epoch, with µs): benchmarks measure our latency against it
      const qemuTime = ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
      this.driver.log.debug({ domain: dom.uuid, job: id, status, qemuTime }, 'qmp JOB_STATUS_CHANGE');
      if (status !== 'concluded' && status !== 'null') return;
      const job = this.table(dom).current;
      if (status === 'concluded' && job?.record.disks.some((d) => d.jobId === id)) job.timeline.concludedAt(qemuTime, Date.now());
      this.schedule(dom.uuid);
    });
    this.watchers.set(dom.uuid, { qmp, off });
  }

  private unwatch(uuid: string): void {
    this.watchers.get(uuid)?.off();
    this.watchers.delete(uuid);
  }

  /** Reconcile the job with QEMU under the domain lock (from events and timers). */
  private schedule(uuid: string): void {
    this.driver
      .withDomainLock(uuid, (dom) => this.reconcile(dom))
      .catch((e) => this.driver.log.warn({ domain: uuid, ...errField(e) }, 'processing backup job events failed'));
  }

  // ------------------------------------------------------------------ begin

  async backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    // what this driver can do; the public API's rules (NO_METADATA needs checkpointXml, …) are the entry-point table's
    checkFlags(flags, BackupBeginFlags.NO_METADATA | BackupBeginFlags.QUIESCE | BackupBeginFlags.REUSE_EXTERNAL, 'virDomainBackupBegin');
    return this.driver.withDomainLock(uuid, async (dom) => {
      // the room its push targets may take, held until the job ends
      const holding = this.space.holding();
      try {
        return await this.begin(dom, backupXml, checkpointXml, flags, holding);
      } catch (e) {
        holding.release();
        throw e;
      }
    });
  }

  /** prepare -> allocate -> plan -> execute (write-ahead logged) -> undo on failure. Lock held. */
  private async begin(dom: DomainObject, backupXml: string | null, checkpointXml: string | null, flags: number, holding: SpaceHolding): Promise<number> {
    if (!dom.active || dom.liveDef === null) {
      throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot perform disk backup for inactive domain');
    }
    const table = this.table(dom);
    const running = table.current;
    if (running?.active) throw virErr('OPERATION_INVALID', 'QEMU', `another backup job is already running (job ${running.id})`);
    // a failed begin whose undo failed left its log: try again before it is overwritten
    const stale = readJobRecord(dom.run?.status.extra[EXTRA_KEY]);
    if (stale?.phase === 'starting') await this.rollBack(dom, await this.driver.monitor(dom.uuid), stale);
    const p = await prepareBackup(this.driver, this.checkpoints, dom, {
      backupXml, checkpointXml, flags, finished: table.store.meta.finished, locate: this.opts.locatePreviousBackup ?? null,
      space: this.opts.spaceCheck === false ? null : { ledger: this.space, holding },
      tls: { dir: this.opts.tlsX509CertDir ?? null, verify: this.opts.tlsX509Verify ?? true },
    });
    const a = await allocateBackup(this.driver, dom, p, () => table.store.nextJobId(table.store.idFloor(dom.run?.status.extra[LAST_JOB_ID_KEY])));
    if (dom.run) dom.run.status.extra[LAST_JOB_ID_KEY] = a.id; // saved with the write-ahead log's first entry
    const plan = planBackup({
      def: p.def, disks: a.disks, checkpointActions: p.checkpoint?.actions ?? [], reuseExternal: p.reuseExternal,
      port: a.port, speed: this.opts.speed, perf: this.opts.perf, pushTarget: this.opts.pushTarget, tls: a.tls,
    });
    p.def.id = a.id;
    p.def.tlsAlias = a.tls?.id ?? null;
    if (a.port !== null && p.def.server) p.def.server.port = a.port;
    const rec = newJobRecord(a.id, p.def, plan, p.checkpoint?.def.name ?? null, new Map(p.disks.map((d) => [d.target, d.diskPath])), holding.saved());
    const previous = table.current;
    const job = new BackupJob(rec);
    job.space = holding;
    table.current = job;
    const qmp = await this.driver.monitor(dom.uuid);
    this.watch(dom, qmp);
    const started = Date.now();
    try {
      // the record's first save holds every step's intent (StepLog.intendAll)
      await executePlan({
        qmp, plan, def: p.def, checkpoint: p.checkpoint,
        log: new StepLog(rec, () => this.persist(dom, rec)),
        transaction: (run) => (p.quiesce ? this.checkpoints.quiesced(dom, run) : run()),
        nextPort: p.autoPort ? () => freePort(p.def.server?.name ?? 'localhost') : null,
        instantPause: (on) => {
          if (dom.run) dom.run.instantPause = on;
        },
      });
      rec.phase = 'running';
      await this.persist(dom, rec);
      await dropCreationNames(rec).catch((e) => this.driver.log.warn({ ...jobFields(dom, rec), ...errField(e) }, 'cannot remove a temp name'));
      const wb = this.opts.targetWriteback === undefined ? DEFAULT_TARGET_WRITEBACK_MS : this.opts.targetWriteback;
      if (rec.mode === 'push' && wb !== null) job.writeback = new TargetWriteback(rec.disks.map((d) => d.path), this.driver.log, wb);
    } catch (e) {
      const err = qmpErrorToVirError(e, 'cannot start backup');
      await undoSteps(rec, { qmp, log: this.driver.log }).catch(() => {}); // each failure is logged
      table.current = previous;
      await this.persist(dom, rec.steps.length > 0 ? rec : previous?.record.phase === 'done' ? previous.record : null).catch(() => {});
      this.driver.log.error({ ...jobFields(dom, rec), durationMs: Date.now() - started, error: err.message }, 'backup job failed to start');
      throw err;
    }
    this.driver.log.info({ ...jobFields(dom, rec), durationMs: Date.now() - started }, 'backup job started');
    // Jobs of small disks may have concluded already: look once the lock is free.
    this.schedule(dom.uuid);
    return a.id;
  }

  /**
   * Undo an interrupted backupBegin's log (phase 'starting') found in the
   * status file; qmp null: QEMU is gone, only files remain. Idempotent: what
   * cannot be undone now stays in the record for the next try.
   */
  private async rollBack(dom: DomainObject, qmp: QmpClient | null, rec: BackupJobRecord): Promise<void> {
    const checkpointKept: UndoOptions['checkpointKept'] = async (s) => {
      const disk = dom.disks.find((d) => d.formatNode === s.node)?.target;
      if (s.checkpoint === undefined || disk === undefined) return false;
      return this.checkpoints.ensureUsable(dom, s.checkpoint, disk).then(() => true, () => false);
    };
    const steps = rec.steps.length;
    try {
      await undoSteps(rec, { qmp, log: this.driver.log, checkpointKept });
      await this.persist(dom, null);
      this.driver.log.info({ ...jobFields(dom, rec), steps, reason: 'interrupted start rolled back' }, 'backup job recovered');
    } catch (e) {
      await this.persist(dom, rec).catch(() => {});
      this.driver.log.error({ ...jobFields(dom, rec), steps: rec.steps.length, ...errField(e) }, 'cannot roll back an interrupted backup start');
    }
  }

  // ------------------------------------------------------------------ completion

  /** Bring the job in step with QEMU's jobs; terminate it once no disk runs. Lock held. */
  private async reconcile(dom: DomainObject): Promise<void> {
    const job = this.table(dom).current;
    if (!job || job.record.phase !== 'running' || !dom.run) return;
    const rec = job.record;
    job.timeline.mark('lock taken');
    const qmp = await this.driver.monitor(dom.uuid);
    this.watch(dom, qmp);
    const jobs = await qmp.execute('query-jobs');
    job.timeline.mark('query-jobs');
    let cancelling = false;
    applyQemuJobs(rec, jobs);
    // one disk failed or was cancelled: the others are cancelled too (libvirt)
    if (rec.disks.some((d) => d.state === 'failed' || d.state === 'cancelled')) {
      for (const d of rec.disks) {
        if (d.state !== 'running') continue;
        if (d.snapshot) {
          d.state = 'cancelled';
          continue;
        }
        await qmp.execute('block-job-cancel', { device: d.jobId, force: true }).catch(() => {});
        d.state = 'cancelling';
        cancelling = true;
      }
    }
    if (rec.disks.some((d) => d.state === 'running' || d.state === 'cancelling')) {
      // A concluded disk's QEMU job is dismissed only once every disk is done:
      // until then QEMU keeps its outcome for a recovering driver, and nothing
      // needs writing (one status write per job, not per disk).
      if (cancelling) await this.persist(dom, rec);
      return;
    }
    // The outcome is durable before the QEMU jobs are dismissed: a driver killed
    // in between must not find a finished disk's job vanished (= failed).
    // the targets' data written back meanwhile: QEMU's flush in blockdev-del then finds it clean
    const keep = rec.mode === 'push' && decideEnd(rec) === 'completed';
    await Promise.all([this.persist(dom, rec), job.writeback?.finish(keep).then(() => job.timeline.mark('targets written back'))]);
    job.timeline.mark('status saved (disks)');
    const concluded = rec.disks.map((d) => d.jobId).filter((id) => jobs.some((j) => j.id === id && j.status === 'concluded'));
    // sent together: QEMU runs them in order, we wait for one round trip
    await Promise.all(concluded.map((id) => qmp.execute('job-dismiss', { id })));
    job.timeline.mark('job-dismiss');
    // saved with the next write of the record (until then recovery's undo finds them gone: fine)
    rec.steps = rec.steps.filter((r) => !(r.kind === 'job' && concluded.includes(r.id)));
    await this.terminate(dom, job, qmp, null);
  }

  /**
   * End the job: close and remove what it created (targets of a completed push
   * are kept), record finished targets, then publish job-completed and the
   * per-disk block-job events. Lock held.
   */
  private async terminate(dom: DomainObject, job: BackupJob, qmp: QmpClient | null, forced: { errmsg: string } | null): Promise<void> {
    const rec = job.record;
    if (rec.phase === 'done') return;
    rec.end = forced ? 'failed' : decideEnd(rec);
    rec.errmsg = forced ? forced.errmsg : firstError(rec);
    const keepTargets = rec.mode === 'push' && rec.end === 'completed';
    job.space?.release();
    await job.writeback?.finish(false);
    if (qmp !== null && !qmp.isClosed) await measureScratch(qmp, rec).catch(() => {});
    try {
      await undoSteps(rec, {
        qmp, log: this.driver.log, keep: (r) => keepTargets && r.kind === 'file', mustClose: keepTargets,
        undone: (s) => job.timeline.mark(`undo ${s.kind}`),
      });
    } catch (e) {
      // a target that cannot be closed (flushed) is not a backup we can vouch for
      if (keepTargets) {
        rec.end = 'failed';
        rec.errmsg = `cannot close backup targets: ${toVirError(e).message}`;
        for (const d of rec.disks) if (d.createdFile) await unlink(d.path).catch(() => {});
        // QEMU is gone: its nodes went with it and the files we created were just removed
        if (qmp === null || qmp.isClosed) rec.steps = [];
      }
    }
    rec.phase = 'done';
    rec.endedAt = Date.now();
    const stats = jobStats(rec, rec.endedAt);
    job.finalStats = stats;
    const store = this.table(dom).store;
    // Manifests read the finished targets back (seconds for large disks): they run in one
    // background queue, so job-completed is not delayed; backupEnd waits for them (afterPushDone).
    const manifests = store.recordEnd(dom, rec, stats, this.opts.afterPushComplete !== undefined);
    if (manifests) this.queueAfterPush(store, manifests);
    // two files in two folders, written (and fsynced) at the same time; a kill between
    // them is healed: not done -> ended again, done above meta's lastEnded -> recorded again
    await Promise.all([
      store.save().catch((e) => this.driver.log.warn({ ...jobFields(dom, rec), ...errField(e) }, 'cannot save backup metadata')),
      this.persist(dom, rec).catch((e) => this.driver.log.warn({ ...jobFields(dom, rec), ...errField(e) }, 'cannot save the backup job record')),
    ]);
    job.timeline.mark('meta and status saved (done)');
    logJobEnd(this.driver.log, dom, rec);
    const domain = { name: dom.name, uuid: dom.uuid };
    this.publish(dom, { type: 'job-completed', domain, jobId: rec.id, stats });
    job.timeline.mark('published');
    this.driver.log.debug({ domain: dom.uuid, jobId: rec.id, ...job.timeline.fields() }, TIMELINE_MSG);
    for (const d of rec.disks) {
      this.publish(dom, {
        type: 'block-job',
        domain,
        jobId: rec.id,
        disk: d.target,
        path: d.source,
        blockJobType: BlockJobType.BACKUP,
        status: d.state === 'complete' ? BlockJobStatus.COMPLETED : d.state === 'cancelled' ? BlockJobStatus.CANCELED : BlockJobStatus.FAILED,
      });
    }
    job.markFinished();
  }

  /**
   * Run afterPushComplete for a finished push in the background queue, then drop it
   * from the pending list; a push already queued (recorded again by a heal) is not queued twice.
   */
  private queueAfterPush(store: BackupMetaStore, info: PushCompleteInfo): void {
    const hook = this.opts.afterPushComplete;
    const key = `${info.uuid}/${info.jobId}`;
    if (!hook || this.afterPushDone.has(key)) return;
    const done = this.afterPushQueue
      .then(() => hook(info))
      .catch((e) => this.driver.log.warn({ domain: { name: info.name, uuid: info.uuid }, jobId: info.jobId, ...errField(e) }, 'afterPushComplete failed'))
      .then(async () => {
        store.meta.pendingAfterPush = store.meta.pendingAfterPush.filter((p) => !(p.uuid === info.uuid && p.jobId === info.jobId));
        await store.save().catch((e) => this.driver.log.warn({ domain: info.uuid, ...errField(e) }, 'cannot save backup metadata'));
      });
    this.afterPushQueue = done;
    this.afterPushDone.set(key, done);
    void done.then(() => {
      if (this.afterPushDone.get(key) === done) this.afterPushDone.delete(key);
    });
  }

  /** Ask the running job to stop (push abort / pull end) and wait until it ended. */
  private async stop(uuid: string, job: BackupJob, how: 'abort' | 'end'): Promise<void> {
    await this.driver.withDomainLock(uuid, async (dom) => {
      const rec = job.record;
      if (rec.phase !== 'running') return;
      rec.stopping = how;
      // a pull whose frozen view broke ends failed (QEMU says nothing of it)
      if (how === 'end') await failBrokenSnapshots(rec, { tls: { dir: this.opts.tlsX509CertDir ?? null, verify: this.opts.tlsX509Verify ?? true }, log: this.driver.log });
      const qmp = await this.driver.monitor(uuid);
      for (const d of rec.disks) {
        if (d.state !== 'running') continue;
        try {
          if (!d.snapshot) await qmp.execute('block-job-cancel', { device: d.jobId, force: true });
        } catch {
          // concluded meanwhile: reconcile picks it up
        }
        d.state = 'cancelling';
      }
      await this.persist(dom, rec);
      await this.reconcile(dom);
    });
    // Completion comes from events; poll as a safety net (a lost event must not hang the caller).
    while (job.active) {
      await Promise.race([job.finished, sleep(1000)]);
      if (job.active) await this.driver.withDomainLock(uuid, (dom) => this.reconcile(dom)).catch(() => {});
    }
  }

  // ------------------------------------------------------------------ lifecycle

  /** The driver found the domain's QEMU alive at open(): pick up its job. */
  private async recover(dom: DomainObject): Promise<void> {
    const rec = readJobRecord(dom.run?.status.extra[EXTRA_KEY]);
    if (!rec) return;
    const table = this.table(dom);
    table.current = rec.phase === 'starting' ? null : new BackupJob(rec);
    if (rec.phase === 'done') return this.healEnded(dom, rec);
    this.recovering.add(dom.uuid);
    try {
      // a running push holds its saved room again (lock held: released in terminate, as any job's)
      if (table.current && rec.space) table.current.space = await this.space.recovered(rec.space);
      const qmp = await this.driver.monitor(dom.uuid);
      this.watch(dom, qmp);
      // the driver stopped in the middle of backupBegin: nobody got the job id, undo its log
      if (rec.phase === 'starting') return await this.rollBack(dom, qmp, rec);
      this.driver.log.info({ ...jobFields(dom, rec), reason: 'reconnected' }, 'backup job recovered');
      await this.reconcile(dom);
    } catch (e) {
      this.driver.log.error({ ...jobFields(dom, rec), ...errField(e) }, 'cannot recover backup job');
    } finally {
      this.recovering.delete(dom.uuid);
    }
  }

  /** A done job whose end meta.json does not hold (a kill between the two last writes, or meta.json lost): record it now. */
  private async healEnded(dom: DomainObject, rec: BackupJobRecord): Promise<void> {
    const store = this.table(dom).store;
    if (store.meta.lastEnded >= rec.id) return;
    this.driver.log.warn(jobFields(dom, rec), 'the end of the last backup job was not in its metadata: recorded again');
    const manifests = store.recordEnd(dom, rec, jobStats(rec, rec.endedAt ?? Date.now()), this.opts.afterPushComplete !== undefined);
    if (manifests) this.queueAfterPush(store, manifests);
    await store.save().catch((e) => this.driver.log.warn({ ...jobFields(dom, rec), ...errField(e) }, 'cannot save backup metadata'));
  }

  private async domainStopped(dom: DomainObject, reason: number): Promise<void> {
    this.unwatch(dom.uuid);
    const table = this.table(dom);
    const saved = readJobRecord(dom.run?.status.extra[EXTRA_KEY]);
    // QEMU died during an interrupted backupBegin: only the files it created are left
    if (saved?.phase === 'starting' && table.current?.record.id !== saved.id) return this.rollBack(dom, null, saved);
    if (!table.current && saved) table.current = new BackupJob(saved);
    if (saved?.phase === 'done') await this.healEnded(dom, saved);
    const job = table.current;
    if (!job || !job.active) return;
    for (const d of job.record.disks) {
      if (d.state === 'running' || d.state === 'cancelling') d.state = d.state === 'cancelling' ? 'cancelled' : 'failed';
    }
    const errmsg = `domain '${dom.name}' ${stoppedWhy(reason)} during the backup`;
    await this.terminate(dom, job, null, { errmsg });
  }

  // ------------------------------------------------------------------ queries and end

  private find(dom: DomainObject, id: number): BackupJob {
    const job = this.table(dom).current;
    if (!job) throw virErr('NO_DOMAIN_BACKUP', 'DOMAIN', 'no domain backup job present');
    if (id !== 0 && id !== job.id) {
      throw virErr('NO_DOMAIN_BACKUP', 'DOMAIN', `no domain backup job with id ${id} present (the domain's backup job is ${job.id})`);
    }
    return job;
  }

  async backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string> {
    checkFlags(flags, 0, 'virDomainBackupGetXMLDesc');
    return this.find(this.driver.getDomain(uuid), id).record.xml;
  }

  async backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    checkFlags(flags, BackupEndFlags.ABORT, 'virDomainBackupEnd');
    const dom = this.driver.getDomain(uuid);
    const job = this.find(dom, id);
    if (job.active) {
      if (job.record.mode === 'push' && !(flags & BackupEndFlags.ABORT)) {
        throw virErr('OPERATION_INVALID', 'QEMU', `backup job ${job.id} is still copying: wait for job-completed or end it with ABORT`);
      }
      await this.stop(uuid, job, job.record.mode === 'push' ? 'abort' : 'end');
    }
    await this.forget(uuid, job);
    const rec = job.record;
    await this.afterPushDone.get(`${uuid}/${rec.id}`);
    if (rec.end === 'completed') return 1;
    if (rec.end === 'cancelled') return 0;
    throw virErr('OPERATION_FAILED', 'QEMU', `backup job ${rec.id} failed: ${rec.errmsg ?? 'unknown error'}`);
  }

  /** Drop an ended job from the table and the status file. */
  private async forget(uuid: string, job: BackupJob): Promise<void> {
    await this.driver.withDomainLock(uuid, async (dom) => {
      const table = this.table(dom);
      if (table.current !== job) return;
      table.current = null;
      const saved = dom.run?.status.extra[EXTRA_KEY] as BackupJobRecord | undefined;
      if (saved?.id === job.id) await this.persist(dom, null);
    });
  }

  async listJobIds(uuid: string): Promise<number[]> {
    const job = this.table(this.driver.getDomain(uuid)).current;
    return job ? [job.id] : [];
  }

  async getJobStats(uuid: string, flags: number): Promise<JobStats> {
    checkFlags(flags, JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED, 'virDomainGetJobStats');
    const dom = this.driver.getDomain(uuid);
    const table = this.table(dom);
    if (flags & JobStatsFlags.COMPLETED) {
      const stats = table.store.meta.lastCompleted;
      if (!stats) return { type: JobType.NONE };
      if (!(flags & JobStatsFlags.KEEP_COMPLETED)) {
        table.store.meta.lastCompleted = null;
        await table.store.save();
      }
      return { ...stats };
    }
    const job = table.current;
    if (!job || !job.active) return { type: JobType.NONE };
    let live: JobInfo[] = [];
    try {
      const qmp = await this.driver.monitor(uuid);
      live = await qmp.execute('query-jobs');
      await measureScratch(qmp, job.record);
    } catch {
      // no live numbers: the recorded ones are still right
    }
    return jobStats(job.record, Date.now(), live);
  }

  async abortJob(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, 0, 'virDomainAbortJobFlags');
    const dom = this.driver.getDomain(uuid);
    const job = this.table(dom).current;
    if (!job || !job.active) throw virErr('OPERATION_INVALID', 'QEMU', 'no job is active on the domain');
    await this.stop(uuid, job, job.record.mode === 'push' ? 'abort' : 'end');
    await this.forget(uuid, job);
  }
}
