// The write-ahead log of backupBegin and its undo. Every step that creates
// something (a file, a block node, a bitmap, a job, the NBD server, an export,
// a QOM object) is saved in the job record as 'intended' before it runs, so a
// driver killed between any two steps leaves a record that names everything
// it may have created. Undo walks the log backwards and tolerates "not found":
// an intended step may never have run, and recovery may run twice. So 'done'
// (and dropping an entry that was handed over) need not be durable at once:
// they are saved with the next step's intent, one status write (two fsyncs)
// per step instead of two.

import { lstat, open, unlink } from 'node:fs/promises';
import { toVirError, virErr } from '../errors.js';
import { errField, type Logger } from '../log.js';
import type { BackupJobRecord, BackupResource, BackupStep } from './backup-job.js';
import { QmpCommandError, type QmpClient } from './qmp/client.js';
import type { BlockdevCreateOptions } from './qmp/commands.js';

/** How long a QEMU job may take to conclude after a cancel, or a blockdev-create to finish. */
export const JOB_WAIT_MS = 60_000;

/** The job record and how to save it (atomically, in the domain's status file). */
export class StepLog {
  constructor(
    readonly rec: BackupJobRecord,
    private readonly save: () => Promise<void>,
  ) {}

  /**
   * Run `act`, which creates `res`, write-ahead: the entries are saved as
   * intended first and marked done after (in memory; saved with the next
   * intent or the caller's next save). When the file could not be made,
   * or QEMU refused a single-command step (`atomic`: its error reply means
   * nothing was created), the entries go again; on any other failure (a
   * timeout, a lost monitor, a later command of a multi-command step) they
   * stay for undo.
   */
  async run<T>(res: BackupResource[], act: () => Promise<T>, opts: { atomic?: boolean } = {}): Promise<T> {
    const steps: BackupStep[] = res.map((r) => ({ ...r, state: 'intended' }));
    this.rec.steps.push(...steps);
    await this.save();
    let out: T;
    try {
      out = await act();
    } catch (e) {
      if ((opts.atomic === true && e instanceof QmpCommandError) || e instanceof FileCreateError) {
        this.rec.steps = this.rec.steps.filter((s) => !steps.includes(s));
        await this.save();
      }
      throw e instanceof FileCreateError ? e.error : e;
    }
    for (const s of steps) s.state = 'done';
    return out;
  }

  /**
   * Drop entries that are handed over (a dismissed create job, the committed
   * checkpoint's bitmaps), in memory: until the next save a recovery meets
   * them still, and undo tolerates that (no such job; a committed checkpoint
   * keeps its bitmaps).
   */
  drop(pred: (s: BackupStep) => boolean): void {
    this.rec.steps = this.rec.steps.filter((s) => !pred(s));
  }
}

/** createFile failed before the file existed: nothing to undo. */
class FileCreateError extends Error {
  constructor(readonly error: Error) {
    super(error.message);
  }
}

/** Create the empty target/scratch file (mode 0600, never over an existing one); raw targets get their size. */
export async function createFile(file: string, disk: string, size: number): Promise<void> {
  let fh;
  try {
    fh = await open(file, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new FileCreateError(virErr('INVALID_ARG', 'QEMU', `store '${file}' for backup of '${disk}' exists`));
    }
    throw new FileCreateError(virErr('SYSTEM_ERROR', 'QEMU', `failed to create image file '${file}': ${(e as Error).message}`, e));
  }
  try {
    if (size > 0) await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/** blockdev-create is a job: wait for it to conclude, check its error, dismiss it. */
export async function runCreateJob(qmp: QmpClient, jobId: string, options: BlockdevCreateOptions): Promise<void> {
  const w = qmp.waitForEvent(
    (ev) => ev.event === 'JOB_STATUS_CHANGE' && (ev.data as { id?: string }).id === jobId && (ev.data as { status?: string }).status === 'concluded',
    { timeoutMs: JOB_WAIT_MS },
  );
  try {
    await qmp.execute('blockdev-create', { 'job-id': jobId, options });
  } catch (e) {
    w.cancel();
    throw e;
  }
  await w.promise;
  const info = (await qmp.execute('query-jobs')).find((j) => j.id === jobId);
  await qmp.execute('job-dismiss', { id: jobId });
  if (info?.error) throw virErr('OPERATION_FAILED', 'QEMU', `cannot format backup image: ${info.error}`);
}

export interface UndoOptions {
  /** QEMU's monitor; null when QEMU is gone (only files are left to remove) */
  qmp: QmpClient | null;
  log: Logger;
  /** spare these (a finished push keeps its target files) */
  keep?: (s: BackupStep) => boolean;
  /** a checkpoint's metadata was committed: its bitmaps stay (asked for bitmap steps naming a checkpoint) */
  checkpointKept?: (s: BackupStep & { kind: 'bitmap' }) => Promise<boolean>;
  /**
   * Block nodes must really be closed by QEMU: a finished push's targets are
   * flushed (qcow2 metadata written) only by blockdev-del, so QEMU gone
   * before that is an error, not "nothing left to undo".
   */
  mustClose?: boolean;
  /** told of each step once undone (the job's timeline) */
  undone?: (s: BackupStep) => void;
}

/**
 * Undo the record's steps in reverse order, best effort: every step is tried,
 * an undone step leaves the log, and the first failure is rethrown at the end.
 * The caller saves the record.
 */
export async function undoSteps(rec: BackupJobRecord, o: UndoOptions): Promise<void> {
  let first: unknown = null;
  for (const s of [...rec.steps].reverse()) {
    if (o.keep?.(s)) continue;
    try {
      const kept = s.kind === 'bitmap' && s.checkpoint !== undefined && o.checkpointKept ? await o.checkpointKept(s) : false;
      if (!kept) await undoOne(o.qmp, s, o.mustClose === true);
      rec.steps = rec.steps.filter((x) => x !== s);
      o.undone?.(s);
    } catch (e) {
      first ??= e;
      o.log.warn({ jobId: rec.id, step: s.kind, ...errField(e) }, 'cannot undo a backup step');
    }
  }
  if (first !== null) throw toVirError(first);
}

/** "It is not there": what undoing a step that never ran (or ran undone already) meets. */
function isAbsent(e: unknown): boolean {
  return e instanceof QmpCommandError && /not found|cannot find|failed to find|not running|does not exist|no such/i.test(e.desc);
}

async function tolerant(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!isAbsent(e)) throw e;
  }
}

async function undoOne(qmp: QmpClient | null, r: BackupResource, mustClose: boolean): Promise<void> {
  const live = qmp !== null && !qmp.isClosed ? qmp : null;
  if (r.kind === 'file') {
    await unlink(r.path).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
    return;
  }
  if (r.kind === 'nbd-server') {
    if (live) await tolerant(live.execute('nbd-server-stop'));
    if (r.socket !== null) await removeSocket(r.socket);
    return;
  }
  if (!live) {
    if (mustClose && r.kind === 'node') throw virErr('OPERATION_FAILED', 'QEMU', `QEMU exited before block node '${r.name}' was closed`);
    return; // QEMU is gone and took these with it
  }
  switch (r.kind) {
    case 'object':
      return tolerant(live.execute('object-del', { id: r.id }));
    case 'export':
      return deleteExport(live, r.id);
    case 'job':
      return cancelAndDismiss(live, r.id);
    case 'bitmap':
      return tolerant(live.execute('block-dirty-bitmap-remove', { node: r.node, name: r.name }));
    case 'node':
      return tolerant(live.execute('blockdev-del', { 'node-name': r.name }));
  }
}

async function deleteExport(qmp: QmpClient, id: string): Promise<void> {
  const exists = (await qmp.execute('query-block-exports')).some((x) => x.id === id);
  if (!exists) return;
  const w = qmp.waitForEvent(
    (ev) => ev.event === 'BLOCK_EXPORT_DELETED' && (ev.data as { id?: string }).id === id, { timeoutMs: JOB_WAIT_MS });
  try {
    await qmp.execute('block-export-del', { id, mode: 'hard' });
  } catch (e) {
    w.cancel();
    throw e;
  }
  await w.promise;
}

/** Cancel a QEMU job (if it still runs) and dismiss it; absent is fine. */
export async function cancelAndDismiss(qmp: QmpClient, id: string): Promise<void> {
  const info = (await qmp.execute('query-jobs')).find((j) => j.id === id);
  if (!info) return;
  if (info.status !== 'concluded') {
    const w = qmp.waitForEvent(
      (ev) => ev.event === 'JOB_STATUS_CHANGE' && (ev.data as { id?: string }).id === id && (ev.data as { status?: string }).status === 'concluded',
      { timeoutMs: JOB_WAIT_MS },
    );
    try {
      if (id.startsWith('create-')) await qmp.execute('job-cancel', { id });
      else await qmp.execute('block-job-cancel', { device: id, force: true });
    } catch (e) {
      // it may have concluded in between
      w.cancel();
      const again = (await qmp.execute('query-jobs')).find((j) => j.id === id);
      if (again?.status !== 'concluded') throw e;
    }
    await w.promise.catch(() => {});
  }
  await qmp.execute('job-dismiss', { id });
}

/** Remove the unix socket of a pull's NBD server (QEMU leaves it behind). */
export async function removeSocket(p: string): Promise<void> {
  try {
    if ((await lstat(p)).isSocket()) await unlink(p);
  } catch {
    // gone already
  }
}
