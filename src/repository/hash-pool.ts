// The checksum's SHA-256 on worker threads: a pull at disk speed, or the push
// manifests a daemon computes after job-completed, would otherwise hash on the
// main thread (~650 MB/s per core), capping throughput and stalling the event
// loop for the other domains' events. Buffers backed by a SharedArrayBuffer
// (copy.ts's read buffers, leaseSharedBuffer()) reach a worker without a copy.

import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { virErr, type VirError } from '../errors.js';
import { ZERO_BLOCK_MARKER } from './checksum.js';

export interface HashRequest {
  seq: number;
  data: Uint8Array;
  blockSize: number;
}

export type HashReply = { seq: number; entries: Uint8Array } | { seq: number; error: string };

export interface HashPoolOptions {
  /** Worker threads (default: one per core, at most 4). */
  threads?: number;
  /** A worker module to run instead of the built-in one (tests: one that crashes). */
  workerFile?: string;
}

interface Job {
  worker: Worker;
  resolve(entries: Buffer[]): void;
  reject(e: Error): void;
}

/** A buffer whose bytes a worker reads in place (no structured-clone copy). */
export function sharedBuffer(length: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(length));
}

/**
 * Shared buffers are reused, not left to the collector: a worker that was
 * posted a view keeps the memory alive until its own isolate collects, which
 * an isolate that allocates almost nothing rarely does — a daemon computing
 * manifests grew by 16 MiB per manifest (arrayBuffers 180 MiB in the scale
 * bench) until they were leased from here.
 */
const freeShared = new Map<number, Buffer[]>();
const KEEP_FREE = 8;

/** A shared buffer of `length` bytes (contents undefined); give it back with releaseSharedBuffer. */
export function leaseSharedBuffer(length: number): Buffer {
  return freeShared.get(length)?.pop() ?? sharedBuffer(length);
}

/** Back to the free list once no job reads it (no hashBlocks of it pending). */
export function releaseSharedBuffer(b: Buffer): void {
  const list = freeShared.get(b.length) ?? [];
  if (list.length < KEEP_FREE) list.push(b);
  freeShared.set(b.length, list);
}

export class HashPool {
  private readonly jobs = new Map<number, Job>();
  private readonly load = new Map<Worker, number>();
  private seq = 0;
  private broken: VirError | null = null;

  private constructor(private readonly workers: Worker[]) {
    for (const w of workers) {
      this.load.set(w, 0);
      w.unref(); // an idle pool keeps no process alive; ref'd while it has work
      w.on('message', (r: HashReply) => this.settle(r));
      w.on('error', (e) => this.fail(`failed: ${e.message}`, e));
      w.on('exit', (code) => this.fail(`exited with code ${code}`));
    }
  }

  static start(opts: HashPoolOptions = {}): HashPool {
    const n = opts.threads ?? Math.min(4, Math.max(1, os.availableParallelism()));
    if (!Number.isInteger(n) || n < 1) throw virErr('INVALID_ARG', 'STORAGE', `hash pool threads must be a positive integer, got ${n}`);
    return new HashPool(Array.from({ length: n }, () => startWorker(opts.workerFile)));
  }

  /** False once a worker died: every later call rejects. */
  get usable(): boolean {
    return this.broken === null;
  }

  /** Jobs submitted and not settled. */
  get busy(): number {
    return this.jobs.size;
  }

  /**
   * The checksum entries (checksum.ts blockDigest) of the consecutive blocks of
   * `data`, `blockSize` bytes each (the last one shorter). A worker reads `data`
   * until this settles: the caller must not change it before.
   */
  blockDigests(data: Buffer, blockSize: number): Promise<Buffer[]> {
    if (this.broken) return Promise.reject(this.broken);
    const seq = ++this.seq;
    // the least loaded worker: jobs differ in size (a 4 MiB read, a 1 MiB window)
    let worker = this.workers[0]!;
    for (const w of this.workers) if (this.load.get(w)! < this.load.get(worker)!) worker = w;
    this.load.set(worker, this.load.get(worker)! + 1);
    if (this.load.get(worker) === 1) worker.ref();
    return new Promise((resolve, reject) => {
      this.jobs.set(seq, { worker, resolve, reject });
      // a plain view: a Buffer is cloned through a slower path (Buffer subclass), same bytes
      const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      worker.postMessage({ seq, data: view, blockSize } satisfies HashRequest);
    });
  }

  private done(job: Job): void {
    const n = this.load.get(job.worker)! - 1;
    this.load.set(job.worker, n);
    if (n === 0) job.worker.unref();
  }

  private settle(r: HashReply): void {
    const job = this.jobs.get(r.seq);
    if (!job) return;
    this.jobs.delete(r.seq);
    this.done(job);
    if ('error' in r) return job.reject(virErr('INTERNAL_ERROR', 'STORAGE', `hashing a block failed: ${r.error}`));
    const all = Buffer.from(r.entries.buffer, r.entries.byteOffset, r.entries.byteLength);
    const entries: Buffer[] = [];
    for (let at = 0; at < all.length; at += 32) {
      const e = all.subarray(at, at + 32);
      entries.push(e.equals(ZERO_BLOCK_MARKER) ? ZERO_BLOCK_MARKER : e);
    }
    job.resolve(entries);
  }

  /** A dead worker fails every job in flight (their results are unknown) and the pool with them. */
  private fail(how: string, cause?: Error): void {
    if (this.broken) return;
    this.broken = virErr('INTERNAL_ERROR', 'STORAGE', `checksum thread ${how}`, cause);
    for (const job of this.jobs.values()) job.reject(this.broken);
    this.jobs.clear();
    for (const w of this.workers) void w.terminate();
  }

  async close(): Promise<void> {
    this.broken ??= virErr('OPERATION_INVALID', 'STORAGE', 'the checksum thread pool is closed');
    for (const job of this.jobs.values()) job.reject(this.broken);
    this.jobs.clear();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** How long an unused shared pool keeps its threads (each costs a V8 isolate, several MiB). */
const IDLE_MS = 10_000;
let shared: { pool: HashPool; timer: NodeJS.Timeout | undefined } | undefined;

/**
 * The process's pool, started on first use and closed when idle; a pool whose
 * worker died is replaced at the next call (its jobs failed).
 */
export function sharedHashPool(): HashPool {
  if (!shared || !shared.pool.usable) shared = { pool: HashPool.start(), timer: undefined };
  const s = shared;
  if (s.timer) clearTimeout(s.timer);
  const idle = () => {
    if (s.pool.busy > 0) s.timer = setTimeout(idle, IDLE_MS).unref();
    else {
      if (shared === s) shared = undefined;
      void s.pool.close();
    }
  };
  s.timer = setTimeout(idle, IDLE_MS).unref();
  return s.pool;
}

/** HashPool.blockDigests on the process's pool (take the pool per call: an idle one is closed). */
export function hashBlocks(data: Buffer, blockSize: number): Promise<Buffer[]> {
  return sharedHashPool().blockDigests(data, blockSize);
}

/**
 * The worker: checksum.ts's blockDigest per block (all-zero: the 32-byte zero
 * marker; else sha256), as plain JS run with `eval`, so a thread starts in
 * milliseconds with no module to resolve — under tsx a .ts worker would load
 * the compiler in every thread (seconds per process). test/unit/hash-pool.test.ts
 * holds it equal to blockDigest.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const ZERO_PAGE = Buffer.alloc(65536);
function isAllZero(b) {
  for (let s = 0; s < b.length; s += ZERO_PAGE.length) {
    const n = Math.min(ZERO_PAGE.length, b.length - s);
    if (ZERO_PAGE.compare(b, s, s + n, 0, n) !== 0) return false;
  }
  return true;
}
parentPort.on('message', (m) => {
  let reply;
  try {
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    const n = Math.ceil(data.length / m.blockSize);
    const entries = Buffer.alloc(32 * n);
    for (let i = 0; i < n; i++) {
      const block = data.subarray(i * m.blockSize, Math.min(data.length, (i + 1) * m.blockSize));
      if (!isAllZero(block)) createHash('sha256').update(block).digest().copy(entries, 32 * i);
    }
    reply = { seq: m.seq, entries };
  } catch (e) {
    reply = { seq: m.seq, error: e instanceof Error ? e.message : String(e) };
  }
  parentPort.postMessage(reply);
});
`;

function startWorker(workerFile?: string): Worker {
  return workerFile === undefined ? new Worker(WORKER_SOURCE, { eval: true }) : new Worker(workerFile);
}
