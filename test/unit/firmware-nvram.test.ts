// prepareNvram: a missing NVRAM is copied from its template (0600), and the
// copies that starts SIGKILLed before their rename left (`<vars>.tmp-<pid>`
// of another pid) go; files with similar names stay.

import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { prepareNvram } from '../../src/qemu/firmware.js';

test('a new NVRAM is the template, 0600, and stale copies of it are removed', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-nvram-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const code = path.join(dir, 'CODE.fd');
  const template = path.join(dir, 'VARS.fd');
  await writeFile(code, 'code');
  await writeFile(template, 'template vars');
  const nvram = path.join(dir, 'nvram');
  const vars = path.join(nvram, 'vm1_VARS.fd');
  // first start: creates the folder, nothing to remove
  await prepareNvram({ code, vars, template }, { reset: false });
  const stale = ['vm1_VARS.fd.tmp-29774', 'vm1_VARS.fd.tmp-1'];
  const kept = [
    'vm1_VARS.fd.tmp-',
    'vm1_VARS.fd.tmp-x1',
    'vm1_VARS.fd.tmp-29774-1',
    '.vm1_VARS.fd.tmp-29774-1',
    'vm2_VARS.fd.tmp-29774',
    'xvm1_VARS.fd.tmp-29774',
  ];
  for (const name of [...stale, ...kept]) await writeFile(path.join(nvram, name), 'x');

  await prepareNvram({ code, vars, template }, { reset: true });

  assert.equal(await readFile(vars, 'utf8'), 'template vars');
  assert.equal((await stat(vars)).mode & 0o777, 0o600);
  assert.deepEqual((await readdir(nvram)).sort(), ['vm1_VARS.fd', ...kept].sort());
});
