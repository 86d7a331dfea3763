// Restore's copy: the chain's content is read block by block through a
// read-only export, each 1 MiB block is checked against the target manifest's
// entry *before* it is written to the output's export, and the copy stops at
// the first disagreement, so damaged bytes are never written. Zero areas
// (base:allocation) are not read; they must be zero in the manifest too.

import type { NbdClient } from '../nbd/client.js';
import { nonZeroRuns } from '../nbd/copy.js';
import { BlockDigests, CHECKSUM_BLOCK, ZERO_BLOCK_MARKER } from './checksum.js';
import { hashBlocks, leaseSharedBuffer, releaseSharedBuffer } from './hash-pool.js';
import { READ_BLOCKS, dataBlocks, groupReads } from './content.js';
import type { BadRange } from './verify.js';

/** Zero blocks per write-zeroes request (and progress step). */
const ZERO_RUN_BLOCKS = 256;

export interface CheckedCopyOptions {
  /** The chain's content (read-only export of the backup, with base:allocation). */
  source: NbdClient;
  /** The output (writable export). */
  sink: NbdClient;
  /** Every block's entry from the target's manifest (decodeChecksum); null: no manifest, nothing to check against. */
  want: Buffer[] | null;
  /** Make zero areas read as zeroes (an existing image); a new output already does. */
  zeroFill: boolean;
  concurrency?: number;
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
}


interface Job {
  first: number;
  count: number;
  zero: boolean;
}

/** Jobs in block order: reads of neighbouring data blocks, and runs of zero blocks. */
function planJobs(data: boolean[]): Job[] {
  const jobs: Job[] = [];
  let i = 0;
  while (i < data.length) {
    if (data[i]) {
      let j = i;
      while (j < data.length && data[j]) j++;
      for (const [first, count] of groupReads(Array.from({ length: j - i }, (_, k) => i + k))) jobs.push({ first, count, zero: false });
      i = j;
    } else {
      let j = i;
      while (j < data.length && !data[j] && j - i < ZERO_RUN_BLOCKS) j++;
      jobs.push({ first: i, count: j - i, zero: true });
      i = j;
    }
  }
  return jobs;
}

/**
 * Copy source to sink, checking every block before it is written. Returns
 * null when every block matched (and was written, and the sink flushed), or
 * the first bad range; then the copy stopped early and the sink holds a part.
 */
export async function copyChecked(opts: CheckedCopyOptions): Promise<BadRange | null> {
  const { source, sink, want, zeroFill } = opts;
  const d = new BlockDigests(source.size, CHECKSUM_BLOCK);
  if (want !== null && want.length !== d.count) throw new Error(`manifest has ${want.length} blocks, the backup ${d.count}`);
  const jobs = planJobs(await dataBlocks(source, d));
  const bad: number[] = [];
  const check = (i: number, entry: Buffer): boolean => {
    if (want === null || want[i]!.equals(entry)) return true;
    bad.push(i);
    return false;
  };
  let bytesDone = 0;
  opts.onProgress?.({ bytesDone, bytesTotal: d.size });
  let next = 0;
  // one reused shared buffer per reader: hashed in place on the pool's threads, then written
  const worker = async () => {
    const buf = leaseSharedBuffer(READ_BLOCKS * d.blockSize);
    try {
      await copyJobs(buf);
    } finally {
      releaseSharedBuffer(buf);
    }
  };
  const copyJobs = async (buf: Buffer) => {
    while (bad.length === 0 && next < jobs.length) {
      const job = jobs[next++]!;
      const start = d.range(job.first).offset;
      const last = d.range(job.first + job.count - 1);
      const length = last.offset + last.length - start;
      let ok = true;
      if (job.zero) {
        for (let i = job.first; i < job.first + job.count; i++) ok = check(i, ZERO_BLOCK_MARKER) && ok;
        if (ok && zeroFill) await sink.writeZeroes(start, length);
      } else {
        const view = buf.subarray(0, length);
        await source.readInto(start, view);
        const entries = await hashBlocks(view, d.blockSize);
        for (let i = job.first; i < job.first + job.count; i++) ok = check(i, entries[i - job.first]!) && ok;
        if (ok) await writeData(sink, start, view, zeroFill);
      }
      bytesDone += length;
      opts.onProgress?.({ bytesDone, bytesTotal: d.size });
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 4 }, worker));
  if (bad.length > 0) return firstRun(bad, d);
  await sink.flush();
  return null;
}

/** Write the non-zero parts of `buf` at `offset`; with zeroFill the zero parts as write-zeroes. */
async function writeData(sink: NbdClient, offset: number, buf: Buffer, zeroFill: boolean): Promise<void> {
  const writes: Promise<void>[] = [];
  let at = 0;
  for (const [s, e] of nonZeroRuns(buf)) {
    if (zeroFill && s > at) writes.push(sink.writeZeroes(offset + at, s - at));
    writes.push(sink.write(offset + s, buf.subarray(s, e)));
    at = e;
  }
  if (zeroFill && at < buf.length) writes.push(sink.writeZeroes(offset + at, buf.length - at));
  await Promise.all(writes);
}

/**
 * The lowest bad block and the bad blocks right after it. Workers take jobs in
 * order and all taken jobs were checked, so no lower block is unchecked.
 */
function firstRun(bad: number[], d: BlockDigests): BadRange {
  const set = new Set(bad);
  const first = Math.min(...bad);
  let end = first;
  while (set.has(end + 1)) end++;
  const r = d.range(end);
  return { offset: d.range(first).offset, length: r.offset + r.length - d.range(first).offset };
}
