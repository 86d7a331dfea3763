// The write-ahead log of backupBegin and its undo. Every step that creates
// something (a file, a block node, a bitmap, a job, the NBD server, an export,
// a QOM object) is in the job record as 'intended' before it runs, so a
// driver killed between any two steps leaves a record that names everything
// it may have created. Undo walks the log backwards and tolerates "not found":
// an intended step may never have run, and recovery may run twice. So all of
// begin's intents are saved at once, before the first step (`intendAll`),
// and 'done' (and dropping an entry that was handed over) rides with the next
// save: one status write (two fsyncs) for the whole begin instead of one per
// step. A file is the one thing whose "not found" cannot be told from "not
// ours": see createFile and removeOurFile.

import { link, lstat, open, unlink } from 'node:fs/promises';
import path from 'node:path';
import { toVirError, virErr } from '../errors.js';
import { errField, type Logger } from '../log.js';
import type { BackupJobRecord, BackupResource, BackupStep } from './backup-job.js';
import { QmpCommandError, type QmpClient } from './qmp/client.js';
import type { BlockdevCreateOptions } from './qmp/commands.js';

/** How long a QEMU job may take to conclude after a cancel, or a blockdev-create to finish. */
export const JOB_WAIT_MS = 60_000;

/** Two resources are the same step (a file's dev/ino, learnt when it is made, aside). */
function sameResource(a: BackupResource, b: BackupResource): boolean {
  const key = (r: BackupResource): string => JSON.stringify({ ...r, state: undefined, ...(r.kind === 'file' ? { dev: undefined, ino: undefined } : {}) });
  return key(a) === key(b);
}

/** The job record and how to save it (atomically, in the domain's status file). */
export class StepLog {
  /** entries saved by intendAll and not run yet */
  private readonly ahead = new Set<BackupStep>();

  constructor(
    readonly rec: BackupJobRecord,
    private readonly save: () => Promise<void>,
  ) {}

  /** Record every step the plan will run as intended, in order, in one save. */
  async intendAll(res: BackupResource[]): Promise<void> {
    for (const r of res) {
      const s: BackupStep = { ...r, state: 'intended' };
      this.rec.steps.push(s);
      this.ahead.add(s);
    }
    await this.save();
  }

  /**
   * Run `act`, which creates `res`, write-ahead: entries intended by
   * intendAll are used as they are (nothing to save); others are saved as
   * intended first. All are marked done after (in memory; saved with the
   * next save). On failure the entries stay for undo (which tolerates steps
   * that never ran), except when nothing can have been made (the file was
   * refused; QEMU refused a single-command step: `atomic`): those go again
   * (saved again only if this call saved them).
   */
  async run<T>(res: BackupResource[], act: (steps: BackupStep[]) => Promise<T>, opts: { atomic?: boolean } = {}): Promise<T> {
    const known = res.map((r) => [...this.ahead].find((s) => sameResource(s, r)));
    const fresh = !known.every((s) => s !== undefined);
    const steps: BackupStep[] = fresh ? res.map((r) => ({ ...r, state: 'intended' })) : known as BackupStep[];
    if (fresh) {
      this.rec.steps.push(...steps);
      await this.save();
    }
    let out: T;
    try {
      out = await act(steps);
    } catch (e) {
      if ((opts.atomic === true && e instanceof QmpCommandError) || e instanceof FileCreateError) {
        this.rec.steps = this.rec.steps.filter((s) => !steps.includes(s));
        for (const s of steps) this.ahead.delete(s);
        // an intent of intendAll may stay saved: undo meets nothing there
        if (fresh) await this.save();
      }
      throw e instanceof FileCreateError ? e.error : e;
    }
    for (const s of steps) {
      s.state = 'done';
      this.ahead.delete(s);
    }
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

/** The name a file of job `jobId` is created under before it takes its own (same folder, so a link can give it its name). */
export function creationName(file: string, jobId: number): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.virtback-${jobId}.new`);
}

/**
 * Create the empty target/scratch file `step.path` (mode 0600; raw targets
 * get their size), never over an existing one: made under `step.temp`, then
 * linked to its name (link fails on an existing name, whoever made it in the
 * meantime). `step` learns the file's dev/ino. The temp name stays (it proves
 * the file is ours to a recovery that finds no dev/ino saved) until
 * dropCreationNames, after the next save.
 */
export async function createFile(step: BackupStep & { kind: 'file' }, disk: string, size: number): Promise<void> {
  if (await createUnder(step, disk, size) === 'no links') {
    // vfat, exFAT, some FUSE: no second name, so created at its name as before; a
    // kill before the next save then leaves it (no temp name, no dev/ino saved)
    delete step.temp;
    await createUnder(step, disk, size);
  }
}

/** link() errors of filesystems that have no hard links */
const NO_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK']);

async function createUnder(step: BackupStep & { kind: 'file' }, disk: string, size: number): Promise<'done' | 'no links'> {
  const temp = step.temp ?? step.path;
  let fh;
  try {
    fh = await open(temp, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST' && temp === step.path) {
      throw new FileCreateError(virErr('INVALID_ARG', 'QEMU', `store '${step.path}' for backup of '${disk}' exists`));
    }
    throw new FileCreateError(virErr('SYSTEM_ERROR', 'QEMU', `failed to create image file '${step.path}': ${(e as Error).message}`, e));
  }
  try {
    if (size > 0) await fh.truncate(size);
    const st = await fh.stat();
    if (temp !== step.path) await link(temp, step.path);
    step.dev = st.dev;
    step.ino = st.ino;
    return 'done';
  } catch (e) {
    await unlink(temp).catch(() => {});
    const code = (e as NodeJS.ErrnoException).code;
    if (temp !== step.path && NO_LINKS.has(code ?? '') && (e as NodeJS.ErrnoException).syscall === 'link') return 'no links';
    if (code === 'EEXIST') throw new FileCreateError(virErr('INVALID_ARG', 'QEMU', `store '${step.path}' for backup of '${disk}' exists`));
    throw new FileCreateError(virErr('SYSTEM_ERROR', 'QEMU', `failed to create image file '${step.path}': ${(e as Error).message}`, e));
  } finally {
    await fh.close();
  }
}

/** The created files' temp names go, once a save holds their dev/ino. */
export async function dropCreationNames(rec: BackupJobRecord): Promise<void> {
  for (const s of rec.steps) {
    if (s.kind === 'file' && s.temp !== undefined && s.ino !== undefined) await dropTemp(s);
  }
}

async function statOrNull(p: string): Promise<{ dev: number; ino: number } | null> {
  return lstat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
}

async function unlinkIfThere(p: string): Promise<void> {
  await unlink(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

/** Remove a file step's temp name (only its job uses that name: whatever is there is ours). */
async function dropTemp(s: BackupResource & { kind: 'file' }): Promise<void> {
  if (s.temp === undefined) return;
  await unlinkIfThere(s.temp);
  delete s.temp;
}

/**
 * Undo a file step: remove `path` only if it is the file this step made —
 * the same inode as its temp name (killed before dev/ino were saved) or as
 * the dev/ino recorded — then the temp name. A record of a version before
 * temp names (neither field) removes `path` as that version did.
 */
async function removeOurFile(s: BackupResource & { kind: 'file' }): Promise<void> {
  if (s.temp === undefined && s.ino === undefined) return unlinkIfThere(s.path);
  const ours = (s.temp !== undefined ? await statOrNull(s.temp) : null) ?? (s.ino !== undefined ? { dev: s.dev, ino: s.ino } : null);
  const there = await statOrNull(s.path);
  if (ours !== null && there !== null && there.dev === ours.dev && there.ino === ours.ino) await unlinkIfThere(s.path);
  if (s.temp !== undefined) await unlinkIfThere(s.temp);
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
    if (o.keep?.(s)) {
      // a kept target loses its temp name (a begin killed before dropCreationNames)
      if (s.kind === 'file') await dropTemp(s).catch((e) => o.log.warn({ jobId: rec.id, ...errField(e) }, 'cannot remove a temp name'));
      continue;
    }
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
  if (r.kind === 'file') return removeOurFile(r);
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
    case 'device':
      return moveBack(live, r);
    case 'pause':
      return resumeIfPaused(live);
  }
}

/** A guest device still on the pull's filter goes back onto its disk node (before the filter is deleted). */
async function moveBack(qmp: QmpClient, r: BackupResource & { kind: 'device' }): Promise<void> {
  const onFilter = (await qmp.execute('query-block')).some((b) => b.inserted?.['node-name'] === r.filter);
  if (onFilter) await tolerant(qmp.execute('qom-set', { path: r.path, property: 'drive', value: r.node }));
}

/** The vCPUs we paused for a pull's instant run again (a driver killed in between left them paused). */
async function resumeIfPaused(qmp: QmpClient): Promise<void> {
  if ((await qmp.execute('query-status')).status === 'paused') await qmp.execute('cont');
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
