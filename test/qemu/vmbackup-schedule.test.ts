// `virtback backup` into the chunk repository on real QEMU, through the
// public API: an auto schedule (full, incrementals, and a full read with the
// reason after a deleted checkpoint, a removed bitmap, a missing point, a point
// that failed verify), two repositories on one domain with independent chains,
// dedup across two domains cloned from one image, and an encrypted repository.
// Every point is restored and compared with the disks rebuilt from the write log.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { checkpointPrefix } from '../../src/vmbackup/index.js';
import { qmp, run } from './backup-util.js';
import { MiB, assertRestores, backup, checkpoints, initRepo, sha, startVm, type Vm } from './vmbackup-helpers.js';

const K64 = 64 * 1024;

test('auto schedule: full, incrementals, a full read with the reason whenever the base is unusable; every point restores exact', { timeout: 300_000 }, async (t) => {
  const vm = await startVm(t, { sizesMiB: [64, 66] });
  const r = await initRepo(path.join(vm.env.dir, 'repo'));
  const expected = new Map<string, Map<string, Buffer>>();
  const take = async (level: 'auto' | 'inc' | 'full' = 'auto') => {
    const snap = vm.snapshot();
    const res = await backup(vm, r, { level });
    expected.set(res.pointId, snap);
    return res;
  };

  await vm.write('sda', 0, MiB, 0x11);
  await vm.write('sda', 20 * MiB, K64, 0x22);
  await vm.write('sdb', 65 * MiB, 512 * 1024, 0x33);
  const p1 = await take();
  assert.equal(p1.level, 'full');
  assert.match(p1.reason, /^no previous point of this domain in this repository$/);
  assert.equal(p1.bytesRead, MiB + K64 + 512 * 1024, 'a full read reads only allocated data');
  assert.deepEqual(p1.disks.map((d) => [d.target, d.size, d.chunksRead]), [['sda', 64 * MiB, 16], ['sdb', 66 * MiB, 17]]);
  assert.ok(p1.checkpoint.startsWith(checkpointPrefix(r.id)));
  assert.deepEqual(await checkpoints(vm.dom), [p1.checkpoint]);

  await vm.write('sda', 5 * MiB, K64, 0x44);
  await vm.write('sdb', 0, K64, 0x55);
  await vm.write('sdb', 64 * MiB + K64, K64, 0x66);
  const p2 = await take();
  assert.equal(p2.level, 'inc');
  assert.equal(p2.base, p1.pointId);
  assert.equal(p2.reason, `incremental from point ${p1.pointId} (checkpoint ${p1.checkpoint})`);
  assert.deepEqual(p2.disks.map((d) => [d.target, d.chunksRead]), [['sda', 1], ['sdb', 2]], 'only the chunks the bitmap touches are read');
  assert.ok(p2.bytesRead <= 3 * 4 * MiB);
  assert.deepEqual(await checkpoints(vm.dom), [p2.checkpoint], "the older checkpoint of this repository is gone, the newest point's kept");

  // a deleted checkpoint: auto reads in full and says why; inc refuses and leaves no checkpoint behind
  await vm.write('sda', 30 * MiB, K64, 0x77);
  await (await vm.dom.checkpointLookupByName(p2.checkpoint)).delete();
  await assert.rejects(take('inc'), (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_INVALID && /cannot back up incrementally: checkpoint .* no longer exists/.test(e.message));
  assert.deepEqual(await checkpoints(vm.dom), []);
  const p3 = await take();
  assert.equal(p3.level, 'full');
  assert.equal(p3.reason, `checkpoint ${p2.checkpoint} of previous point ${p2.pointId} no longer exists on the domain`);

  // a removed bitmap: the checkpoint is inconsistent
  await vm.write('sdb', 10 * MiB, K64, 0x88);
  const p4 = await take();
  assert.equal(p4.level, 'inc');
  const sda = vm.driver.diskNodes(vm.dom.uuid).find((d) => d.target === 'sda')!;
  await qmp(vm.driver, vm.dom.uuid, 'block-dirty-bitmap-remove', { node: sda.formatNode, name: p4.checkpoint });
  await vm.write('sda', 40 * MiB, K64, 0x99);
  const p5 = await take();
  assert.equal(p5.level, 'full');
  assert.match(p5.reason, new RegExp(`^checkpoint ${p4.checkpoint} of previous point ${p4.pointId} is inconsistent: disk sda`));

  // a missing point: the one left before it has a checkpoint that was deleted since
  await vm.write('sda', 41 * MiB, K64, 0xaa);
  const p6 = await take();
  assert.equal(p6.level, 'inc');
  await r.repo.deletePoint(vm.dom.name, p6.pointId);
  expected.delete(p6.pointId);
  const p7 = await take();
  assert.equal(p7.level, 'full');
  assert.equal(p7.reason, `checkpoint ${p5.checkpoint} of previous point ${p5.pointId} no longer exists on the domain`);

  // a point that failed verification is never built on
  await vm.write('sdb', 20 * MiB, K64, 0xbb);
  const p8 = await take();
  assert.equal(p8.level, 'inc');
  await r.repo.recordVerify(vm.dom.name, p8.pointId, { time: new Date().toISOString(), ok: false, firstBad: 'x' });
  const p9 = await take();
  assert.equal(p9.level, 'full');
  assert.equal(p9.reason, `previous point ${p8.pointId} failed verification`);

  const points = await r.repo.listPoints(vm.dom.name);
  assert.deepEqual(points.map((p) => p.id), [...expected.keys()]);
  assert.deepEqual(points.map((p) => p.level), ['full', 'inc', 'full', 'inc', 'full', 'full', 'inc', 'full']);
  for (const [id, snap] of expected) await assertRestores(r.repo, vm.dom.name, id, snap, vm.env.dir);
  await assertRestores(r.repo, vm.dom.name, p9.pointId, expected.get(p9.pointId)!, vm.env.dir, 'qcow2');
  assert.deepEqual(await checkpoints(vm.dom), [p9.checkpoint]);
});

test('two repositories on one domain keep independent chains', { timeout: 300_000 }, async (t) => {
  const vm = await startVm(t, { sizesMiB: [64] });
  const a = await initRepo(path.join(vm.env.dir, 'repo-a'));
  const b = await initRepo(path.join(vm.env.dir, 'repo-b'));
  assert.notEqual(checkpointPrefix(a.id), checkpointPrefix(b.id));
  const want = new Map<string, { repo: ChunkRepository; snap: Map<string, Buffer> }>();
  const take = async (x: typeof a) => {
    const snap = vm.snapshot();
    const res = await backup(vm, x);
    want.set(res.pointId, { repo: x.repo, snap });
    return res;
  };
  let seed = 1;
  const scribble = async () => {
    for (let i = 0; i < 4; i++) await vm.write('sda', ((seed * 7919 + i * 131) % 1024) * K64, K64, (seed++ % 250) + 1);
  };
  await scribble();
  const levels: string[] = [];
  for (let round = 0; round < 3; round++) {
    const ra = await take(a);
    await scribble();
    const rb = await take(b);
    await scribble();
    levels.push(`${ra.level}/${rb.level}`);
    const names = await checkpoints(vm.dom);
    assert.deepEqual(names, [ra.checkpoint, rb.checkpoint].sort(), 'one checkpoint per repository');
  }
  assert.deepEqual(levels, ['full/full', 'inc/inc', 'inc/inc']);
  for (const [id, w] of want) await assertRestores(w.repo, vm.dom.name, id, w.snap, vm.env.dir);
});

test('dedup: two domains cloned from one image share their chunks', { timeout: 300_000 }, async (t) => {
  const random = randomBytes(24 * MiB);
  const clone = async (vmName: string): Promise<Vm> =>
    startVm(t, {
      name: vmName,
      sizesMiB: [64],
      prepare: async (image) => {
        const raw = `${image}.src.raw`;
        await fs.writeFile(raw, Buffer.concat([random, Buffer.alloc(40 * MiB)]));
        await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, image]);
        await fs.rm(raw);
      },
    });
  const one = await clone(`dd1-${process.pid}`);
  const two = await clone(`dd2-${process.pid}`);
  const r = await initRepo(path.join(one.env.dir, 'repo'));
  for (const vm of [one, two]) for (const m of vm.models.values()) random.copy(m.buf, 0);
  const r1 = await backup(one, r);
  const r2 = await backup(two, r);
  assert.equal(r1.bytesRead, 24 * MiB);
  assert.equal(r2.bytesRead, 24 * MiB);
  assert.ok(r1.bytesNew >= 24 * MiB && r1.bytesNew < 24 * MiB + 64 * 1024, `first copy stores ~24 MiB: ${r1.bytesNew}`);
  assert.equal(r2.bytesNew, 0, 'the clone stores nothing new');
  let stored = 0;
  for (const e of await fs.readdir(path.join(r.dir, 'chunks'), { recursive: true, withFileTypes: true })) {
    if (e.isFile()) stored += (await fs.stat(path.join(e.parentPath, e.name))).size;
  }
  assert.equal(stored, r1.bytesNew, 'the chunk folder holds one copy');
  await assertRestores(r.repo, two.dom.name, r2.pointId, two.snapshot(), two.env.dir);
});

test('encrypted repository: restored exact with the key, unreadable without it, chunk names reveal nothing', { timeout: 300_000 }, async (t) => {
  const vm = await startVm(t, { sizesMiB: [64] });
  const key = randomBytes(32);
  const dir = path.join(vm.env.dir, 'repo-enc');
  const r = await initRepo(dir, key);
  await vm.write('sda', 0, 4 * MiB, 0x5a);
  const s1 = vm.snapshot();
  const p1 = await backup(vm, r);
  await vm.write('sda', 8 * MiB, K64, 0x6b);
  const s2 = vm.snapshot();
  const p2 = await backup(vm, r);
  assert.equal(p2.level, 'inc');
  await assertRestores(r.repo, vm.dom.name, p1.pointId, s1, vm.env.dir);
  await assertRestores(r.repo, vm.dom.name, p2.pointId, s2, vm.env.dir);

  const store = await openFolderStore(dir);
  await assert.rejects(ChunkRepository.open(store), VirError);
  await assert.rejects(ChunkRepository.open(store, { encryptKey: randomBytes(32) }), VirError);
  // the plain chunk's SHA-256 is not a name in the store, and its bytes appear in no file
  const plainId = sha(s1.get('sda')!.subarray(0, 4 * MiB));
  const files = (await fs.readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile());
  assert.ok(files.length > 0);
  for (const f of files) {
    assert.notEqual(f.name, plainId);
    const body = await fs.readFile(path.join(f.parentPath, f.name));
    assert.equal(body.includes(Buffer.alloc(64, 0x5a)), false, `${f.name} holds plain data`);
  }
});
