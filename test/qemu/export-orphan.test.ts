// A daemon SIGKILLed while a manifest is being computed must not leave its
// --persistent qemu-nbd serving the backup for ever (seen after the soak's
// daemon kills): the export dies with the process that started it.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';

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
  assert.match(await readFile(`/proc/${pids[0]}/cmdline`, 'utf8'), /^qemu-nbd\0/, 'setpriv exec()ed into qemu-nbd (same pid)');
  child.kill('SIGKILL');
  let left = pids;
  for (let i = 0; i < 100 && left.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    left = await nbdPids(image);
  }
  assert.deepEqual(left, [], 'qemu-nbd ended with its parent');
});
