// The one small interface every chunk-repository backend implements, and its
// first implementation: a local folder. Keys are '/'-separated relative names
// ('chunks/ab/cd/<id>', 'points/<domain>/<id>.json'); the folder maps them to
// files one to one, so an object-store backend (S3 and the like) can follow
// with the same keys and nothing above this file changes.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { virErr } from '../errors.js';
import { awaitedLater } from '../util/awaited-later.js';

export interface ObjectInfo {
  key: string;
  size: number;
  mtimeMs: number;
}

/** S3 Object Lock retention for every object put from now on (repo-init --object-lock-days). */
export interface ObjectLock {
  mode: 'COMPLIANCE' | 'GOVERNANCE';
  days: number;
}

export interface ObjectStore {
  /** Atomic: readers see the whole object or nothing (folder: write temp + fsync + rename). */
  put(key: string, data: Buffer): Promise<void>;
  /** Throws VirError NO_STORAGE_VOL ('not found') when absent. */
  get(key: string): Promise<Buffer>;
  /** `retainUntilMs`: the end of the object's lock retention, when the store has object lock (S3). */
  stat(key: string): Promise<{ size: number; mtimeMs: number; retainUntilMs?: number } | null>;
  /** Every object whose key starts with `prefix`, streamed (no full listing in memory), in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Missing is fine. */
  delete(key: string): Promise<void>;
  /** Refresh mtime (gc's mark phase / "chunk in use"); folder: utimes. Throws NO_STORAGE_VOL when absent. */
  touch(key: string): Promise<void>;
  /**
   * Optional batched durability: an object put this way is neither durable
   * nor visible (get/stat/list) until flush(); a crash before the flush loses
   * it whole and leaves nothing visible. Lets a backup write many chunks with
   * one round of syncs instead of one each.
   */
  putDeferred?(key: string, data: Buffer): Promise<void>;
  /** Make every putDeferred before this call durable and visible. */
  flush?(): Promise<void>;
  /**
   * Put every object written from now on under `lock`'s retention; refuses
   * when the store cannot (a folder; a bucket without object lock). A delete
   * then removes the object's versions, which the store refuses while retained.
   */
  setObjectLock?(lock: ObjectLock): Promise<void>;
  /** Remove what interrupted puts left (folder: hidden temp files) older than `cutoffMs` (epoch ms); returns how many. */
  removeStale?(cutoffMs: number): Promise<number>;
  /**
   * True when put and putDeferred hold no reference to `data` once their
   * promise settles, so the caller may reuse the memory (a folder writes the
   * file first; S3's putDeferred returns while its upload still reads it).
   */
  readonly releasesData?: boolean;
  /**
   * For a store that is not releasesData: resolves once it holds no
   * reference to `data` given to putDeferred (its upload settled), so the
   * caller may then reuse the memory.
   */
  released?(data: Buffer): Promise<void>;
}

/** The hidden temp files put and putDeferred write beside their targets. */
const TEMP_FILE = /^\..+\.tmp-\d+-\d+-[0-9a-f]{8}$/;

/** A key segment: no empty, '.' or '..' parts, nothing hidden (temp files start with '.'), no separators. */
const SEGMENT = /^[^/\\\0.][^/\\\0]*$/;

/** Throws INVALID_ARG unless `key` is a relative '/'-separated name that stays inside the store. */
export function checkKey(key: string): void {
  const parts = key.split('/');
  if (key.length === 0 || key.length > 1024 || !parts.every((p) => SEGMENT.test(p))) {
    throw virErr('INVALID_ARG', 'STORAGE', `object key '${key}' is not a relative name of the store (no '..', '.', leading '/' or empty parts)`);
  }
}

export function notFound(what: string): never {
  throw virErr('NO_STORAGE_VOL', 'STORAGE', `${what} not found`);
}

function isErrno(e: unknown, code: string): boolean {
  return (e as NodeJS.ErrnoException | null)?.code === code;
}

let tmpCounter = 0;

/** How many files flush() syncs at once (the device serves parallel fsyncs far faster than serial ones). */
const FLUSH_PARALLEL = 8;

/** fsyncs of deferred objects run ahead of their flush, this many at a time (two of libuv's four threads). */
const SYNCS_AHEAD = 2;

/**
 * The fsyncs of deferred objects, started as they are written instead of all
 * at the flush: a backup's flush then finds most of its files synced while the
 * run was still reading (an incremental point of 60 new chunks spent ~100 ms
 * syncing them after its read). Only the fsync runs ahead; the rename that
 * makes an object visible, and the folder's fsync, stay in the flush.
 */
class SyncsAhead {
  private running = 0;
  private readonly queue: Array<() => void> = [];

  /** fsync `file` once a slot is free; a failure is thrown where the flush awaits it. */
  start(file: string): Promise<void> {
    return awaitedLater(new Promise<void>((resolve, reject) => {
      const go = () => {
        this.running++;
        syncFile(file).then(resolve, reject).finally(() => {
          this.running--;
          this.queue.shift()?.();
        });
      };
      if (this.running < SYNCS_AHEAD) go();
      else this.queue.push(go);
    }));
  }

  /** Start every queued fsync now: a flush waits for them all. */
  drain(): void {
    for (const go of this.queue.splice(0)) go();
  }
}

/** The folder backend. Objects are files under `root`; directories are created on demand. */
class FolderStore implements ObjectStore {
  readonly releasesData = true;
  /** putDeferred objects not yet flushed: key → their hidden temp file and its fsync, started as it was written. */
  private pending = new Map<string, { tmp: string; sync: Promise<void> }>();
  private readonly ahead = new SyncsAhead();

  constructor(private readonly root: string) {}

  private tempFor(file: string): string {
    // beside the target (rename is atomic only within a file system), hidden from list
    return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${++tmpCounter}-${randomBytes(4).toString('hex')}`);
  }

  async putDeferred(key: string, data: Buffer): Promise<void> {
    const file = this.file(key);
    const tmp = this.tempFor(file);
    try {
      await writeNew(tmp, data);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot write object '${key}': ${(e as Error).message}`, e);
    }
    const before = this.pending.get(key);
    this.pending.set(key, { tmp, sync: this.ahead.start(tmp) });
    if (before) await fs.rm(before.tmp, { force: true });
  }

  async flush(): Promise<void> {
    const batch = [...this.pending];
    this.pending = new Map();
    this.ahead.drain();
    const dirs = new Set<string>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < batch.length) {
        const [key, { tmp, sync }] = batch[next++]!;
        const file = this.file(key);
        try {
          // a failed fsync fails the flush: never retried (a second fsync may pass with the data lost)
          await sync;
          await fs.rename(tmp, file);
        } catch (e) {
          await fs.rm(tmp, { force: true });
          throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot write object '${key}': ${(e as Error).message}`, e);
        }
        dirs.add(path.dirname(file));
      }
    };
    await Promise.all(Array.from({ length: FLUSH_PARALLEL }, worker));
    // a backup's chunks fan out into as many folders as chunks: their syncs in parallel too
    const folders = [...dirs];
    const syncFolders = async (): Promise<void> => {
      while (folders.length > 0) await syncDir(folders.pop()!);
    };
    await Promise.all(Array.from({ length: FLUSH_PARALLEL }, syncFolders));
  }

  private file(key: string): string {
    checkKey(key);
    return path.join(this.root, ...key.split('/'));
  }

  async put(key: string, data: Buffer): Promise<void> {
    const file = this.file(key);
    const dir = path.dirname(file);
    const tmp = this.tempFor(file);
    await fs.mkdir(dir, { recursive: true });
    try {
      const fh = await fs.open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, file);
      await syncDir(dir);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot write object '${key}': ${(e as Error).message}`, e);
    }
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readWhole(this.file(key));
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) notFound(`object '${key}'`);
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot read object '${key}': ${(e as Error).message}`, e);
    }
  }

  async stat(key: string): Promise<{ size: number; mtimeMs: number } | null> {
    try {
      const st = await fs.stat(this.file(key));
      return st.isFile() ? { size: st.size, mtimeMs: st.mtimeMs } : null;
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return null;
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot stat object '${key}': ${(e as Error).message}`, e);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // start in the deepest folder the prefix names, then filter by the rest of it
    const cut = prefix.lastIndexOf('/');
    const dirKey = cut < 0 ? '' : prefix.slice(0, cut);
    const namePrefix = prefix.slice(cut + 1);
    if (dirKey !== '') checkKey(dirKey);
    yield* this.walk(dirKey, namePrefix);
  }

  /** Depth-first with opendir: memory is one directory handle per level, never a whole listing. */
  private async *walk(dirKey: string, namePrefix: string): AsyncIterable<ObjectInfo> {
    const dir = dirKey === '' ? this.root : path.join(this.root, ...dirKey.split('/'));
    let handle: import('node:fs').Dir;
    try {
      handle = await fs.opendir(dir, { bufferSize: 64 });
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return;
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot list '${dirKey}': ${(e as Error).message}`, e);
    }
    for await (const ent of handle) {
      if (ent.name.startsWith('.') || !ent.name.startsWith(namePrefix)) continue;
      const key = dirKey === '' ? ent.name : `${dirKey}/${ent.name}`;
      if (ent.isDirectory()) {
        yield* this.walk(key, '');
      } else if (ent.isFile()) {
        const st = await fs.stat(path.join(dir, ent.name)).catch((e: unknown) => {
          if (isErrno(e, 'ENOENT')) return null; // deleted while listing
          throw e;
        });
        if (st) yield { key, size: st.size, mtimeMs: st.mtimeMs };
      }
    }
  }

  async removeStale(cutoffMs: number): Promise<number> {
    let removed = 0;
    const visit = async (dir: string): Promise<void> => {
      let handle: import('node:fs').Dir;
      try {
        handle = await fs.opendir(dir, { bufferSize: 64 });
      } catch (e) {
        if (isErrno(e, 'ENOENT')) return;
        throw e;
      }
      for await (const ent of handle) {
        const file = path.join(dir, ent.name);
        if (ent.isDirectory()) {
          await visit(file);
        } else if (ent.isFile() && TEMP_FILE.test(ent.name)) {
          const st = await fs.stat(file).catch(() => null);
          if (st && st.mtimeMs < cutoffMs) {
            await fs.rm(file, { force: true });
            removed++;
          }
        }
      }
    };
    await visit(this.root);
    return removed;
  }

  async delete(key: string): Promise<void> {
    try {
      await fs.unlink(this.file(key));
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return;
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot delete object '${key}': ${(e as Error).message}`, e);
    }
  }

  async touch(key: string): Promise<void> {
    const now = new Date();
    try {
      await fs.utimes(this.file(key), now, now);
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) notFound(`object '${key}'`);
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot touch object '${key}': ${(e as Error).message}`, e);
    }
  }
}

/**
 * A new file holding `data`: open, whole-buffer writes, close — the folder
 * made only when missing. (fs.writeFile writes in 512 KiB pieces, each a
 * thread-pool round trip, and a mkdir before every chunk was one more: a
 * backup's chunk writes sat behind them.)
 */
async function writeNew(file: string, data: Buffer): Promise<void> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'wx', 0o600);
  } catch (e) {
    if (!isErrno(e, 'ENOENT')) throw e;
    await fs.mkdir(path.dirname(file), { recursive: true });
    fh = await fs.open(file, 'wx', 0o600);
  }
  try {
    let done = 0;
    while (done < data.length) done += (await fh.write(data, done, data.length - done, done)).bytesWritten;
  } finally {
    await fh.close();
  }
}

/**
 * A file's bytes: open, fstat, whole-buffer reads, close (fs.readFile reads
 * in 512 KiB pieces, each a thread-pool round trip: 8 per chunk a restore or
 * backup-serve fetches). Objects are replaced by rename, never written in
 * place, so the size fstat gives is the size to read.
 */
async function readWhole(file: string): Promise<Buffer> {
  const fh = await fs.open(file, 'r');
  try {
    const { size } = await fh.stat();
    const buf = Buffer.allocUnsafeSlow(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await fh.read(buf, done, size - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === size ? buf : buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}

/** fsync a file's data and metadata. */
async function syncFile(file: string): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync a directory so a rename in it survives a crash. */
async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * A folder as an object store; created when missing. A put interrupted by a
 * crash leaves a hidden temp file ('.NAME.tmp-…') beside its target, which
 * list never shows and removeStale removes.
 */
export async function openFolderStore(dir: string): Promise<ObjectStore> {
  const root = path.resolve(dir);
  await fs.mkdir(root, { recursive: true });
  const st = await fs.stat(root);
  if (!st.isDirectory()) throw virErr('INVALID_ARG', 'STORAGE', `repository '${dir}' is not a folder`);
  return new FolderStore(root);
}
