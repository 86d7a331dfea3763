// The chunk repository: chunks named by their hash, stored once however many
// points, disks or domains hold them; per-disk indexes; point records written
// last. The layout (docs/repository.md):
//
//   config.json                              format, chunk size, compression, encryption (salt + key verifier)
//   chunks/ab/cd/<id>                        one chunk (chunk-codec.ts), fanned out by its first 4 hex digits
//   indexes/<domain uuid>/<point id>/<target>.idx   a disk's fixed index (disk-index.ts)
//   points/<domain name>/<point id>.json     the point record; its presence is what makes a point exist
//   bad/<id>                                 chunks verify set aside
//   leases/<domain name>/<host>~<run>.json   a running backup's claim on its domain, also its in-flight record (lease.ts)
//
// In an encrypted repository the indexes and point records are sealed too
// (their key is the GCM additional data); only config.json is plain.

import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { isVirError, virErr } from '../errors.js';
import {
  chunkId,
  decodeChunk,
  decodeObject,
  deriveKeys,
  DEFAULT_ZSTD_LEVEL,
  encodeObject,
  isChunkId,
  keyMatches,
  ZERO_CHUNK,
  type ChunkId,
  type RepoKeys,
} from './chunk-codec.js';
import { decodeIndex, encodeIndex, type DiskIndex } from './disk-index.js';
import type { ObjectLock, ObjectStore } from './object-store.js';

export { ZERO_CHUNK, type ChunkId } from './chunk-codec.js';
export type { DiskIndex } from './disk-index.js';

export const CHUNK_SIZE = 4 * 1024 * 1024;
export const CONFIG_KEY = 'config.json';
export const REPO_FORMAT = 'virtback-chunk-repository';

const configSchema = z.object({
  format: z.literal(REPO_FORMAT),
  version: z.literal(1),
  chunkSize: z.number().int().positive(),
  compression: z.object({ algorithm: z.literal('zstd'), level: z.number().int() }),
  encryption: z
    .object({
      cipher: z.literal('aes-256-gcm'),
      chunkNames: z.literal('hmac-sha256'),
      kdf: z.literal('hkdf-sha256'),
      salt: z.string().regex(/^[0-9a-f]{64}$/),
      keyVerifier: z.string().regex(/^[0-9a-f]{64}$/),
    })
    .nullable(),
  created: z.string(),
  /** S3 Object Lock on every object (repo-init --object-lock-days); absent in repositories without */
  objectLock: z.object({ mode: z.enum(['COMPLIANCE', 'GOVERNANCE']), days: z.number().int().positive() }).nullable().optional(),
});
export type RepoConfig = z.infer<typeof configSchema>;

const verifySchema = z.object({ time: z.string(), ok: z.boolean(), firstBad: z.string().optional() });

// passthrough: a field a newer virtback adds to a record survives a rewrite (recordVerify) by this one
const pointSchema = z.object({
  id: z.string(),
  domain: z.object({ name: z.string(), uuid: z.string() }),
  time: z.string(),
  level: z.enum(['full', 'inc']),
  base: z.string().nullable(),
  reason: z.string(),
  checkpoint: z.object({ name: z.string(), xml: z.string() }).nullable(),
  domainXml: z.string(),
  disks: z.array(z.object({ target: z.string(), size: z.number(), index: z.string(), bytesRead: z.number(), bytesNew: z.number() })),
  durationMs: z.number(),
  toolVersion: z.string(),
  verify: verifySchema.optional(),
}).passthrough();
export type PointRecord = z.infer<typeof pointSchema>;
export type VerifyState = z.infer<typeof verifySchema>;

/** Point ids sort by time: the ISO time of the point, unique per domain. */
const POINT_ID = /^[0-9A-Za-z][0-9A-Za-z.:_+-]{0,127}$/;
const TARGET = /^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function newPointId(now: Date = new Date()): string {
  return now.toISOString();
}

function checkName(what: string, value: string, re: RegExp): void {
  if (!re.test(value)) throw virErr('INVALID_ARG', 'STORAGE', `${what} '${value}' is not valid here`);
}

/** A domain name as one key segment (libvirt allows almost anything in a name). */
export function domainSegment(name: string): string {
  if (name.length === 0) throw virErr('INVALID_ARG', 'STORAGE', 'empty domain name');
  return encodeURIComponent(name).replace(/^\./, '%2E');
}

export function chunkKey(id: ChunkId): string {
  return `chunks/${id.slice(0, 2)}/${id.slice(2, 4)}/${id}`;
}

export function pointKey(domainName: string, id: string): string {
  checkName('point id', id, POINT_ID);
  return `points/${domainSegment(domainName)}/${id}.json`;
}

export class ChunkRepository {
  readonly encrypted: boolean;
  readonly chunkSize: number;
  /** Chunks written since the last flush when chunk syncs are batched (they are not visible in the store yet). */
  private unflushed = new Set<ChunkId>();
  private batchSync = false;

  private constructor(
    readonly store: ObjectStore,
    readonly config: RepoConfig,
    private readonly keys: RepoKeys | null,
  ) {
    this.encrypted = keys !== null;
    this.chunkSize = config.chunkSize;
  }

  /**
   * Batch chunk durability (when the store supports it): writeChunk then
   * stores a chunk without syncing it, and flushChunks — which writePoint
   * calls first — syncs them all at once. A crash before that leaves nothing
   * visible, so no later run can deduplicate against a chunk that did not
   * reach the disk. Until flushed, such chunks are not readable. Use one
   * repository object per backup run: a failed flush fails that run's point.
   */
  setBatchSync(on: boolean): void {
    this.batchSync = on && this.store.putDeferred !== undefined && this.store.flush !== undefined;
  }

  /**
   * A second handle on the same repository with batched chunk syncs
   * (setBatchSync): what one backup run writes through, so its chunks are
   * synced together just before its point record, while the handle it came
   * from (a daemon's, shared by other runs) keeps syncing each chunk.
   */
  batchedRun(): ChunkRepository {
    const run = new ChunkRepository(this.store, this.config, this.keys);
    run.setBatchSync(true);
    return run;
  }

  /** Make the chunks of every writeChunk that has resolved durable and visible (a no-op without batched syncs). */
  async flushChunks(): Promise<void> {
    if (this.unflushed.size === 0) return;
    this.unflushed = new Set();
    await this.store.flush?.();
  }

  /** Writes the repository's config object; refuses a store that already holds one. */
  static async init(store: ObjectStore, opts: { encryptKey?: Buffer; zstdLevel?: number; chunkSize?: number; objectLock?: ObjectLock } = {}): Promise<ChunkRepository> {
    if (await store.stat(CONFIG_KEY)) throw virErr('OPERATION_INVALID', 'STORAGE', 'the repository is already initialised (it has a config.json)');
    if (opts.objectLock) {
      if (!store.setObjectLock) throw virErr('ARGUMENT_UNSUPPORTED', 'STORAGE', 'object lock needs an S3 repository (s3://BUCKET/PREFIX in a bucket with object lock): a folder cannot lock objects');
      await store.setObjectLock(opts.objectLock);
    }
    const salt = randomBytes(32);
    const keys = opts.encryptKey ? deriveKeys(opts.encryptKey, salt) : null;
    const config: RepoConfig = {
      format: REPO_FORMAT,
      version: 1,
      chunkSize: opts.chunkSize ?? CHUNK_SIZE,
      compression: { algorithm: 'zstd', level: opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL },
      encryption: keys
        ? { cipher: 'aes-256-gcm', chunkNames: 'hmac-sha256', kdf: 'hkdf-sha256', salt: salt.toString('hex'), keyVerifier: keys.verifier }
        : null,
      created: new Date().toISOString(),
      ...(opts.objectLock ? { objectLock: opts.objectLock } : {}),
    };
    await store.put(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
    return new ChunkRepository(store, config, keys);
  }

  /** Refuses a store without a config, a missing or wrong key for an encrypted repository, and a key for a plain one. */
  static async open(store: ObjectStore, opts: { encryptKey?: Buffer } = {}): Promise<ChunkRepository> {
    let raw: Buffer;
    try {
      raw = await store.get(CONFIG_KEY);
    } catch (e) {
      if (isVirError(e, 'NO_STORAGE_VOL')) throw virErr('NO_STORAGE_VOL', 'STORAGE', 'no chunk repository here (no config.json): run repo-init first', e);
      throw e;
    }
    let config: RepoConfig;
    try {
      config = configSchema.parse(JSON.parse(raw.toString('utf8')));
    } catch (e) {
      throw virErr('CONFIG_UNSUPPORTED', 'STORAGE', `the repository's config.json is not a version 1 ${REPO_FORMAT} config: ${(e as Error).message}`, e);
    }
    // a copy in a folder (repo-sync) keeps the config but cannot lock: only stores that can, do
    if (config.objectLock && store.setObjectLock) await store.setObjectLock(config.objectLock);
    const enc = config.encryption;
    if (!enc) {
      if (opts.encryptKey) throw virErr('INVALID_ARG', 'STORAGE', 'the repository is not encrypted, but an encryption key was given');
      return new ChunkRepository(store, config, null);
    }
    if (!opts.encryptKey) throw virErr('OPERATION_DENIED', 'STORAGE', 'the repository is encrypted: give its key (--encrypt-key FILE)');
    const keys = deriveKeys(opts.encryptKey, Buffer.from(enc.salt, 'hex'));
    if (!keyMatches(keys, enc.keyVerifier)) throw virErr('OPERATION_DENIED', 'STORAGE', 'wrong encryption key for this repository (its key verifier does not match)');
    return new ChunkRepository(store, config, keys);
  }

  /**
   * What a worker thread needs to name and encode chunks off the main thread
   * (chunkId and encodeObject of chunk-codec.ts are pure): the keys and the
   * zstd level. The result goes back through storeEncodedChunk.
   */
  codecParams(): { keys: RepoKeys | null; level: number } {
    return { keys: this.keys, level: this.config.compression.level };
  }

  /**
   * Store a chunk a worker named and encoded (chunkId + encodeObject with
   * codecParams()), unless present — writeChunk's second half, with the same
   * touch of an existing chunk. Returns the bytes stored (0: deduplicated).
   */
  async storeEncodedChunk(id: ChunkId, blob: Buffer): Promise<number> {
    if (!isChunkId(id)) throw virErr('INVALID_ARG', 'STORAGE', `'${id}' is not a chunk id`);
    if (id === ZERO_CHUNK || this.unflushed.has(id) || (await this.claimChunk(id))) return 0;
    await this.putChunk(id, blob);
    return blob.length;
  }

  /** The chunk's id without storing it (what writeChunk would name it). */
  idOf(data: Buffer): ChunkId {
    return chunkId(data, this.keys);
  }

  /**
   * Hash, compress, encrypt when keyed, store unless present. Zero chunks →
   * ZERO_CHUNK, nothing stored. A chunk already present is touched, so a gc
   * running meanwhile sees it in use.
   */
  async writeChunk(data: Buffer): Promise<{ id: ChunkId; storedBytes: number }> {
    const id = chunkId(data, this.keys);
    if (id === ZERO_CHUNK || this.unflushed.has(id)) return { id, storedBytes: 0 };
    if (await this.claimChunk(id)) return { id, storedBytes: 0 };
    const blob = encodeObject(id, data, this.keys, this.config.compression.level);
    await this.putChunk(id, blob);
    return { id, storedBytes: blob.length };
  }

  private async putChunk(id: ChunkId, blob: Buffer): Promise<void> {
    if (!this.batchSync) return this.store.put(chunkKey(id), blob);
    this.unflushed.add(id);
    try {
      await this.store.putDeferred!(chunkKey(id), blob);
    } catch (e) {
      this.unflushed.delete(id);
      throw e;
    }
  }

  async hasChunk(id: ChunkId): Promise<boolean> {
    if (id === ZERO_CHUNK) return true;
    return (await this.store.stat(chunkKey(id))) !== null;
  }

  /**
   * Whether the chunk is present, touching it when it is: an incremental that
   * takes chunk ids from a previous point claims them this way, so gc's sweep
   * (which spares recently touched chunks) cannot remove them under it.
   */
  async claimChunk(id: ChunkId): Promise<boolean> {
    if (id === ZERO_CHUNK) return true;
    try {
      await this.store.touch(chunkKey(id));
      return true;
    } catch (e) {
      if (isVirError(e, 'NO_STORAGE_VOL')) return false;
      throw e;
    }
  }

  /** Decrypt, decompress, re-hash: a mismatch throws naming the chunk. ZERO_CHUNK reads as one chunk of zeros. */
  async readChunk(id: ChunkId): Promise<Buffer> {
    if (id === ZERO_CHUNK) return Buffer.alloc(this.chunkSize);
    if (!isChunkId(id)) throw virErr('INVALID_ARG', 'STORAGE', `'${id}' is not a chunk id`);
    let blob: Buffer;
    try {
      blob = await this.store.get(chunkKey(id));
    } catch (e) {
      if (isVirError(e, 'NO_STORAGE_VOL')) throw virErr('NO_STORAGE_VOL', 'STORAGE', `chunk ${id} is missing from the repository`, e);
      throw e;
    }
    return decodeChunk(id, blob, this.keys);
  }

  async writeIndex(domainUuid: string, pointId: string, index: DiskIndex): Promise<string> {
    checkName('domain uuid', domainUuid, UUID);
    checkName('point id', pointId, POINT_ID);
    checkName('disk target', index.target, TARGET);
    const key = `indexes/${domainUuid.toLowerCase()}/${pointId}/${index.target}.idx`;
    await this.putMeta(key, encodeIndex(index));
    return key;
  }

  async readIndex(key: string): Promise<DiskIndex> {
    return decodeIndex(await this.getMeta(key), `'${key}'`);
  }

  /** Written last, atomically: a point exists only when complete. Refuses to replace an existing point. */
  async writePoint(p: PointRecord): Promise<void> {
    const record = pointSchema.parse(p);
    const key = pointKey(record.domain.name, record.id);
    if (await this.store.stat(key)) throw virErr('OPERATION_INVALID', 'STORAGE', `point '${record.id}' of domain '${record.domain.name}' already exists`);
    await this.flushChunks();
    await this.putMeta(key, Buffer.from(JSON.stringify(record)));
  }

  /** Record a verify run's result in an existing point. */
  async recordVerify(domainName: string, id: string, verify: VerifyState): Promise<void> {
    const p = await this.readPoint(domainName, id);
    await this.putMeta(pointKey(domainName, id), Buffer.from(JSON.stringify({ ...p, verify })));
  }

  /** Points of one domain, or of all, oldest first (by time, then id). */
  async listPoints(domainName?: string): Promise<PointRecord[]> {
    const prefix = domainName === undefined ? 'points/' : `points/${domainSegment(domainName)}/`;
    const points: PointRecord[] = [];
    for await (const o of this.store.list(prefix)) {
      if (!o.key.endsWith('.json')) continue;
      // pruned by another host between the listing and the read: not a point any more
      const p = await this.readPointKey(o.key).catch((e: unknown) => {
        if (isVirError(e, 'NO_STORAGE_VOL')) return null;
        throw e;
      });
      if (p) points.push(p);
    }
    return points.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async readPoint(domainName: string, id: string): Promise<PointRecord> {
    const key = pointKey(domainName, id);
    try {
      return await this.readPointKey(key);
    } catch (e) {
      if (isVirError(e, 'NO_STORAGE_VOL')) throw virErr('NO_STORAGE_VOL', 'STORAGE', `domain '${domainName}' has no point '${id}' in the repository`, e);
      throw e;
    }
  }

  /** Removes the point record and then its indexes; its chunks stay until gc. */
  async deletePoint(domainName: string, id: string): Promise<void> {
    const p = await this.deletePointRecord(domainName, id);
    for (const d of p.disks) await this.store.delete(d.index);
  }

  /** Removes only the point record (prune then decides about its indexes); returns what it held. */
  async deletePointRecord(domainName: string, id: string): Promise<PointRecord> {
    const p = await this.readPoint(domainName, id);
    await this.store.delete(pointKey(domainName, id));
    return p;
  }

  private async readPointKey(key: string): Promise<PointRecord> {
    const raw = await this.getMeta(key);
    try {
      return pointSchema.parse(JSON.parse(raw.toString('utf8')));
    } catch (e) {
      throw virErr('OPERATION_FAILED', 'STORAGE', `point record '${key}' is corrupt: ${(e as Error).message}`, e);
    }
  }

  /** Metadata objects: plain in a plain repository, sealed under their key in an encrypted one. */
  private async putMeta(key: string, data: Buffer): Promise<void> {
    await this.store.put(key, this.keys ? encodeObject(key, data, this.keys) : data);
  }

  private async getMeta(key: string): Promise<Buffer> {
    const raw = await this.store.get(key);
    return this.keys ? decodeObject(key, raw, this.keys) : raw;
  }
}
