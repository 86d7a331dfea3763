// `virtback repo-sync --from SRC --to DST`: copy the points DST lacks, each
// object as stored (chunks, indexes and records are copied byte for byte:
// the same encryption config on both sides means the same chunk names and
// the same sealing keys, so nothing is decoded or re-encoded). The order is
// the backup's: missing chunks, then indexes, then point records last — a
// point appears at DST only once everything it names is there — so a sync
// interrupted anywhere is simply run again (it copies only what is missing)
// and leaves at DST at most unreferenced chunks and indexes, which gc removes.
// Points DST has and SRC no longer has stay (an off-site copy keeps them).

import { virErr } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { isChunkId, type ChunkId } from './chunk-codec.js';
import type { ObjectStore } from './object-store.js';
import { ChunkRepository, chunkKey, CONFIG_KEY, pointKey, ZERO_CHUNK, type PointRecord, type RepoConfig } from './repo.js';

import { DEFAULT_SYNC_PARALLEL } from './defaults.js';

export { DEFAULT_SYNC_PARALLEL };

export interface SyncOptions {
  /** only count what would be copied */
  dryRun?: boolean;
  /** objects copied at once (default 8) */
  parallel?: number;
  log?: Logger;
  onProgress?: (p: { phase: 'chunks' | 'indexes' | 'points'; done: number; total: number }) => void;
}

export interface SyncResult {
  dryRun: boolean;
  /** the points copied (or to copy), as 'domain/id' */
  points: string[];
  /** points DST had already */
  pointsPresent: number;
  chunksCopied: number;
  /** chunks the new points name that DST had already */
  chunksPresent: number;
  bytesCopied: number;
  indexesCopied: number;
  durationMs: number;
}

/** The same chunk naming, sealing and chunk size on both sides, or a refusal saying what differs. */
export function checkCompatible(src: RepoConfig, dst: RepoConfig): void {
  if (src.chunkSize !== dst.chunkSize) throw virErr('CONFIG_UNSUPPORTED', 'STORAGE', `the repositories' chunk sizes differ (${src.chunkSize} and ${dst.chunkSize}): repo-sync copies chunks as they are`);
  const a = src.encryption;
  const b = dst.encryption;
  if ((a === null) !== (b === null)) throw virErr('CONFIG_UNSUPPORTED', 'STORAGE', `one repository is encrypted and the other is not: repo-sync needs the same encryption config on both (create DST by syncing into an empty location)`);
  if (a && b && (a.salt !== b.salt || a.keyVerifier !== b.keyVerifier)) {
    throw virErr('CONFIG_UNSUPPORTED', 'STORAGE', 'the repositories are encrypted with different keys or salts: repo-sync needs the same encryption config on both (create DST by syncing into an empty location)');
  }
}

/** Run `job` over `items`, `parallel` at a time; the first failure stops the rest. */
async function eachBounded<T>(items: readonly T[], parallel: number, job: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await job(item);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.max(1, parallel) }, worker));
  const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
}

/** The chunk ids DST holds (one listing, no request per chunk). */
async function listChunkIds(repo: ChunkRepository): Promise<Set<ChunkId>> {
  const ids = new Set<ChunkId>();
  for await (const o of repo.store.list('chunks/')) {
    const id = o.key.slice(o.key.lastIndexOf('/') + 1);
    if (isChunkId(id) && o.key === chunkKey(id)) ids.add(id);
  }
  return ids;
}

/**
 * Copy the points DST lacks from SRC (both opened, with their keys when
 * encrypted). `dst` null: a dry run against a destination that holds nothing yet.
 */
export async function syncRepositories(src: ChunkRepository, dst: ChunkRepository | null, opts: SyncOptions = {}): Promise<SyncResult> {
  const started = Date.now();
  const log = opts.log ?? silentLogger;
  const parallel = opts.parallel ?? DEFAULT_SYNC_PARALLEL;
  if (dst === null && !opts.dryRun) throw virErr('INTERNAL_ERROR', 'STORAGE', 'repo-sync needs a destination repository');
  if (dst) checkCompatible(src.config, dst.config);
  // the points first: everything a listed point names was stored before its record
  const have = new Set<string>();
  if (dst) for await (const o of dst.store.list('points/')) have.add(o.key);
  const todo: PointRecord[] = [];
  let pointsPresent = 0;
  for (const p of await src.listPoints()) {
    if (have.has(pointKey(p.domain.name, p.id))) pointsPresent++;
    else todo.push(p);
  }
  const needed = new Set<ChunkId>();
  const indexes: string[] = [];
  for (const p of todo) {
    for (const d of p.disks) {
      indexes.push(d.index);
      for (const id of (await src.readIndex(d.index)).chunks) if (id !== ZERO_CHUNK) needed.add(id);
    }
  }
  const present = dst ? await listChunkIds(dst) : new Set<ChunkId>();
  const missing = [...needed].filter((id) => !present.has(id));
  const result: SyncResult = {
    dryRun: opts.dryRun === true,
    points: todo.map((p) => `${p.domain.name}/${p.id}`),
    pointsPresent,
    chunksCopied: missing.length,
    chunksPresent: needed.size - missing.length,
    bytesCopied: 0,
    indexesCopied: indexes.length,
    durationMs: 0,
  };
  if (opts.dryRun || !dst) {
    for (const id of missing) result.bytesCopied += (await src.store.stat(chunkKey(id)))?.size ?? 0;
  } else {
    await copyPhases(src, dst, { missing, indexes, todo, parallel, result, onProgress: opts.onProgress });
  }
  result.durationMs = Date.now() - started;
  log.info({ ...result, points: result.points.length }, opts.dryRun ? 'repo-sync dry run' : 'repo-sync done');
  return result;
}

interface Phases {
  missing: ChunkId[];
  indexes: string[];
  todo: PointRecord[];
  parallel: number;
  result: SyncResult;
  onProgress: SyncOptions['onProgress'];
}

/** Chunks, then indexes, then records: each phase complete before the next starts. */
async function copyPhases(src: ChunkRepository, dst: ChunkRepository, w: Phases): Promise<void> {
  const copy = async (key: string): Promise<number> => {
    const blob = await src.store.get(key);
    await dst.store.put(key, blob);
    return blob.length;
  };
  const phase = async (name: 'chunks' | 'indexes' | 'points', keys: string[]): Promise<void> => {
    let done = 0;
    w.onProgress?.({ phase: name, done, total: keys.length });
    await eachBounded(keys, w.parallel, async (key) => {
      w.result.bytesCopied += await copy(key);
      w.onProgress?.({ phase: name, done: ++done, total: keys.length });
    });
  };
  await phase('chunks', w.missing.map(chunkKey));
  await phase('indexes', w.indexes);
  await phase('points', w.todo.map((p) => pointKey(p.domain.name, p.id)));
}

/**
 * DST for a sync: the repository there, or — when DST holds none yet — one
 * created with SRC's very config (same salt and key verifier), so that SRC's
 * objects are valid at DST as they are.
 */
export async function openSyncTarget(store: ObjectStore, src: ChunkRepository, encryptKey?: Buffer): Promise<{ repo: ChunkRepository; created: boolean }> {
  let created = false;
  if ((await store.stat(CONFIG_KEY)) === null) {
    // the same chunk size and encryption; object lock is the destination's own choice (repo-init it first)
    const { objectLock: _lock, ...config } = src.config;
    await store.put(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
    created = true;
  }
  return { repo: await ChunkRepository.open(store, encryptKey ? { encryptKey } : {}), created };
}
