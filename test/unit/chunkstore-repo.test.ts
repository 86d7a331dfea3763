// The chunk repository on a real folder: dedup, zero chunks, encryption and
// keys, points written last, and a point's disk as a block source.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { ErrorCode, VirError } from '../../src/errors.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { chunkId, encodeObject } from '../../src/chunkstore/chunk-codec.js';
import { ChunkRepository, CHUNK_SIZE, ZERO_CHUNK } from '../../src/chunkstore/repo.js';
import { collectGarbage } from '../../src/chunkstore/gc.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { DOMAIN, filesUnder, newRepo, pattern, pointRecord, tempDir, writeDisk, writePoint } from './chunkstore-fixtures.js';

const chunkFiles = async (dir: string) => (await filesUnder(dir)).filter((f) => f.startsWith('chunks/'));

test('same content twice is stored once; all-zero chunks are not stored', async () => {
  const { dir, repo } = await newRepo();
  const a = pattern(CHUNK_SIZE, 1);
  const first = await repo.writeChunk(a);
  const again = await repo.writeChunk(Buffer.from(a));
  assert.equal(first.id, createHash('sha256').update(a).digest('hex'));
  assert.equal(again.id, first.id);
  assert.ok(first.storedBytes > 0);
  assert.equal(again.storedBytes, 0);
  const zero = await repo.writeChunk(Buffer.alloc(CHUNK_SIZE));
  assert.deepEqual(zero, { id: ZERO_CHUNK, storedBytes: 0 });
  assert.deepEqual(await chunkFiles(dir), [`chunks/${first.id.slice(0, 2)}/${first.id.slice(2, 4)}/${first.id}`]);
  assert.ok((await repo.readChunk(first.id)).equals(a));
  assert.ok((await repo.readChunk(ZERO_CHUNK)).equals(Buffer.alloc(CHUNK_SIZE)));
  assert.equal(await repo.hasChunk(first.id), true);
  assert.equal(await repo.hasChunk('ab'.repeat(32)), false);
  await assert.rejects(repo.readChunk('ab'.repeat(32)), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL && e.message.includes('ab'.repeat(32)));
});

test('a tampered chunk file fails readChunk naming the chunk', async () => {
  const { dir, repo } = await newRepo();
  const { id } = await repo.writeChunk(pattern(65536, 2));
  const file = path.join(dir, 'chunks', id.slice(0, 2), id.slice(2, 4), id);
  const blob = await fs.readFile(file);
  blob[blob.length - 5]! ^= 0x40;
  await fs.writeFile(file, blob);
  await assert.rejects(repo.readChunk(id), (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_FAILED && e.message.includes(`chunk ${id}`));
});

test('encrypted repository: names are not SHA-256 of content, nothing is readable without the right key', async () => {
  const key = randomBytes(32);
  const { dir, repo } = await newRepo({ encryptKey: key });
  assert.equal(repo.encrypted, true);
  const marker = Buffer.from('VIRTBACK-PLAINTEXT-MARKER-'.repeat(100));
  const data = Buffer.concat([marker, pattern(CHUNK_SIZE - marker.length, 3)]);
  const p = await writePoint(repo, '2026-12-01T00:00:00.000Z', data);
  const [id] = (await repo.readIndex(p.disks[0]!.index)).chunks;
  assert.notEqual(id, createHash('sha256').update(data).digest('hex'));
  for (const f of await filesUnder(dir)) {
    const bytes = await fs.readFile(path.join(dir, f));
    assert.ok(!bytes.includes(marker.subarray(0, 26)), `${f} holds plaintext`);
    assert.ok(!bytes.includes(Buffer.from(DOMAIN.uuid)), `${f} holds the domain uuid`);
    assert.ok(!bytes.includes(Buffer.from('<domain/>')), `${f} holds the domain XML`);
  }
  const store = await openFolderStore(dir);
  await assert.rejects(ChunkRepository.open(store), (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_DENIED && /encrypted/.test(e.message));
  await assert.rejects(ChunkRepository.open(store, { encryptKey: randomBytes(32) }), /wrong encryption key/);
  const reopened = await ChunkRepository.open(store, { encryptKey: key });
  assert.ok((await reopened.readChunk(id!)).equals(data));
  assert.deepEqual(await reopened.listPoints(), [p]);
  // the plain repository refuses a key, and init refuses an initialised folder
  const plain = await newRepo();
  await assert.rejects(ChunkRepository.open(await openFolderStore(plain.dir), { encryptKey: key }), /not encrypted/);
  await assert.rejects(ChunkRepository.init(store), /already initialised/);
  await assert.rejects(ChunkRepository.open(await openFolderStore(await tempDir())), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL);
});

test('a point exists only once its record is written; gc then removes what an interrupted run left', async () => {
  const { dir, repo } = await newRepo({ chunkSize: 65536 });
  const kept = await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(3 * 65536, 4));
  // the "crash": chunks and index written, no point record, and a put cut short (its hidden temp file)
  await writeDisk(repo, '2026-12-02T00:00:00.000Z', 'vda', pattern(2 * 65536, 5));
  await fs.writeFile(path.join(dir, 'chunks', '.stale.tmp-99999-7-89abcdef'), 'crashed');
  const young = path.join(dir, 'chunks', '.young.tmp-1-1-0123abcd');
  await fs.writeFile(young, 'x');
  assert.deepEqual((await repo.listPoints()).map((p) => p.id), [kept.id]);
  const before = await filesUnder(dir);
  assert.equal(before.filter((f) => f.startsWith('chunks/') && !/\.tmp-/.test(f)).length, 5);
  assert.equal(before.filter((f) => f.startsWith('indexes/')).length, 2);
  assert.equal(before.filter((f) => /\.tmp-/.test(f)).length, 2);
  const hourAgo = new Date(Date.now() - 3600_000);
  for (const f of before) if (!f.endsWith('.tmp-1-1-0123abcd')) await fs.utimes(path.join(dir, f), hourAgo, hourAgo);
  const r = await collectGarbage(repo, { graceMs: 60_000 });
  assert.deepEqual([r.removedChunks, r.removedIndexes, r.removedStale], [2, 1, 1]);
  assert.deepEqual((await filesUnder(dir)).filter((f) => /\.tmp-/.test(f)), ['chunks/.young.tmp-1-1-0123abcd'], 'a young temp file may be a write in progress');
  await fs.rm(young);
  assert.equal((await chunkFiles(dir)).length, 3);
  const src = await pointDiskSource(repo, kept, 'vda');
  assert.ok((await src.read(0, src.size)).equals(pattern(3 * 65536, 4)));
  // a point is written once; deleting it removes record and indexes
  await assert.rejects(repo.writePoint(kept), /already exists/);
  await repo.deletePoint(DOMAIN.name, kept.id);
  assert.deepEqual(await repo.listPoints(), []);
  assert.deepEqual((await filesUnder(dir)).filter((f) => !f.startsWith('chunks/')), ['config.json']);
  await assert.rejects(repo.readPoint(DOMAIN.name, kept.id), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL);
});

test('points: listed oldest first per domain; odd domain names stay one key segment', async () => {
  const { repo } = await newRepo({ chunkSize: 4096 });
  const other = { name: '../x y/..', uuid: '99999999-2222-3333-4444-555555555555' };
  await writePoint(repo, '2026-12-03T00:00:00.000Z', pattern(4096, 1));
  await writePoint(repo, '2026-12-01T00:00:00.000Z', pattern(4096, 2));
  await writePoint(repo, '2026-12-02T00:00:00.000Z', pattern(4096, 3), other);
  assert.deepEqual((await repo.listPoints(DOMAIN.name)).map((p) => p.id), ['2026-12-01T00:00:00.000Z', '2026-12-03T00:00:00.000Z']);
  assert.deepEqual((await repo.listPoints(other.name)).map((p) => p.domain.name), [other.name]);
  assert.equal((await repo.listPoints()).length, 3);
  await assert.rejects(repo.readPoint(DOMAIN.name, '../../config'), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG);
  await assert.rejects(repo.writePoint(pointRecord('bad', [], { level: 'weird' as 'full' })));
});

test('pointDiskSource: random reads across chunk boundaries are exact; extents report zero chunks', async () => {
  const cs = 4096;
  const { repo } = await newRepo({ chunkSize: cs });
  const size = 10 * cs + 123; // a short last chunk
  const data = pattern(size, 6);
  data.fill(0, 2 * cs, 5 * cs); // chunks 2..4 all zero
  const p = await writePoint(repo, '2026-12-01T00:00:00.000Z', data);
  const src = await pointDiskSource(repo, p, 'vda', { cacheChunks: 2 });
  assert.equal(src.size, size);
  await fc.assert(
    fc.asyncProperty(fc.nat(size), fc.nat(3 * cs), async (offset, len) => {
      const length = Math.min(len, size - offset);
      assert.ok((await src.read(offset, length)).equals(data.subarray(offset, offset + length)));
    }),
    { numRuns: 200 },
  );
  const all = await Promise.all([src.read(0, size), src.read(cs - 1, 2), src.read(size - 1, 1)]);
  assert.ok(all[0].equals(data));
  assert.deepEqual(await src.extents(0, size), [
    { offset: 0, length: 2 * cs, zero: false },
    { offset: 2 * cs, length: 3 * cs, zero: true },
    { offset: 5 * cs, length: size - 5 * cs, zero: false },
  ]);
  assert.deepEqual(await src.extents(3 * cs + 5, 10), [{ offset: 3 * cs + 5, length: 10, zero: true }]);
  await assert.rejects(src.read(size - 1, 2), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG);
  await assert.rejects(pointDiskSource(repo, p, 'vdb'), /no disk 'vdb'/);
  await src.close();
});

test('batched chunk syncs: nothing is visible before the flush; writePoint flushes first', async () => {
  const { dir, repo } = await newRepo({ chunkSize: 4096 });
  repo.setBatchSync(true);
  const data = Buffer.concat([pattern(4096, 1), pattern(4096, 2), pattern(4096, 1)]);
  const disk = await writeDisk(repo, '2026-12-01T00:00:00.000Z', 'vda', data);
  assert.equal(disk.bytesNew > 0, true);
  const ids = (await repo.readIndex(disk.index)).chunks;
  assert.equal(ids[0], ids[2]);
  // "crash" here: only hidden temp files, no visible chunk a later run could deduplicate against
  const files = await filesUnder(dir);
  assert.deepEqual(files.filter((f) => f.startsWith('chunks/') && !path.basename(f).startsWith('.')), []);
  assert.equal(files.filter((f) => f.startsWith('chunks/')).length, 2, 'the duplicate was not written twice');
  assert.equal(await repo.hasChunk(ids[0]!), false);
  await repo.writePoint(pointRecord('2026-12-01T00:00:00.000Z', [disk]));
  assert.deepEqual((await chunkFiles(dir)).map((f) => path.basename(f)).sort(), [ids[0], ids[1]].sort());
  const src = await pointDiskSource(repo, (await repo.listPoints())[0]!, 'vda');
  assert.ok((await src.read(0, data.length)).equals(data));
});

test('chunks named and encoded elsewhere (a worker: codec params cloned) are stored by storeEncodedChunk', async () => {
  const { repo } = await newRepo({ encryptKey: randomBytes(32), chunkSize: 65536 });
  const params = structuredClone(repo.codecParams()) as ReturnType<typeof repo.codecParams>; // as a worker receives them
  const data = pattern(65536, 11);
  const id = chunkId(data, params.keys);
  assert.equal(id, repo.idOf(data));
  const blob = encodeObject(id, data, params.keys, params.level);
  assert.equal(await repo.storeEncodedChunk(id, blob), blob.length);
  assert.equal(await repo.storeEncodedChunk(id, blob), 0);
  assert.ok((await repo.readChunk(id)).equals(data));
  assert.equal((await repo.writeChunk(data)).storedBytes, 0);
  await assert.rejects(repo.storeEncodedChunk('nope', blob), /not a chunk id/);
});

test('folder store: deferred objects are fsynced ahead of their flush, at most two at a time, and not again by it', async (t) => {
  const dir = await tempDir();
  const store = await openFolderStore(dir);
  // count the file and folder fsyncs of this test and the most running at once
  const fh = await fs.open(dir, 'r');
  const proto = Object.getPrototypeOf(fh) as { sync: () => Promise<void> };
  await fh.close();
  const sync = proto.sync;
  let calls = 0;
  let running = 0;
  let most = 0;
  proto.sync = async function (this: unknown) {
    calls++;
    most = Math.max(most, ++running);
    try {
      return await sync.call(this);
    } finally {
      running--;
    }
  };
  t.after(() => {
    proto.sync = sync;
  });
  const keys = Array.from({ length: 6 }, (_, i) => `chunks/0${i}/aa/k${i}`);
  await Promise.all(keys.map((k, i) => store.putDeferred!(k, pattern(4096, i))));
  await store.putDeferred!(keys[0]!, pattern(4096, 9)); // replaced before the flush: the last data wins
  // the replaced file's fsync ran, or (still queued when it was replaced) finds the file gone: 6 or 7
  const settled = () => calls >= keys.length && running === 0;
  for (let i = 0; i < 500 && !settled(); i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(settled(), `every deferred file was fsynced before any flush (${calls} fsyncs, ${running} running)`);
  const ahead = calls;
  assert.ok(ahead === keys.length || ahead === keys.length + 1, `fsyncs ahead: ${ahead}`);
  assert.ok(most <= 2, `at most two fsyncs ahead at once (saw ${most})`);
  assert.equal(await store.stat(keys[1]!), null, 'not visible before the flush');
  await store.flush!();
  assert.equal(calls - ahead, keys.length, 'the flush fsyncs only the folders');
  assert.ok((await store.get(keys[0]!)).equals(pattern(4096, 9)));
  for (let i = 1; i < keys.length; i++) assert.ok((await store.get(keys[i]!)).equals(pattern(4096, i)));
  assert.deepEqual((await filesUnder(dir)).filter((f) => path.basename(f).startsWith('.')), [], 'no temp file left');
});
