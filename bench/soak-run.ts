// The soak loop: randomized cycles of guest writes, backups, restores and
// checkpoint deletions, a fault drawn now and then; after each fault what died
// is restarted and the invariants are checked (soak-checks.ts). At the end
// every backup reported successful is restored and compared, the domain is
// destroyed and undefined, the daemon stopped, and nothing may be left.

import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { qemuProcessesFor, socketsUnder } from '../test/helpers/qemu-env.js';
import { qmp } from '../test/qemu/daemon-util.js';
import { audit, checkLive, checkPoint } from './soak-checks.js';
import { FAULT_KINDS, Rng, Tally, WriteLog, type FaultKind } from './soak-model.js';
import { checkpoints, deleteCheckpoint, explainBase, pullBackup, pushBackup, settleJob, writes, type BackupOpts, type BackupRun, type Ctx } from './soak-ops.js';
import { World } from './soak-world.js';

export interface SoakOptions {
  seed: number;
  cycles: number;
  /** the whole run, final sweep included; cycles stop at 70% of it */
  maxSeconds: number;
  diskMiB: number;
  /** probability that a cycle injects a fault */
  faultRate: number;
  /** the fault kinds drawn from (default all) */
  faults?: readonly FaultKind[];
  say(msg: string): void;
  /** keep the temp dir (for a post-mortem) */
  keep?: boolean;
  /** polled between cycles: true stops the cycles, then the run ends as usual (sweep, shutdown, cleanup) */
  stopRequested?: () => boolean;
}

export interface SoakResult {
  tally: Tally;
  seconds: number;
  /** successful backups the final sweep had no time for */
  unswept: number;
}

// big enough for a qcow2 header and a small incremental, too small for a full backup
const SMALL_KIB = 1024;
/** src/qemu/state.ts writeFileAtomic's temp names: .<file>.tmp-<pid>-<n> */
const TEMP_FILE = /^\..*\.tmp-\d+-\d+$/;

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const t0 = Date.now();
  const elapsed = () => (Date.now() - t0) / 1000;
  const t = new Tally();
  const w = await World.create(o.diskMiB);
  const c: Ctx = { w, log: new WriteLog(o.diskMiB * 1024 * 1024), rng: new Rng(o.seed), t, points: [], cycle: 0, seq: 1, maxJobId: 0, history: new Map(), metaDeleted: [], liveSeen: { daemonStarts: 0, qemuPid: 0 }, crashRead: null, fullTargetWrites: null, say: o.say };
  o.say(`soak: seed ${o.seed}, ${o.cycles} cycles, disk ${o.diskMiB} MiB, in ${w.dirs.dir}`);
  try {
    const why = await w.mountSmall(SMALL_KIB);
    if (why !== null) {
      t.skipped.set('target-full', why);
      o.say(`note: the target-full fault is skipped: ${why}`);
    }
    await w.startDaemon();
    await w.startDomain();
    await writes(c, 20);
    for (let cycle = 1; cycle <= o.cycles; cycle++) {
      if (elapsed() > o.maxSeconds * 0.7 || o.stopRequested?.() === true) {
        o.say(`${o.stopRequested?.() ? 'interrupted' : 'time budget'}: stopping after ${cycle - 1} cycles`);
        break;
      }
      c.cycle = t.cycles = cycle;
      await oneCycle(c, o.faultRate, o.faults ?? FAULT_KINDS);
    }
    const unswept = await finalSweep(c, t0 + o.maxSeconds * 1000);
    await shutdown(c);
    return { tally: t, seconds: elapsed(), unswept };
  } finally {
    await w.dispose(o.keep === true);
  }
}

function drawFault(c: Ctx, rate: number, allowed: readonly FaultKind[]): FaultKind | null {
  if (!c.rng.chance(rate)) return null;
  const kinds = allowed.filter((k) => !c.t.skipped.has(k));
  if (kinds.length === 0) return null;
  return c.rng.pick(kinds);
}

async function oneCycle(c: Ctx, faultRate: number, faults: readonly FaultKind[]): Promise<void> {
  const fault = drawFault(c, faultRate, faults);
  c.say(`cycle ${c.cycle}${fault ? ` [fault ${fault}]` : ''}`);
  if (fault) c.t.count(c.t.faults, fault);
  const r: BackupRun = { daemonKilled: false, qemuKilled: false };
  try {
    await writes(c, c.rng.range(0, 6));
    await runOp(c, fault, r);
  } catch (e) {
    // an operation that broke outside the fault's plan: note it, then recover
    const msg = e instanceof Error ? e.message : String(e);
    c.t.find({ what: 'anomaly', cycle: c.cycle, detail: `${fault ?? 'no fault'}: operation failed unexpectedly: ${msg}` });
    c.say(`  unexpected: ${msg}`);
  }
  await recover(c);
  await liveCheck(c).catch((e: unknown) => {
    c.t.find({ what: 'anomaly', cycle: c.cycle, detail: `the live disk could not be read: ${e instanceof Error ? e.message : String(e)}` });
  });
  if (fault !== null || c.cycle % 10 === 0) {
    const n = await audit(c.w, c.t, c.points, c.cycle, true);
    if (n > 0) c.say(`  ${n} thing(s) left behind`);
    // the invariant after a fault: backups reported successful still restore
    const sample = [...new Set([c.points[c.points.length - 1], c.rng.pick([...c.points, undefined])])];
    for (const p of sample) if (p) await checkPoint(c.w, c.log, c.t, p, c.cycle, { qcow2: c.rng.chance(0.3), verify: c.rng.chance(0.5), explain: explainBase(c, p) });
  }
}

async function runOp(c: Ctx, fault: FaultKind | null, r: BackupRun): Promise<void> {
  const backup = (o: BackupOpts) => (c.rng.chance(0.7) ? pushBackup(c, o, r) : pullBackup(c, o, r));
  switch (fault) {
    case 'daemon-kill-in-begin':
    case 'daemon-kill-in-job':
      c.t.count(c.t.ops, 'backup');
      return backup({ fault });
    case 'qemu-kill':
      if (c.rng.chance(0.7)) {
        c.t.count(c.t.ops, 'backup');
        return backup({ fault });
      }
      c.say('  fault: QEMU SIGKILL while idle');
      await c.w.killQemu(await c.w.qemuPid());
      return;
    case 'target-full':
      c.t.count(c.t.ops, 'backup');
      return backup({ small: true });
    case 'daemon-kill-idle':
      c.say('  fault: daemon SIGKILL while idle');
      await c.w.restartDaemon();
      break;
    case 'bitmap-removed':
      return removeBitmap(c, backup);
    case 'state-deleted':
      await deleteStateFile(c);
      break;
    case null:
      break;
  }
  const op = c.rng.weighted({ push: 5, pull: 2, restore: 3, delete: 1 });
  c.t.count(c.t.ops, op === 'push' || op === 'pull' ? 'backup' : op);
  if (op === 'push') return pushBackup(c, {}, r);
  if (op === 'pull') return pullBackup(c, {}, r);
  if (op === 'delete') return deleteCheckpoint(c);
  if (c.points.length > 0) {
    const p = c.rng.pick(c.points);
    await checkPoint(c.w, c.log, c.t, p, c.cycle, { qcow2: c.rng.chance(0.3), verify: c.rng.chance(0.5), explain: explainBase(c, p) });
  }
}

/** Remove a checkpoint's bitmap behind the daemon's back, then back up incrementally from it. */
async function removeBitmap(c: Ctx, backup: (o: BackupOpts) => Promise<void>): Promise<void> {
  const cps = (await checkpoints(c)).filter((x) => !x.inconsistent);
  if (cps.length === 0) {
    c.say('  fault: no consistent checkpoint to remove a bitmap from');
    return;
  }
  const victim = c.rng.pick(cps).name;
  await qmp(c.w.domain, 'block-dirty-bitmap-remove', { node: c.w.diskNode, name: victim });
  c.say(`  fault: bitmap of checkpoint ${victim} removed with block-dirty-bitmap-remove`);
  const before = c.t.backupsOk;
  await backup({ base: victim });
  if (c.t.backupsOk > before) {
    c.t.find({ what: 'anomaly', cycle: c.cycle, detail: `an incremental backup from checkpoint ${victim}, whose bitmap was removed, was accepted and reported successful` });
  }
}

/** Delete one of the daemon's state files, then SIGKILL and restart it so it reloads without it. */
async function deleteStateFile(c: Ctx): Promise<void> {
  const uuid = c.w.domain.uuid;
  const state = c.w.env.stateDir;
  const file = c.rng.pick([path.join(state, 'backups', uuid, 'meta.json'), path.join(state, 'checkpoints', uuid, 'current')]);
  await rm(file, { force: true });
  if (file.endsWith('meta.json')) c.metaDeleted.push(c.cycle);
  c.say(`  fault: deleted ${path.relative(state, file)}; daemon SIGKILL and restart`);
  await c.w.restartDaemon();
}

/** Whatever died comes back: the daemon, then QEMU (the model learns what the crashed disk really holds). */
async function recover(c: Ctx): Promise<void> {
  if (!c.w.daemonAlive() || c.w.dom === null) await c.w.restartDaemon();
  if (await c.w.running()) return;
  // a job of the dead QEMU is over; end it so the next backup can begin
  await settleJob(c, null).catch(() => undefined);
  c.crashRead = await c.w.readDisk();
  const lost = c.log.resync(c.crashRead, c.cycle, 'crash');
  c.t.crashBytesLost += lost;
  c.say(`  QEMU restarted${lost > 0 ? `; ${lost} bytes of unflushed writes were not on the disk` : ''}`);
  await c.w.startDomain();
}

/**
 * After any daemon or QEMU restart (and every tenth cycle), the disk QEMU
 * serves must equal the model: a drift is named at the cycle it appears, with
 * its cause's suspects, instead of as lost backups later.
 */
async function liveCheck(c: Ctx): Promise<void> {
  const seen = { daemonStarts: c.w.daemonStarts, qemuPid: await c.w.qemuPid() };
  const qemuNew = seen.qemuPid !== c.liveSeen.qemuPid;
  const daemonNew = seen.daemonStarts !== c.liveSeen.daemonStarts;
  const refused = c.fullTargetWrites;
  if (!qemuNew && !daemonNew && refused === null && c.cycle % 10 !== 0) return;
  const qemuWhy = !qemuNew || c.liveSeen.qemuPid === 0 ? '' : c.crashRead !== null ? 'after a QEMU restart from a crashed image' : 'after a QEMU restart the soak did not make';
  const why = [qemuWhy, daemonNew ? 'after a daemon restart' : '',
    refused !== null ? 'after a job with a full target' : '', c.cycle % 10 === 0 ? '(periodic)' : ''].filter((x) => x !== '').join(', ');
  const drifts = c.t.total('drift');
  const actual = await checkLive(c.w, c.log, c.t, c.cycle, why, refused);
  if (actual === null) return;
  c.liveSeen = seen;
  c.fullTargetWrites = null;
  if (c.t.total('drift') > drifts && qemuNew && c.crashRead !== null) {
    // was the crashed image read differently, or did the file change since?
    const now = await c.w.readDisk();
    const same = now.equals(c.crashRead) ? 'the image now (qemu-img -U) reads as the crash read did' : 'the image now (qemu-img -U) reads otherwise than the crash read';
    c.t.find({ what: 'anomaly', cycle: c.cycle, detail: `drift after a QEMU restart: ${same}; QEMU serves ${actual.equals(now) ? 'the same as' : 'otherwise than'} the image now` });
  }
  c.crashRead = null;
}

/** Restore and compare every backup reported successful, while time remains; returns how many were left. */
async function finalSweep(c: Ctx, deadline: number): Promise<number> {
  c.say(`final sweep: restoring all ${c.points.length} backups reported successful`);
  for (const [i, p] of c.points.entries()) {
    if (Date.now() > deadline) {
      c.say(`time budget: ${c.points.length - i} backups not swept`);
      return c.points.length - i;
    }
    await checkPoint(c.w, c.log, c.t, p, c.cycle, { qcow2: c.rng.chance(0.3), verify: c.rng.chance(0.3), explain: explainBase(c, p) });
  }
  return 0;
}

/** End the run as a user would, then nothing of it may remain. */
async function shutdown(c: Ctx): Promise<void> {
  const { w, t } = c;
  const note = (detail: string) => t.find({ what: 'left-behind', cycle: c.cycle, detail });
  await settleJob(c, null);
  await audit(w, t, c.points, c.cycle, true);
  await w.domain.destroy();
  await w.domain.undefine({ checkpointsMetadata: true });
  await w.conn?.close();
  w.conn = null;
  w.dom = null;
  w.daemon!.child.kill('SIGTERM');
  const exit = await w.daemon!.exited;
  if (exit.code !== 0) t.find({ what: 'anomaly', cycle: c.cycle, detail: `virtbackd exited with ${exit.code ?? exit.signal} on SIGTERM` });
  for (const p of await qemuProcessesFor(w.dirs.dir)) note(`QEMU process ${p.pid} still running after destroy`);
  for (const s of await socketsUnder(w.dirs.dir)) note(`socket ${path.relative(w.dirs.dir, s)} left after the daemon stopped`);
  for (const f of await readdir(path.join(w.env.stateDir, 'status')).catch(() => [])) {
    if (!TEMP_FILE.test(f)) note(`status file ${f} left after destroy`);
  }
  // a daemon killed between writing a temp file and renaming it leaves the temp file
  const state = await readdir(w.env.stateDir, { recursive: true }).catch(() => [] as string[]);
  for (const f of state) if (TEMP_FILE.test(path.basename(f))) note(`atomic-write temp file state/${f} of a killed daemon`);
  await audit(w, t, c.points, c.cycle, false);
}
