// The socket folder of a qemu-nbd export (src/repository/tools.ts) outlives a
// process SIGKILLed while serving (close() never ran): the next export, of any
// process, removes it, since its owner mark names a process that is gone.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import { exportSocketRoot, startExport } from '../../src/repository/tools.js';

const run = promisify(execFile);

test('the socket folder of a SIGKILLed export is removed by the next export; a live one\'s is kept', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-nbddir-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, '..', 'helpers', 'export-child.ts'), image],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ready = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); if (out.includes('\n')) resolve(out); });
    child.once('exit', () => reject(new Error(`the child exited before serving: ${out}`)));
  });
  const socket = /^ready (\/\S+)/.exec(ready)?.[1];
  assert.ok(socket, ready);
  const folder = path.dirname(socket);
  assert.equal(path.dirname(folder), exportSocketRoot(), 'under the per-user parent');
  assert.deepEqual(JSON.parse(await readFile(path.join(folder, 'owner.json'), 'utf8')), { host: os.hostname(), pid: child.pid });

  // a live owner's folder is left alone by another process's export
  const mine = await startExport({ image, format: 'qcow2', readOnly: true });
  assert.ok(existsSync(folder), 'the live child\'s folder is kept');
  await mine.close();
  assert.equal(existsSync(path.dirname(mine.socketPath)), false, 'close() removes its own folder');

  child.kill('SIGKILL');
  await exited;
  assert.ok(existsSync(folder), 'nobody removed it at the kill');
  const next = await startExport({ image, format: 'qcow2', readOnly: true });
  try {
    assert.equal(existsSync(folder), false, 'the next export removed the dead process\'s folder');
    assert.ok(existsSync(next.socketPath));
  } finally {
    await next.close();
  }
  // the per-user parent goes with its last folder (other processes of this user may hold folders in it)
  const root = exportSocketRoot();
  assert.ok(!existsSync(root) || readdirSync(root).length > 0, `an empty ${root} was left behind`);
});
