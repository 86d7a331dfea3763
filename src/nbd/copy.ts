// Turn an NBD export into a sparse raw file: read only allocated (and, for an
// incremental backup, only dirty) ranges and write them at the same offsets.
// This is what the pull backup client uses for full and incremental backups.

import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { toVirError, virErr } from '../errors.js';
import type { NbdClient } from './client.js';
import { extents } from './extents.js';
import * as P from './protocol.js';

const fsOpen = promisify(fs.open);
const fsWrite = promisify(fs.write);
const fsFtruncate = promisify(fs.ftruncate);
const fsFdatasync = promisify(fs.fdatasync);
const fsClose = promisify(fs.close);

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
  /** Allocation context used to skip holes and zeroes (default 'base:allocation' when negotiated). */
  allocationContext?: string;
  /** Reads in flight at once (default 4). */
  concurrency?: number;
  /** Largest single read (default: min(client.maxRead, 1 MiB); larger buffers cost page faults, not speed). */
  chunkSize?: number;
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

/** Granularity at which all-zero blocks inside read data are left as holes. */
const ZERO_SCAN_BLOCK = 4096;

/** Ranges to copy: dirty (if asked) ∩ export, classified by the allocation context. */
export async function planCopy(client: NbdClient, opts: Pick<CopyOptions, 'onlyDirty' | 'allocationContext'> = {}): Promise<CopiedRange[]> {
  const alloc = opts.allocationContext ?? (client.metaContexts.has(P.CONTEXT_BASE_ALLOCATION) ? P.CONTEXT_BASE_ALLOCATION : undefined);
  const out: CopiedRange[] = [];
  const push = (r: CopiedRange) => {
    const prev = out[out.length - 1];
    if (prev && prev.zero === r.zero && prev.offset + prev.length === r.offset) prev.length += r.length;
    else out.push({ ...r });
  };
  const classify = async (offset: number, length: number) => {
    if (!alloc) return push({ offset, length, zero: false });
    for await (const e of extents(client, alloc, { offset, length })) {
      // HOLE without ZERO may read as anything: it must be read.
      push({ offset: e.offset, length: e.length, zero: (e.flags & P.NBD_STATE_ZERO) !== 0 });
    }
  };
  if (opts.onlyDirty !== undefined) {
    for await (const d of extents(client, opts.onlyDirty)) {
      if (d.flags & P.NBD_STATE_DIRTY) await classify(d.offset, d.length);
    }
  } else if (client.size > 0) {
    await classify(0, client.size);
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

/**
 * Copy the export (or its dirty ranges) into `target`, a path (created or truncated)
 * or an open fd the caller owns, which must read as zeroes (a new file). The file is
 * sized to the export; nothing is written where the export reads as zeroes.
 */
export async function copyToFile(client: NbdClient, target: string | number, opts: CopyOptions = {}): Promise<CopyResult> {
  const concurrency = opts.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw virErr('INVALID_ARG', 'NBD', `concurrency must be a positive integer, got ${concurrency}`);
  const min = client.blockSizes.minimum;
  let chunk = Math.min(opts.chunkSize ?? 1 << 20, client.maxRead);
  chunk = Math.max(min, chunk - (chunk % min));

  const ranges = await planCopy(client, opts);
  const bytesTotal = ranges.reduce((n, r) => n + (r.zero ? 0 : r.length), 0);

  let fd: number;
  try {
    fd = typeof target === 'number' ? target : await fsOpen(target, 'w');
  } catch (e) {
    throw virErr('SYSTEM_ERROR', 'NBD', `cannot create backup file '${String(target)}': ${(e as Error).message}`, e);
  }
  const where = typeof target === 'number' ? `fd ${target}` : `'${target}'`;
  let bytesDone = 0;
  let bytesWritten = 0;
  try {
    await fsFtruncate(fd, client.size);
    function* pieces(): Generator<[number, number]> {
      for (const r of ranges) {
        if (r.zero) continue;
        for (let o = r.offset; o < r.offset + r.length; o += chunk) yield [o, Math.min(chunk, r.offset + r.length - o)];
      }
    }
    const queue = pieces();
    let stop = false;
    const worker = async () => {
      for (;;) {
        if (stop) return;
        const n = queue.next();
        if (n.done) return;
        const [offset, length] = n.value;
        let buf: Buffer;
        try {
          buf = await client.read(offset, length);
        } catch (e) {
          stop = true;
          throw e;
        }
        for (const [s, e] of nonZeroRuns(buf)) {
          let done = 0;
          while (done < e - s) {
            const { bytesWritten: w } = await fsWrite(fd, buf, s + done, e - s - done, offset + s + done);
            done += w;
          }
          bytesWritten += e - s;
        }
        bytesDone += length;
        opts.onProgress?.({ bytesDone, bytesTotal });
      }
    };
    const results = await Promise.allSettled(Array.from({ length: concurrency }, worker));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (opts.sync ?? true) await fsFdatasync(fd);
  } catch (e) {
    const v = toVirError(e, 'NBD');
    if (v === e) throw v;
    throw virErr('SYSTEM_ERROR', 'NBD', `writing backup file ${where} failed: ${v.message}`, e);
  } finally {
    if (typeof target !== 'number') await fsClose(fd).catch(() => undefined);
  }
  return { size: client.size, ranges, bytesRead: bytesDone, bytesWritten };
}
