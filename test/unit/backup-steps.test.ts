// The write-ahead log of backupBegin (src/qemu/backup-steps.ts): all intents
// in one save, and files undone only when they are the ones the step made.
// With every intent saved before the first step, a target's intent is on disk
// long before its open(): undo of a file must never remove a file that the
// step did not create (someone else's, made after prepare's check).

import assert from 'node:assert/strict';
import { link, mkdtemp, readdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { BackupJobRecord, BackupStep } from '../../src/qemu/backup-job.js';
import { createFile, creationName, dropCreationNames, StepLog, undoSteps } from '../../src/qemu/backup-steps.js';

type FileStep = BackupStep & { kind: 'file' };

async function folder(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-steps-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function record(steps: BackupStep[] = []): BackupJobRecord {
  return {
    id: 7, mode: 'push', phase: 'starting', startedAt: 0, endedAt: null, xml: '', checkpoint: null, disks: [], steps,
    stopping: null, end: null, errmsg: null,
  };
}

function fileStep(p: string): FileStep {
  return { kind: 'file', path: p, temp: creationName(p, 7), state: 'intended' };
}

const undo = (rec: BackupJobRecord, keep?: (s: BackupStep) => boolean): Promise<void> =>
  undoSteps(rec, { qmp: null, log: silentLogger, ...(keep ? { keep } : {}) });

test('a file intended but never created: undo leaves a file someone else made at its path', async (t) => {
  const dir = await folder(t);
  const target = path.join(dir, 'vda.qcow2');
  const rec = record([fileStep(target)]);
  await writeFile(target, 'not ours'); // made after prepare's check, before our open()
  await undo(rec);
  assert.equal(await readFile(target, 'utf8'), 'not ours');
  assert.deepEqual(rec.steps, [], 'the step left the log');
});

test('createFile never takes an existing name; the temp name goes; the existing file is untouched', async (t) => {
  const dir = await folder(t);
  const target = path.join(dir, 'vda.qcow2');
  await writeFile(target, 'not ours');
  const rec = record();
  const log = new StepLog(rec, async () => {});
  await log.intendAll([fileStep(target)]);
  await assert.rejects(log.run([fileStep(target)], ([s]) => createFile(s as FileStep, 'vda', 0)), (e: { code?: number; message: string }) =>
    e.code === ErrorCode.INVALID_ARG && /store '.*vda\.qcow2' for backup of 'vda' exists/.test(e.message));
  assert.deepEqual(await readdir(dir), ['vda.qcow2']);
  await undo(rec);
  assert.equal(await readFile(target, 'utf8'), 'not ours');
});

test('killed after the link, before dev/ino were saved: the temp name proves the file ours', async (t) => {
  const dir = await folder(t);
  const target = path.join(dir, 'vda.raw');
  const s = fileStep(target);
  await createFile(s, 'vda', 1 << 20);
  assert.equal((await stat(target)).size, 1 << 20);
  assert.equal((await stat(target)).mode & 0o777, 0o600);
  // what a recovery reads: the intent as saved, without dev/ino
  const saved = record([{ kind: 'file', path: target, temp: s.temp, state: 'intended' }]);
  await undo(saved);
  assert.deepEqual(await readdir(dir), []);
});

test('temp names go after the save; undo then goes by dev/ino and spares a file put in its place', async (t) => {
  const dir = await folder(t);
  const a = path.join(dir, 'a.qcow2');
  const b = path.join(dir, 'b.qcow2');
  const sa = fileStep(a);
  const sb = fileStep(b);
  await createFile(sa, 'vda', 0);
  await createFile(sb, 'vdb', 0);
  const rec = record([sa, sb]);
  await dropCreationNames(rec);
  assert.deepEqual((await readdir(dir)).sort(), ['a.qcow2', 'b.qcow2']);
  assert.equal(sa.temp, undefined);
  // b was removed and made again by someone else (another inode: made while b still held its own)
  await writeFile(path.join(dir, 'other'), 'not ours');
  await unlink(b);
  await link(path.join(dir, 'other'), b);
  await unlink(path.join(dir, 'other'));
  await undo(rec);
  assert.deepEqual(await readdir(dir), ['b.qcow2']);
  assert.equal(await readFile(b, 'utf8'), 'not ours');
});

test('a kept target (finished push) loses a temp name left by a kill; the target stays', async (t) => {
  const dir = await folder(t);
  const target = path.join(dir, 'vda.qcow2');
  const s = fileStep(target);
  await createFile(s, 'vda', 0);
  await undo(record([s]), (x) => x.kind === 'file');
  assert.deepEqual(await readdir(dir), ['vda.qcow2']);
});

test('StepLog: every intent in one save; steps intended ahead save nothing, others save their intent', async () => {
  const saved: string[] = [];
  const rec = record();
  const log = new StepLog(rec, async () => {
    saved.push(rec.steps.map((s) => `${s.kind}:${s.state}`).join(' '));
  });
  await log.intendAll([{ kind: 'node', name: 'n1' }, { kind: 'job', id: 'backup-vda-7' }]);
  await log.run([{ kind: 'node', name: 'n1' }], async () => {});
  await log.run([{ kind: 'job', id: 'backup-vda-7' }], async () => {});
  assert.deepEqual(saved, ['node:intended job:intended']);
  await log.run([{ kind: 'export', id: 'vda' }], async () => {});
  assert.deepEqual(saved, ['node:intended job:intended', 'node:done job:done export:intended']);
  assert.deepEqual(rec.steps.map((s) => s.state), ['done', 'done', 'done']);
});
