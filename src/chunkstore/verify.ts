// Verify: re-read and re-hash every chunk the chosen points reference (each
// chunk once per run however many points share it), name the first bad chunk
// of each point and every point a bad chunk affects, record the outcome in the
// point records, and set bad chunks aside under bad/ so that the next
// writeChunk of the same content stores it again (the store heals).

import { isVirError } from '../errors.js';
import type { Logger } from '../log.js';
import { errField, silentLogger } from '../log.js';
import type { ChunkId } from './chunk-codec.js';
import { chunkKey, ZERO_CHUNK, type ChunkRepository, type PointRecord } from './repo.js';

export interface VerifyOptions {
  /** Only this domain's points (all domains when absent). */
  domain?: string;
  /** Only this point of `domain`. */
  point?: string;
  log?: Logger;
}

export interface PointVerdict {
  domain: string;
  id: string;
  ok: boolean;
  /** The first bad chunk (or unreadable index key) in disk order. */
  firstBad?: string;
  /** Whether this run read the point's chunks (false: affected by a bad chunk another point references). */
  checked: boolean;
}

export interface BadChunk {
  id: ChunkId;
  error: string;
  /** 'domain/point' of every point in the repository that references it. */
  points: string[];
  /** Where it was set aside ('bad/…'), or null when it was missing. */
  setAside: string | null;
}

export interface VerifyReport {
  ok: boolean;
  points: PointVerdict[];
  chunksChecked: number;
  badChunks: BadChunk[];
}

/** The chunk ids a point references, in disk order; an unreadable index is reported as bad under its key. */
async function pointChunks(repo: ChunkRepository, p: PointRecord): Promise<{ ids: ChunkId[]; badIndex?: string; error?: string }> {
  const ids: ChunkId[] = [];
  for (const d of p.disks) {
    try {
      ids.push(...(await repo.readIndex(d.index)).chunks);
    } catch (e) {
      return { ids, badIndex: d.index, error: (e as Error).message };
    }
  }
  return { ids };
}

async function selectPoints(repo: ChunkRepository, opts: VerifyOptions): Promise<PointRecord[]> {
  if (opts.point !== undefined && opts.domain !== undefined) return [await repo.readPoint(opts.domain, opts.point)];
  return repo.listPoints(opts.domain);
}

/** Move a bad chunk to bad/<id>-<time>; null when it is already gone. */
async function setAside(repo: ChunkRepository, id: ChunkId): Promise<string | null> {
  let blob: Buffer;
  try {
    blob = await repo.store.get(chunkKey(id));
  } catch (e) {
    if (isVirError(e, 'NO_STORAGE_VOL')) return null;
    throw e;
  }
  const key = `bad/${id}-${Date.now()}`;
  await repo.store.put(key, blob);
  await repo.store.delete(chunkKey(id));
  return key;
}

export async function verifyRepository(repo: ChunkRepository, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const log = opts.log ?? silentLogger;
  const results = new Map<ChunkId, string | null>(); // null: good
  const verdicts: PointVerdict[] = [];
  for (const p of await selectPoints(repo, opts)) {
    const { ids, badIndex, error } = await pointChunks(repo, p);
    let firstBad: string | undefined = badIndex;
    if (badIndex) log.error({ domain: p.domain.name, point: p.id, index: badIndex, error }, 'verify: disk index unreadable');
    for (const id of ids) {
      if (id === ZERO_CHUNK) continue;
      let r = results.get(id);
      if (r === undefined) {
        r = await repo.readChunk(id).then(
          () => null,
          (e: unknown) => (e as Error).message,
        );
        results.set(id, r);
        if (r !== null) log.error({ chunk: id, ...errField(new Error(r)) }, 'verify: bad chunk');
      }
      if (r !== null && firstBad === undefined) firstBad = id;
    }
    verdicts.push({ domain: p.domain.name, id: p.id, ok: firstBad === undefined, ...(firstBad ? { firstBad } : {}), checked: true });
  }

  const bad = [...results].filter(([, r]) => r !== null).map(([id, r]) => ({ id, error: r!, points: [] as string[], setAside: null as string | null }));
  if (bad.length > 0) {
    // every point that references a bad chunk is affected, checked in this run or not
    const byId = new Map(bad.map((b) => [b.id, b]));
    const checked = new Set(verdicts.map((v) => `${v.domain}/${v.id}`));
    for (const p of await repo.listPoints()) {
      const { ids } = await pointChunks(repo, p);
      const hit = ids.find((id) => byId.has(id));
      if (hit === undefined) continue;
      for (const id of new Set(ids)) byId.get(id)?.points.push(`${p.domain.name}/${p.id}`);
      if (!checked.has(`${p.domain.name}/${p.id}`)) verdicts.push({ domain: p.domain.name, id: p.id, ok: false, firstBad: hit, checked: false });
    }
    for (const b of bad) b.setAside = await setAside(repo, b.id);
  }
  const time = new Date().toISOString();
  for (const v of verdicts) {
    await repo.recordVerify(v.domain, v.id, { time, ok: v.ok, ...(v.firstBad ? { firstBad: v.firstBad } : {}) });
  }
  return { ok: verdicts.every((v) => v.ok), points: verdicts, chunksChecked: results.size, badChunks: bad };
}
