// The data chunks of one disk index, fetched and checked (readChunk: decode
// and re-hash) with several in flight and handed to a writer at their
// offsets; the first failure stops the others. Shared by the restore into
// images and onto block devices. Each chunk in flight holds at most its
// stored and its decoded form, so memory stays bounded by `concurrency`.

import type { ChunkId, ChunkRepository, DiskIndex } from '../chunkstore/repo.js';
import { ZERO_CHUNK } from '../chunkstore/repo.js';
import { virErr } from '../errors.js';
import { alignedBuffer, releaseAlignedBuffer } from '../nbd/direct-file.js';
import { ChunkCodecPool, pooledChunkReader, pooledChunkReaderInto } from './chunk-codec-pool.js';

/** How a restore reads chunks: `readChunk` with `concurrency` of them in flight. */
export interface ChunkFetch {
  readChunk(id: ChunkId): Promise<Buffer>;
  /**
   * The chunk decoded into `into` (alignedBuffer memory, a chunk long), a view
   * of it returned: each chunk in flight reuses one buffer instead of new
   * memory per chunk, and its writes can go around the page cache.
   */
  readChunkInto?(id: ChunkId, into: Buffer): Promise<Buffer>;
  concurrency: number;
}

/**
 * Chunks in flight by default. On S3 every chunk is one GET of up to 4 MiB
 * with a round trip before its first byte: a few more than the cores decode
 * keep the gateway busy while the pool decodes (8: the store's own upload
 * parallelism; at most 8 × (stored + decoded) chunks held, ~64 MiB).
 */
export const RESTORE_CONCURRENCY = 8;

/**
 * Runs `body` with a ChunkFetch whose decoding (zstd, AES-GCM, the re-hash)
 * happens on the codec pool (one worker per core), so GETs, decoding and
 * writes overlap instead of the main thread decoding between requests.
 */
export async function withPooledFetch<T>(repo: ChunkRepository, concurrency: number | undefined, body: (fetch: ChunkFetch) => Promise<T>): Promise<T> {
  const pool = ChunkCodecPool.start(repo.codecParams());
  try {
    return await body({ readChunk: pooledChunkReader(pool, repo), readChunkInto: pooledChunkReaderInto(pool, repo), concurrency: concurrency ?? RESTORE_CONCURRENCY });
  } finally {
    await pool.close();
  }
}

export async function forEachDataChunk(index: DiskIndex, fetch: ChunkFetch, write: (data: Buffer, offset: number) => Promise<void>): Promise<void> {
  const todo = index.chunks.map((id, i) => ({ id, i })).filter((c) => c.id !== ZERO_CHUNK);
  let next = 0;
  let failed = false;
  const worker = async () => {
    // one page-aligned buffer per chunk in flight, reused: `write` is done with it when it settles
    const into = fetch.readChunkInto ? alignedBuffer(index.chunkSize) : null;
    try {
      await work(into);
    } finally {
      if (into) releaseAlignedBuffer(into);
    }
  };
  const work = async (into: Buffer | null) => {
    while (!failed && next < todo.length) {
      const { id, i } = todo[next++]!;
      const offset = i * index.chunkSize;
      const length = Math.min(index.chunkSize, index.size - offset);
      try {
        const data = into ? await fetch.readChunkInto!(id, into) : await fetch.readChunk(id);
        if (data.length !== length) throw virErr('INTERNAL_ERROR', 'STORAGE', `chunk ${id} (disk ${index.target}, chunk ${i}) holds ${data.length} bytes, the index expects ${length}`);
        await write(data, offset);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.max(1, fetch.concurrency) }, worker));
  const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
}
