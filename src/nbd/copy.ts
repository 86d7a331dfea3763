// Turn an NBD export into a sparse raw file (or any CopySink): read only
// allocated (and, for an incremental backup, only dirty) ranges and write them
// at the same offsets. What makes it fast (measured in docs/performance.md):
// many requests in flight, spread over several connections when the export
// allows multi-conn, each reply decoded straight into a buffer that is reused
// (no allocation, no copy per request), and holes/zeroes neither read nor written.

import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { toVirError, virErr } from '../errors.js';
import type { Extent, NbdClient } from './client.js';
import { DirectFile, alignedBuffer, releaseAlignedBuffer } from './direct-file.js';
import { extents } from './extents.js';
import * as P from './protocol.js';

const fsFtruncate = promisify(fs.ftruncate);

export interface CopiedRange {
  offset: number;
  length: number;
  /** Known to read as zeroes (from base:allocation), so not read and not written. */
  zero: boolean;
}

export interface CopyProgress {
  /** Bytes of data ranges read and written so far. */
  bytesDone: number;
  /** Bytes of data ranges to read in all. */
  bytesTotal: number;
}

export interface CopyOptions {
  /** Dirty-bitmap context (e.g. 'qemu:dirty-bitmap:b1'): copy only its dirty ranges. */
  onlyDirty?: string;
  /**
   * With onlyDirty: widen each dirty range to multiples of this many bytes (read from
   * the export, which holds the whole disk), for a sink that stores whole clusters.
   */
  dirtyAlignment?: number;
  /** Allocation context used to skip holes and zeroes (default 'base:allocation' when negotiated). */
  allocationContext?: string;
  /** Reads in flight at once, over all connections (default 16). */
  concurrency?: number;
  /**
   * Largest single read (default: min(client.maxRead, 1 MiB)). qemu-nbd is much
   * slower per byte with very large requests (32 MiB: 10x slower than 1 MiB).
   */
  chunkSize?: number;
  /**
   * Bytes per READ request (default 256 KiB, as nbdcopy): a chunk is read as several
   * pipelined requests. Over TCP qemu-nbd answered 256 KiB requests ~3x faster than 1 MiB ones.
   */
  requestSize?: number;
  /** More connections to the same export (multi-conn): reads are spread over all of them. */
  connections?: NbdClient[];
  /**
   * Called with each chunkSize-aligned window that holds data, as read (holes
   * inside it zero-filled), while it is written; `data` (backed by a
   * SharedArrayBuffer, so a worker thread can read it in place) is only valid
   * until the returned promise settles. Switches reading to whole aligned windows (zero windows are
   * reported to onZero instead), so a caller can checksum blocks while the
   * data streams past. Full copies only.
   */
  onData?: (offset: number, data: Buffer) => void | Promise<void>;
  /** With onData: an aligned window (or the export's short tail) that reads as zeroes and was not read. */
  onZero?: (offset: number, length: number) => void;
  /** fdatasync the file before returning (default true). */
  sync?: boolean;
  onProgress?: (p: CopyProgress) => void;
}

export interface CopyResult {
  size: number;
  /**
   * Every range considered, in offset order: the whole export for a full copy, only
   * the dirty parts for an incremental one. Ranges with zero=true were not written;
   * in an incremental copy they are dirty ranges that now read as zeroes.
   */
  ranges: CopiedRange[];
  /** Bytes read from the export. */
  bytesRead: number;
  /** Bytes actually written (all-zero blocks inside data ranges are skipped). */
  bytesWritten: number;
}

const REQUEST_SIZE = 256 * 1024;

/** Granularity at which all-zero blocks inside read data are left as holes. */
const ZERO_SCAN_BLOCK = 4096;

/**
 * Ranges to copy: dirty (if asked) ∩ export, classified by the allocation context.
 * Both contexts are walked over the whole export with parallel windows and then
 * intersected: one query per dirty extent would cost a round trip each.
 */
export async function planCopy(client: NbdClient, opts: Pick<CopyOptions, 'onlyDirty' | 'dirtyAlignment' | 'allocationContext'> = {}): Promise<CopiedRange[]> {
  const alloc = opts.allocationContext ?? (client.metaContexts.has(P.CONTEXT_BASE_ALLOCATION) ? P.CONTEXT_BASE_ALLOCATION : undefined);
  const out: CopiedRange[] = [];
  const push = (r: CopiedRange) => {
    const prev = out[out.length - 1];
    if (prev && prev.zero === r.zero && prev.offset + prev.length === r.offset) prev.length += r.length;
    else out.push({ ...r });
  };
  if (client.size === 0) return out;
  const collect = async (context: string) => {
    const list: Extent[] = [];
    for await (const e of extents(client, context)) list.push(e);
    return list;
  };
  const [dirty, allocation] = await Promise.all([
    opts.onlyDirty === undefined ? [{ offset: 0, length: client.size, flags: P.NBD_STATE_DIRTY }] : collect(opts.onlyDirty),
    alloc === undefined ? [{ offset: 0, length: client.size, flags: 0 }] : collect(alloc),
  ]);
  const align = opts.dirtyAlignment ?? 1;
  let k = 0;
  let done = 0;
  for (const d of dirty) {
    if (!(d.flags & P.NBD_STATE_DIRTY)) continue;
    const start = Math.max(done, d.offset - (d.offset % align));
    const end = Math.min(client.size, Math.ceil((d.offset + d.length) / align) * align);
    if (end <= start) continue;
    done = end;
    while (k < allocation.length && allocation[k]!.offset + allocation[k]!.length <= start) k++;
    for (let j = k; j < allocation.length && allocation[j]!.offset < end; j++) {
      const a = allocation[j]!;
      const s = Math.max(a.offset, start);
      // HOLE without ZERO may read as anything: it must be read.
      push({ offset: s, length: Math.min(end, a.offset + a.length) - s, zero: (a.flags & P.NBD_STATE_ZERO) !== 0 });
    }
  }
  return out;
}

/** [start, end) index pairs of the blocks of `buf` that are not all zero, touching runs joined. */
export function nonZeroRuns(buf: Buffer, block = ZERO_SCAN_BLOCK): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let s = 0; s < buf.length; s += block) {
    const e = Math.min(buf.length, s + block);
    if (isZero(buf, s, e)) continue;
    const last = runs[runs.length - 1];
    if (last && last[1] === s) last[1] = e;
    else runs.push([s, e]);
  }
  return runs;
}

const ZEROES = Buffer.alloc(ZERO_SCAN_BLOCK);

function isZero(buf: Buffer, start: number, end: number): boolean {
  // memcmp against a zero block, much faster than a byte loop in JS
  for (let s = start; s < end; s += ZEROES.length) {
    const n = Math.min(ZEROES.length, end - s);
    if (ZEROES.compare(buf, s, s + n, 0, n) !== 0) return false;
  }
  return true;
}

/** Where copied bytes go: a file (fileSink) or a qcow2 being written (src/qcow2/writer.ts). */
export interface CopySink {
  /** Write `data` at `offset`; `data` is reused by the caller once this settles. */
  write(offset: number, data: Buffer): Promise<void>;
  /** Make a range read as zeroes; only called with `zeroFill`. */
  zero?(offset: number, length: number): Promise<void>;
  /** Every byte written: make it durable (fdatasync; a qcow2 writer also writes its metadata and header). */
  finish(): Promise<void>;
  /** Nothing written reads as zeroes here by itself (an incremental overlay): zero runs inside data and dirty zero ranges must be written. */
  zeroFill: boolean;
  /** For error messages. */
  where: string;
}

/** One read: [offset, length]; in window mode whole aligned windows, else data pieces. */
type Unit = [number, number];

/** The reads of a copy: data pieces of at most `chunk` bytes, or (window mode) every aligned window touching data. */
function* units(ranges: CopiedRange[], chunk: number, size: number, windows: boolean, onZero?: (offset: number, length: number) => void): Generator<Unit> {
  if (!windows) {
    for (const r of ranges) {
      if (r.zero) continue;
      for (let o = r.offset; o < r.offset + r.length; o += chunk) yield [o, Math.min(chunk, r.offset + r.length - o)];
    }
    return;
  }
  let i = 0;
  for (let w = 0; w < size; w += chunk) {
    const end = Math.min(size, w + chunk);
    while (i < ranges.length && ranges[i]!.offset + ranges[i]!.length <= w) i++;
    let data = false;
    for (let k = i; k < ranges.length && ranges[k]!.offset < end; k++) if (!ranges[k]!.zero) data = true;
    if (data) yield [w, end - w];
    else onZero?.(w, end - w);
  }
}

/** Bytes of data ranges inside [offset, offset + length) (what a window read transfers besides hole chunks). */
function dataIn(ranges: CopiedRange[], offset: number, length: number): number {
  let n = 0;
  for (const r of ranges) {
    if (r.zero || r.offset >= offset + length || r.offset + r.length <= offset) continue;
    n += Math.min(offset + length, r.offset + r.length) - Math.max(offset, r.offset);
  }
  return n;
}

/**
 * Copy the export (or its dirty ranges) into `sink`. Returns what copyToFile does;
 * zero ranges are written as zeroes only when the sink needs it (zeroFill).
 */
export async function copyToSink(client: NbdClient, sink: CopySink, opts: CopyOptions = {}): Promise<CopyResult> {
  const concurrency = opts.concurrency ?? 16;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw virErr('INVALID_ARG', 'NBD', `concurrency must be a positive integer, got ${concurrency}`);
  const windows = opts.onData !== undefined;
  if (windows && opts.onlyDirty !== undefined) throw virErr('INVALID_ARG', 'NBD', 'onData (aligned windows) is for full copies, not onlyDirty');
  const clients = [client, ...(opts.connections ?? [])];
  const min = Math.max(...clients.map((c) => c.blockSizes.minimum));
  // Not clamped to the server's maximum: readInto splits a chunk into requests of at most that.
  let chunk = opts.chunkSize ?? 1 << 20;
  chunk = Math.max(min, chunk - (chunk % min));
  if (windows && opts.chunkSize !== undefined && chunk !== opts.chunkSize) throw virErr('INVALID_ARG', 'NBD', `onData windows of ${String(opts.chunkSize)} bytes are not a multiple of the export's minimum block size ${min}`);

  const ranges = await planCopy(client, opts);
  const bytesTotal = ranges.reduce((n, r) => n + (r.zero ? 0 : r.length), 0);
  const queue = units(ranges, chunk, client.size, windows, opts.onZero);
  let bytesDone = 0;
  let bytesWritten = 0;
  let stop = false;
  const writeRuns = async (offset: number, buf: Buffer) => {
    let at = 0;
    const writes: Promise<void>[] = [];
    for (const [s, e] of nonZeroRuns(buf)) {
      if (sink.zeroFill && s > at) writes.push(sink.zero!(offset + at, s - at));
      writes.push(sink.write(offset + s, buf.subarray(s, e)));
      bytesWritten += e - s;
      at = e;
    }
    if (sink.zeroFill && at < buf.length) writes.push(sink.zero!(offset + at, buf.length - at));
    await Promise.all(writes);
  };
  // Each worker owns one reusable buffer and one connection: no allocation per read.
  // Page-aligned, so a file sink writes it with O_DIRECT; shared memory, so onData
  // can hand the window to a hashing thread without a copy.
  const worker = async (k: number) => {
    const from = clients[k % clients.length]!;
    const buf = alignedBuffer(chunk);
    try {
      await work(from, buf);
    } finally {
      releaseAlignedBuffer(buf);
    }
  };
  const work = async (from: NbdClient, buf: Buffer) => {
    for (;;) {
      if (stop) return;
      const n = queue.next();
      if (n.done) return;
      const [offset, length] = n.value;
      const view = buf.subarray(0, length);
      try {
        await from.readInto(offset, view, opts.requestSize ?? REQUEST_SIZE);
        // Settled both before the window is reused or released: a hash or a pwrite may still read it.
        await settledAll([Promise.resolve(opts.onData?.(offset, view)), writeRuns(offset, view)]);
      } catch (e) {
        stop = true;
        throw e;
      }
      bytesDone += windows ? dataIn(ranges, offset, length) : length;
      opts.onProgress?.({ bytesDone, bytesTotal });
    }
  };
  try {
    opts.onProgress?.({ bytesDone, bytesTotal });
    if (sink.zeroFill) await Promise.all(ranges.filter((r) => r.zero).map((r) => sink.zero!(r.offset, r.length)));
    const results = await Promise.allSettled(Array.from({ length: concurrency }, (_v, k) => worker(k)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (opts.sync ?? true) await sink.finish();
  } catch (e) {
    const v = toVirError(e, 'NBD');
    if (v === e) throw v;
    throw virErr('SYSTEM_ERROR', 'NBD', `writing backup file ${sink.where} failed: ${v.message}`, e);
  }
  return { size: client.size, ranges, bytesRead: bytesDone, bytesWritten };
}

/** Like Promise.all, but rejects (with the first failure) only once every promise settled. */
async function settledAll(all: Promise<unknown>[]): Promise<void> {
  const failed = (await Promise.allSettled(all)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** A sink writing into a DirectFile at the same offsets (O_DIRECT where aligned). */
export function fileSink(file: DirectFile, where: string): CopySink {
  return { zeroFill: false, where, write: (offset, data) => file.write(data, offset), finish: () => file.sync() };
}

/**
 * Copy the export (or its dirty ranges) into `target`, a path (created or truncated)
 * or an open fd the caller owns, which must read as zeroes (a new file). The file is
 * sized to the export; nothing is written where the export reads as zeroes.
 */
export async function copyToFile(client: NbdClient, target: string | number, opts: CopyOptions = {}): Promise<CopyResult> {
  const concurrency = opts.concurrency ?? 16;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw virErr('INVALID_ARG', 'NBD', `concurrency must be a positive integer, got ${concurrency}`);
  let file: DirectFile;
  try {
    file = await DirectFile.open(target, 'w');
  } catch (e) {
    throw virErr('SYSTEM_ERROR', 'NBD', `cannot create backup file '${String(target)}': ${(e as Error).message}`, e);
  }
  const where = typeof target === 'number' ? `fd ${target}` : `'${target}'`;
  try {
    try {
      await fsFtruncate(file.fd, client.size);
    } catch (e) {
      throw virErr('SYSTEM_ERROR', 'NBD', `writing backup file ${where} failed: ${(e as Error).message}`, e);
    }
    return await copyToSink(client, fileSink(file, where), opts);
  } finally {
    await file.close().catch(() => undefined);
  }
}
