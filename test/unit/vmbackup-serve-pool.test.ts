// backup-serve's reads: chunks decoded (and re-hashed) on the worker pool, and
// read ahead of a sequential reader within a bounded cache.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { type ChunkId } from '../../src/chunkstore/repo.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { ChunkCodecPool, pooledChunkReader, pooledChunkReaderInto } from '../../src/vmbackup/chunk-codec-pool.js';
import { alignedBuffer } from '../../src/nbd/direct-file.js';
import { newRepo, pattern, tamperChunk, writePoint } from './chunkstore-fixtures.js';

test('pooled reads decode exactly, plain and encrypted; a tampered blob or a missing chunk is named', async (t) => {
  for (const encryptKey of [undefined, randomBytes(32)]) {
    const { dir, repo } = await newRepo({ chunkSize: 65536, ...(encryptKey ? { encryptKey } : {}) });
    const pool = ChunkCodecPool.start(repo.codecParams(), 2);
    t.after(() => pool.close());
    const read = pooledChunkReader(pool, repo);
    const a = pattern(65536, 7);
    const { id } = await repo.writeChunk(a);
    assert.ok((await read(id)).equals(a));
    await tamperChunk(dir, id);
    await assert.rejects(read(id), (e: unknown) => e instanceof VirError && e.message.includes(`chunk ${id}`));
    await assert.rejects(read('ab'.repeat(32)), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL && e.message.includes('ab'.repeat(32)));
  }
});

test('decoding into shared memory: compressed, stored plain and encrypted chunks land exactly in the buffer; a tampered one is named', async (t) => {
  for (const encryptKey of [undefined, randomBytes(32)]) {
    const { dir, repo } = await newRepo({ chunkSize: 65536, ...(encryptKey ? { encryptKey } : {}) });
    const pool = ChunkCodecPool.start(repo.codecParams(), 2);
    t.after(() => pool.close());
    const read = pooledChunkReaderInto(pool, repo);
    const into = alignedBuffer(65536);
    const text = Buffer.alloc(65536, 'a line of text\n'); // compresses: stored with zstd
    const noise = randomBytes(65536); // does not: stored as it is
    for (const content of [text, noise]) {
      into.fill(0xee);
      const { id } = await repo.writeChunk(content);
      const got = await read(id, into);
      assert.equal(got.buffer, into.buffer, 'a view of the given memory, not a copy');
      assert.ok(got.equals(content));
    }
    into.fill(0xee);
    assert.ok((await read('0'.repeat(64), into)).equals(Buffer.alloc(65536)), 'the zero chunk reads as zeroes');
    const { id } = await repo.writeChunk(text);
    const blob = await tamperChunk(dir, id);
    await assert.rejects(read(id, into), (e: unknown) => e instanceof VirError && e.message.includes(`chunk ${id}`));
    await assert.rejects(pool.decodeInto(id, blob, Buffer.alloc(65536)), (e: unknown) => e instanceof VirError && /shared memory/.test(e.message));
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

test("encode moves a chunk that owns its memory to a worker and hands the same memory back; the stored form decodes on the pool to the content", async (t) => {
  const { repo } = await newRepo({ chunkSize: 65536 });
  const pool = ChunkCodecPool.start(repo.codecParams(), 2);
  t.after(() => pool.close());
  for (const content of [pattern(65536, 3), Buffer.alloc(65536, 'text line\n')]) {
    const data = Buffer.allocUnsafeSlow(65536);
    content.copy(data);
    const e = await pool.encode(data);
    assert.equal(data.length, 0, 'moved, not copied: the caller gave it up');
    assert.ok(e.spent !== null && e.spent.equals(content), 'the same bytes come back for the next read');
    assert.equal(e.id, repo.idOf(content));
    assert.ok(e.blob !== null);
    await repo.storeEncodedChunk(e.id, e.blob);
    assert.ok((await pooledChunkReader(pool, repo)(e.id)).equals(content), 'stored uncompressed or compressed, it decodes to the content');
  }
  // a view into a shared pool is copied, never moved (moving would take its neighbours along)
  const small = Buffer.from('a small chunk of a shared pool');
  const e = await pool.encode(small);
  assert.equal(e.spent, null);
  assert.equal(small.toString(), 'a small chunk of a shared pool');
});
