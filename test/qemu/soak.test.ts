// The soak benchmark's short version (bench/soak.ts runs ≥ 1000 cycles):
// 50 randomized cycles with a fixed seed against a private virtbackd, with
// faults injected; every backup reported successful must restore byte-exact
// to the disk at its instant, and nothing may be left behind.
//
// Replay a failure outside the test runner with the same seed:
//   node --import tsx bench/soak.ts --seed 20261205 --cycles 50 --disk-mib 16

import assert from 'node:assert/strict';
import { test } from 'node:test';
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
