// A daemon SIGKILLed while a manifest is being computed must not leave its
// --persistent qemu-nbd serving the backup for ever (seen after the soak's
// daemon kills): the export dies with the process that started it.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import { ORPHANED_AT_START, orphanSafe } from '../../src/repository/tools.js';

const run = promisify(execFile);

async function nbdPids(image: string): Promise<number[]> {
  const { stdout } = await run('pgrep', ['-f', `qemu-nbd .*${image}`]).catch(() => ({ stdout: '' }));
  return stdout.split('\n').filter(Boolean).map(Number);
}

test('a qemu-nbd export ends when the process that started it is SIGKILLed', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-orphan-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, '..', 'helpers', 'export-child.ts'), image],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  const ready = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); if (out.includes('\n')) resolve(out); });
    child.once('exit', () => reject(new Error(`the child exited before serving: ${out}`)));
  });
  assert.match(ready, /^ready \/.+nbd\.sock/);
  const pids = await nbdPids(image);
  assert.equal(pids.length, 1, 'one qemu-nbd serves the image');
  assert.match(await readFile(`/proc/${pids[0]}/cmdline`, 'utf8'), /^qemu-nbd\0/, 'setpriv and its check exec()ed into qemu-nbd (same pid)');
  child.kill('SIGKILL');
  let left = pids;
  for (let i = 0; i < 100 && left.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    left = await nbdPids(image);
  }
  assert.deepEqual(left, [], 'qemu-nbd ended with its parent');
});

test('the wrapper refuses to start its command when its parent died before the death signal was armed', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-orphan-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const marker = path.join(dir, 'ran');
  // a parent pid that is not the wrapper's parent stands for "the parent is gone" (reparented)
  const [cmd, ...args] = orphanSafe(['touch', marker], process.pid + 1_000_000);
  const code = await new Promise<number | null>((resolve) => spawn(cmd!, args, { stdio: 'ignore' }).once('exit', resolve));
  assert.equal(code, ORPHANED_AT_START);
  await assert.rejects(stat(marker), { code: 'ENOENT' }, 'the command never ran');
  // with its real parent it runs the command (same argv, only the pid differs)
  const [cmd2, ...args2] = orphanSafe(['touch', marker]);
  assert.equal(await new Promise<number | null>((resolve) => spawn(cmd2!, args2, { stdio: 'ignore' }).once('exit', resolve)), 0);
  assert.ok((await stat(marker)).isFile());
});
