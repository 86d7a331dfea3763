// writeFileAtomic's temp files left by a killed writer are removed at the
// next driver start; our own (this pid's) and other files are not.

import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { removeStaleTempFiles } from '../../src/qemu/state.js';

test('removeStaleTempFiles removes dead writers\' temp files one level deep, nothing else', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-tmp-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const sub = path.join(dir, '5b2c0f62-5d0e-4a7e-9c6f-1f2d3c4b5a69');
  await mkdir(sub);
  const files = {
    staleTop: path.join(dir, '.x.json.tmp-999999-3'),
    staleSub: path.join(sub, '.meta.json.tmp-424242-1'),
    ours: path.join(sub, `.meta.json.tmp-${process.pid}-7`),
    real: path.join(sub, 'meta.json'),
    lookalike: path.join(sub, 'meta.json.tmp-1-1'),
  };
  for (const f of Object.values(files)) await writeFile(f, 'x');
  const removed = await removeStaleTempFiles(dir);
  assert.deepEqual(removed.sort(), [files.staleSub, files.staleTop].sort());
  assert.deepEqual((await readdir(dir)).sort(), [path.basename(sub)]);
  assert.deepEqual((await readdir(sub)).sort(), [`.meta.json.tmp-${process.pid}-7`, 'meta.json', 'meta.json.tmp-1-1']);
  assert.deepEqual(await removeStaleTempFiles(path.join(dir, 'missing')), []);
});
