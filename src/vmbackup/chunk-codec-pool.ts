// The chunk codec on every core: SHA-256 (or HMAC), zstd and AES-GCM are CPU
// work, so a backup's main thread would otherwise hash and compress one chunk
// at a time between NBD reads, and backup-serve would decode one chunk at a
// time between NBD replies. A pool of worker threads (one per core) runs the
// pure chunk codec both ways; the main thread moves the bytes: it reads the
// export and stores the blobs (ChunkRepository.storeEncodedChunk), or fetches
// the blobs that the workers decode and re-hash (decodeChunk).

import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { chunkKey, ZERO_CHUNK, type ChunkId, type ChunkRepository } from '../chunkstore/repo.js';
import { isVirError, virErr } from '../errors.js';
import { ownedBuffer } from './owned-buffer.js';

/** What a worker needs (ChunkRepository.codecParams(), as structured clone carries it). */
export interface EncoderParams {
  keys: { idKey: Uint8Array; encKey: Uint8Array; verifier: string } | null;
  level: number;
}

export type CodecRequest =
  /** `spare`: a spent blob's memory the plain blob is written into when it fits (moved in, comes back as the blob) */
  | { seq: number; op: 'encode'; data: Uint8Array; spare?: Uint8Array }
  /** `into`: shared memory the content is decoded into (the reply then carries its length, no data) */
  | { seq: number; op: 'decode'; id: ChunkId; blob: Uint8Array; into?: Uint8Array };

export type CodecReply =
  /** `data`: the chunk's memory handed back when it was moved in (the reader reuses it) */
  | { seq: number; id: ChunkId; blob: Uint8Array | null; data?: Uint8Array }
  | { seq: number; data: Uint8Array }
  | { seq: number; length: number }
  | { seq: number; error: string };

interface Pending {
  resolve(r: CodecReply): void;
  reject(e: Error): void;
}

export class ChunkCodecPool {
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private next = 0;
  private broken: Error | null = null;

  private constructor(private readonly workers: Worker[]) {
    for (const w of workers) {
      w.on('message', (r: CodecReply) => this.settle(r));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`chunk encoder thread exited with code ${code}`));
      });
    }
  }

  /** One worker per core (at least one). */
  static start(params: EncoderParams, size = Math.max(1, os.availableParallelism())): ChunkCodecPool {
    return new ChunkCodecPool(Array.from({ length: size }, () => startWorker(params)));
  }

  get size(): number {
    return this.workers.length;
  }

  /** The chunk's id and its stored form (null for an all-zero chunk). */
  /**
   * `data` is given up: when it owns its memory, that memory is moved to the
   * worker and comes back as `spent` (for the caller's next read: no fresh
   * 4 MiB to fault in and collect per chunk).
   */
  async encode(data: Buffer, spare?: Buffer | null): Promise<{ id: ChunkId; blob: Buffer | null; spent: Buffer | null }> {
    const give = spare ? ownedBuffer(spare) : null;
    const r = await this.call((seq) => ({ seq, op: 'encode', data, ...(give ? { spare: spare! } : {}) }), ownedBuffer(data), give);
    if (!('id' in r)) throw virErr('INTERNAL_ERROR', 'STORAGE', 'chunk encoder thread answered out of kind');
    return { id: r.id, blob: r.blob === null ? null : asBuffer(r.blob), spent: r.data === undefined ? null : asBuffer(r.data) };
  }

  /** The content of chunk `id` from its stored form, re-hashed (a mismatch rejects naming the chunk). */
  async decode(id: ChunkId, blob: Buffer): Promise<Buffer> {
    const r = await this.call((seq) => ({ seq, op: 'decode', id, blob }), ownedBuffer(blob));
    if (!('data' in r) || 'id' in r || r.data === undefined) throw virErr('INTERNAL_ERROR', 'STORAGE', 'chunk decoder thread answered out of kind');
    return asBuffer(r.data);
  }

  /**
   * Chunk `id` decoded and re-hashed straight into `into`, shared memory
   * (alignedBuffer: a SharedArrayBuffer the worker writes in place) at least
   * a chunk long; returns the view of the content. No fresh 4 MiB per chunk
   * to fault in, and page-aligned for a direct write.
   */
  async decodeInto(id: ChunkId, blob: Buffer, into: Buffer): Promise<Buffer> {
    if (!(into.buffer instanceof SharedArrayBuffer)) throw virErr('INTERNAL_ERROR', 'STORAGE', 'decodeInto needs shared memory to decode into');
    const r = await this.call((seq) => ({ seq, op: 'decode', id, blob, into }), ownedBuffer(blob));
    if (!('length' in r)) throw virErr('INTERNAL_ERROR', 'STORAGE', 'chunk decoder thread answered out of kind');
    return into.subarray(0, r.length);
  }

  /** `transfer`: an ArrayBuffer the caller gives up, moved to the worker instead of copied */
  private call(request: (seq: number) => CodecRequest, transfer: ArrayBuffer | null = null, transfer2: ArrayBuffer | null = null): Promise<CodecReply> {
    if (this.broken) return Promise.reject(this.broken);
    const seq = ++this.seq;
    const w = this.workers[this.next++ % this.workers.length]!;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      w.postMessage(request(seq), [transfer, transfer2].filter((b): b is ArrayBuffer => b !== null));
    });
  }

  private settle(r: CodecReply): void {
    const p = this.pending.get(r.seq);
    if (!p) return;
    this.pending.delete(r.seq);
    // the worker's message is the codec's own (it names the chunk and what is wrong)
    if ('error' in r) p.reject(virErr('INTERNAL_ERROR', 'STORAGE', r.error));
    else p.resolve(r);
  }

  private fail(e: Error): void {
    this.broken ??= virErr('INTERNAL_ERROR', 'STORAGE', `chunk encoder thread failed: ${e.message}`, e);
    for (const p of this.pending.values()) p.reject(this.broken);
    this.pending.clear();
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * The worker is a sibling file of the same kind as this one: .js when built;
 * .ts when run from the sources under tsx, whose loader hooks do not reach a
 * worker in Node 20. Loading it through tsx's tsImport there costs every
 * worker a loader thread of its own and ~1 s of start at load (a restore
 * waited that long for its first chunk), so instead the worker is bundled once
 * per process with esbuild (tsx's own compiler, a dev dependency like tsx) and
 * started from that code, with its native module (zstd-napi) required by
 * absolute path.
 */
function startWorker(params: EncoderParams): Worker {
  const here = fileURLToPath(import.meta.url);
  const file = path.join(path.dirname(here), `chunk-worker${path.extname(here)}`);
  if (path.extname(here) !== '.ts') return new Worker(file, { workerData: params });
  devWorkerCode ??= bundleWorker(file);
  return new Worker(devWorkerCode, { eval: true, workerData: params });
}

let devWorkerCode: string | undefined;

function bundleWorker(file: string): string {
  const require = createRequire(import.meta.url);
  const esbuild = require('esbuild') as typeof import('esbuild');
  const out = esbuild.buildSync({ entryPoints: [file], bundle: true, platform: 'node', format: 'cjs', write: false, logLevel: 'silent', external: ['zstd-napi', 'zstd-napi/*'] });
  const code = out.outputFiles[0]!.text;
  const call = /require\("(zstd-napi(?:\/[^"]*)?)"\)/g;
  if (!call.test(code)) throw virErr('INTERNAL_ERROR', 'STORAGE', 'the bundled chunk worker does not require zstd-napi where expected');
  return code.replace(call, (_m, spec: string) => `require(${JSON.stringify(require.resolve(spec))})`);
}

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/**
 * How a backup stores a chunk it read; `spent`: the chunk's memory, free for
 * the next read; `spentBlob`: memory for the next chunk's blob (`spare`).
 */
export type ChunkWriter = (data: Buffer, spare?: Buffer | null) => Promise<{ id: ChunkId; storedBytes: number; spent?: Buffer | null; spentBlob?: Buffer | null }>;

/**
 * writeChunk with the CPU work in the pool: encode there, store here (unless
 * present). A blob's memory is handed back for the next chunk's blob once the
 * store is done with it (a store that releasesData): a fresh 4 MiB per stored
 * chunk, moved from a worker, kept the main thread's collector busy (~20 %).
 */
export function pooledChunkWriter(pool: ChunkCodecPool, repo: ChunkRepository, known?: ReadonlySet<ChunkId>): ChunkWriter {
  const store = repo.store;
  const reuse = (store.releasesData === true || store.released !== undefined) && !repo.encrypted;
  // blobs whose upload has settled since (a store that is not releasesData: S3's deferred PUTs)
  const free: Buffer[] = [];
  return async (data, spare) => {
    const e = await pool.encode(data, reuse ? (spare ?? free.pop() ?? null) : null);
    // `known`: chunks the base's index names, stored already: no request for them
    const storedBytes = e.blob === null || known?.has(e.id) ? 0 : await repo.storeEncodedChunk(e.id, e.blob);
    const whole = e.blob && reuse ? Buffer.from(e.blob.buffer, 0, e.blob.buffer.byteLength) : null;
    const spentBlob = whole && whole.length >= data.length && ownedBuffer(whole) ? whole : null;
    if (spentBlob === null || store.releasesData === true || storedBytes === 0) return { id: e.id, storedBytes, spent: e.spent, spentBlob };
    // still being sent: free for a later chunk once its upload settled
    void store.released!(e.blob!).then(() => free.push(spentBlob));
    return { id: e.id, storedBytes, spent: e.spent, spentBlob: null };
  };
}

async function fetchBlob(repo: ChunkRepository, id: ChunkId): Promise<Buffer> {
  try {
    return await repo.store.get(chunkKey(id));
  } catch (e) {
    if (isVirError(e, 'NO_STORAGE_VOL')) throw virErr('NO_STORAGE_VOL', 'STORAGE', `chunk ${id} is missing from the repository`, e);
    throw e;
  }
}

/** readChunk with the CPU work in the pool: fetch the blob here, decode and re-hash there. */
export function pooledChunkReader(pool: ChunkCodecPool, repo: ChunkRepository): (id: ChunkId) => Promise<Buffer> {
  return async (id) => {
    if (id === ZERO_CHUNK) return Buffer.alloc(repo.chunkSize);
    return pool.decode(id, await fetchBlob(repo, id));
  };
}

/** pooledChunkReader decoding into the caller's shared memory (ChunkCodecPool.decodeInto). */
export function pooledChunkReaderInto(pool: ChunkCodecPool, repo: ChunkRepository): (id: ChunkId, into: Buffer) => Promise<Buffer> {
  return async (id, into) => {
    if (id === ZERO_CHUNK) return into.fill(0, 0, repo.chunkSize).subarray(0, repo.chunkSize);
    return pool.decodeInto(id, await fetchBlob(repo, id), into);
  };
}
