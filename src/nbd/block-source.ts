// What the NBD server exports: a read-only run of bytes with an optional
// allocation map. A chunk-store point implements it (chunkstore/source.ts);
// a plain file does here, for tests and for serving an image as it is.

import { open, type FileHandle } from 'node:fs/promises';
import { virErr } from '../errors.js';

export interface BlockExtent {
  offset: number;
  length: number;
  /** True for a run that reads as zeroes (and need not be transferred). */
  zero: boolean;
}

export interface BlockSource {
  readonly size: number;
  /** Read [offset, offset+length) into a new Buffer (length ≤ 32 MiB). */
  read(offset: number, length: number): Promise<Buffer>;
  /** Allocation of a range: runs of data or zero. Optional: without it everything is data. */
  extents?(offset: number, length: number): Promise<BlockExtent[]>;
  close?(): Promise<void>;
}

/** Granularity of the zero detection of a file source: a run reads as zero when whole blocks of this size do. */
export const FILE_ZERO_BLOCK = 64 * 1024;
const SCAN = 4 * 1024 * 1024;

function isZero(b: Buffer): boolean {
  // Compare against a shared zero block instead of a byte loop.
  for (let at = 0; at < b.length; at += ZEROES.length) {
    const part = b.subarray(at, at + ZEROES.length);
    if (!part.equals(ZEROES.subarray(0, part.length))) return false;
  }
  return true;
}
const ZEROES = Buffer.alloc(FILE_ZERO_BLOCK);

/** Adjacent runs of one kind merged into one. */
export function mergeRuns(runs: BlockExtent[]): BlockExtent[] {
  const out: BlockExtent[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && last.zero === r.zero && last.offset + last.length === r.offset) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

/** The zero and data runs of `data`, which starts at `offset`, in FILE_ZERO_BLOCK-aligned blocks. */
export function zeroRuns(data: Buffer, offset: number): BlockExtent[] {
  const runs: BlockExtent[] = [];
  let at = 0;
  while (at < data.length) {
    const end = Math.min(data.length, (Math.floor((offset + at) / FILE_ZERO_BLOCK) + 1) * FILE_ZERO_BLOCK - offset);
    runs.push({ offset: offset + at, length: end - at, zero: isZero(data.subarray(at, end)) });
    at = end;
  }
  return mergeRuns(runs);
}

class FileBlockSource implements BlockSource {
  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw virErr('INVALID_ARG', 'NBD', `read of ${length} bytes at ${offset} is outside the ${this.size}-byte source`);
    }
    const b = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(b, done, length - done, offset + done);
      if (bytesRead === 0) throw virErr('SYSTEM_ERROR', 'NBD', `file ended at ${offset + done}, before its size ${this.size}`);
      done += bytesRead;
    }
    return b;
  }

  /** Zero runs by reading: Node offers no SEEK_DATA, and a served backup file is read anyway. */
  async extents(offset: number, length: number): Promise<BlockExtent[]> {
    const runs: BlockExtent[] = [];
    for (let at = offset; at < offset + length; at += SCAN) {
      const n = Math.min(SCAN, offset + length - at);
      runs.push(...zeroRuns(await this.read(at, n), at));
    }
    return mergeRuns(runs);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** A raw file served as it is. */
export async function openFileBlockSource(path: string): Promise<BlockSource> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    return new FileBlockSource(fh, size);
  } catch (e) {
    await fh.close();
    throw e;
  }
}
