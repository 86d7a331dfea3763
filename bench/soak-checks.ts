// The soak's invariants, each checked with a tool independent of the code
// under test where one exists:
//   - a backup the API reported successful restores (`virtback backup-restore`)
//     to exactly the disk at its instant (`qemu-img compare` against the image
//     rebuilt from the write log); a restore that "succeeds" with other bytes
//     is LOST, one that fails is UNRESTORABLE;
//   - a pull export serves the disk at its instant (`nbdcopy`);
//   - nothing is LEFT BEHIND: no QMP job, export, node or bitmap that no job
//     owns (asked of QEMU itself), no backup file of a backup that was not
//     reported successful, no scratch file, no export socket, no qemu-nbd
//     of the world that the running daemon did not start.
// Leftovers are counted once, then removed, so the run can go on.

import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Point, Tally, WriteLog } from './soak-model.js';
import { DISK, run, type World } from './soak-world.js';
import { qmp } from '../test/qemu/daemon-util.js';
import { processesMentioning } from '../test/helpers/qemu-env.js';

/** qemu-img compare of the expected raw image with `image`: null when equal, else what differs. */
export async function compareImages(expected: string, image: string, format: 'raw' | 'qcow2'): Promise<string | null> {
  try {
    await run('qemu-img', ['compare', '-f', 'raw', '-F', format, '-U', expected, image]);
    return null;
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string; message: string };
    return (x.stdout || x.stderr || x.message).trim().split('\n')[0] ?? 'differs';
  }
}

async function writeExpected(w: World, log: WriteLog, instant: number): Promise<string> {
  const file = path.join(w.dirs.work, 'expected.raw');
  await writeFile(file, log.contentAt(instant));
  return file;
}

/** Restore `p` with the CLI (raw or qcow2 at random), compare, and verify it; counts findings. */
export async function checkPoint(w: World, log: WriteLog, t: Tally, p: Point, cycle: number, opts: { qcow2: boolean; verify: boolean; explain?: string }): Promise<void> {
  const format = opts.qcow2 ? 'qcow2' : 'raw';
  const out = path.join(w.dirs.work, `restored.${format}`);
  await rm(out, { force: true });
  const where = `${p.mode} ${p.kind}${p.base ? ` from ${p.base}` : ''} backup ${p.name} (${path.relative(w.dirs.dir, p.file)}, cycle ${p.cycle})`;
  try {
    const r = await w.cli('backup-restore', p.file, out, '--format', format);
    if (r.code !== 0) {
      t.find({ what: 'unrestorable', cycle, detail: `${where}: backup-restore exit ${r.code}: ${r.stderr.trim()}${opts.explain ?? ''}` }, `unrestorable:${p.file}`);
      return;
    }
    const expected = await writeExpected(w, log, p.instant);
    const diff = await compareImages(expected, out, format);
    t.restoresCompared++;
    t.bytesCompared += log.size;
    let verified = '';
    if (opts.verify || diff !== null) {
      const v = await w.cli('backup-verify', p.file);
      verified = v.code === 0 ? 'backup-verify says ok' : `backup-verify fails: ${v.stderr.trim()}`;
      if (diff === null && v.code !== 0) {
        // right bytes but the tool calls the backup damaged: not data loss, but worth knowing
        t.find({ what: 'anomaly', cycle, detail: `${where} restores right but ${verified}` }, `verify:${p.file}`);
      }
    }
    if (diff !== null) t.find({ what: 'lost', cycle, detail: `${where} restored with other bytes than the disk at its instant: ${diff}; ${verified}${opts.explain ?? ''}` }, `lost:${p.file}`);
  } finally {
    await rm(out, { force: true });
  }
}

/** nbdcopy the pull export and compare it with the disk at the job's instant. */
export async function checkExport(w: World, log: WriteLog, t: Tally, socket: string, instant: number, cycle: number, what: string): Promise<void> {
  const out = path.join(w.dirs.work, 'export.raw');
  await rm(out, { force: true });
  try {
    await run('nbdcopy', [`nbd+unix:///${DISK}?socket=${socket}`, out]);
    const diff = await compareImages(await writeExpected(w, log, instant), out, 'raw');
    t.exportsCompared++;
    t.bytesCompared += log.size;
    if (diff !== null) t.find({ what: 'lost', cycle, detail: `${what}: the pull export differs from the disk at the job's instant: ${diff}` });
  } finally {
    await rm(out, { force: true });
  }
}

/**
 * Read the running disk through QEMU — a pull job without a checkpoint, its
 * export copied by nbdcopy — and compare it with the write log now. A
 * difference is a DRIFT: QEMU's disk and the model disagree with no backup
 * involved, so every later backup would look lost until a write covers the
 * place. Named with the log's entries over it; then the model takes the
 * disk's bytes so later findings measure from here. Returns the disk read,
 * or null when no job could be begun (one is running).
 */
export async function checkLive(w: World, log: WriteLog, t: Tally, cycle: number, why: string, refused: { from: number; to: number } | null = null): Promise<Buffer | null> {
  const sock = path.join(w.dirs.nbd, 'live.sock');
  const xml = `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='${DISK}' type='file'/></disks></domainbackup>`;
  const id = await w.domain.backupBegin(xml).catch(() => null);
  if (id === null) return null;
  const out = path.join(w.dirs.work, 'live.raw');
  try {
    await run('nbdcopy', [`nbd+unix:///${DISK}?socket=${sock}`, out]);
    const actual = await readFile(out);
    t.liveCompared++;
    t.bytesCompared += log.size;
    if (!actual.equals(log.contentAt(log.instant))) {
      // guest writes a job with a full target refused (see Ctx.fullTargetWrites): counted, not a drift
      const other = log.differingBlocks(actual).filter((off) => refused === null || !log.writtenIn(off, refused.from, refused.to));
      if (other.length > 0) t.find({ what: 'drift', cycle, detail: `the live disk differs from the write log ${why}: ${log.describeDiff(actual).join('; ')}` });
      t.refusedBytes += log.resync(actual, cycle, other.length > 0 ? 'drift' : 'refused by a full target') - other.length * 4096;
    }
    return actual;
  } finally {
    await rm(out, { force: true });
    await w.domain.backupEnd(id).catch(() => undefined);
  }
}

interface QemuLeftovers {
  jobs: string[];
  exports: string[];
  nodes: string[];
  /** node/bitmap */
  bitmaps: [string, string][];
}

/** What QEMU holds beyond the disk and its checkpoints' bitmaps (asked of QEMU, not of the daemon). */
async function qemuLeftovers(w: World, checkpoints: Set<string>): Promise<QemuLeftovers> {
  const dom = w.domain;
  const jobs = await qmp<{ id: string }[]>(dom, 'query-jobs');
  const exports = await qmp<{ id: string }[]>(dom, 'query-block-exports');
  const nodes = await qmp<{ 'node-name': string; 'dirty-bitmaps'?: { name?: string }[] }[]>(dom, 'query-named-block-nodes', { flat: true });
  const bitmaps: [string, string][] = [];
  for (const n of nodes) {
    for (const b of n['dirty-bitmaps'] ?? []) {
      // an unnamed bitmap is a block job's own; with no job running there is none
      if (b.name === undefined) bitmaps.push([n['node-name'], '']);
      else if (n['node-name'] !== w.diskNode || !checkpoints.has(b.name)) bitmaps.push([n['node-name'], b.name]);
    }
  }
  return {
    jobs: jobs.map((j) => j.id),
    exports: exports.map((x) => x.id),
    nodes: nodes.map((n) => n['node-name']).filter((n) => !w.baseNodes.has(n)),
    bitmaps,
  };
}

/** Remove what no job owns, so the soak can go on after counting it. */
async function scrubQemu(w: World, l: QemuLeftovers): Promise<void> {
  const dom = w.domain;
  const quiet = (p: Promise<unknown>) => p.catch(() => undefined);
  for (const id of l.jobs) await quiet(qmp(dom, 'job-cancel', { id }));
  for (const id of l.jobs) await quiet(qmp(dom, 'job-dismiss', { id }));
  for (const id of l.exports) await quiet(qmp(dom, 'block-export-del', { id, mode: 'hard' }));
  await quiet(qmp(dom, 'nbd-server-stop'));
  for (const [node, name] of l.bitmaps) if (name !== '') await quiet(qmp(dom, 'block-dirty-bitmap-remove', { node, name }));
  // nodes depend on each other (format over file): a few passes remove them in any order
  for (let pass = 0; pass < 3; pass++) for (const n of l.nodes) await quiet(qmp(dom, 'blockdev-del', { 'node-name': n }));
}

/** Files of `dir` (names) that are not in `allowed`. */
async function strayFiles(dir: string, allowed: Set<string>): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => !allowed.has(path.join(dir, n)) && n !== 'lost+found');
}

/**
 * Everything that should not be there while no job runs. `diskRunning`:
 * the domain is up (QEMU can be asked). Counts each leftover once and removes it.
 */
export async function audit(w: World, t: Tally, points: Point[], cycle: number, diskRunning: boolean): Promise<number> {
  let found = 0;
  const note = (detail: string) => {
    // keyed by cycle too: a leftover that was removed and comes back is a new one
    if (t.find({ what: 'left-behind', cycle, detail }, `left:${cycle}:${detail}`)) found++;
  };
  if (diskRunning) {
    const cps = new Set((await w.domain.listAllCheckpoints()).map((c) => c.name));
    const l = await qemuLeftovers(w, cps);
    for (const j of l.jobs) note(`QEMU job '${j}' that no backup job owns (query-jobs)`);
    for (const x of l.exports) note(`QEMU block export '${x}' that no pull job owns`);
    for (const n of l.nodes) note(`QEMU block node '${n}' that no job owns (query-named-block-nodes)`);
    for (const [n, b] of l.bitmaps) note(`${b === '' ? 'unnamed bitmap' : `bitmap '${b}'`} on node '${n}' that is neither a checkpoint's nor a job's`);
    if (l.jobs.length + l.exports.length + l.nodes.length + l.bitmaps.length > 0) await scrubQemu(w, l);
  }
  for (const pid of await orphanExports(w)) {
    note(`qemu-nbd process serving a file of the world that the running daemon did not start`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  const allowed = new Set<string>([w.diskFile]);
  for (const p of points) {
    allowed.add(p.file);
    allowed.add(`${p.file}.manifest.json`);
  }
  const dirs: [string, string][] = [
    [w.dirs.push, 'push target'],
    [w.dirs.pull, 'pull backup'],
    [w.dirs.small, 'backup file on the full filesystem'],
    [w.dirs.disks, 'scratch or target file next to the disk'],
    [w.dirs.nbd, 'pull export socket'],
  ];
  for (const [dir, what] of dirs) {
    for (const f of await strayFiles(dir, allowed)) {
      note(`${what} '${path.relative(w.dirs.dir, path.join(dir, f))}' of no backup reported successful`);
      await rm(path.join(dir, f), { force: true });
    }
  }
  return found;
}

/** qemu-nbd processes mentioning the world's folder whose parent is not the running daemon (a killed one's orphans). */
async function orphanExports(w: World): Promise<number[]> {
  const daemon = w.daemon?.child.pid;
  const orphans: number[] = [];
  for (const p of await processesMentioning(w.dirs.dir)) {
    if (path.basename(p.argv[0] ?? '') !== 'qemu-nbd') continue;
    const status = await readFile(`/proc/${p.pid}/status`, 'utf8').catch(() => '');
    const ppid = Number(/^PPid:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    if (ppid !== 0 && ppid !== daemon) orphans.push(p.pid);
  }
  return orphans;
}
