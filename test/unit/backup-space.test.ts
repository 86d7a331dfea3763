// The push space estimate (an upper bound) and its check, on a real folder.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { readJobRecord, type BackupJobRecord } from '../../src/qemu/backup-job.js';
import { checkPushSpace, diskDataBound, pushSpaceNeed, SpaceLedger, type PushSpaceInput } from '../../src/qemu/backup-space.js';
import type { ImageInfo } from '../../src/qemu/qmp/commands.js';

const K64 = 65536;
const MiB = 1 << 20;
const image = (actual: number | undefined, backing?: ImageInfo): ImageInfo =>
  ({ filename: 'x', format: 'qcow2', 'virtual-size': 64 * MiB, ...(actual !== undefined ? { 'actual-size': actual } : {}), ...(backing ? { 'backing-image': backing } : {}) });
const disk = (over: Partial<PushSpaceInput>): PushSpaceInput =>
  ({ disk: 'vda', target: '/nowhere/t.qcow2', format: 'qcow2', virtualSize: 64 * MiB, node: { image: image(10 * MiB) }, base: null, ...over });

test('the data a disk can hold: its chain\'s allocation, at most its size; unmeasured: its size', () => {
  assert.equal(diskDataBound(image(10 * MiB, image(30 * MiB)), 64 * MiB), 40 * MiB);
  assert.equal(diskDataBound(image(10 * MiB, image(90 * MiB)), 64 * MiB), 64 * MiB);
  assert.equal(diskDataBound(image(10 * MiB, image(undefined)), 64 * MiB), 64 * MiB);
});

test('a full qcow2 target: data, one L2 table per 512 MiB region, refcount blocks, fixed metadata', () => {
  const need = pushSpaceNeed(disk({ node: { image: image(10 * MiB, image(30 * MiB)) } }));
  assert.equal(need, 40 * MiB + K64 + 2 * K64 + MiB);
  // 1 TiB virtual, 1 GiB data: at most one L2 table per data cluster, never more than the disk has
  const big = pushSpaceNeed(disk({ virtualSize: 2 ** 40, node: { image: image(1 << 30) } }));
  assert.equal(big, (1 << 30) + 2048 * K64 + 2 * K64 + MiB);
});

test('an incremental needs what the bitmap marks dirty; a raw target what the job copies, zeroes too', () => {
  const dirty = (count: number, granularity: number): PushSpaceInput['node'] =>
    ({ image: image(40 * MiB), 'dirty-bitmaps': [{ name: 'c1', count, granularity, recording: true, busy: false, persistent: true }] });
  assert.equal(pushSpaceNeed(disk({ format: 'raw', node: dirty(3 * MiB, K64), base: { bitmap: 'c1', granularity: K64 } })), 3 * MiB);
  // 4 KiB dirty bits: each may allocate a whole 64 KiB cluster of the target
  assert.equal(pushSpaceNeed(disk({ format: 'raw', node: dirty(MiB, 4096), base: { bitmap: 'c1', granularity: 4096 } })), 16 * MiB);
  // dirty blocks the disk no longer holds are written as zeroes, which a raw file allocates: at most the disk
  assert.equal(pushSpaceNeed(disk({ format: 'raw', node: dirty(4 * MiB, 4096), base: { bitmap: 'c1', granularity: 4096 } })), 64 * MiB);
  assert.equal(pushSpaceNeed(disk({ node: dirty(4 * MiB, 4096), base: { bitmap: 'c1', granularity: 4096 } })), 40 * MiB + K64 + 2 * K64 + MiB);
  // a bitmap QEMU does not show: the whole data (qcow2), the whole disk (raw)
  assert.equal(pushSpaceNeed(disk({ node: dirty(MiB, K64), base: { bitmap: 'other', granularity: K64 } })), 40 * MiB + K64 + 2 * K64 + MiB);
  assert.equal(pushSpaceNeed(disk({ format: 'raw', node: dirty(MiB, K64), base: { bitmap: 'other', granularity: K64 } })), 64 * MiB);
});

test('a full push into a raw file needs the whole disk: the job writes the zeroes of unallocated blocks, and the file allocates them', () => {
  assert.equal(pushSpaceNeed(disk({ format: 'raw', node: { image: image(9 * MiB) } })), 64 * MiB);
  // into qcow2 they stay unallocated: the data and metadata
  assert.equal(pushSpaceNeed(disk({ node: { image: image(9 * MiB) } })), 9 * MiB + K64 + 2 * K64 + MiB);
});

test('checkPushSpace: refused with the numbers when the folder\'s filesystem is too small; a reused target counts as room', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-space-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const target = path.join(dir, 't.raw');
  await checkPushSpace([disk({ target, format: 'raw', node: { image: image(MiB) } })], false);
  const huge = 2 ** 50; // 1 PiB: more than any test machine has free
  const tooBig = [disk({ target, format: 'raw', virtualSize: huge, node: { image: image(huge) } })];
  await assert.rejects(checkPushSpace(tooBig, false), (e: { code: number; message: string }) => {
    assert.equal(e.code, ErrorCode.OPERATION_FAILED);
    assert.match(e.message, new RegExp(`^.*not enough free space for the backup of disk 'vda' in '${dir}': it may need up to ${huge} bytes, \\d+ are free`));
    return true;
  });
  // two targets in one folder add up: each fits, the pair does not
  const share = await import('node:fs/promises').then((fs) => fs.statfs(dir));
  // 0.6 of what is free: other tests beside this one may free or take room meanwhile, not a fifth of the disk
  const sixTenths = Math.floor(share.bavail * share.bsize * 0.6);
  const pair = ['vda', 'vdb'].map((n) => disk({ disk: n, target: path.join(dir, `${n}.raw`), format: 'raw', virtualSize: sixTenths, node: { image: image(sixTenths) } }));
  await checkPushSpace([pair[0]!], false);
  await assert.rejects(checkPushSpace(pair, false), /disks 'vda', 'vdb'/);
  // REUSE_EXTERNAL: the target's own allocation is rewritten in place
  await writeFile(path.join(dir, 'vdb.raw'), Buffer.alloc(4 * MiB, 1));
  const fits = [disk({ disk: 'vdb', target: path.join(dir, 'vdb.raw'), format: 'raw', virtualSize: 4 * MiB, node: { image: image(4 * MiB) } })];
  await checkPushSpace(fits, true);
});

/** A temp folder and a raw push into it whose bound is 0.6 of the free space: one fits, two do not. */
async function sixTenthsPushes(t: TestContext): Promise<{ dir: string; sixTenths: number; push: (name: string) => PushSpaceInput[] }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-ledger-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const fs = await import('node:fs/promises').then((m) => m.statfs(dir));
  const sixTenths = Math.floor(fs.bavail * fs.bsize * 0.6);
  const push = (name: string): PushSpaceInput[] =>
    [disk({ disk: name, target: path.join(dir, `${name}.raw`), format: 'raw', virtualSize: sixTenths, node: { image: image(sixTenths) } })];
  return { dir, sixTenths, push };
}

test('the ledger: a running push\'s room counts for the next check (less what its target holds already), until it is released', async (t) => {
  const { dir, sixTenths, push } = await sixTenthsPushes(t);
  const ledger = new SpaceLedger();
  const a = ledger.holding();
  await ledger.check(a, push('vda'), false);
  const b = ledger.holding();
  await assert.rejects(ledger.check(b, push('vdb'), false), (e: { code: number; message: string }) => {
    assert.equal(e.code, ErrorCode.OPERATION_FAILED);
    assert.match(e.message, new RegExp(`it may need up to ${sixTenths} bytes, \\d+ are free after ${sixTenths} that running backups may still write`));
    return true;
  });
  // what vda's target holds already is no longer pending
  await writeFile(path.join(dir, 'vda.raw'), Buffer.alloc(MiB, 1));
  await assert.rejects(ledger.check(b, push('vdb'), false), new RegExp(`after ${sixTenths - MiB} that running`));
  a.release();
  await ledger.check(b, push('vdb'), false);
});

test('the job record keeps a push\'s room through its status file; an earlier version\'s record holds none', () => {
  const rec = { id: 7, mode: 'push', phase: 'running', steps: [], disks: [], space: [{ target: '/b/a.raw', need: 9 * MiB }, { target: '/b/b.qcow2', need: 3 * MiB }] };
  const back = readJobRecord(JSON.parse(JSON.stringify(rec)) as unknown);
  assert.deepEqual(back?.space, rec.space);
  const { space: _, ...old } = rec;
  assert.equal(readJobRecord(JSON.parse(JSON.stringify(old)) as unknown)?.space, undefined);
  // a damaged entry is dropped, not trusted
  const bad = readJobRecord({ ...rec, space: [{ target: '/b/a.raw' }, null, { target: 3, need: 1 }, { target: '/b/c.raw', need: MiB }] });
  assert.deepEqual(bad?.space, [{ target: '/b/c.raw', need: MiB }]);
  assert.equal(readJobRecord({ ...rec, space: 'x' })?.space, undefined);
});

test('a restarted daemon\'s ledger: the recovered push\'s saved room counts for the next check until it is released', async (t) => {
  const { dir, sixTenths, push } = await sixTenthsPushes(t);
  const before = new SpaceLedger();
  const a = before.holding();
  await before.check(a, push('vda'), false);
  // what begin puts in the record, through the status file's JSON
  const rec = readJobRecord(JSON.parse(JSON.stringify({ id: 1, steps: [], space: a.saved() })) as unknown) as BackupJobRecord;
  assert.deepEqual(rec.space, [{ target: path.join(dir, 'vda.raw'), need: sixTenths }]);

  const after = new SpaceLedger();
  const b = after.holding();
  await after.check(b, push('vdb'), false); // nothing held yet: the old daemon's defect
  const restored = await after.recovered(rec.space ?? []);
  await assert.rejects(after.check(b, push('vdb'), false), (e: { code: number; message: string }) => {
    assert.equal(e.code, ErrorCode.OPERATION_FAILED);
    assert.match(e.message, new RegExp(`not enough free space for the backup of disk 'vdb' in '${dir}': it may need up to ${sixTenths} bytes, \\d+ are free after ${sixTenths} that running backups may still write`));
    return true;
  });
  restored.release();
  await after.check(b, push('vdb'), false);
  // a saved target whose folder is gone holds nothing
  const gone = await after.recovered([{ target: path.join(dir, 'no', 'such', 'x.raw'), need: sixTenths }]);
  assert.deepEqual(gone.reservations, []);
  await after.check(b, push('vdb'), false);
});
