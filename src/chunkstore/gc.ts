// Garbage collection: remove chunks (and index objects) no point references.
//
// Mark: note the time, then touch every chunk any point references. Sweep:
// remove an unreferenced chunk only when its mtime is older than the mark's
// start minus a grace period. A backup running meanwhile is safe: every chunk
// it writes is new (fresh mtime) and every chunk it reuses it touches
// (writeChunk and claimChunk do), so whatever its point will reference was
// touched after (mark start - grace) as long as the backup took less than the
// grace period. Each doomed chunk is stat'ed again just before removal, which
// narrows the window in which a touch and the removal race to that one call.

import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { isChunkId, type ChunkId } from './chunk-codec.js';
import { chunkKey, ZERO_CHUNK, type ChunkRepository } from './repo.js';

export const DEFAULT_GC_GRACE_MS = 24 * 3600 * 1000;

export interface GcOptions {
  /** Unreferenced chunks younger than this (before the mark started) stay. Default 24 h. */
  graceMs?: number;
  log?: Logger;
  /** Called between mark and sweep (tests run a concurrent backup there). */
  afterMark?: () => Promise<void>;
}

export interface GcResult {
  points: number;
  /** Distinct chunks the points reference. */
  referencedChunks: number;
  /** Referenced chunks that are absent (verify reports which points they break). */
  missingChunks: ChunkId[];
  removedChunks: number;
  removedBytes: number;
  /** Unreferenced, but within the grace period. */
  pendingChunks: number;
  /** Index objects no point references (an interrupted run), removed after the grace period too. */
  removedIndexes: number;
  durationMs: number;
}

/** Mark and sweep the whole repository. */
export async function collectGarbage(repo: ChunkRepository, opts: GcOptions = {}): Promise<GcResult> {
  const log = opts.log ?? silentLogger;
  const started = Date.now();
  const cutoff = started - (opts.graceMs ?? DEFAULT_GC_GRACE_MS);
  const referenced = new Set<ChunkId>();
  const indexes = new Set<string>();
  const missing: ChunkId[] = [];
  const points = await repo.listPoints();
  for (const p of points) {
    for (const d of p.disks) {
      indexes.add(d.index);
      const index = await repo.readIndex(d.index);
      for (const id of index.chunks) {
        if (id === ZERO_CHUNK || referenced.has(id)) continue;
        referenced.add(id);
        if (!(await repo.claimChunk(id))) missing.push(id);
      }
    }
  }
  log.info({ points: points.length, chunks: referenced.size, missing: missing.length }, 'gc mark done');
  await opts.afterMark?.();

  const result: GcResult = {
    points: points.length,
    referencedChunks: referenced.size,
    missingChunks: missing,
    removedChunks: 0,
    removedBytes: 0,
    pendingChunks: 0,
    removedIndexes: 0,
    durationMs: 0,
  };
  const store = repo.store;
  for await (const o of store.list('chunks/')) {
    const id = o.key.slice(o.key.lastIndexOf('/') + 1);
    if (!isChunkId(id) || o.key !== chunkKey(id) || referenced.has(id)) continue;
    const now = await store.stat(o.key);
    if (!now) continue;
    if (now.mtimeMs >= cutoff) {
      result.pendingChunks++;
      continue;
    }
    await store.delete(o.key);
    result.removedChunks++;
    result.removedBytes += now.size;
  }
  for await (const o of store.list('indexes/')) {
    if (indexes.has(o.key) || o.mtimeMs >= cutoff) continue;
    // a point written since the mark may reference it: look again before removing
    if ((await repo.listPoints()).some((p) => p.disks.some((d) => d.index === o.key))) continue;
    await store.delete(o.key);
    result.removedIndexes++;
  }
  result.durationMs = Date.now() - started;
  log.info({ ...result, missingChunks: missing.length }, 'gc done');
  return result;
}
