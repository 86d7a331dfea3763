// The backup's pooled chunk writer: encoding on the codec pool, and each
// stored blob's memory handed back for a later chunk's blob only when the
// store is done with it (a folder store: its promise settled; S3: its upload
// settled, which `released` tells), never for a store that keeps the buffer
// after putDeferred returns and says nothing more.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openFolderStore, type ObjectStore } from '../../src/chunkstore/object-store.js';
import { ChunkRepository, ZERO_CHUNK } from '../../src/chunkstore/repo.js';
import { ChunkCodecPool, pooledChunkWriter } from '../../src/vmbackup/chunk-codec-pool.js';
import { tempDir } from './chunkstore-fixtures.js';

const CS = 256 * 1024;

/** Random, text (compresses), zero chunks in turn: plain blobs of both kinds and no blob. */
function contents(n: number): Buffer[] {
  return Array.from({ length: n }, (_, i) => (i % 3 === 0 ? randomBytes(CS) : i % 3 === 1 ? Buffer.alloc(CS, `chunk ${i} line\n`) : Buffer.alloc(CS)));
}

/** Writes every chunk through one run's writer, cycling chunk and blob memory as read-disk does; the ids and the blobs handed back. */
async function writeAll(repo: ChunkRepository, data: Buffer[]): Promise<{ ids: string[]; handedBack: number }> {
  const pool = ChunkCodecPool.start(repo.codecParams(), 2);
  try {
    const run = repo.batchedRun();
    const write = pooledChunkWriter(pool, run);
    const ids: string[] = [];
    let spare: Buffer | null = null;
    let handedBack = 0;
    for (const d of data) {
      const r = await write(Buffer.from(d), spare);
      ids.push(r.id);
      spare = r.spentBlob ?? null;
      if (spare) handedBack++;
    }
    await run.flushChunks();
    return { ids, handedBack };
  } finally {
    await pool.close();
  }
}

test('a folder store: blob memory cycles to the next chunk, and every chunk reads back exact', async () => {
  const repo = await ChunkRepository.init(await openFolderStore(await tempDir()), { chunkSize: CS });
  const data = contents(9);
  const { ids, handedBack } = await writeAll(repo, data);
  assert.equal(handedBack, 6, 'every chunk with a blob hands its memory back');
  for (const [i, id] of ids.entries()) {
    if (i % 3 === 2) assert.equal(id, ZERO_CHUNK);
    else assert.ok((await repo.readChunk(id)).equals(data[i]!), `chunk ${i}`);
  }
});

test('a store that keeps the data after putDeferred (uploads later): no blob is reused, every chunk reads back exact', async () => {
  const folder = await openFolderStore(await tempDir());
  const later: Array<[string, Buffer]> = [];
  const lazy: ObjectStore = {
    put: (k, d) => folder.put(k, d),
    get: (k) => folder.get(k),
    stat: (k) => folder.stat(k),
    list: (p) => folder.list(p),
    delete: (k) => folder.delete(k),
    touch: (k) => folder.touch(k),
    putDeferred: async (k, d) => void later.push([k, d]),
    flush: async () => {
      for (const [k, d] of later.splice(0)) await folder.put(k, d);
    },
  };
  const repo = await ChunkRepository.init(lazy, { chunkSize: CS });
  const data = contents(9);
  const { ids, handedBack } = await writeAll(repo, data);
  assert.equal(handedBack, 0);
  for (const [i, id] of ids.entries()) if (id !== ZERO_CHUNK) assert.ok((await repo.readChunk(id)).equals(data[i]!), `chunk ${i}`);
});

test('a store that sends the data after putDeferred and tells when it is done (S3): blob memory reused only after that, every chunk reads back exact', async () => {
  const folder = await openFolderStore(await tempDir());
  const sending = new Map<Buffer, Promise<void>>();
  const put: Buffer[] = [];
  let changedWhileSending = 0;
  const s3like: ObjectStore = {
    put: (k, d) => folder.put(k, d),
    get: (k) => folder.get(k),
    stat: (k) => folder.stat(k),
    list: (p) => folder.list(p),
    delete: (k) => folder.delete(k),
    touch: (k) => folder.touch(k),
    putDeferred: async (k, d) => {
      await folder.put(k, d);
      put.push(d);
      const copy = Buffer.from(d);
      // "sent" a turn of the event loop later: whoever writes into the memory before then corrupts the upload
      sending.set(d, new Promise((resolve) => setImmediate(() => resolve(void (copy.equals(d) || changedWhileSending++)))));
    },
    flush: async () => void (await Promise.all(sending.values())),
    released: async (d) => sending.get(d),
  };
  const repo = await ChunkRepository.init(s3like, { chunkSize: CS });
  const data = contents(12);
  const { ids, handedBack } = await writeAll(repo, data);
  assert.equal(handedBack, 0, 'nothing handed back at once: the upload still reads it');
  assert.equal(changedWhileSending, 0, 'no blob memory written while its upload was under way');
  assert.equal(put.length, 8);
  // memory given to the encoder again is moved to its thread: detached here
  const reused = put.filter((d) => d.buffer.byteLength === 0).length;
  assert.ok(reused >= 4, `blob memory reused once released: ${reused} of ${put.length}`);
  for (const [i, id] of ids.entries()) if (id !== ZERO_CHUNK) assert.ok((await repo.readChunk(id)).equals(data[i]!), `chunk ${i}`);
});
