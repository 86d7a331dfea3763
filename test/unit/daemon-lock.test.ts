// PidLock: a second owner is refused while the first runs; a killed owner's
// lock is taken over at once, even before its parent reaps it (zombie), and a
// lock file naming a live process that does not hold it is stale.
// Taking it removes the temp files of starts killed inside acquire (their pid gone).

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PidLock, processStartTime } from '../../src/daemon/lock.js';
import { isVirError } from '../../src/errors.js';

const LOCK_TS = fileURLToPath(new URL('../../src/daemon/lock.ts', import.meta.url));

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-lock-'));
}

function procState(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
  } catch {
    return null;
  }
}

async function until(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A node process that takes the lock and sleeps, started by `sh` that then
 * execs `sleep`: the holder's parent never reaps it, so a SIGKILL leaves a zombie.
 */
async function startHolder(file: string): Promise<{ sh: ChildProcess; pid: number }> {
  const pidFile = `${file}.holder`;
  const script =
    `const { PidLock } = await import(${JSON.stringify(LOCK_TS)});` +
    `PidLock.acquire(${JSON.stringify(file)}, 'test');` +
    `(await import('node:fs')).writeFileSync(${JSON.stringify(pidFile)}, String(process.pid));` +
    `setInterval(() => {}, 1000);`;
  const node = [process.execPath, '--import', 'tsx', '--input-type=module', '-e', script].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const sh = spawn('sh', ['-c', `${node} & exec sleep 120`], { stdio: 'ignore' });
  await until('the holder to take the lock', () => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8') !== '');
  return { sh, pid: Number(fs.readFileSync(pidFile, 'utf8')) };
}

test('a running holder is refused; once SIGKILLed it is stale even as an unreaped zombie', async () => {
  const dir = tmpdir();
  const file = path.join(dir, 'virtbackd.pid');
  const { sh, pid } = await startHolder(file);
  try {
    assert.throws(
      () => PidLock.acquire(file, 'the test dir'),
      (e: unknown) => isVirError(e) && e.code === 55 && e.message === `virtbackd is already running on the test dir (pid ${pid})`,
    );
    assert.equal(PidLock.liveOwner(file)?.pid, pid);
    process.kill(pid, 'SIGKILL');
    await until('the holder to become a zombie', () => procState(pid) === 'Z');
    assert.equal(PidLock.liveOwner(file), null, 'a zombie is not running');
    const lock = PidLock.acquire(file, 'the test dir');
    assert.equal(fs.readFileSync(file, 'utf8').split(' ')[0], String(process.pid));
    lock.release();
    assert.equal(fs.existsSync(file), false, 'release removes the file');
  } finally {
    sh.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a lock file naming a live process that does not hold it open is stale', async () => {
  const dir = tmpdir();
  const file = path.join(dir, 'virtbackd.pid');
  const other = spawn('sleep', ['120'], { stdio: 'ignore' });
  try {
    await until('sleep to start', () => processStartTime(other.pid!) !== null);
    fs.writeFileSync(file, `${other.pid} ${processStartTime(other.pid!)}\n`);
    assert.equal(PidLock.liveOwner(file), null);
    const lock = PidLock.acquire(file, 'the test dir');
    assert.equal(PidLock.liveOwner(file)?.pid, process.pid, 'we hold it now, and say so');
    assert.throws(() => PidLock.acquire(file, 'the test dir'), /already running on the test dir/);
    lock.release();
  } finally {
    other.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("taking the lock removes the temp files of starts killed inside acquire, not a live one's", async () => {
  const dir = tmpdir();
  const file = path.join(dir, 'virtbackd.pid');
  const live = spawn('sleep', ['120'], { stdio: 'ignore' });
  const gone = spawn('true', { stdio: 'ignore' });
  await new Promise((r) => gone.once('exit', r));
  try {
    const stale = `.virtbackd.pid.${gone.pid}.tmp`;
    const kept = [
      `.virtbackd.pid.${live.pid}.tmp`, // a start trying right now
      `.virtbackd.pid.x${gone.pid}.tmp`,
      `.virtbackd.pid.${gone.pid}.tmp.keep`,
      `.virtbackd.lock.${gone.pid}.tmp`,
    ];
    for (const name of [stale, ...kept]) fs.writeFileSync(path.join(dir, name), 'x');
    const lock = PidLock.acquire(file, 'the test dir');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['virtbackd.pid', ...kept].sort());
    lock.release();
  } finally {
    live.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
