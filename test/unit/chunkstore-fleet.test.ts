// Several hosts writing one repository (docs/repository.md, "Several hosts,
// one repository"), on the folder backend: the domain lease (one run per
// domain, a dead holder's lease taken over), and each race the doc argues,
// with the interleaving injected through hooks rather than timing.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { collectGarbage } from '../../src/chunkstore/gc.js';
import { DomainLease, listClaims } from '../../src/chunkstore/lease.js';
import { prunePoints } from '../../src/chunkstore/prune.js';
import { ChunkRepository, type PointRecord } from '../../src/chunkstore/repo.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { isVirError } from '../../src/errors.js';
import { DOMAIN, filesUnder, newRepo, pattern, pointRecord, writeDisk, writePoint } from './chunkstore-fixtures.js';

const CS = 4096;
const HOUR = 3600_000;

async function ageAll(dir: string, ms: number): Promise<void> {
  const t = new Date(Date.now() - ms);
  for (const f of await filesUnder(dir)) await fs.utimes(path.join(dir, f), t, t);
}

/** Every point reads back whole (each chunk present and intact). */
async function assertPointsRead(repo: ChunkRepository): Promise<void> {
  for (const p of await repo.listPoints()) {
    for (const d of p.disks) {
      const src = await pointDiskSource(repo, p, d.target);
      await src.read(0, src.size);
    }
  }
}

/** A backup run's second half: a disk whose chunks are the base's plus `extra`, its index and record. */
async function finishRun(repo: ChunkRepository, base: PointRecord, id: string, extra: Buffer): Promise<PointRecord> {
  const baseIdx = await repo.readIndex(base.disks[0]!.index);
  const w = await repo.writeChunk(extra);
  const chunks = [...baseIdx.chunks, w.id];
  const index = await repo.writeIndex(DOMAIN.uuid, id, { target: 'vda', size: chunks.length * CS, chunkSize: CS, chunks });
  const p = pointRecord(id, [{ target: 'vda', size: chunks.length * CS, index, bytesRead: CS, bytesNew: w.storedBytes }], { level: 'inc', base: base.id });
  await repo.writePoint(p);
  return p;
}

const keepNone = (repo: ChunkRepository, p: PointRecord) => prunePoints(repo, { keep: [], remove: [p] });

test('lease: a second run of the same domain fails naming the holder; other domains and a released lease are free', async () => {
  const { repo } = await newRepo({ chunkSize: CS });
  const a = await DomainLease.acquire(repo, 'web', { hostId: 'host-a', renewMs: 60_000 });
  await assert.rejects(DomainLease.acquire(repo, 'web', { hostId: 'host-b' }), (e: Error) => {
    assert.ok(isVirError(e, 'OPERATION_INVALID'));
    assert.match(e.message, new RegExp(`host 'host-a' \\(pid ${process.pid}, started ${a.record.started.replace(/[.]/g, '\\.')}\\)`));
    return true;
  });
  assert.equal((await listClaims(repo.store, 'web')).length, 1, 'the refused run removed its claim');
  const other = await DomainLease.acquire(repo, 'db', { hostId: 'host-b' });
  await other.release();
  await a.release();
  assert.deepEqual(await listClaims(repo.store), []);
  const b = await DomainLease.acquire(repo, 'web', { hostId: 'host-b' });
  assert.equal(b.record.host, 'host-b');
  await b.release();
});

test('lease: two runs that start together never both proceed', async () => {
  const { repo } = await newRepo({ chunkSize: CS });
  let arrived = 0;
  let release!: () => void;
  const bothWritten = new Promise<void>((r) => (release = r));
  const afterClaim = async () => {
    if (++arrived === 2) release();
    await bothWritten; // each lists only after both claims are written
  };
  const got = await Promise.allSettled(['h1', 'h2'].map((hostId) => DomainLease.acquire(repo, 'web', { hostId, afterClaim })));
  assert.equal(got.filter((r) => r.status === 'fulfilled').length, 0, 'both saw each other: both withdrew');
  assert.deepEqual(await listClaims(repo.store), []);
});

test('lease: renewed while held; a holder that cannot renew for a whole timeout gives up before its point', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const lease = await DomainLease.acquire(repo, 'web', { hostId: 'h', renewMs: 20, timeoutMs: 60_000 });
  const file = path.join(dir, ...lease.key.split('/'));
  const old = new Date(Date.now() - HOUR);
  await fs.utimes(file, old, old);
  await new Promise((r) => setTimeout(r, 150));
  assert.ok((await fs.stat(file)).mtimeMs > Date.now() - 60_000, 'a renewal rewrote the claim');
  await lease.release();

  const stuck = await DomainLease.acquire(repo, 'web', { hostId: 'h', renewMs: 3_600_000, timeoutMs: 1 });
  await new Promise((r) => setTimeout(r, 20));
  assert.throws(() => stuck.check(), (e: Error) => isVirError(e, 'OPERATION_FAILED') && /not renewed/.test(e.message));
  await stuck.release();
});

test('lease: the claim of a killed process is refused while live and taken over once it expired', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const script = `
    import { openFolderStore } from ${JSON.stringify(path.resolve('src/chunkstore/object-store.ts'))};
    import { ChunkRepository } from ${JSON.stringify(path.resolve('src/chunkstore/repo.ts'))};
    import { DomainLease } from ${JSON.stringify(path.resolve('src/chunkstore/lease.ts'))};
    const repo = await ChunkRepository.open(await openFolderStore(${JSON.stringify(dir)}));
    await DomainLease.acquire(repo, 'web', { hostId: 'host-dead', timeoutMs: 30000 });
    console.log('held');
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(child.stdout, 'data')) as [Buffer];
  assert.equal(line.toString().trim(), 'held');
  child.kill('SIGKILL');
  await once(child, 'exit');
  await assert.rejects(DomainLease.acquire(repo, 'web', { hostId: 'host-b' }), new RegExp(`host 'host-dead' \\(pid ${child.pid},`));
  const [dead] = await listClaims(repo.store, 'web');
  // its holder is gone: the claim ages past its timeout (aged here instead of waiting 30 s)
  const t = new Date(Date.now() - 31_000);
  await fs.utimes(path.join(dir, ...dead!.key.split('/')), t, t);
  const b = await DomainLease.acquire(repo, 'web', { hostId: 'host-b' });
  assert.deepEqual((await listClaims(repo.store, 'web')).map((c) => c.claim?.host), ['host-b'], 'the dead claim was removed');
  await b.release();
});

test('race: prune deletes the base a run has claimed — the indexes stay, gc keeps the chunks, the new point reads whole', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', Buffer.concat([pattern(CS, 1), pattern(CS, 2)]));
  await ageAll(dir, 48 * HOUR);
  const lease = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'h1' });
  assert.equal(await lease.setBase(p1), true);
  const pruned = await keepNone(repo, p1);
  assert.deepEqual(pruned.removed, [p1.id]);
  assert.deepEqual(pruned.keptForRuns, [p1.disks[0]!.index], 'prune saw the claim');
  const gc1 = await collectGarbage(repo, { graceMs: 1000 });
  assert.equal(gc1.liveClaims, 1);
  assert.equal(gc1.removedChunks, 0, "the claimed base's chunks stay");
  const p2 = await finishRun(repo, p1, '2026-12-02T00:00:00.000Z', pattern(CS, 3));
  await lease.release();
  await assertPointsRead(repo);
  // after the run, p1's orphan index goes at the next gc once old; p2 keeps everything it names
  await ageAll(dir, 48 * HOUR);
  const gc2 = await collectGarbage(repo, { graceMs: 1000 });
  assert.deepEqual([gc2.removedIndexes, gc2.removedChunks], [1, 0]);
  await assertPointsRead(repo);
  assert.equal((await repo.listPoints())[0]!.id, p2.id);
});

test('race: prune before the run names its base — the run sees the base gone; without a live claim prune deletes the indexes', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(CS, 1));
  // prune lands between the claim naming the base and the run's check of its record
  const stale = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'h1', timeoutMs: 1000, afterBase: async () => void (await keepNone(repo, p1)) });
  assert.equal(await stale.setBase(p1), false, 'the record was deleted before the run checked it: no base');
  stale.abandon();
  // prune kept the indexes (it saw the live claim); once the claim is stale it protects nothing
  assert.ok(await repo.store.stat(p1.disks[0]!.index));
  await ageAll(dir, 48 * HOUR);
  const gc = await collectGarbage(repo, { graceMs: 1000 });
  assert.deepEqual([gc.liveClaims, gc.removedClaims, gc.removedIndexes, gc.removedChunks], [0, 1, 1, 1]);
});

test("race: gc's mark while a point is written — the point lands between gc's listings and its chunks stay", async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', Buffer.concat([pattern(CS, 1), pattern(CS, 2)]));
  await ageAll(dir, 48 * HOUR);
  const lease = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'h1' });
  assert.equal(await lease.setBase(p1), true);
  await keepNone(repo, p1); // p1's chunks are now only the base of the running backup
  const gc = await collectGarbage(repo, {
    graceMs: 1000,
    // after gc listed the points (none) and before it lists the claims: the run writes its point and releases
    afterPointListing: async () => {
      await finishRun(repo, p1, '2026-12-02T00:00:00.000Z', pattern(CS, 3));
      await lease.release();
    },
  });
  assert.deepEqual([gc.points, gc.liveClaims], [0, 0], 'gc saw neither the point nor the claim');
  assert.equal(gc.removedChunks, 0, "the point's young index marked its chunks");
  await assertPointsRead(repo);
  assert.equal((await repo.listPoints()).length, 1);
});

test('race: a run that starts after gc listed the claims — its new chunks are younger than the mark', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(CS, 1));
  await ageAll(dir, 48 * HOUR);
  let lease: DomainLease | undefined;
  const gc = await collectGarbage(repo, {
    graceMs: 1000,
    afterMark: async () => {
      lease = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'h2' });
      assert.equal(await lease.setBase(p1), true);
      await repo.writeChunk(pattern(CS, 9));
    },
  });
  assert.deepEqual([gc.removedChunks, gc.pendingChunks], [0, 1]);
  await finishRun(repo, p1, '2026-12-02T00:00:00.000Z', pattern(CS, 9));
  await lease!.release();
  await assertPointsRead(repo);
});

test("race: gc while a run's chunks wait for their batched sync — a live claim's hidden temp files stay, and its point then reads whole", async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(CS, 1));
  const lease = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'h1' });
  await lease.setBase(p1);
  const run = repo.batchedRun();
  const w = await run.writeChunk(pattern(CS, 7));
  assert.equal(await repo.hasChunk(w.id), false, 'not visible before its sync');
  const other = await repo.writeChunk(pattern(CS, 8));
  assert.equal(await repo.hasChunk(other.id), true, 'the handle the run came from still syncs each chunk');
  await new Promise((r) => setTimeout(r, 20)); // the temp file is older than gc's start
  const gc = await collectGarbage(repo, { graceMs: 0 });
  assert.deepEqual([gc.liveClaims, gc.removedStale], [1, 0], "grace 0, yet the live run's unsynced chunk stays");
  assert.equal((await filesUnder(dir)).filter((f) => path.basename(f).startsWith('.')).length, 1);
  await finishRun(run, p1, '2026-12-02T00:00:00.000Z', pattern(CS, 7));
  assert.equal(await repo.hasChunk(w.id), true, 'synced and visible once the point is written');
  await lease.release();
  await assertPointsRead(repo);
});

test('race: a host dies mid-backup — its live claim protects its chunks however old; stale, it protects nothing and is removed', async () => {
  const { dir, repo } = await newRepo({ chunkSize: CS });
  const p1 = await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(CS, 1));
  await ageAll(dir, 48 * HOUR);
  const lease = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'dying', timeoutMs: 10 * 60_000 });
  await lease.setBase(p1);
  await keepNone(repo, p1);
  await repo.writeChunk(pattern(CS, 5)); // written by the run, never part of a point
  lease.abandon(); // the host dies: no more renewals, no release
  const live = await collectGarbage(repo, { graceMs: 0 });
  assert.deepEqual([live.liveClaims, live.removedChunks], [1, 0], 'grace 0, yet the live claim keeps its base and what it wrote');
  await ageAll(dir, 48 * HOUR); // the claim stopped being renewed long ago
  const after = await collectGarbage(repo, { graceMs: 1000 });
  assert.deepEqual([after.liveClaims, after.removedClaims, after.removedChunks, after.removedIndexes], [0, 1, 2, 1]);
  assert.deepEqual(await listClaims(repo.store), []);
  // the next run takes the domain over without waiting
  const next = await DomainLease.acquire(repo, DOMAIN.name, { hostId: 'other' });
  await next.release();
});

test('dedup across hosts: a second domain with the same disk stores nothing new', async () => {
  const { repo } = await newRepo({ chunkSize: CS });
  const disk = Buffer.concat([pattern(CS, 1), pattern(CS, 2), pattern(CS, 3)]);
  const a = await DomainLease.acquire(repo, 'vm-a', { hostId: 'host-a' });
  const b = await DomainLease.acquire(repo, 'vm-b', { hostId: 'host-b' });
  const first = await writeDisk(repo, '2026-12-01T00:00:00.000Z', 'vda', disk, { name: 'vm-a', uuid: 'aaaaaaaa-2222-3333-4444-555555555555' });
  const second = await writeDisk(repo, '2026-12-01T00:00:00.000Z', 'vda', disk, { name: 'vm-b', uuid: 'bbbbbbbb-2222-3333-4444-555555555555' });
  assert.ok(first.bytesNew > 0);
  assert.equal(second.bytesNew, 0);
  assert.notEqual(first.index, second.index, 'index keys differ per domain and point');
  await a.release();
  await b.release();
});

test('lease: a run that could not remove its claim (store down at the end) does not block the next run of its host', async () => {
  const { repo } = await newRepo({ chunkSize: CS });
  const down = Object.assign(Object.create(repo.store) as typeof repo.store, { delete: () => Promise.reject(new Error('injected: gateway down')) });
  const failing = await ChunkRepository.open(down);
  const first = await DomainLease.acquire(failing, 'web', { hostId: 'hv1' });
  await assert.rejects(first.release(), /gateway down/);
  assert.equal((await listClaims(repo.store, 'web')).length, 1, 'the claim is still there');
  await assert.rejects(DomainLease.acquire(repo, 'web', { hostId: 'hv2' }), /host 'hv1'/, 'another host cannot tell: it waits for the timeout');
  const next = await DomainLease.acquire(repo, 'web', { hostId: 'hv1' });
  assert.deepEqual((await listClaims(repo.store, 'web')).map((c) => c.key), [next.key]);
  await next.release();
});
