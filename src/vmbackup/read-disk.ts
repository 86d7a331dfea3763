// One disk of a pull export into chunks of the repository: for each chunk to
// read, look up in base:allocation (asked a window at a time) which parts
// hold data, read only those into a zeroed buffer, and hand it to writeChunk
// (hash, compress, store unless present). Several chunks are in flight at
// once, so reading from the export overlaps hashing and compressing; chunks a
// run does not read keep the base point's id.

import type { ChunkId, ChunkRepository } from '../chunkstore/repo.js';
import { ZERO_CHUNK } from '../chunkstore/repo.js';
import { toVirError, virErr } from '../errors.js';
import type { NbdClient } from '../nbd/client.js';
import { extents } from '../nbd/extents.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_DIRTY_BITMAP, NBD_STATE_DIRTY, NBD_STATE_ZERO } from '../nbd/protocol.js';
import type { ChunkWriter } from './chunk-codec-pool.js';
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
  /** how chunks are stored (default repo.writeChunk; the backup passes its worker pool's); `data` is given up */
  writeChunk?: ChunkWriter;
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

/**
 * Chunk buffers a disk's reads cycle through: the writer hands each chunk's
 * memory back once encoded (moved to a worker and back), so a backup does not
 * fault in and collect a fresh 4 MiB per chunk.
 */
class ChunkBuffers {
  private readonly free: Buffer[] = [];
  constructor(private readonly chunkSize: number) {}

  /** `length` bytes (a whole chunk's memory, or a fresh buffer for a short last chunk) */
  take(length: number): Buffer {
    if (length !== this.chunkSize) return Buffer.alloc(length);
    return this.free.pop() ?? Buffer.allocUnsafeSlow(length);
  }

  give(b: Buffer | null | undefined): void {
    if (b && b.length === this.chunkSize && b.byteOffset === 0) this.free.push(b);
  }
}

/** Bytes of the disk whose allocation one block status walk asks about (a window of 64 chunks of 4 MiB). */
const ALLOCATION_WINDOW = 256 * 1024 * 1024;

/**
 * Where the disk holds data (base:allocation without the zero flag), asked a
 * window at a time and shared by the chunks of that window: one round trip per
 * 256 MiB instead of one before every chunk's read. Chunks are taken in
 * order, so windows behind the reader are dropped, and the next window that
 * holds a chunk to read is asked for as soon as the reader enters the one
 * before it: the readers no longer stop at each window's edge for its answer
 * (40-130 ms for a window of an image fragmented by earlier writes).
 */
class AllocationMap {
  private readonly windows = new Map<number, Promise<Array<{ offset: number; length: number }>>>();
  private readonly window: number;
  /** the windows holding a chunk to read, ascending, and the first one not yet entered */
  private readonly visits: number[];
  private cursor = 0;

  constructor(private readonly client: NbdClient, chunkSize: number, todo: readonly number[]) {
    this.window = Math.max(chunkSize, Math.floor(ALLOCATION_WINDOW / chunkSize) * chunkSize);
    const perWindow = this.window / chunkSize;
    this.visits = [...new Set(todo.map((i) => Math.floor(i / perWindow)))];
  }

  private ask(w: number): Promise<Array<{ offset: number; length: number }>> {
    let p = this.windows.get(w);
    if (p === undefined) {
      p = this.load(w * this.window, Math.min(this.window, this.client.size - w * this.window));
      // a failure reaches the reader that awaits this window; a prefetched one may never be awaited
      p.catch(() => {});
      this.windows.set(w, p);
    }
    return p;
  }

  /** The data extents within [offset, offset + length), which must lie in one window (a chunk does). */
  async dataIn(offset: number, length: number): Promise<Array<{ offset: number; length: number }>> {
    const w = Math.floor(offset / this.window);
    for (const k of this.windows.keys()) if (k < w - 1) this.windows.delete(k);
    const p = this.ask(w);
    while (this.cursor < this.visits.length && this.visits[this.cursor]! <= w) this.cursor++;
    if (this.cursor < this.visits.length) void this.ask(this.visits[this.cursor]!);
    const out: Array<{ offset: number; length: number }> = [];
    for (const e of await p) {
      const s = Math.max(e.offset, offset);
      const end = Math.min(e.offset + e.length, offset + length);
      if (s < end) out.push({ offset: s, length: end - s });
    }
    return out;
  }

  private async load(offset: number, length: number): Promise<Array<{ offset: number; length: number }>> {
    const data: Array<{ offset: number; length: number }> = [];
    for await (const e of extents(this.client, CONTEXT_BASE_ALLOCATION, { offset, length })) {
      if ((e.flags & NBD_STATE_ZERO) === 0) data.push({ offset: e.offset, length: e.length });
    }
    return data;
  }
}

/**
 * Bytes per NBD READ (a chunk is read as several pipelined requests, as
 * nbdcopy and backup-pull do): QEMU's NBD server spent 5x the CPU per byte
 * answering 4 MiB requests (1.35 CPU s per 512 MiB against 0.25 for nbdcopy's 256 KiB).
 */
const READ_REQUEST = 256 * 1024;

/** The chunk's bytes: its data extents read into a zeroed buffer; null when it is all holes/zeroes. */
async function readChunkData(client: NbdClient, alloc: AllocationMap, offset: number, length: number, buffers: ChunkBuffers): Promise<{ data: Buffer | null; read: number }> {
  const data = await alloc.dataIn(offset, length);
  if (data.length === 0) return { data: null, read: 0 };
  const buf = buffers.take(length);
  if (!(data.length === 1 && data[0]!.offset === offset && data[0]!.length === length)) buf.fill(0);
  await Promise.all(data.map((e) => client.readInto(e.offset, buf.subarray(e.offset - offset, e.offset - offset + e.length), READ_REQUEST)));
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
  const writeChunk: ChunkWriter = inp.writeChunk ?? ((data: Buffer) => repo.writeChunk(data));
  const buffers = new ChunkBuffers(chunkSize);
  const alloc = new AllocationMap(client, chunkSize, todo);
  const chunks: ChunkId[] = inp.base === null ? new Array<ChunkId>(count).fill(ZERO_CHUNK) : [...inp.base];
  const bytesTotal = todo.reduce((n, i) => n + Math.min(chunkSize, client.size - i * chunkSize), 0);
  let bytesDone = 0;
  let bytesRead = 0;
  let bytesNew = 0;
  let next = 0;
  let failed = false;
  inp.onProgress?.({ bytesDone, bytesTotal });
  const worker = async () => {
    let spareBlob: Buffer | null = null;
    while (!failed && next < todo.length) {
      const i = todo[next++]!;
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, client.size - offset);
      try {
        const got = await readChunkData(client, alloc, offset, length, buffers);
        bytesRead += got.read;
        if (got.data === null) {
          chunks[i] = ZERO_CHUNK;
        } else {
          const w = await writeChunk(got.data, spareBlob);
          chunks[i] = w.id;
          bytesNew += w.storedBytes;
          buffers.give(w.spent);
          spareBlob = w.spentBlob ?? null;
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
