// The soak benchmark's short version (bench/soak.ts runs ≥ 1000 cycles):
// 50 randomized cycles with a fixed seed against a private virtbackd, with
// faults injected; every backup reported successful must restore byte-exact
// to the disk at its instant, and nothing may be left behind.
//
// Replay a failure outside the test runner with the same seed:
//   node --import tsx bench/soak.ts --seed 20261205 --cycles 50 --disk-mib 16

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { compareImages } from '../../bench/soak-checks.js';
import { Rng, WriteLog } from '../../bench/soak-model.js';
import { runSoak } from '../../bench/soak-run.js';

const SEED = 20261205;

test('soak: 50 randomized cycles with faults lose nothing and leave nothing behind', { timeout: 900_000 }, async (t) => {
  const log: string[] = [];
  const r = await runSoak({ seed: SEED, cycles: 50, maxSeconds: 600, diskMiB: 16, faultRate: 0.3, say: (m) => log.push(m) });
  const report = r.tally.report(SEED, r.seconds);
  for (const line of report) t.diagnostic(line);
  const why = `\n${report.join('\n')}\n--- last steps:\n${log.slice(-30).join('\n')}`;

  assert.equal(r.tally.cycles, 50, `the run stopped early${why}`);
  assert.equal(r.unswept, 0, `backups left unchecked${why}`);
  assert.ok([...r.tally.faults.values()].reduce((a, b) => a + b, 0) >= 5, `too few faults injected${why}`);
  assert.ok(r.tally.backupsOk >= 10, `too few successful backups to prove anything${why}`);
  assert.ok(r.tally.restoresCompared >= r.tally.backupsOk, `not every successful backup was restored${why}`);
  assert.equal(r.tally.total('lost'), 0, `backups restored with wrong data${why}`);
  assert.equal(r.tally.total('unrestorable'), 0, `successful backups that cannot be restored${why}`);
  assert.equal(r.tally.total('left-behind'), 0, `things left behind${why}`);
});

test('soak checkers: the write log rebuilds each instant, and qemu-img compare tells a differing image', async (t) => {
  const log = new WriteLog(1 << 20);
  log.push({ kind: 'write', offset: 4096, length: 8192, pattern: 0xaa });
  const one = log.contentAt(log.instant);
  log.push({ kind: 'write', offset: 8192, length: 4096, pattern: 0xbb });
  assert.deepEqual(log.contentAt(1), one, 'an earlier instant is rebuilt after a later one');
  assert.equal(log.contentAt(2)[8192], 0xbb);
  assert.equal(log.contentAt(2)[4096], 0xaa);
  assert.equal(log.contentAt(0).every((b) => b === 0), true);

  // after a crash the disk may hold less than the log: resync records the difference
  const actual = log.contentAt(log.instant);
  actual.fill(0, 8192, 12288);
  assert.equal(log.resync(actual), 4096);
  assert.deepEqual(log.contentAt(log.instant), actual);
  assert.equal(log.contentAt(2)[8192], 0xbb, 'instants before the crash keep their content');

  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-soakcmp-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const a = path.join(dir, 'a.raw');
  const b = path.join(dir, 'b.raw');
  await writeFile(a, log.contentAt(2));
  await writeFile(b, log.contentAt(2));
  assert.equal(await compareImages(a, b, 'raw'), null);
  await writeFile(b, log.contentAt(1));
  assert.match((await compareImages(a, b, 'raw')) ?? '', /mismatch|differ/i);

  const r1 = new Rng(5);
  const r2 = new Rng(5);
  assert.deepEqual([r1.int(1000), r1.int(1000), r1.next()], [r2.int(1000), r2.int(1000), r2.next()], 'a seed replays');
});
