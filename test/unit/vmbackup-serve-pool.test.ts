// backup-serve's reads: chunks decoded (and re-hashed) on the worker pool, and
// read ahead of a sequential reader within a bounded cache.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { chunkKey, type ChunkId } from '../../src/chunkstore/repo.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { ChunkCodecPool, pooledChunkReader } from '../../src/vmbackup/chunk-codec-pool.js';
import { newRepo, pattern, writePoint } from './chunkstore-fixtures.js';

test('pooled reads decode exactly, plain and encrypted; a tampered blob or a missing chunk is named', async (t) => {
  for (const encryptKey of [undefined, randomBytes(32)]) {
    const { dir, repo } = await newRepo({ chunkSize: 65536, ...(encryptKey ? { encryptKey } : {}) });
    const pool = ChunkCodecPool.start(repo.codecParams(), 2);
    t.after(() => pool.close());
    const read = pooledChunkReader(pool, repo);
    const a = pattern(65536, 7);
    const { id } = await repo.writeChunk(a);
    assert.ok((await read(id)).equals(a));
    const file = path.join(dir, chunkKey(id));
    const blob = await fs.readFile(file);
    blob[blob.length - 1]! ^= 1;
    await fs.writeFile(file, blob);
    await assert.rejects(read(id), (e: unknown) => e instanceof VirError && e.message.includes(`chunk ${id}`));
    await assert.rejects(read('ab'.repeat(32)), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL && e.message.includes('ab'.repeat(32)));
  }
});

test('a sequential reader gets the next chunks read ahead; a random one does not', async () => {
  const cs = 4096;
  const { repo } = await newRepo({ chunkSize: cs });
  const data = pattern(12 * cs, 3);
  data.fill(0, 5 * cs, 6 * cs); // a zero chunk is never fetched
  const point = await writePoint(repo, '2026-12-06T00:00:00.000Z', data);
  const fetched: number[] = [];
  const src0 = await pointDiskSource(repo, point, 'vda');
  const ids = src0.index.chunks;
  const counting = (id: ChunkId) => {
    fetched.push(ids.indexOf(id));
    return repo.readChunk(id);
  };
  const src = await pointDiskSource(repo, point, 'vda', { readChunk: counting, readAhead: 2, cacheChunks: 1 });
  assert.ok((await src.read(0, cs / 2)).equals(data.subarray(0, cs / 2)));
  assert.deepEqual(fetched, [0], 'the first read is not known to be sequential');
  assert.ok((await src.read(cs / 2, cs)).equals(data.subarray(cs / 2, cs / 2 + cs)));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(fetched.sort((x, y) => x - y), [0, 1, 2, 3], 'chunks 2 and 3 read ahead');
  fetched.length = 0;
  assert.ok((await src.read(2 * cs, 2 * cs)).equals(data.subarray(2 * cs, 4 * cs)));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(fetched.sort((x, y) => x - y), [4], 'chunks 2 and 3 came from the read-ahead; 4 ahead, 5 is zero');
  fetched.length = 0;
  assert.ok((await src.read(10 * cs, cs)).equals(data.subarray(10 * cs, 11 * cs)));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(fetched, [10], 'a jump is not read ahead');
});

test('encode moves a chunk that owns its memory to the worker, copies one that shares it; both name and store alike', async (t) => {
  const { repo } = await newRepo({ chunkSize: 65536 });
  const pool = ChunkCodecPool.start(repo.codecParams(), 2);
  t.after(() => pool.close());
  const owned = Buffer.alloc(65536, 3); // all of its ArrayBuffer
  const expected = repo.idOf(Buffer.alloc(65536, 3));
  const moved = await pool.encode(owned);
  assert.equal(moved.id, expected);
  assert.equal(owned.length, 0, 'moved, not copied: the caller gave it up');
  const shared = Buffer.from('a small chunk in the shared pool'); // a slice of Node's pooled ArrayBuffer
  const copied = await pool.encode(shared);
  assert.equal(copied.id, repo.idOf(Buffer.from('a small chunk in the shared pool')));
  assert.equal(shared.toString(), 'a small chunk in the shared pool', 'a Buffer sharing its memory is copied, never detached');
  await repo.storeEncodedChunk(moved.id, moved.blob!);
  assert.ok((await repo.readChunk(moved.id)).equals(Buffer.alloc(65536, 3)));
});
