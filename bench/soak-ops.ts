// The soak's operations on the domain, each as a user would do it through
// the SDK and the CLI: guest writes, push and pull backups (full, incremental
// from the newest checkpoint, differential from an older one), checkpoint
// deletion — with a fault timed into the operation when one is drawn.

import { stat } from 'node:fs/promises';
import path from 'node:path';
import { isVirError } from '../src/index.js';
import { JobType } from '../src/flags.js';
import { sleep } from '../test/helpers/qemu-env.js';
import { checkExport } from './soak-checks.js';
import type { FaultKind, Point, Rng, Tally, WriteLog } from './soak-model.js';
import { DISK, type World } from './soak-world.js';

export interface Ctx {
  w: World;
  log: WriteLog;
  rng: Rng;
  t: Tally;
  points: Point[];
  cycle: number;
  /** next checkpoint number (names c1, c2, … never repeat) */
  seq: number;
  maxJobId: number;
  /** how each checkpoint came to be (which backup, its outcome, the cycle), for findings */
  history: Map<string, string>;
  /** cycles at which meta.json was deleted */
  metaDeleted: number[];
  /** the daemon and QEMU the live disk was last compared under */
  liveSeen: { daemonStarts: number; qemuPid: number };
  /** the crashed image as the model's resync read it, to tell a drift at restart apart */
  crashRead: Buffer | null;
  /**
   * Log entries [from, to) written while a job's target was full: QEMU 7.2's
   * backup job fails a guest write whose old data it cannot copy out
   * (copy-before-write's default on-cbw-error=break-guest-write), and HMP
   * qemu-io does not say so; the live check after such a job tells them apart.
   */
  fullTargetWrites: { from: number; to: number } | null;
  say(msg: string): void;
}

/** Why a backup may lack its previous backup: the story of its base checkpoint. */
export function explainBase(c: Ctx, p: Point): string {
  if (p.base === null) return '';
  const metas = c.metaDeleted.filter((n) => n <= p.cycle);
  return `; base ${p.base} came from: ${c.history.get(p.base) ?? 'unknown'}${metas.length > 0 ? `; meta.json deleted at cycle ${metas.join(', ')}` : ''}`;
}

export interface CheckpointInfo {
  name: string;
  inconsistent: boolean;
}

const errText = (e: unknown): string => (isVirError(e) ? `${e.code} ${e.message}` : e instanceof Error ? e.message : String(e));

/** `n` guest writes, each recorded once QEMU answered. */
export async function writes(c: Ctx, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const wr = c.log.randomWrite(c.rng);
    await c.w.write(wr.offset, wr.length, wr.pattern);
    c.log.push({ kind: 'write', ...wr, cycle: c.cycle });
  }
}

/** The domain's checkpoints, oldest first (names carry their creation number). */
export async function checkpoints(c: Ctx): Promise<CheckpointInfo[]> {
  const out: CheckpointInfo[] = [];
  for (const cp of await c.w.domain.listAllCheckpoints()) {
    const xml = await cp.getXMLDesc().catch(() => '');
    out.push({ name: cp.name, inconsistent: xml.includes('<inconsistent') });
  }
  return out.sort((a, b) => Number(a.name.slice(1)) - Number(b.name.slice(1)));
}

type Kind = Point['kind'];

/** Full, incremental (newest checkpoint) or differential (an older one); `only` limits the bases. */
function chooseBase(c: Ctx, cps: CheckpointInfo[], only?: (name: string) => boolean): { kind: Kind; base: string | null } {
  const usable = cps.filter((x) => !x.inconsistent && (only === undefined || only(x.name)));
  const kind = usable.length === 0 ? 'full' : c.rng.weighted({ full: 2, incremental: 4, differential: 3 });
  if (kind === 'full') return { kind, base: null };
  if (kind === 'incremental' || usable.length === 1) return { kind: 'incremental', base: usable[usable.length - 1]!.name };
  return { kind, base: c.rng.pick(usable.slice(0, -1)).name };
}

export interface JobEnd {
  result: 'ok' | 'aborted' | 'failed' | 'none';
  id: number | null;
  msg: string;
}

/** Wait until job `id` (or the current one) stops running, then backupEnd it. */
export async function settleJob(c: Ctx, id: number | null): Promise<JobEnd> {
  const dom = c.w.domain;
  const jid = id ?? (await dom.listJobIds())[0] ?? null;
  if (jid === null) return { result: 'none', id: null, msg: 'no job' };
  // a pull job runs until it is ended; a push job is waited for
  const xml = await dom.backupGetXMLDesc(jid).catch(() => '');
  const end = Date.now() + 120_000;
  while (!/mode=['"]pull['"]/.test(xml)) {
    // a domain that died has no running job; backupEnd below says how the job ended
    const s = await dom.getJobStats().catch(() => ({ type: JobType.NONE, id: undefined }));
    const running = (s.type === JobType.BOUNDED || s.type === JobType.UNBOUNDED) && (s.id === undefined || s.id === jid);
    if (!running) break;
    if (Date.now() > end) throw new Error(`backup job ${jid} still running after 120 s`);
    await sleep(30);
  }
  try {
    const r = await dom.backupEnd(jid);
    return { result: r === 1 ? 'ok' : 'aborted', id: jid, msg: `backupEnd returned ${r}` };
  } catch (e) {
    return { result: 'failed', id: jid, msg: errText(e) };
  }
}

/** What a fault did to a backup, for the caller's recovery. */
export interface BackupRun {
  daemonKilled: boolean;
  qemuKilled: boolean;
}

export interface BackupOpts {
  fault?: FaultKind | null;
  /** back up into the tiny tmpfs */
  small?: boolean;
  /** incremental from this checkpoint, whatever its state */
  base?: string;
}

/** Begin a backup, with a daemon SIGKILL a few ms into the call when the fault says so. */
async function begin(c: Ctx, xml: string, cpXml: string, fault: FaultKind | null | undefined, r: BackupRun): Promise<{ id: number | null; err: unknown }> {
  const p = c.w.domain.backupBegin(xml, cpXml);
  let timer: NodeJS.Timeout | null = null;
  if (fault === 'daemon-kill-in-begin') {
    // a few ms lands in the checks; later ones inside the QMP steps (a loaded machine is slow there)
    const ms = c.rng.chance(0.5) ? c.rng.range(0, 20) : c.rng.range(20, 200);
    timer = setTimeout(() => c.w.killDaemonNow(), ms);
    c.say(`  fault: daemon SIGKILL ${ms} ms into backupBegin`);
  }
  try {
    return { id: await p, err: null };
  } catch (e) {
    return { id: null, err: e };
  } finally {
    if (timer !== null) {
      // wait for the timer either way: the kill may still be due
      await sleep(210);
      clearTimeout(timer);
      if (!c.w.daemonAlive()) r.daemonKilled = true;
    }
  }
}

/** A fault during a running job: daemon or QEMU SIGKILL after a random delay. */
async function faultInJob(c: Ctx, fault: FaultKind | null | undefined, r: BackupRun): Promise<void> {
  if (fault === 'daemon-kill-in-job') {
    const ms = c.rng.range(0, 150);
    await sleep(ms);
    c.say(`  fault: daemon SIGKILL ${ms} ms into the job`);
    c.w.killDaemonNow();
    r.daemonKilled = true;
  } else if (fault === 'qemu-kill') {
    const pid = await c.w.qemuPid();
    const ms = c.rng.range(0, 150);
    await sleep(ms);
    c.say(`  fault: QEMU SIGKILL ${ms} ms into the job`);
    await c.w.killQemu(pid);
    r.qemuKilled = true;
  } else {
    // guest writes while the job copies: they must not be in the backup
    await writes(c, c.rng.range(0, 3));
  }
}

/** faultInJob, noting the guest writes made while the target was a full filesystem. */
async function faultInJobNoting(c: Ctx, o: BackupOpts, r: BackupRun): Promise<void> {
  const from = c.log.instant;
  await faultInJob(c, o.fault, r);
  if (o.small === true && c.log.instant > from) c.fullTargetWrites = { from: c.fullTargetWrites?.from ?? from, to: c.log.instant };
}

/** Job ids must never be reused; a reuse is noted once, then counting starts again from it. */
function noteJobId(c: Ctx, id: number): void {
  if (id <= c.maxJobId) c.t.find({ what: 'anomaly', cycle: c.cycle, detail: `backupBegin returned job id ${id}, not above the ${c.maxJobId} seen before (ids must never be reused)` });
  c.maxJobId = id;
}

/** Record the outcome of a backup; a success becomes a point to restore. */
function record(c: Ctx, point: Point, end: JobEnd): void {
  const what = `${point.mode} ${point.kind}${point.base ? ` from ${point.base}` : ''} at cycle ${c.cycle}`;
  c.history.set(point.name, `${what}, ${end.result === 'ok' ? 'reported successful' : `${end.result}: ${end.msg}`}`);
  if (end.result === 'ok') {
    c.points.push(point);
    c.t.backupsOk++;
    c.say(`  … ok (job ${end.id})`);
  } else {
    c.t.backupsFailed++;
    c.say(`  … ${end.result} (${end.msg})`);
  }
}

export async function pushBackup(c: Ctx, o: BackupOpts, r: BackupRun): Promise<void> {
  const cps = await checkpoints(c);
  const { kind, base } = o.base !== undefined ? { kind: 'incremental' as const, base: o.base } : chooseBase(c, cps);
  const name = `c${c.seq++}`;
  const file = path.join(o.small ? c.w.dirs.small : c.w.dirs.push, `soak-${DISK}.${name}.qcow2`);
  const xml = `<domainbackup mode='push'>${base ? `<incremental>${base}</incremental>` : ''}<disks>` +
    `<disk name='${DISK}' type='file'><driver type='qcow2'/><target file='${file}'/></disk></disks></domainbackup>`;
  const what = `push ${kind}${base ? ` from ${base}` : ''} with checkpoint ${name}${o.small ? ' onto the full filesystem' : ''}`;
  const instant = c.log.instant;
  c.say(`  ${what} …`);
  const b = await begin(c, xml, `<domaincheckpoint><name>${name}</name></domaincheckpoint>`, o.fault, r);
  if (b.id !== null) noteJobId(c, b.id);
  if (r.daemonKilled) {
    await c.w.restartDaemon();
  } else if (b.err !== null) {
    c.t.backupsFailed++;
    c.history.set(name, `${what} at cycle ${c.cycle}, refused: ${errText(b.err)}`);
    c.say(`  … refused: ${errText(b.err)}`);
    return;
  } else {
    await faultInJobNoting(c, o, r);
    if (r.daemonKilled) await c.w.restartDaemon();
  }
  const end = await settleJob(c, b.id);
  if (end.id !== null && b.id === null) noteJobId(c, end.id);
  const point: Point = { name, mode: 'push', kind, base, file, instant, cycle: c.cycle };
  if (end.result === 'ok' && !(await stat(file).then(() => true, () => false))) {
    c.t.find({ what: 'unrestorable', cycle: c.cycle, detail: `${what}: job ${end.id} ended with 1 but its target ${file} does not exist` });
  }
  record(c, point, end);
}

/** A pull backup read with `virtback backup-pull`, its export checked with nbdcopy now and then. */
export async function pullBackup(c: Ctx, o: BackupOpts, r: BackupRun): Promise<void> {
  const outDir = o.small ? c.w.dirs.small : c.w.dirs.pull;
  // backup-pull finds the parent of an incremental in its output folder
  const pulled = new Set(c.points.filter((p) => p.mode === 'pull' && path.dirname(p.file) === outDir).map((p) => p.name));
  const cps = await checkpoints(c);
  const { kind, base } = o.base !== undefined ? { kind: 'incremental' as const, base: o.base } : chooseBase(c, cps, (n) => pulled.has(n));
  const name = `c${c.seq++}`;
  // users tend to reuse one socket path; a stale socket of a crashed job must not be in the way
  const sock = path.join(c.w.dirs.nbd, c.rng.chance(0.5) ? 'pull.sock' : `${name}.sock`);
  const xml = `<domainbackup mode='pull'>${base ? `<incremental>${base}</incremental>` : ''}` +
    `<server transport='unix' socket='${sock}'/><disks><disk name='${DISK}' type='file'/></disks></domainbackup>`;
  const what = `pull ${kind}${base ? ` from ${base}` : ''} with checkpoint ${name}${o.small ? ' onto the full filesystem' : ''}`;
  const instant = c.log.instant;
  c.say(`  ${what} …`);
  const b = await begin(c, xml, `<domaincheckpoint><name>${name}</name></domaincheckpoint>`, o.fault, r);
  if (b.id !== null) noteJobId(c, b.id);
  if (!r.daemonKilled && b.err !== null) {
    c.t.backupsFailed++;
    c.history.set(name, `${what} at cycle ${c.cycle}, refused: ${errText(b.err)}`);
    c.say(`  … refused: ${errText(b.err)}`);
    return;
  }
  if (r.daemonKilled) {
    await c.w.restartDaemon();
  } else {
    await faultInJobNoting(c, o, r);
    if (r.daemonKilled) await c.w.restartDaemon();
  }
  const id = b.id ?? (await c.w.domain.listJobIds())[0] ?? null;
  if (id === null || r.qemuKilled) {
    c.t.backupsFailed++;
    c.history.set(name, `${what} at cycle ${c.cycle}, no job after the fault`);
    c.say(`  … no job left to read (${id === null ? 'begin rolled back' : 'QEMU died'})`);
    if (id !== null && !r.qemuKilled) await settleJob(c, id);
    return;
  }
  if (b.id === null) noteJobId(c, id);
  if (c.rng.chance(0.5)) await checkExport(c.w, c.log, c.t, sock, instant, c.cycle, `${what} (job ${id})`).catch((e: unknown) => {
    c.t.find({ what: 'anomaly', cycle: c.cycle, detail: `${what}: nbdcopy of the export failed: ${errText(e)}` });
  });
  const raw = kind === 'full' && c.rng.chance(0.3);
  const cli = await c.w.cli('backup-pull', 'soak', '--output', outDir, '--id', String(id), '--checkpoint', name, ...(raw ? ['--format', 'raw'] : []));
  const end = await settleJob(c, id);
  const file = path.join(outDir, `soak-${DISK}.${name}.${raw ? 'raw' : 'qcow2'}`);
  const ok: JobEnd = cli.code === 0 && end.result === 'ok' ? end : { ...end, result: 'failed', msg: cli.code !== 0 ? `backup-pull: ${cli.stderr.trim()}` : end.msg };
  record(c, { name, mode: 'pull', kind, base, file, instant, cycle: c.cycle }, ok);
}

/** Delete a random checkpoint (its bitmap merges into its parent's). */
export async function deleteCheckpoint(c: Ctx): Promise<void> {
  const cps = await checkpoints(c);
  if (cps.length === 0) return;
  const victim = c.rng.pick(cps);
  try {
    await (await c.w.domain.checkpointLookupByName(victim.name)).delete();
    c.say(`  deleted checkpoint ${victim.name}${victim.inconsistent ? ' (inconsistent)' : ''}`);
  } catch (e) {
    c.say(`  delete checkpoint ${victim.name}: ${errText(e)}`);
  }
}
