// One disk of a point as a random-access block source (the shape of the NBD
// server's BlockSource, declared here structurally so storage does not import
// the NBD layer): reads across chunk boundaries, a small LRU of decoded
// chunks, optional read-ahead for sequential readers, allocation from the
// index (zero chunks report zero).

import { virErr } from '../errors.js';
import { chunkLength, type DiskIndex } from './disk-index.js';
import { ZERO_CHUNK, type ChunkId, type ChunkRepository, type PointRecord } from './repo.js';

export interface Extent {
  offset: number;
  length: number;
  zero: boolean;
}

export interface PointDiskSource {
  readonly size: number;
  readonly index: DiskIndex;
  /** [offset, offset+length) (length ≤ 32 MiB), not to be modified: within one chunk, a view of the cached chunk (no copy). */
  read(offset: number, length: number): Promise<Buffer>;
  extents(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

export const MAX_READ = 32 * 1024 * 1024;
/** Decoded chunks kept: a sequential reader needs one, a few concurrent readers a few each. */
export const DEFAULT_CACHE_CHUNKS = 8;

/** A least-recently-used map of chunk reads in flight or done (a concurrent reader of the same chunk shares its read). */
class ChunkCache {
  private readonly map = new Map<number, Promise<Buffer>>();
  constructor(private readonly capacity: number) {}

  get(i: number, load: () => Promise<Buffer>): Promise<Buffer> {
    let p = this.map.get(i);
    if (p) {
      this.map.delete(i); // re-insert: most recent last
    } else {
      p = load();
      // a failed read is not remembered: the next reader retries
      p.catch(() => {
        if (this.map.get(i) === p) this.map.delete(i);
      });
    }
    this.map.set(i, p);
    while (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value!);
    return p;
  }

  clear(): void {
    this.map.clear();
  }
}

function checkRange(size: number, offset: number, length: number, max: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size || length > max) {
    throw virErr('INVALID_ARG', 'STORAGE', `range [${offset}, +${length}) is outside the disk (${size} bytes) or longer than ${max}`);
  }
}

/** The disk `target` of `point` as a block source. */
export async function pointDiskSource(
  repo: ChunkRepository,
  point: PointRecord,
  target: string,
  opts: {
    cacheChunks?: number;
    /** how a chunk is read (default repo.readChunk; backup-serve decodes on a worker pool) */
    readChunk?: (id: ChunkId) => Promise<Buffer>;
    /** chunks read ahead of a sequential reader (default 0); the cache grows to hold them */
    readAhead?: number;
  } = {},
): Promise<PointDiskSource> {
  const disk = point.disks.find((d) => d.target === target);
  if (!disk) throw virErr('INVALID_ARG', 'STORAGE', `point '${point.id}' of domain '${point.domain.name}' has no disk '${target}'`);
  const index = await repo.readIndex(disk.index);
  if (index.size !== disk.size) throw virErr('OPERATION_FAILED', 'STORAGE', `disk index '${disk.index}' has ${index.size} bytes, the point says ${disk.size}`);
  const readAhead = opts.readAhead ?? 0;
  const cache = new ChunkCache(Math.max(opts.cacheChunks ?? DEFAULT_CACHE_CHUNKS, 2 * readAhead + 2));
  const cs = index.chunkSize;
  const readChunk = opts.readChunk ?? ((id: ChunkId) => repo.readChunk(id));
  /** the chunk after the last one read: a read starting at or just before it is sequential */
  let nextChunk = -1;

  const loadChunk = async (i: number): Promise<Buffer> => {
    const data = await readChunk(index.chunks[i]!);
    const want = chunkLength(index, i);
    if (data.length < want) throw virErr('OPERATION_FAILED', 'STORAGE', `chunk ${index.chunks[i]} has ${data.length} bytes; disk '${target}' needs ${want} at chunk ${i}`);
    return data;
  };

  return {
    size: index.size,
    index,
    async read(offset, length) {
      checkRange(index.size, offset, length, MAX_READ);
      const first = Math.floor(offset / cs);
      const last = length === 0 ? first - 1 : Math.floor((offset + length - 1) / cs);
      if (readAhead > 0 && (first === nextChunk || first === nextChunk - 1)) {
        // started, not awaited: a failure is dropped from the cache and met again by the reader that needs it
        for (let i = last + 1; i <= Math.min(last + readAhead, index.chunks.length - 1); i++) {
          if (index.chunks[i] !== ZERO_CHUNK) void cache.get(i, () => loadChunk(i)).catch(() => {});
        }
      }
      nextChunk = last + 1;
      if (first === last && index.chunks[first] !== ZERO_CHUNK) {
        // the common read (an NBD client's requests are smaller than a chunk): a view, no allocation, no copy
        const c = await cache.get(first, () => loadChunk(first));
        return c.subarray(offset - first * cs, offset - first * cs + length);
      }
      const out = Buffer.alloc(length);
      const parts: Promise<void>[] = [];
      for (let i = first; i <= last; i++) {
        if (index.chunks[i] === ZERO_CHUNK) continue; // out is zero-filled already
        const from = Math.max(offset, i * cs);
        const to = Math.min(offset + length, (i + 1) * cs);
        parts.push(cache.get(i, () => loadChunk(i)).then((c) => void c.copy(out, from - offset, from - i * cs, to - i * cs)));
      }
      await Promise.all(parts);
      return out;
    },
    async extents(offset, length) {
      checkRange(index.size, offset, length, Number.MAX_SAFE_INTEGER);
      const runs: Extent[] = [];
      let at = offset;
      while (at < offset + length) {
        const i = Math.floor(at / cs);
        const end = Math.min(offset + length, (i + 1) * cs);
        const zero = index.chunks[i] === ZERO_CHUNK;
        const prev = runs[runs.length - 1];
        if (prev && prev.zero === zero) prev.length += end - at;
        else runs.push({ offset: at, length: end - at, zero });
        at = end;
      }
      return runs;
    },
    async close() {
      cache.clear();
    },
  };
}
