// A qcow2 file written directly, as a copy sink (src/nbd/copy.ts): data
// clusters are appended with pwrite as they arrive, all-zero clusters are not
// allocated, and finish() writes the L2 tables, L1 and refcounts after the
// data, syncs, and only then writes the header (and syncs again). Until the
// header is in place the file is not a qcow2 at all, so a pull killed half-way
// never leaves a file that looks like a good backup.

import { virErr } from '../errors.js';
import type { CopySink } from '../nbd/copy.js';
import { DirectFile } from '../nbd/direct-file.js';
import { ClusterMap } from './cluster-map.js';
import type { Qcow2Backing } from './layout.js';

export interface Qcow2WriterOptions {
  /** Virtual disk size in bytes. */
  size: number;
  /**
   * Makes an overlay: where it holds nothing the backing file shows through, so
   * zero ranges are recorded (zeroFill) and every cluster written must be whole.
   */
  backing?: Qcow2Backing;
}

export class Qcow2Writer implements CopySink {
  readonly zeroFill: boolean;
  readonly where: string;
  private closed = false;

  private constructor(
    /** Data clusters go around the page cache (O_DIRECT) when the copy's windows allow it. */
    private readonly file: DirectFile,
    path: string,
    private readonly map: ClusterMap,
  ) {
    this.zeroFill = map.backing !== undefined;
    this.where = `'${path}'`;
  }

  /** Create (or truncate) `path` and write a qcow2 of `opts.size` bytes into it; close() when done. */
  static async create(path: string, opts: Qcow2WriterOptions): Promise<Qcow2Writer> {
    const map = new ClusterMap(opts); // argument errors before the file is touched
    let file: DirectFile;
    try {
      file = await DirectFile.open(path, 'w', 0o600);
    } catch (e) {
      throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot create qcow2 file '${path}': ${(e as Error).message}`, e);
    }
    return new Qcow2Writer(file, path, map);
  }

  /** Touched L2 tables held in memory (32 KiB each): what the writer's memory grows with. */
  get l2Tables(): number {
    return this.map.l2Tables;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    // Placed before the first await: concurrent writes get disjoint host clusters in call order.
    const runs = this.map.place(offset, data.length);
    await Promise.all(runs.map((r) => this.file.write(data.subarray(r.from, r.from + r.length), r.host)));
  }

  zero(offset: number, length: number): Promise<void> {
    this.map.zero(offset, length);
    return Promise.resolve();
  }

  /** Metadata after the data, sync, header, sync: the file becomes a qcow2 in its last write. */
  async finish(): Promise<void> {
    const { writes, header } = this.map.metadata();
    for (const w of writes) await this.file.write(w.data, w.offset);
    await this.file.sync();
    await this.file.write(header, 0);
    await this.file.sync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.file.close();
  }
}
