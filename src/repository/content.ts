// Reading the guest-visible content of an image chain for checksums: qemu-nbd
// serves it read-only and our NBD client reads only what base:allocation says
// is not zero, hashing 1 MiB blocks concurrently. Measured on a 1 GiB qcow2
// with 512 MiB of data: about as fast as `qemu-img convert` to raw plus
// sha256sum, and holes cost neither reads nor hashing (see docs/restore.md).

import { NbdClient } from '../nbd/client.js';
import { extents } from '../nbd/extents.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH, NBD_STATE_ZERO } from '../nbd/protocol.js';
import { BlockDigests, CHECKSUM_BLOCK } from './checksum.js';
import { hashBlocks, leaseSharedBuffer, releaseSharedBuffer } from './hash-pool.js';
import { startExport } from './tools.js';

/** Blocks per read request. */
export const READ_BLOCKS = 4;

export interface ContentProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface ReadDigestsOptions {
  image: string;
  format: string;
  /**
   * Only blocks that have data in `image` itself (not in its backing files) are
   * read; the others stay unset in the result, for the caller to take from the
   * layer below. Uses qemu:allocation-depth.
   */
  topLayerOnly?: boolean;
  concurrency?: number;
  onProgress?: (p: ContentProgress) => void;
}

export interface ReadDigestsResult {
  digests: BlockDigests;
  /** Blocks hashed or known zero; with topLayerOnly the others are unset. */
  covered: boolean[];
  bytesRead: number;
}

/** Block entries of the content of `image` and its backing chain, read through a read-only export. */
export async function readDigests(opts: ReadDigestsOptions): Promise<ReadDigestsResult> {
  const exp = await startExport({ image: opts.image, format: opts.format, readOnly: true, allocationDepth: opts.topLayerOnly });
  let client: NbdClient | undefined;
  try {
    const contexts = [CONTEXT_BASE_ALLOCATION, ...(opts.topLayerOnly ? [CONTEXT_QEMU_ALLOCATION_DEPTH] : [])];
    client = await NbdClient.connect({ socketPath: exp.socketPath }, { exportName: exp.exportName, metaContexts: contexts });
    const result = await digestsFrom(client, opts);
    await client.disconnect();
    return result;
  } finally {
    client?.destroy();
    await exp.close().catch(() => undefined);
  }
}

/** Per checksum block of `d`: whether base:allocation says it may hold data (false: reads as zeroes). */
export async function dataBlocks(client: NbdClient, d: BlockDigests): Promise<boolean[]> {
  const data = new Array<boolean>(d.count).fill(false);
  for await (const e of extents(client, CONTEXT_BASE_ALLOCATION)) if (!(e.flags & NBD_STATE_ZERO)) markBlocks(data, d, e.offset, e.length);
  return data;
}

function markBlocks(list: boolean[], d: BlockDigests, offset: number, length: number): void {
  for (let b = Math.floor(offset / d.blockSize); b <= Math.floor((offset + length - 1) / d.blockSize); b++) list[b] = true;
}

/**
 * Ascending block indices grouped into reads of up to READ_BLOCKS neighbours:
 * fewer, larger requests are much faster than 1 MiB ones. [first, count] pairs.
 */
export function groupReads(blocks: Iterable<number>): Array<[number, number]> {
  const reads: Array<[number, number]> = [];
  for (const i of blocks) {
    const last = reads[reads.length - 1];
    if (last && last[0] + last[1] === i && last[1] < READ_BLOCKS) last[1]++;
    else reads.push([i, 1]);
  }
  return reads;
}

async function digestsFrom(client: NbdClient, opts: ReadDigestsOptions): Promise<ReadDigestsResult> {
  const d = new BlockDigests(client.size, CHECKSUM_BLOCK);
  const covered = new Array<boolean>(d.count).fill(!opts.topLayerOnly);
  if (opts.topLayerOnly) {
    for await (const e of extents(client, CONTEXT_QEMU_ALLOCATION_DEPTH)) if (e.flags === 1) markBlocks(covered, d, e.offset, e.length);
  }
  const data = await dataBlocks(client, d);

  const todo: number[] = [];
  let bytesTotal = 0;
  for (let i = 0; i < d.count; i++) {
    if (!covered[i]) continue;
    if (!data[i]) d.setZero(i);
    else {
      todo.push(i);
      bytesTotal += d.range(i).length;
    }
  }
  const reads = groupReads(todo);
  let bytesDone = 0;
  opts.onProgress?.({ bytesDone, bytesTotal });
  let next = 0;
  // One reused buffer per reader, hashed in place on the pool's threads.
  const worker = async () => {
    const buf = leaseSharedBuffer(READ_BLOCKS * d.blockSize);
    try {
      await readAll(buf);
    } finally {
      releaseSharedBuffer(buf);
    }
  };
  const readAll = async (buf: Buffer) => {
    while (next < reads.length) {
      const [first, n] = reads[next++]!;
      const start = d.range(first).offset;
      const end = d.range(first + n - 1).offset + d.range(first + n - 1).length;
      const view = buf.subarray(0, end - start);
      await client.readInto(start, view);
      const entries = await hashBlocks(view, d.blockSize);
      entries.forEach((e, k) => d.set(first + k, e));
      bytesDone += end - start;
      opts.onProgress?.({ bytesDone, bytesTotal });
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 4 }, worker));
  return { digests: d, covered, bytesRead: bytesDone };
}
