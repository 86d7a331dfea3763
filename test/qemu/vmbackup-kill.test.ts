// `virtback backup` against virtbackd (a child process) on real QEMU, with the
// *daemon* SIGKILLed at seeded random moments of a run (as the job starts,
// while reading, around the point record and the checkpoint clean-up), then
// once the *client* (`virtback backup` as a child process): no half point
// is ever listed, the next run after each kill succeeds (auto may read in full
// and says why), `gc` afterwards leaves exactly the chunks and indexes the
// points reference, and every point restores exactly as the disk was when its
// run started.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Connect, Domain } from '../../src/api/public.js';
import { collectGarbage } from '../../src/chunkstore/gc.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { ChunkRepository, ZERO_CHUNK, chunkKey } from '../../src/chunkstore/repo.js';
import { backupDomain, repositoryId } from '../../src/vmbackup/index.js';
import { makeTestDomain, type TestDomain } from '../helpers/qemu-env.js';
import { DiskModel } from './backup-util.js';
import { hmpWriteVia, makeDaemonEnv, type DaemonEnv } from './daemon-util.js';
import { MiB, assertRestores } from './vmbackup-helpers.js';
import { programArgs } from '../helpers/entry.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

/** mulberry32: the kill moments of a seed are reproducible */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Run {
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(): void;
}

/** `virtback backup` as a child process, as a timer runs it. */
function spawnBackup(uri: string, name: string, repo: string): Run {
  const args = [...programArgs('cli/virtback'), '-c', uri, 'backup', name, '--repo', repo, '--level', 'full', '--quiet'];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: 'ignore' });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return { exited, kill: () => child.kill('SIGKILL') };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Files under `dir` (relative), with their sizes. */
async function filesUnder(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const e of await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    // polled while a backup writes: a temp file listed may be renamed before its stat
    const st = await fs.stat(p).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw err;
    });
    if (st) out.set(path.relative(dir, p), st.size);
  }
  return out;
}

interface World {
  env: DaemonEnv;
  td: TestDomain;
  model: DiskModel;
  conn: Connect;
  dom: Domain;
  repo: ChunkRepository;
  repoDir: string;
  /** [run start (ms), the disk then]: a point's content is the disk at the start of the run that wrote it */
  starts: Array<[number, Buffer]>;
}

/** Three 1 MiB writes at seeded offsets (or at `offsets`); returns the offsets. */
async function writeSome(w: World, rnd: () => number, offsets?: number[]): Promise<number[]> {
  const at = offsets ?? Array.from({ length: 3 }, () => Math.floor(rnd() * 62) * MiB);
  for (const off of at) {
    const pattern = 1 + Math.floor(rnd() * 250);
    await hmpWriteVia(w.dom, w.td.xml, 'sda', pattern, off, MiB);
    w.model.apply(off, MiB, pattern);
  }
  return at;
}

type Moment = 'job' | 'read' | 'end';

/**
 * A run over its own connection (as the CLI makes one) with the daemon
 * SIGKILLed at `moment` plus a seeded delay; then another daemon is started.
 */
async function killDaemonDuringRun(w: World, rnd: () => number, moment: Moment): Promise<string> {
  const conn = await w.env.connect();
  const dom = await conn.lookupByUUID(w.td.uuid);
  w.starts.push([Date.now(), w.model.snapshot()]);
  let fire: () => void = () => {};
  const armed = new Promise<void>((resolve) => (fire = resolve));
  const ms = Math.floor(rnd() * (moment === 'read' ? 600 : 200));
  let polling = moment === 'job';
  if (polling) {
    void (async () => {
      while (polling && !(await w.dom.getInfo().then((i) => i.hasBackupJob, () => true))) await sleep(10);
      fire();
    })();
  }
  const run = backupDomain(dom, w.repo, repositoryId(w.repo.config), {
    level: rnd() < 0.5 ? 'full' : 'auto',
    onProgress: (_disk, p) => {
      if (moment === 'read' || (moment === 'end' && p.bytesDone >= p.bytesTotal)) fire();
    },
  }).then((r) => `completed ${r.level}`, (e: unknown) => `failed: ${e instanceof Error ? e.message : String(e)}`);
  const outcome = await Promise.race([armed.then(() => null), run]);
  polling = false;
  await sleep(ms);
  const daemon = w.env.daemons.at(-1)!;
  daemon.child.kill('SIGKILL');
  await daemon.exited;
  const result = outcome ?? (await run);
  await conn.close().catch(() => {});
  await restartDaemon(w);
  return `killed ${ms} ms after '${moment}', run ${result}`;
}

/** The daemon is gone: start another and reconnect (QEMU kept running). */
async function restartDaemon(w: World): Promise<void> {
  await w.conn.close().catch(() => {});
  await w.env.start();
  w.conn = await w.env.connect();
  w.dom = await w.conn.lookupByUUID(w.td.uuid);
}

/** A run in this process after a kill: it must succeed. */
async function nextRun(w: World): Promise<string> {
  w.starts.push([Date.now(), w.model.snapshot()]);
  const r = await backupDomain(w.dom, w.repo, repositoryId(w.repo.config), { level: 'auto' });
  return `${r.level}${r.level === 'full' ? ` (${r.reason})` : ''}`;
}

test('virtbackd SIGKILLed during virtback backup, then the client: no half point, next run succeeds, gc leaves exactly what points reference', { timeout: 420_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const conn = await env.connect();
  const td = await makeTestDomain(env.dir, { name: `vbkill-${process.pid}`, sizeMiB: 64 });
  const dom = await conn.defineXML(td.xml);
  await dom.create();
  const repoDir = path.join(env.dir, 'repo');
  const repo = await ChunkRepository.init(await openFolderStore(repoDir));
  const w: World = { env, td, model: new DiskModel('sda', 64 * MiB), conn, dom, repo, repoDir, starts: [] };
  for (let i = 0; i < 12; i++) {
    await hmpWriteVia(dom, td.xml, 'sda', 0x20 + i, i * 5 * MiB, 2 * MiB);
    w.model.apply(i * 5 * MiB, 2 * MiB, 0x20 + i);
  }
  await nextRun(w);

  // the daemon killed at three kinds of moment: once the job exists (before or as reading starts),
  // while reading, and once everything is read (indexes, the point record, the checkpoint clean-up)
  // (the regions a killed run saw are written over before the next run: what it stored is garbage then)
  const seeds: Array<[number, Moment]> = [[11, 'job'], [23, 'read'], [37, 'end']];
  const outcomes: string[] = [];
  for (const [seed, moment] of seeds) {
    const rnd = prng(seed);
    const offsets = await writeSome(w, rnd);
    const killed = await killDaemonDuringRun(w, rnd, moment);
    await writeSome(w, rnd, offsets);
    outcomes.push(`seed ${seed}: ${killed}, next run ${await nextRun(w)}`);
  }

  // the client killed while reading
  // the client killed once it wrote a new chunk (a temp file until the run's sync): garbage after the overwrite
  const rnd = prng(97);
  const offsets = await writeSome(w, rnd);
  w.starts.push([Date.now(), w.model.snapshot()]);
  const chunksBefore = [...(await filesUnder(repoDir)).keys()].filter((f) => f.startsWith('chunks/')).length;
  const run = spawnBackup(env.uri, td.name, repoDir);
  let exited = false;
  void run.exited.then(() => (exited = true));
  while (!exited && [...(await filesUnder(repoDir)).keys()].filter((f) => f.startsWith('chunks/')).length === chunksBefore) await sleep(20);
  run.kill();
  const ended = await run.exited;
  await writeSome(w, rnd, offsets);
  outcomes.push(`client killed: ${ended.signal ?? ended.code}, next run ${await nextRun(w)}`);
  t.diagnostic(outcomes.join('\n'));

  // gc (no grace: nothing runs now) leaves exactly what the points reference
  const gc = await collectGarbage(repo, { graceMs: 0 });
  const points = await repo.listPoints(td.name);
  assert.equal(gc.points, points.length);
  assert.deepEqual(gc.missingChunks, []);
  // a run syncs its chunks together before its point: killed before that, it left the new chunk as a temp file
  assert.ok(gc.removedChunks + gc.removedStale >= 1, `the killed client's new chunk (or its unsynced temp file) was removed: ${JSON.stringify(gc)}`);
  const chunks = new Set<string>();
  const indexes = new Set<string>();
  for (const p of points) {
    for (const d of p.disks) {
      indexes.add(d.index);
      for (const c of (await repo.readIndex(d.index)).chunks) if (c !== ZERO_CHUNK) chunks.add(chunkKey(c));
    }
  }
  const onDisk = await filesUnder(repoDir);
  const chunkFiles = [...onDisk.keys()].filter((f) => f.startsWith('chunks/'));
  assert.deepEqual(chunkFiles.sort(), [...chunks].sort(), 'the chunk files are exactly the referenced chunks');
  assert.equal(gc.referencedChunks, chunks.size);
  const indexFiles = [...onDisk.keys()].filter((f) => f.startsWith('indexes/'));
  assert.deepEqual(indexFiles.sort(), [...indexes].sort(), 'the index files are exactly the referenced indexes');
  const stray = [...onDisk.keys()].filter((f) => !f.startsWith('chunks/') && !f.startsWith('indexes/') && !f.startsWith('points/') && f !== 'config.json');
  assert.deepEqual(stray, [], 'no temporary files left');
  t.diagnostic(`after gc: ${points.length} points, ${chunkFiles.length} chunks (${chunkFiles.reduce((n, f) => n + onDisk.get(f)!, 0)} bytes), removed ${gc.removedChunks} chunks (${gc.removedBytes} bytes), ${gc.removedIndexes} indexes`);

  // every point is complete and exact: the disk as it was when its run started
  for (const p of points) {
    const at = Date.parse(p.time);
    const start = w.starts.filter(([s]) => s <= at).at(-1);
    assert.ok(start !== undefined, `point ${p.id} predates every run`);
    await assertRestores(repo, td.name, p.id, new Map([['sda', start[1]]]), env.dir);
  }
});
