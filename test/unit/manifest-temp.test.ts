// A manifest's temp file left by a writer SIGKILLed between write and rename
// (another pid's `.<manifest name>.<pid>.tmp`) is removed when the manifest is
// written again; files with similar names (another target's temp, other
// writers' patterns) stay.

import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { manifestPath, readManifest, writeManifest } from '../../src/repository/manifest.js';

test('writing a manifest removes stale temp files of that manifest, nothing else', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-manifest-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const target = path.join(dir, 'soak-sda.c215.qcow2');
  const m = path.basename(manifestPath(target));
  const stale = [`.${m}.29774.tmp`, `.${m}.1.tmp`];
  const kept = [
    `.${m}.x1.tmp`, // not a pid
    `.${m}..tmp`,
    `.${m}.tmp`,
    `.${m}.29774.tmp.bak`,
    `${m}.29774.tmp`, // not hidden
    `.${m}.x.manifest.json.29774.tmp`, // the temp of target '<target>.manifest.json.x'
    `.${m}.tmp-29774-1`, // the state dir's writeFileAtomic
    '.soak-sda.c215.qcow2.restore-29774-0a1b2c3d.tmp', // a restore's output
    '.soak-sda.c216.qcow2.manifest.json.29774.tmp', // another target
  ];
  for (const name of [...stale, ...kept]) await writeFile(path.join(dir, name), 'x');

  // an incremental on the live disk: no checksum, so nothing is read back
  const file = await writeManifest({
    domain: { name: 'soak', uuid: '9f1c1c4e-6a0e-4a43-8f55-0c6f0d1a2b3c' },
    disk: 'sda',
    target,
    format: 'qcow2',
    checkpoint: 'c215',
    incrementalFrom: 'c214',
    parentBackup: null,
    time: 1_765_000_000,
    virtualSize: 1 << 20,
    jobId: 215,
    mode: 'push',
  });

  assert.equal(file, manifestPath(target));
  assert.equal((await readManifest(target))?.checkpoint, 'c215');
  assert.deepEqual((await readdir(dir)).sort(), [m, ...kept].sort());
});
