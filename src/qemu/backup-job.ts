// Backup jobs: the per-domain job table, the job record (what each step
// created, per-disk state and progress), statistics, and the small per-domain
// store of job ids, finished push targets and the last completed job's stats.
//
// The running job's record lives in the domain's status file
// (status.extra.backupJob, written atomically by the driver) so a restarted
// driver can reconcile it with QEMU; the store lives in
// <stateDir>/backups/<uuid>/meta.json so ids are never reused.

import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { FinishedPush, JobStats } from '../api/driver.js';
import { JobOperation, JobType, ShutoffReason } from '../flags.js';
import { errField, type LogFields, type Logger } from '../log.js';
import type { BackupDiskState } from '../xml/backup.js';
import type { BackupJobTableLike } from './domain-object.js';
import type { TargetWriteback } from './backup-flush.js';
import type { SavedReservation } from './backup-space.js';
import { JobTimeline } from './backup-timeline.js';
import type { BlockDeviceInfo, JobInfo } from './qmp/commands.js';
import { writeFileAtomic } from './state.js';

/** Something a backup step creates, undone in reverse order. */
export type BackupResource =
  /**
   * A target or scratch file, created under `temp` (a name only this job uses)
   * and linked to `path` only if nothing is there: undo removes `path` only
   * when it is that file (the same inode as `temp`, or `dev`/`ino` recorded
   * once created), never a file someone else made meanwhile.
   */
  | { kind: 'file'; path: string; temp?: string; dev?: number; ino?: number }
  | { kind: 'node'; name: string }
  /** `checkpoint`: a bitmap of the checkpoint created with the backup (kept once its metadata exists) */
  | { kind: 'bitmap'; node: string; name: string; checkpoint?: string }
  | { kind: 'nbd-server'; socket: string | null }
  /** a QOM object (the tls-creds-x509 of a pull over TLS): object-del */
  | { kind: 'object'; id: string }
  | { kind: 'export'; id: string }
  | { kind: 'job'; id: string }
  /** a pull's guest device moved onto its copy-before-write filter `filter`: undo moves it back onto `node` */
  | { kind: 'device'; path: string; node: string; filter: string }
  /** the vCPUs paused by us around a pull's instant: undo resumes them if still paused */
  | { kind: 'pause' };

/**
 * A write-ahead log entry: saved as 'intended' (in the status file) before the
 * step touches QEMU or the disk, marked 'done' after (saved with the next
 * step's intent). Recovery undoes both: an intended step may have happened
 * before the driver died.
 */
export type BackupStep = BackupResource & { state: 'intended' | 'done' };

export interface BackupJobDisk {
  target: string;
  /** the disk's source path (block-job events carry it) */
  source: string;
  diskNode: string;
  jobId: string;
  path: string;
  format: 'qcow2' | 'raw';
  formatNode: string;
  storageNode: string;
  incremental: string | null;
  backingFile: string | null;
  virtualSize: number;
  /** we created the file (not REUSE_EXTERNAL): we may delete it */
  createdFile: boolean;
  /**
   * A pull's frozen view (copy-before-write filter + snapshot-access; the
   * export reads `snapNode`): no QEMU job runs for this disk. Absent: a QEMU
   * backup job `jobId` (every push; a pull begun by a version before).
   */
  snapshot?: { cbwNode: string; snapNode: string };
  state: BackupDiskState;
  current: number;
  total: number;
  error: string | null;
}

export type JobPhase = 'starting' | 'running' | 'done';
/** How the job ended: libvirt's COMPLETED / FAILED / CANCELED. */
export type JobEnd = 'completed' | 'failed' | 'cancelled';

export interface BackupJobRecord {
  id: number;
  mode: 'push' | 'pull';
  phase: JobPhase;
  /** ms since the epoch */
  startedAt: number;
  endedAt: number | null;
  /** the job's <domainbackup> with every default and the id (formatBackupXML) */
  xml: string;
  /** checkpoint created together with this backup (null: none) */
  checkpoint: string | null;
  disks: BackupJobDisk[];
  /** the write-ahead log of what begin created, in order; entries leave when they are undone or handed over */
  steps: BackupStep[];
  /** 'abort' (push aborted: targets unusable) or 'end' (pull ended by its user) once requested */
  stopping: 'abort' | 'end' | null;
  end: JobEnd | null;
  errmsg: string | null;
  /**
   * A push's room on its targets' filesystems (backup-space.ts), held again
   * by a daemon that recovers the running job. Absent in records of earlier
   * versions (and of pushes not checked): such a job holds no room.
   */
  space?: SavedReservation[];
}

/** A finished push target, to find "the previous backup of the same chain". */
export interface FinishedTarget {
  disk: string;
  path: string;
  format: string;
  /** checkpoint created with this backup */
  checkpoint: string | null;
  /** checkpoint this backup was incremental from (null: full) */
  incremental: string | null;
  jobId: number;
  /** ms since the epoch (the backup's instant) */
  time: number;
}

/** What afterPushComplete learns of a finished push (the backup manifest writer's input). */
export type PushCompleteInfo = FinishedPush;

export interface BackupMeta {
  lastJobId: number;
  finished: FinishedTarget[];
  lastCompleted: JobStats | null;
  /** finished pushes whose afterPushComplete (manifests) has not run yet: survives a daemon stop */
  pendingAfterPush: PushCompleteInfo[];
  /** id of the last job whose end is recorded here (recordEnd): a done job above it lost its record */
  lastEnded: number;
}

/** How many finished targets per disk are remembered. */
const KEEP_FINISHED = 64;

export class BackupMetaStore {
  meta: BackupMeta = { lastJobId: 0, finished: [], lastCompleted: null, pendingAfterPush: [], lastEnded: 0 };
  /** meta.json was missing or unreadable although the domain had backup metadata before: the ids handed out are unknown */
  lost = false;

  constructor(readonly dir: string, private readonly log: Logger) {}

  /**
   * Job ids are never reused, even when meta.json (which counts them) is
   * lost: the running domain's status file keeps the last id too
   * (`inStatus`), and a domain whose meta.json vanished from its folder (or
   * is unreadable) continues above the seconds since 2020 — above every id
   * it can have handed out, and within an int until 2088.
   */
  idFloor(inStatus: unknown): number {
    // the status file's id is the newest ever handed out (each one was above all before it)
    if (typeof inStatus === 'number' && inStatus > 0) return inStatus;
    return this.lost ? Math.floor((Date.now() - Date.UTC(2020, 0, 1)) / 1000) : 0;
  }

  get file(): string {
    return path.join(this.dir, 'meta.json');
  }

  async load(): Promise<void> {
    if (!existsSync(this.file)) {
      this.lost = existsSync(this.dir); // the folder is made by the first save
      return;
    }
    try {
      const v = JSON.parse(await readFile(this.file, 'utf8')) as Partial<BackupMeta>;
      this.meta = {
        lastJobId: typeof v.lastJobId === 'number' ? v.lastJobId : 0,
        finished: Array.isArray(v.finished) ? v.finished : [],
        lastCompleted: v.lastCompleted ?? null,
        pendingAfterPush: Array.isArray(v.pendingAfterPush) ? v.pendingAfterPush : [],
        lastEnded: typeof v.lastEnded === 'number' ? v.lastEnded : 0,
      };
    } catch (e) {
      this.lost = true;
      this.log.warn({ file: this.file, ...errField(e) }, 'cannot read backup metadata');
    }
  }

  async save(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.file, JSON.stringify(this.meta, null, 2) + '\n');
  }

  /** The next job id above `floor` (ids known from elsewhere), persisted before it is handed out. */
  async nextJobId(floor = 0): Promise<number> {
    this.meta.lastJobId = Math.max(this.meta.lastJobId, floor) + 1;
    await this.save();
    this.lost = false;
    return this.meta.lastJobId;
  }

  /**
   * What a job's end leaves here: a completed push's targets and (with
   * `manifests`) the manifests still to write, its final stats, and lastEnded.
   * Saved together with the status file's 'done'; a driver that finds a done job
   * above lastEnded (killed between the two writes, or meta.json lost) or a job
   * not done calls this again: each part is recorded once. Returns the manifest
   * work to queue, or null.
   */
  recordEnd(dom: { uuid: string; name: string }, rec: BackupJobRecord, stats: JobStats, manifests: boolean): PushCompleteInfo | null {
    this.meta.lastCompleted = stats;
    this.meta.lastEnded = Math.max(this.meta.lastEnded, rec.id);
    if (rec.mode !== 'push' || rec.end !== 'completed') return null;
    this.addFinished(rec.disks.map((d) => ({
      disk: d.target, path: d.path, format: d.format, checkpoint: rec.checkpoint, incremental: d.incremental, jobId: rec.id, time: rec.startedAt,
    })));
    if (!manifests) return null;
    const info: PushCompleteInfo = {
      uuid: dom.uuid, name: dom.name, jobId: rec.id, time: rec.startedAt,
      disks: rec.disks.map((d) => ({
        target: d.target, path: d.path, format: d.format, checkpoint: rec.checkpoint, incremental: d.incremental,
        backingFile: d.backingFile, virtualSize: d.virtualSize,
      })),
    };
    if (!this.meta.pendingAfterPush.some((p) => p.uuid === info.uuid && p.jobId === info.jobId)) this.meta.pendingAfterPush.push(info);
    return info;
  }

  /** Record finished targets; one already recorded (same job and disk: a job ended again after a kill) is not added twice. */
  addFinished(items: FinishedTarget[]): void {
    const known = (i: FinishedTarget) => this.meta.finished.some((f) => f.jobId === i.jobId && f.disk === i.disk && f.path === i.path);
    this.meta.finished.push(...items.filter((i) => !known(i)));
    for (const disk of new Set(items.map((i) => i.disk))) {
      const mine = this.meta.finished.filter((f) => f.disk === disk);
      if (mine.length > KEEP_FINISHED) {
        const drop = new Set(mine.slice(0, mine.length - KEEP_FINISHED));
        this.meta.finished = this.meta.finished.filter((f) => !drop.has(f));
      }
    }
  }
}

/**
 * The previous backup of the chain an incremental since `base` continues: the
 * most recent finished target of `disk` taken at the base checkpoint's instant
 * (created together with it), whose file still exists.
 */
export function previousBackup(
  finished: readonly FinishedTarget[], disk: string, base: string, fileExists: (p: string) => boolean,
): FinishedTarget | null {
  for (let i = finished.length - 1; i >= 0; i--) {
    const f = finished[i]!;
    if (f.disk === disk && f.checkpoint === base && fileExists(f.path)) return f;
  }
  return null;
}

/**
 * A job record read back from a status file (records before the write-ahead
 * log listed `created`; records before the saved room have no `space`: the
 * job then holds no room, as every recovered job did before).
 */
export function readJobRecord(raw: unknown): BackupJobRecord | null {
  if (typeof raw !== 'object' || raw === null || typeof (raw as { id?: unknown }).id !== 'number') return null;
  const rec = structuredClone(raw) as BackupJobRecord & { created?: BackupResource[] };
  if (!Array.isArray(rec.steps)) rec.steps = (rec.created ?? []).map((r) => ({ ...r, state: 'done' as const }));
  delete rec.created;
  const space: unknown = rec.space;
  if (Array.isArray(space)) rec.space = space.filter((r: Partial<SavedReservation> | null) => typeof r?.target === 'string' && typeof r.need === 'number');
  else delete rec.space;
  return rec;
}

/** A backup job in memory. */
export class BackupJob {
  /** resolves when the job is done (completion processed, event published) */
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;
  /** the stats published when it ended */
  finalStats: JobStats | null = null;
  /** how its completion was processed (logged at debug level) */
  readonly timeline = new JobTimeline();
  /** a push's targets written back while it copies (backup-flush.ts); null after a recovery */
  writeback: TargetWriteback | null = null;
  /** the room its push targets hold for other pushes' checks (backup-space.ts); restored from the record after a recovery */
  space: { release(): void } | null = null;

  constructor(public record: BackupJobRecord) {
    this.finished = new Promise((r) => (this.resolveFinished = r));
    if (record.phase === 'done') this.resolveFinished();
  }

  get id(): number {
    return this.record.id;
  }

  get active(): boolean {
    return this.record.phase !== 'done';
  }

  markFinished(): void {
    this.resolveFinished();
  }
}

/** Per-domain table: at most one job (the current one, or the last one not yet ended by backupEnd). */
export class BackupJobTable implements BackupJobTableLike {
  current: BackupJob | null = null;

  constructor(readonly store: BackupMetaStore) {}

  hasActiveJob(): boolean {
    return this.current?.active ?? false;
  }

  /** The QEMU job id of the active backup's block job on disk `target`, while it copies (libvirt's disk->blockjob). */
  diskBlockJob(target: string): string | null {
    const job = this.current;
    if (!job?.active || job.record.phase !== 'running') return null;
    const disk = job.record.disks.find((d) => d.target === target && (d.state === 'running' || d.state === 'cancelling'));
    return disk?.jobId ?? null;
  }
}

const STOPPED_WHY: Record<number, string> = { [ShutoffReason.CRASHED]: 'crashed', [ShutoffReason.DESTROYED]: 'was destroyed', [ShutoffReason.SHUTDOWN]: 'shut down' };
/** Why a job failed with its domain, in its error message: the domain `stoppedWhy` during the backup. */
export const stoppedWhy = (reason: number): string => STOPPED_WHY[reason] ?? 'stopped';

/** The fields every job log line carries. */
export function jobFields(dom: { name: string; uuid: string }, rec: BackupJobRecord): LogFields {
  return { domain: { name: dom.name, uuid: dom.uuid }, jobId: rec.id, mode: rec.mode, disks: rec.disks.map((d) => d.target) };
}

/** One line per ended job: completed, cancelled (aborted, or a pull ended) or failed. */
export function logJobEnd(log: Logger, dom: { name: string; uuid: string }, rec: BackupJobRecord): void {
  const fields = { ...jobFields(dom, rec), bytes: jobBytes(rec), durationMs: (rec.endedAt ?? Date.now()) - rec.startedAt };
  const reason = rec.stopping === 'abort' ? 'aborted' : rec.stopping === 'end' ? 'ended by the client' : undefined;
  if (rec.end === 'failed') log.error({ ...fields, error: rec.errmsg }, 'backup job failed');
  else if (rec.end === 'cancelled') log.info({ ...fields, reason }, 'backup job cancelled');
  else log.info({ ...fields, reason }, 'backup job completed');
}

/** Bytes copied (push) or held in scratch files (pull) so far. */
export function jobBytes(rec: BackupJobRecord): number {
  return rec.disks.reduce((n, d) => n + d.current, 0);
}

/**
 * A pull's frozen view has no QEMU job whose progress says how much the
 * scratch holds (libvirt's temp_used/temp_total): its scratch image's
 * allocation and the disk's size stand in, kept in the record's disks.
 */
export async function measureScratch(qmp: { execute(cmd: 'query-named-block-nodes', args: { flat: boolean }): Promise<BlockDeviceInfo[]> }, rec: BackupJobRecord): Promise<void> {
  if (!rec.disks.some((d) => d.snapshot)) return;
  const nodes = await qmp.execute('query-named-block-nodes', { flat: true });
  for (const d of rec.disks) {
    const n = d.snapshot ? nodes.find((x) => x['node-name'] === d.formatNode) : undefined;
    if (!n) continue;
    d.current = n.image['actual-size'] ?? 0;
    d.total = d.virtualSize;
  }
}

/**
 * The disks' states in step with QEMU's jobs: a concluded job gives its
 * outcome and progress, a vanished one fails the disk (or ends its cancel).
 * A pull's frozen view has no job: it runs until its end is asked.
 */
export function applyQemuJobs(rec: BackupJobRecord, jobs: readonly JobInfo[]): void {
  for (const d of rec.disks) {
    if (d.state !== 'running' && d.state !== 'cancelling') continue;
    if (d.snapshot && d.state === 'running') continue;
    const q = jobs.find((j) => j.id === d.jobId);
    if (!q) {
      d.state = d.state === 'cancelling' ? 'cancelled' : 'failed';
      if (d.state === 'failed') d.error ??= `QEMU job '${d.jobId}' vanished`;
    } else if (q.status === 'concluded') {
      d.current = q['current-progress'];
      d.total = q['total-progress'];
      if (d.state === 'cancelling') d.state = 'cancelled';
      else if (q.error !== undefined) {
        d.state = /cancel/i.test(q.error) ? 'cancelled' : 'failed';
        d.error = q.error;
      } else d.state = 'complete';
    }
  }
}

/** libvirt's qemuBackupJobTerminate decision from the disks' states. */
export function decideEnd(rec: BackupJobRecord): JobEnd {
  const states = rec.disks.map((d) => d.state);
  if (states.includes('failed')) return 'failed';
  // a cancelled pull counts as success (libvirt)
  if (rec.mode === 'push' && states.includes('cancelled')) return 'cancelled';
  return 'completed';
}

/** First error message of the disks. */
export function firstError(rec: BackupJobRecord): string | null {
  return rec.disks.find((d) => d.error !== null)?.error ?? null;
}

/**
 * virDomainGetJobStats of a backup (qemuBackupGetJobInfoStats): finished disks
 * count with their final progress, running ones with `live` (query-jobs).
 */
export function jobStats(rec: BackupJobRecord, now: number, live: readonly JobInfo[] = []): JobStats {
  let cur = 0;
  let total = 0;
  for (const d of rec.disks) {
    const q = d.state === 'running' || d.state === 'cancelling' ? live.find((j) => j.id === d.jobId) : undefined;
    cur += q ? q['current-progress'] : d.current;
    total += q ? q['total-progress'] : d.total;
  }
  const type =
    rec.phase !== 'done' ? JobType.UNBOUNDED
      : rec.end === 'completed' ? JobType.COMPLETED
        : rec.end === 'failed' ? JobType.FAILED : JobType.CANCELLED;
  const stats: JobStats = {
    type,
    operation: JobOperation.BACKUP,
    id: rec.id,
    time_elapsed: Math.max(0, (rec.endedAt ?? now) - rec.startedAt),
  };
  if (rec.mode === 'push') {
    if (total > 0 || cur > 0) {
      stats.disk_total = total;
      stats.disk_processed = cur;
      stats.disk_remaining = Math.max(0, total - cur);
    }
  } else if (total > 0 || cur > 0) {
    stats.disk_temp_used = cur;
    stats.disk_temp_total = total;
  }
  if (rec.phase === 'done') {
    stats.success = rec.end === 'completed';
    if (rec.errmsg !== null) stats.errmsg = rec.errmsg;
  }
  return stats;
}
