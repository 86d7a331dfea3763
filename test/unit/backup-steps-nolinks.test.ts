// backupBegin's files on a filesystem without hard links (vfat, exFAT, some
// FUSE): createFile's link(temp, name) fails there, and the file is made at
// its name directly. No such filesystem here, so the kernel's refusal is
// injected into the real syscalls (strace -e inject) of a child that runs
// createFile and undo, with link() failing as vfat's does (EPERM).

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const steps = path.resolve(import.meta.dirname, '..', '..', 'src', 'qemu', 'backup-steps.ts');
const strace = ['/usr/bin/strace', '/bin/strace'].find((p) => existsSync(p));

async function folder(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-nolinks-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Run `body` (an async function body; `m` is backup-steps.ts) in a child whose link()/linkat() fail with EPERM; its JSON result. */
async function withoutLinks(dir: string, body: string): Promise<unknown> {
  const script = path.join(dir, 'child.mts');
  await writeFile(script, `const m = await import(${JSON.stringify(steps)});\nconst out = await (async () => {${body}})();\nconsole.log(JSON.stringify(out));\n`);
  const { stdout } = await run(strace!, ['-f', '-qq', '-o', '/dev/null', '-e', 'trace=link,linkat', '-e', 'inject=link,linkat:error=EPERM',
    process.execPath, '--import', import.meta.resolve('tsx'), script]);
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

test('no hard links: the target is made at its name (0600, raw size), no temp name left; undo removes it as ours', { skip: strace ? undefined : 'strace is not installed' }, async (t) => {
  const dir = await folder(t);
  const target = path.join(dir, 'vda.raw');
  const out = (await withoutLinks(dir, `
    const step = { kind: 'file', path: ${JSON.stringify(target)}, temp: m.creationName(${JSON.stringify(target)}, 7), state: 'intended' };
    await m.createFile(step, 'vda', 1048576);
    const fs = await import('node:fs/promises');
    const made = await fs.stat(step.path);
    const names = (await fs.readdir(${JSON.stringify(dir)})).filter((n) => n !== 'child.mts').sort();
    const rec = { id: 7, mode: 'push', phase: 'starting', startedAt: 0, endedAt: null, xml: '', checkpoint: null, disks: [], steps: [step], stopping: null, end: null, errmsg: null };
    await m.undoSteps(rec, { qmp: null, log: { debug() {}, info() {}, warn() {}, error() {}, child() { return this; } } });
    const after = (await fs.readdir(${JSON.stringify(dir)})).filter((n) => n !== 'child.mts');
    return { names, temp: step.temp ?? null, ino: step.ino === made.ino, mode: made.mode & 0o777, size: made.size, after };
  `)) as { names: string[]; temp: string | null; ino: boolean; mode: number; size: number; after: string[] };
  assert.deepEqual(out.names, ['vda.raw'], 'made at its name, no temp name left');
  assert.equal(out.temp, null);
  assert.equal(out.ino, true, 'its dev/ino recorded');
  assert.equal(out.mode, 0o600);
  assert.equal(out.size, 1048576);
  assert.deepEqual(out.after, [], 'undo removed the file it made');
});

test('no hard links: an existing file at the name is refused (INVALID_ARG) and left as it was', { skip: strace ? undefined : 'strace is not installed' }, async (t) => {
  const dir = await folder(t);
  const target = path.join(dir, 'vda.qcow2');
  await writeFile(target, 'not ours');
  const out = (await withoutLinks(dir, `
    const step = { kind: 'file', path: ${JSON.stringify(target)}, temp: m.creationName(${JSON.stringify(target)}, 7), state: 'intended' };
    try { await m.createFile(step, 'vda', 0); return { created: true }; }
    catch (e) { return { created: false, code: (e.error ?? e).code, message: (e.error ?? e).message }; }
  `)) as { created: boolean; code?: number; message?: string };
  assert.equal(out.created, false);
  assert.match(out.message ?? '', /store '.*vda\.qcow2' for backup of 'vda' exists/);
  assert.deepEqual((await readdir(dir)).filter((n) => n !== 'child.mts'), ['vda.qcow2']);
  assert.equal((await stat(target)).size, 'not ours'.length);
});
