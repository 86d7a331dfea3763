// One disk of a pull export into chunks of the repository: for each chunk to
// read, ask base:allocation which parts hold data, read only those into a
// zeroed buffer, and hand it to writeChunk (hash, compress, store unless
// present). Several chunks are in flight at once, so reading from the export
// overlaps hashing and compressing; chunks a run does not read keep the base
// point's id.

import type { ChunkId, ChunkRepository } from '../chunkstore/repo.js';
import { ZERO_CHUNK } from '../chunkstore/repo.js';
import { toVirError, virErr } from '../errors.js';
import type { NbdClient } from '../nbd/client.js';
import { extents } from '../nbd/extents.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_DIRTY_BITMAP, NBD_STATE_DIRTY, NBD_STATE_ZERO } from '../nbd/protocol.js';
import { chunksTouched } from './plan.js';

export interface DiskProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface ReadDiskInput {
  /** connected with base:allocation (and the dirty-bitmap context of an incremental disk) */
  client: NbdClient;
  repo: ChunkRepository;
  chunkSize: number;
  /** the base point's chunks of this disk; null: read every chunk */
  base: readonly ChunkId[] | null;
  /** the exported bitmap of an incremental disk (name or full context) */
  bitmap: string | null;
  /** chunks in flight (default 8) */
  concurrency?: number;
  onProgress?: (p: DiskProgress) => void;
}

export interface ReadDiskResult {
  chunks: ChunkId[];
  /** bytes read from the export (holes and zero extents are not read) */
  bytesRead: number;
  /** compressed bytes newly stored (0 for chunks the repository had) */
  bytesNew: number;
  /** chunks read (the others came from the base) */
  chunksRead: number;
}

/** The chunks of this disk to read: all, or those the dirty bitmap touches. */
async function chunksToRead(inp: ReadDiskInput, count: number): Promise<number[]> {
  if (inp.base === null || inp.bitmap === null) return Array.from({ length: count }, (_, i) => i);
  const context = inp.bitmap.startsWith(CONTEXT_QEMU_DIRTY_BITMAP) ? inp.bitmap : `${CONTEXT_QEMU_DIRTY_BITMAP}${inp.bitmap}`;
  const dirty: Array<{ offset: number; length: number }> = [];
  for await (const e of extents(inp.client, context)) if (e.flags & NBD_STATE_DIRTY) dirty.push(e);
  return chunksTouched(dirty, inp.chunkSize);
}

/** The chunk's bytes: its data extents read into a zeroed buffer; null when it is all holes/zeroes. */
async function readChunkData(client: NbdClient, offset: number, length: number): Promise<{ data: Buffer | null; read: number }> {
  const data: Array<{ offset: number; length: number }> = [];
  for await (const e of extents(client, CONTEXT_BASE_ALLOCATION, { offset, length })) {
    if ((e.flags & NBD_STATE_ZERO) === 0) data.push(e);
  }
  if (data.length === 0) return { data: null, read: 0 };
  if (data.length === 1 && data[0]!.offset === offset && data[0]!.length === length) {
    return { data: await client.read(offset, length), read: length };
  }
  const buf = Buffer.alloc(length);
  await Promise.all(data.map(async (e) => (await client.read(e.offset, e.length)).copy(buf, e.offset - offset)));
  return { data: buf, read: data.reduce((n, e) => n + e.length, 0) };
}

export async function readDisk(inp: ReadDiskInput): Promise<ReadDiskResult> {
  const { client, repo, chunkSize } = inp;
  const count = Math.ceil(client.size / chunkSize);
  if (inp.base !== null && inp.base.length !== count) {
    throw virErr('INTERNAL_ERROR', 'STORAGE', `base index has ${inp.base.length} chunks, the export ${count}: a resized disk is read in full`);
  }
  if (!client.metaContexts.has(CONTEXT_BASE_ALLOCATION)) {
    throw virErr('OPERATION_FAILED', 'NBD', `export ${client.uri} did not negotiate ${CONTEXT_BASE_ALLOCATION}`);
  }
  const todo = await chunksToRead(inp, count);
  const chunks: ChunkId[] = inp.base === null ? new Array<ChunkId>(count).fill(ZERO_CHUNK) : [...inp.base];
  const bytesTotal = todo.reduce((n, i) => n + Math.min(chunkSize, client.size - i * chunkSize), 0);
  let bytesDone = 0;
  let bytesRead = 0;
  let bytesNew = 0;
  let next = 0;
  let failed = false;
  inp.onProgress?.({ bytesDone, bytesTotal });
  const worker = async () => {
    while (!failed && next < todo.length) {
      const i = todo[next++]!;
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, client.size - offset);
      try {
        const got = await readChunkData(client, offset, length);
        bytesRead += got.read;
        if (got.data === null) {
          chunks[i] = ZERO_CHUNK;
        } else {
          const w = await repo.writeChunk(got.data);
          chunks[i] = w.id;
          bytesNew += w.storedBytes;
        }
      } catch (e) {
        failed = true;
        throw toVirError(e, 'STORAGE');
      }
      bytesDone += length;
      inp.onProgress?.({ bytesDone, bytesTotal });
    }
  };
  const results = await Promise.allSettled(Array.from({ length: inp.concurrency ?? 8 }, worker));
  const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
  return { chunks, bytesRead, bytesNew, chunksRead: todo.length };
}
