// Garbage collection: remove chunks (and index objects) no point references,
// safely while backups of several hosts run (docs/repository.md, "Several
// hosts, one repository").
//
// Mark: note the time T, read the indexes of every point, then the base
// indexes of every live lease claim (a running backup's in-flight record),
// then every index object younger than the cut-off (a point being written, or
// a base a run took after the point listing). Sweep: remove an unmarked chunk
// only when it is older than the cut-off (T - grace) and than the first write
// of every live claim; a chunk reused from outside a run's base is touched by
// that run, so it is young. Each doomed chunk is stat'ed again just before
// removal, which narrows a touch racing the removal to that one call.

import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { isChunkId, type ChunkId } from './chunk-codec.js';
import { listClaims } from './lease.js';
import { chunkKey, ZERO_CHUNK, type ChunkRepository } from './repo.js';
import { deleteUnlessRetained, RetentionTally, type RetentionReport } from './retention.js';

import { DEFAULT_GC_GRACE_MS } from './defaults.js';

export { DEFAULT_GC_GRACE_MS };

export interface GcOptions {
  /** Unreferenced chunks younger than this (before the mark started) stay. Default 24 h. */
  graceMs?: number;
  log?: Logger;
  /** Called between mark and sweep (tests run a concurrent backup there). */
  afterMark?: () => Promise<void>;
  /** Called after the point listing, before the claims are listed (tests inject a race there). */
  afterPointListing?: () => Promise<void>;
}

export interface GcResult {
  points: number;
  /** Distinct chunks the points reference. */
  referencedChunks: number;
  /** Referenced chunks that are absent (verify reports which points they break). */
  missingChunks: ChunkId[];
  removedChunks: number;
  removedBytes: number;
  /** Unreferenced by points, but within the grace period, written since a live run started, or named by a live run's base or a young index. */
  pendingChunks: number;
  /** Index objects no point references (an interrupted run), removed after the grace period too. */
  removedIndexes: number;
  /** What interrupted writes left (folder: hidden temp files), older than the grace period. */
  removedStale: number;
  /** Lease claims of running backups that gc honoured. */
  liveClaims: number;
  /** Claims of runs that died (not renewed), older than the grace period: removed. */
  removedClaims: number;
  /** Objects gc would remove but the store's object lock retains (removed by a later gc). */
  retained: RetentionReport;
  durationMs: number;
}

/** What the mark found: chunks and index objects to keep. */
class Mark {
  /** chunks the points reference */
  readonly chunks = new Set<ChunkId>();
  /** chunks only live runs' bases or young indexes name: kept, counted as pending */
  readonly spared = new Set<ChunkId>();
  readonly indexes = new Set<string>();

  constructor(private readonly repo: ChunkRepository) {}

  /** Mark an index object and its chunks; `spare`: not a point's (an index that vanished meanwhile is skipped). */
  async index(key: string, spare = false): Promise<void> {
    if (this.indexes.has(key)) return;
    this.indexes.add(key);
    let ids: readonly ChunkId[];
    try {
      ids = (await this.repo.readIndex(key)).chunks;
    } catch (e) {
      if (spare && (await this.repo.store.stat(key)) === null) return;
      throw e;
    }
    for (const id of ids) {
      if (id !== ZERO_CHUNK) (spare ? this.spared : this.chunks).add(id);
    }
  }
}

/** Mark and sweep the whole repository. */
export async function collectGarbage(repo: ChunkRepository, opts: GcOptions = {}): Promise<GcResult> {
  const log = opts.log ?? silentLogger;
  const started = Date.now();
  const cutoff = started - (opts.graceMs ?? DEFAULT_GC_GRACE_MS);
  const store = repo.store;
  const mark = new Mark(repo);
  const points = await repo.listPoints();
  for (const p of points) for (const d of p.disks) await mark.index(d.index);
  await opts.afterPointListing?.();
  // after the point listing: a run whose claim this misses started after it (see the doc)
  const claims = await listClaims(store, undefined, started);
  let chunkCutoff = cutoff;
  for (const c of claims) {
    if (!c.live || !c.claim) continue;
    for (const key of c.claim.base?.indexes ?? []) await mark.index(key, true);
    chunkCutoff = Math.min(chunkCutoff, c.claim.firstWriteMs > 0 ? c.claim.firstWriteMs : c.mtimeMs);
  }
  for await (const o of store.list('indexes/')) if (o.mtimeMs >= cutoff) await mark.index(o.key, true);
  const liveClaims = claims.filter((c) => c.live).length;
  log.info({ points: points.length, chunks: mark.chunks.size, liveClaims }, 'gc mark done');
  await opts.afterMark?.();

  const retained = new RetentionTally();
  const swept = await sweepChunks(repo, mark, chunkCutoff, retained);
  const result: GcResult = {
    points: points.length,
    referencedChunks: mark.chunks.size,
    ...swept,
    removedIndexes: await sweepIndexes(repo, mark, cutoff, retained),
    removedStale: (await store.removeStale?.(chunkCutoff)) ?? 0, // a live run's unflushed chunks are temp files
    liveClaims,
    removedClaims: 0,
    retained: retained.report(),
    durationMs: 0,
  };
  for (const c of claims) {
    if (c.live || c.mtimeMs >= cutoff) continue;
    if (await deleteUnlessRetained(store, c.key, retained)) result.removedClaims++;
  }
  result.retained = retained.report();
  result.durationMs = Date.now() - started;
  log.info({ ...result, missingChunks: result.missingChunks.length }, 'gc done');
  return result;
}

interface Swept {
  missingChunks: ChunkId[];
  removedChunks: number;
  removedBytes: number;
  pendingChunks: number;
}

/** One listing of the chunks: removes the unmarked old ones, and finds the marked ones that are absent (no request per chunk). */
async function sweepChunks(repo: ChunkRepository, mark: Mark, cutoff: number, retained: RetentionTally): Promise<Swept> {
  const store = repo.store;
  const unseen = new Set(mark.chunks);
  const r: Swept = { missingChunks: [], removedChunks: 0, removedBytes: 0, pendingChunks: 0 };
  for await (const o of store.list('chunks/')) {
    const id = o.key.slice(o.key.lastIndexOf('/') + 1);
    if (!isChunkId(id) || o.key !== chunkKey(id)) continue;
    if (mark.chunks.has(id)) {
      unseen.delete(id);
      continue;
    }
    if (mark.spared.has(id)) {
      r.pendingChunks++;
      continue;
    }
    const now = await store.stat(o.key);
    if (!now) continue;
    if (now.mtimeMs >= cutoff) {
      r.pendingChunks++;
      continue;
    }
    if (!(await deleteUnlessRetained(store, o.key, retained, now))) continue;
    r.removedChunks++;
    r.removedBytes += now.size;
  }
  // absent from the listing: missing, unless written since (a listing started before the write)
  for (const id of unseen) if (!(await repo.hasChunk(id))) r.missingChunks.push(id);
  return r;
}

async function sweepIndexes(repo: ChunkRepository, mark: Mark, cutoff: number, retained: RetentionTally): Promise<number> {
  const doomed: string[] = [];
  for await (const o of repo.store.list('indexes/')) if (!mark.indexes.has(o.key) && o.mtimeMs < cutoff) doomed.push(o.key);
  if (doomed.length === 0) return 0;
  // a point written since the mark may name one (after a run longer than the grace period): look once more
  const named = new Set((await repo.listPoints()).flatMap((p) => p.disks.map((d) => d.index)));
  let removed = 0;
  for (const key of doomed) if (!named.has(key) && (await deleteUnlessRetained(repo.store, key, retained))) removed++;
  return removed;
}
