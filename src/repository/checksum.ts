// The content checksum of a disk as the guest sees it: sha256 per 1 MiB block,
// all-zero blocks replaced by a fixed marker so holes cost no hashing and no
// space, and one sha256 over the block list. Per-block digests let verify name
// the first damaged range instead of just "mismatch". Pure: no I/O here.

import { createHash } from 'node:crypto';
import { virErr } from '../errors.js';

export const CHECKSUM_ALGORITHM = 'sha256-blocks-1MiB';
export const CHECKSUM_BLOCK = 1 << 20;
const DIGEST = 32;
/** What an all-zero block contributes to the list: 32 zero bytes, never a real sha256 we compute. */
export const ZERO_BLOCK_MARKER = Buffer.alloc(DIGEST);

/** The checksum as stored in a manifest. */
export interface ContentChecksum {
  algorithm: typeof CHECKSUM_ALGORITHM;
  /** Bytes per block; the last block is shorter when size is not a multiple. */
  blockSize: number;
  /** Guest-visible size covered (the virtual size). */
  size: number;
  /** sha256 (hex) over the concatenated 32-byte entries of every block in order (marker for zero blocks). */
  sha256: string;
  /** Runs of all-zero blocks as [first block index, count]. */
  zeroBlocks: Array<[number, number]>;
  /** base64 of the 32-byte sha256 of each non-zero block, in block order. */
  digests: string;
}

export function blockCount(size: number, blockSize = CHECKSUM_BLOCK): number {
  return Math.ceil(size / blockSize);
}

const ZERO_PAGE = Buffer.alloc(64 * 1024);

export function isAllZero(buf: Buffer): boolean {
  for (let s = 0; s < buf.length; s += ZERO_PAGE.length) {
    const n = Math.min(ZERO_PAGE.length, buf.length - s);
    if (ZERO_PAGE.compare(buf, s, s + n, 0, n) !== 0) return false;
  }
  return true;
}

/** The list entry of one block's bytes. */
export function blockDigest(buf: Buffer): Buffer {
  return isAllZero(buf) ? ZERO_BLOCK_MARKER : createHash('sha256').update(buf).digest();
}

/**
 * Collects block entries in any order (readers run concurrently) and encodes
 * the checksum once every block is known.
 */
export class BlockDigests {
  readonly count: number;
  private readonly list: Array<Buffer | undefined>;

  constructor(
    readonly size: number,
    readonly blockSize = CHECKSUM_BLOCK,
  ) {
    this.count = blockCount(size, blockSize);
    this.list = new Array<Buffer | undefined>(this.count);
  }

  /** Range of block `i` in guest bytes. */
  range(i: number): { offset: number; length: number } {
    const offset = i * this.blockSize;
    return { offset, length: Math.min(this.blockSize, this.size - offset) };
  }

  set(i: number, digest: Buffer): void {
    this.list[i] = digest;
  }

  setZero(i: number): void {
    this.list[i] = ZERO_BLOCK_MARKER;
  }

  get(i: number): Buffer | undefined {
    return this.list[i];
  }

  toChecksum(): ContentChecksum {
    const top = createHash('sha256');
    const zeroBlocks: Array<[number, number]> = [];
    const data: Buffer[] = [];
    for (let i = 0; i < this.count; i++) {
      const d = this.list[i];
      if (!d) throw virErr('INTERNAL_ERROR', 'STORAGE', `checksum block ${i} of ${this.count} was never computed`);
      top.update(d);
      if (d.equals(ZERO_BLOCK_MARKER)) {
        const last = zeroBlocks[zeroBlocks.length - 1];
        if (last && last[0] + last[1] === i) last[1]++;
        else zeroBlocks.push([i, 1]);
      } else data.push(d);
    }
    return { algorithm: CHECKSUM_ALGORITHM, blockSize: this.blockSize, size: this.size, sha256: top.digest('hex'), zeroBlocks, digests: Buffer.concat(data).toString('base64') };
  }
}

/**
 * Every block's entry from a stored checksum; throws INVALID_ARG naming `where`
 * when the encoding is inconsistent (counts, runs, top-level hash).
 */
export function decodeChecksum(c: ContentChecksum, where: string): Buffer[] {
  if (c.algorithm !== CHECKSUM_ALGORITHM) throw virErr('CONFIG_UNSUPPORTED', 'STORAGE', `${where}: checksum algorithm '${c.algorithm}' is not supported (expected '${CHECKSUM_ALGORITHM}')`);
  if (c.blockSize !== CHECKSUM_BLOCK) throw virErr('INVALID_ARG', 'STORAGE', `${where}: checksum block size ${c.blockSize} does not match algorithm '${c.algorithm}'`);
  const n = blockCount(c.size, c.blockSize);
  const zero = new Uint8Array(n);
  let zeroCount = 0;
  let prevEnd = 0;
  for (const [start, count] of c.zeroBlocks) {
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < prevEnd || count < 1 || start + count > n) {
      throw virErr('INVALID_ARG', 'STORAGE', `${where}: zero block run [${start}, ${count}] is out of order or beyond ${n} blocks`);
    }
    zero.fill(1, start, start + count);
    zeroCount += count;
    prevEnd = start + count;
  }
  const raw = Buffer.from(c.digests, 'base64');
  if (raw.length !== (n - zeroCount) * DIGEST) {
    throw virErr('INVALID_ARG', 'STORAGE', `${where}: checksum has ${raw.length / DIGEST} block digests for ${n - zeroCount} non-zero blocks`);
  }
  const out: Buffer[] = [];
  const top = createHash('sha256');
  let k = 0;
  for (let i = 0; i < n; i++) {
    const d = zero[i] ? ZERO_BLOCK_MARKER : raw.subarray(k * DIGEST, ++k * DIGEST);
    top.update(d);
    out.push(d);
  }
  if (top.digest('hex') !== c.sha256) throw virErr('INVALID_ARG', 'STORAGE', `${where}: checksum block list does not match its sha256 ${c.sha256}`);
  return out;
}
