// The README's first Quick-start command runs this demo: it must keep working.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'node:test';
import { programArgs } from '../helpers/entry.js';

const run = promisify(execFile);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

test('the demo backs up, restores and verifies byte-exact, then leaves nothing behind', { timeout: 300_000 }, async (t) => {
  // the demo works in a folder under TMPDIR: give it one of its own, so leftovers are its own
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'vb-demo-'));
  t.after(() => rm(tmp, { recursive: true, force: true }));
  const { stdout } = await run(process.execPath, programArgs('demo'), {
    cwd: repo, maxBuffer: 1 << 24, env: { ...process.env, TMPDIR: tmp },
  });
  const checks = stdout.split('\n').filter((l) => l.includes('✔'));
  // 2 disks x 2 restored points + 2 disks read from the pull export
  assert.equal(checks.length, 6, stdout);
  assert.match(stdout, /full push backup job 1 \+ checkpoint c1/);
  assert.match(stdout, /incremental push backup job 2 since c1 \+ checkpoint c2/);
  assert.match(stdout, /pull-mode incremental job 3 since c2 \+ checkpoint c3/);
  assert.match(stdout, /checkpoints: c1 -> c2 -> c3/);
  assert.match(stdout, /done\n$/);
  // (tsx keeps its compile cache under TMPDIR too)
  assert.deepEqual((await readdir(tmp)).filter((f) => !f.startsWith('tsx-')), [], 'the demo removed its temp folder');
  const { stdout: ps } = await run('ps', ['-eo', 'args']);
  assert.equal(ps.includes(tmp), false, 'no QEMU or daemon of the demo is left');
});
