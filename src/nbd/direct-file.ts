// A backup file written around the page cache (O_DIRECT) wherever the bytes
// allow it. Buffered writes of a pull's gigabytes cost more CPU than the rest
// of the pull (the copy into fresh page-cache pages: 1-2 s per GiB here, 47% of
// the process's samples) and leave all of it to write back in the final
// fdatasync; direct writes from page-aligned memory cost 0.15 s per GiB and
// reach the disk while the copy goes on. nbdcopy gets there another way
// (sync_file_range + POSIX_FADV_DONTNEED, which Node does not offer).
//
// O_DIRECT needs the memory, the file offset and the length aligned: windows
// come from alignedBuffer() (WebAssembly memory, page-aligned, shared so a
// hashing thread reads it in place); anything else (a short tail, metadata)
// goes through a second, buffered descriptor of the same file. fdatasync on
// either flushes the file. Filesystems without O_DIRECT (tmpfs) get buffered
// writes only.

import * as fs from 'node:fs';
import { promisify } from 'node:util';

const fsOpen = promisify(fs.open);
const fsWrite = promisify(fs.write);
const fsFdatasync = promisify(fs.fdatasync);
const fsClose = promisify(fs.close);

/** Alignment of memory, offset and length for a direct write (a page: above any disk's logical block). */
export const DIRECT_ALIGN = 4096;

const WASM_PAGE = 65536;
/** The one WebAssembly API used (lib ES2022 has no WebAssembly types): shared memory is a SharedArrayBuffer. */
const Wasm = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum: number; shared: true }) => { buffer: SharedArrayBuffer } } }).WebAssembly;
/** Memories handed out by alignedBuffer: their byte 0 is page-aligned. */
const alignedMemory = new WeakSet<ArrayBufferLike>();
/** Reused, not left to the collector (each is a virtual-memory reservation of its own). */
const freeAligned = new Map<number, Buffer[]>();
const KEEP_FREE = 64;

/**
 * `length` bytes of page-aligned shared memory (contents undefined: zeroes when
 * new, old data when reused). Give it back with releaseAlignedBuffer.
 */
export function alignedBuffer(length: number): Buffer {
  const free = freeAligned.get(length)?.pop();
  if (free) return free;
  const pages = Math.max(1, Math.ceil(length / WASM_PAGE));
  const memory = new Wasm.Memory({ initial: pages, maximum: pages, shared: true });
  alignedMemory.add(memory.buffer);
  return Buffer.from(memory.buffer, 0, length);
}

/** Back to the free list once nothing reads or writes it any more. */
export function releaseAlignedBuffer(b: Buffer): void {
  if (!alignedMemory.has(b.buffer) || b.byteOffset !== 0) return;
  const list = freeAligned.get(b.length) ?? [];
  if (list.length < KEEP_FREE) list.push(b);
  freeAligned.set(b.length, list);
}

/** True when `data` may be written with O_DIRECT at `position`. */
export function directWritable(data: Buffer, position: number): boolean {
  return alignedMemory.has(data.buffer) && data.byteOffset % DIRECT_ALIGN === 0 && data.length % DIRECT_ALIGN === 0 && position % DIRECT_ALIGN === 0;
}

async function pwriteAll(fd: number, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) done += (await fsWrite(fd, data, done, data.length - done, position + done)).bytesWritten;
}

export class DirectFile {
  /** Direct writes in use; cleared (the fd stays open until close) once the filesystem refused one. */
  private useDirect: boolean;
  private closed = false;

  private constructor(
    /** The buffered descriptor: unaligned writes, fdatasync. */
    readonly fd: number,
    private readonly direct: number | undefined,
    private readonly ownsFd: boolean,
  ) {
    this.useDirect = direct !== undefined;
  }

  /**
   * Open `target`, a path (opened with `flags` and `mode`) or an fd the caller
   * keeps owning, plus a direct descriptor of the same file where O_DIRECT works.
   */
  static async open(target: string | number, flags: string | number = 'w', mode = 0o666): Promise<DirectFile> {
    const fd = typeof target === 'number' ? target : await fsOpen(target, flags, mode);
    let direct: number | undefined;
    try {
      // Through /proc: the same file whether we were given a path or an fd.
      direct = await fsOpen(`/proc/self/fd/${fd}`, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
    } catch {
      direct = undefined; // no O_DIRECT here (tmpfs, some FUSE): buffered writes only
    }
    return new DirectFile(fd, direct, typeof target !== 'number');
  }

  /** Whether direct writes are (still) in use. */
  get isDirect(): boolean {
    return this.useDirect;
  }

  /** pwrite all of `data` at `position`: direct when it is aligned, else buffered. */
  async write(data: Buffer, position: number): Promise<void> {
    if (this.useDirect && directWritable(data, position)) {
      try {
        return await pwriteAll(this.direct!, data, position);
      } catch (e) {
        // A filesystem that opens O_DIRECT but refuses the write: buffered from now on.
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        this.useDirect = false;
      }
    }
    await pwriteAll(this.fd, data, position);
  }

  /** Data and metadata durable (direct writes may sit in the disk's cache until now). */
  sync(): Promise<void> {
    return fsFdatasync(this.fd);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.useDirect = false;
    if (this.direct !== undefined) await fsClose(this.direct).catch(() => undefined);
    if (this.ownsFd) await fsClose(this.fd);
  }
}
