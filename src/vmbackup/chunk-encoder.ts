// Naming and encoding chunks on every core: SHA-256 (or HMAC), zstd and
// AES-GCM are CPU work, so a backup's main thread would otherwise hash and
// compress one chunk at a time between NBD reads. A pool of worker threads
// (one per core) runs the pure chunk codec; the main thread reads the export
// and stores the blobs (ChunkRepository.storeEncodedChunk).

import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { ChunkId, ChunkRepository } from '../chunkstore/repo.js';
import { virErr } from '../errors.js';

/** What a worker needs (ChunkRepository.codecParams(), as structured clone carries it). */
export interface EncoderParams {
  keys: { idKey: Uint8Array; encKey: Uint8Array; verifier: string } | null;
  level: number;
}

export interface EncodeRequest {
  seq: number;
  data: Uint8Array;
}

export type EncodeReply = { seq: number; id: ChunkId; blob: Uint8Array | null } | { seq: number; error: string };

interface Pending {
  resolve(r: { id: ChunkId; blob: Buffer | null }): void;
  reject(e: Error): void;
}

export class ChunkEncoderPool {
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private next = 0;
  private broken: Error | null = null;

  private constructor(private readonly workers: Worker[]) {
    for (const w of workers) {
      w.on('message', (r: EncodeReply) => this.settle(r));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`chunk encoder thread exited with code ${code}`));
      });
    }
  }

  /** One worker per core (at least one). */
  static start(params: EncoderParams, size = Math.max(1, os.availableParallelism())): ChunkEncoderPool {
    return new ChunkEncoderPool(Array.from({ length: size }, () => startWorker(params)));
  }

  /** The chunk's id and its stored form (null for an all-zero chunk). */
  encode(data: Buffer): Promise<{ id: ChunkId; blob: Buffer | null }> {
    if (this.broken) return Promise.reject(this.broken);
    const seq = ++this.seq;
    const w = this.workers[this.next++ % this.workers.length]!;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      w.postMessage({ seq, data } satisfies EncodeRequest);
    });
  }

  private settle(r: EncodeReply): void {
    const p = this.pending.get(r.seq);
    if (!p) return;
    this.pending.delete(r.seq);
    if ('error' in r) p.reject(virErr('INTERNAL_ERROR', 'STORAGE', `encoding a chunk failed: ${r.error}`));
    else p.resolve({ id: r.id, blob: r.blob === null ? null : Buffer.from(r.blob.buffer, r.blob.byteOffset, r.blob.byteLength) });
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
 * worker in Node 20, so the worker loads it through tsx's tsImport.
 */
function startWorker(params: EncoderParams): Worker {
  const here = fileURLToPath(import.meta.url);
  const file = path.join(path.dirname(here), `chunk-worker${path.extname(here)}`);
  if (path.extname(here) !== '.ts') return new Worker(file, { workerData: params });
  const api = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(api)}).then((m) => m.tsImport(${JSON.stringify(pathToFileURL(file).href)}, { parentURL: ${JSON.stringify(import.meta.url)} }))`;
  return new Worker(boot, { eval: true, workerData: params });
}

/** writeChunk with the CPU work in the pool: encode there, store here (unless present, or `known` to be stored: no request then). */
export function pooledChunkWriter(pool: ChunkEncoderPool, repo: ChunkRepository, known?: ReadonlySet<ChunkId>): (data: Buffer) => Promise<{ id: ChunkId; storedBytes: number }> {
  return async (data) => {
    const e = await pool.encode(data);
    return { id: e.id, storedBytes: e.blob === null || known?.has(e.id) ? 0 : await repo.storeEncodedChunk(e.id, e.blob) };
  };
}
