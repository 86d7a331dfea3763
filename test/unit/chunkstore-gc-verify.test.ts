// gc against a backup running at the same time, and verify: a corrupted chunk
// is found once, named with every point it affects, set aside, and healed by
// the next write of the same content.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { chunkKey } from '../../src/chunkstore/repo.js';
import { collectGarbage } from '../../src/chunkstore/gc.js';
import { verifyRepository } from '../../src/chunkstore/verify.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { DOMAIN, filesUnder, newRepo, pattern, pointRecord, tamperChunk, writeDisk, writePoint } from './chunkstore-fixtures.js';

const CS = 4096;
const HOUR = 3600_000;

async function age(dir: string, key: string, ms: number): Promise<void> {
  const t = new Date(Date.now() - ms);
  await fs.utimes(path.join(dir, ...key.split('/')), t, t);
}

async function ageAll(dir: string, ms: number): Promise<void> {
  for (const f of await filesUnder(dir)) await age(dir, f, ms);
}

test('gc: unreferenced old chunks go; referenced, recent and concurrently reused chunks stay', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const a = pattern(CS, 1);
  const b = pattern(CS, 2);
  const c = pattern(CS, 3);
  const d = pattern(CS, 4);
  await writePoint(repo, '2026-12-01T00:00:00.000Z', Buffer.concat([a, b]));
  const p2 = await writePoint(repo, '2026-12-02T00:00:00.000Z', Buffer.concat([c, d]));
  await repo.deletePoint(DOMAIN.name, p2.id); // c and d are now unreferenced
  await ageAll(dir, 48 * HOUR);
  const fresh = await repo.writeChunk(pattern(CS, 5)); // unreferenced but young: an in-flight backup's chunk
  let concurrent: Awaited<ReturnType<typeof writeDisk>> | undefined;
  const r = await collectGarbage(repo, {
    graceMs: 24 * HOUR,
    // a backup that starts after the mark: it reuses c (old, unreferenced at mark time) and writes its point
    afterMark: async () => {
      concurrent = await writeDisk(repo, '2026-12-03T00:00:00.000Z', 'vda', c);
      await repo.writePoint(pointRecord('2026-12-03T00:00:00.000Z', [concurrent]));
    },
  });
  assert.equal(r.points, 1);
  assert.equal(r.referencedChunks, 2);
  assert.equal(r.removedChunks, 1, 'only d goes');
  assert.equal(r.pendingChunks, 2, 'the fresh chunk and the reused c wait for the grace period');
  assert.equal(await repo.hasChunk(repo.idOf(d)), false);
  for (const x of [a, b, c]) assert.equal(await repo.hasChunk(repo.idOf(x)), true);
  assert.equal(await repo.hasChunk(fresh.id), true);
  // both points read back whole
  for (const p of await repo.listPoints()) {
    const src = await pointDiskSource(repo, p, 'vda');
    await src.read(0, src.size);
  }
});

test('gc with the default grace period keeps everything young', async () => {
  const { repo } = await newRepo({ chunkSize: CS });
  await writeDisk(repo, '2026-12-01T00:00:00.000Z', 'vda', pattern(2 * CS, 1));
  const r = await collectGarbage(repo);
  assert.deepEqual([r.removedChunks, r.pendingChunks, r.removedIndexes], [0, 2, 0]);
});

test('verify: a corrupt chunk is named with every point it affects, set aside, and healed by the next write', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const shared = pattern(CS, 7);
  const other = pattern(CS, 8);
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', Buffer.concat([other, shared]));
  const p2 = await writePoint(repo, '2026-12-02T00:00:00.000Z', Buffer.concat([shared, Buffer.alloc(CS)]));
  const p3 = await writePoint(repo, '2026-12-03T00:00:00.000Z', Buffer.concat([other, other]));
  const p4 = await writePoint(repo, '2026-12-04T00:00:00.000Z', shared, { name: 'vm2', uuid: '22222222-2222-3333-4444-555555555555' });
  const good = await verifyRepository(repo);
  assert.equal(good.ok, true);
  assert.equal(good.chunksChecked, 2, 'each chunk is read once however many points share it');
  assert.deepEqual((await repo.listPoints()).map((p) => p.verify?.ok), [true, true, true, true]);

  const id = repo.idOf(shared);
  await tamperChunk(dir, id, 100);

  // verifying one domain still names every affected point, vm2's included
  const bad = await verifyRepository(repo, { domain: DOMAIN.name });
  assert.equal(bad.ok, false);
  assert.equal(bad.badChunks.length, 1);
  assert.equal(bad.badChunks[0]!.id, id);
  assert.match(bad.badChunks[0]!.error, new RegExp(`chunk ${id} is corrupt`));
  assert.deepEqual(bad.badChunks[0]!.points.sort(), [`vm1/${p1.id}`, `vm1/${p2.id}`, `vm2/${p4.id}`]);
  assert.deepEqual(
    bad.points.map((v) => [v.domain, v.id, v.ok, v.firstBad ?? null, v.checked]),
    [
      ['vm1', p1.id, false, id, true],
      ['vm1', p2.id, false, id, true],
      ['vm1', p3.id, true, null, true],
      ['vm2', p4.id, false, id, false],
    ],
  );
  const recorded = await repo.listPoints();
  assert.deepEqual(recorded.map((p) => [p.id, p.verify?.ok, p.verify?.firstBad ?? null]), [
    [p1.id, false, id],
    [p2.id, false, id],
    [p3.id, true, null],
    [p4.id, false, id],
  ]);
  // set aside: no longer a chunk, kept under bad/
  assert.equal(await repo.hasChunk(id), false);
  assert.equal(bad.badChunks[0]!.setAside?.startsWith(`bad/${id}-`), true);
  assert.ok((await filesUnder(dir)).some((f) => f.startsWith(`bad/${id}-`)));

  // the next backup that meets the content stores it again: the store heals
  const healed = await repo.writeChunk(Buffer.from(shared));
  assert.equal(healed.id, id);
  assert.ok(healed.storedBytes > 0);
  const again = await verifyRepository(repo, { domain: 'vm2', point: p4.id });
  assert.equal(again.ok, true);
  assert.equal((await repo.readPoint('vm2', p4.id)).verify?.ok, true);
  const src = await pointDiskSource(repo, p1, 'vda');
  assert.ok((await src.read(0, 2 * CS)).equals(Buffer.concat([other, shared])));
});

test('verify: a missing chunk and an unreadable index fail their points', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(CS, 1));
  const p2 = await writePoint(repo, '2026-12-02T00:00:00.000Z', pattern(CS, 2));
  const missing = repo.idOf(pattern(CS, 1));
  await repo.store.delete(chunkKey(missing));
  await fs.writeFile(path.join(dir, ...p2.disks[0]!.index.split('/')), 'garbage');
  const r = await verifyRepository(repo);
  assert.deepEqual(r.points.map((v) => [v.id, v.ok, v.firstBad]), [
    [p1.id, false, missing],
    [p2.id, false, p2.disks[0]!.index],
  ]);
  assert.equal(r.badChunks[0]!.setAside, null);
  assert.match(r.badChunks[0]!.error, /missing/);
});

test('verify keeps fields of a point record it does not know when it records its result', async () => {
  const { repo } = await newRepo({ chunkSize: CS });
  const p = { ...pointRecord('2026-12-01T00:00:00.000Z', [await writeDisk(repo, '2026-12-01T00:00:00.000Z', 'vda', pattern(CS, 1))]), excluded: ['vdb'] };
  await repo.writePoint(p);
  await verifyRepository(repo);
  const back = (await repo.readPoint(DOMAIN.name, p.id)) as typeof p & { verify?: { ok: boolean } };
  assert.deepEqual(back.excluded, ['vdb']);
  assert.equal(back.verify?.ok, true);
});
