// Guest clusters -> host clusters of a qcow2 being written once, front to back:
// a data write takes the next free host clusters in the order writes arrive
// (one write's clusters stay contiguous), and `metadata()` turns the map into
// the L2 tables, L1, refcounts and header that go after the data. Pure: the
// writer (writer.ts) does the I/O. Only touched L2 tables are held, as host
// cluster numbers (4 bytes per entry, 32 KiB per 512 MiB of disk touched).

import { virErr } from '../errors.js';
import {
  CLUSTER_SIZE,
  L2_ENTRIES,
  encodeHeader,
  encodeRefcountBlock,
  encodeRefcountTable,
  l1Entries,
  metadataLayout,
  writeClusterEntry,
  writeZeroEntry,
  type Qcow2Backing,
} from './layout.js';

/** Table values besides host cluster numbers (cluster 0 is the header, never data). */
const UNALLOCATED = 0;
const ZERO = 0xffffffff;

/** Bytes data[from, from + length) go at host offset `host`. */
export interface HostRun {
  host: number;
  from: number;
  length: number;
}

/** One write of the finished metadata. */
export interface MetadataWrite {
  offset: number;
  data: Buffer;
}

export interface ClusterMapOptions {
  /** Virtual disk size in bytes (a multiple of 512, as QEMU's block layer wants). */
  size: number;
  /** An overlay: clusters it does not hold show the backing file, so zeroes must be recorded. */
  backing?: Qcow2Backing;
}

export class ClusterMap {
  readonly size: number;
  readonly backing: Qcow2Backing | undefined;
  private readonly l2 = new Map<number, Uint32Array>();
  /** Next free host cluster: data starts after the header cluster. */
  private next = 1;
  /**
   * Overlay only: bytes written or zeroed so far of clusters not yet wholly
   * covered. A cluster an overlay holds must be whole (it hides the backing
   * file's cluster), so a cluster left partial at the end is an error, not a
   * silently zeroed neighbour.
   */
  private readonly partial: Map<number, number> | undefined;

  constructor(opts: ClusterMapOptions) {
    if (!Number.isSafeInteger(opts.size) || opts.size < 0 || opts.size % 512 !== 0) {
      throw virErr('INVALID_ARG', 'STORAGE', `qcow2 virtual size ${opts.size} is not a multiple of 512 bytes`);
    }
    this.size = opts.size;
    this.backing = opts.backing;
    this.partial = opts.backing ? new Map() : undefined;
  }

  /** L2 tables held (each covers 512 MiB of the disk). */
  get l2Tables(): number {
    return this.l2.size;
  }

  /** Host clusters allocated to data so far. */
  get dataClusters(): number {
    return this.next - 1;
  }

  /**
   * Where the bytes of a write of [offset, offset + length) go: clusters seen for
   * the first time (or only zeroed so far) take the next free host clusters, in
   * order, so the write's runs are as contiguous as the file allows.
   */
  place(offset: number, length: number): HostRun[] {
    this.check(offset, length);
    const runs: HostRun[] = [];
    for (let c = Math.floor(offset / CLUSTER_SIZE); c * CLUSTER_SIZE < offset + length; c++) {
      const table = this.table(c);
      let host = table[c % L2_ENTRIES]!;
      if (host === UNALLOCATED || host === ZERO) {
        if (this.next >= ZERO) throw virErr('INTERNAL_ERROR', 'STORAGE', 'qcow2 writer: more than 2^32 host clusters');
        host = this.next++;
        table[c % L2_ENTRIES] = host;
      }
      const s = Math.max(offset, c * CLUSTER_SIZE);
      const e = Math.min(offset + length, (c + 1) * CLUSTER_SIZE);
      this.cover(c, e - s);
      const at = host * CLUSTER_SIZE + (s - c * CLUSTER_SIZE);
      const last = runs[runs.length - 1];
      if (last && last.host + last.length === at) last.length += e - s;
      else runs.push({ host: at, from: s - offset, length: e - s });
    }
    return runs;
  }

  /**
   * [offset, offset + length) reads as zeroes. Without a backing file nothing is
   * needed (unallocated reads as zeroes; a new host cluster is a hole where not
   * written); in an overlay clusters not holding data get the "reads as zeroes" flag.
   */
  zero(offset: number, length: number): void {
    this.check(offset, length);
    if (!this.backing) return;
    for (let c = Math.floor(offset / CLUSTER_SIZE); c * CLUSTER_SIZE < offset + length; c++) {
      const table = this.table(c);
      if (table[c % L2_ENTRIES] === UNALLOCATED) table[c % L2_ENTRIES] = ZERO;
      this.cover(c, Math.min(offset + length, (c + 1) * CLUSTER_SIZE) - Math.max(offset, c * CLUSTER_SIZE));
    }
  }

  /**
   * The metadata after the data, in file order (L2 tables, L1, refcount table,
   * refcount blocks; one cluster-sized buffer at a time), and the header, which
   * the writer puts in place last.
   */
  metadata(): { writes: Iterable<MetadataWrite>; header: Buffer } {
    const partial = this.partial?.keys().next();
    if (partial && !partial.done) {
      throw virErr('INTERNAL_ERROR', 'STORAGE', `qcow2 overlay cluster at ${partial.value * CLUSTER_SIZE} is only partly written: dirty ranges must be whole ${CLUSTER_SIZE}-byte clusters`);
    }
    const l1Size = l1Entries(this.size);
    const m = metadataLayout(this.next, this.l2.size, l1Size);
    const header = encodeHeader({
      size: this.size,
      l1Size,
      l1TableOffset: m.l1Offset,
      refcountTableOffset: m.refcountTableOffset,
      refcountTableClusters: m.refcountTableClusters,
      ...(this.backing ? { backing: this.backing } : {}),
    });
    const tables = [...this.l2.keys()].sort((a, b) => a - b);
    const l2 = this.l2;
    function* writes(): Generator<MetadataWrite> {
      const l1 = Buffer.alloc(m.l1Clusters * CLUSTER_SIZE);
      for (const [i, t] of tables.entries()) {
        const cluster = m.l2Offset / CLUSTER_SIZE + i;
        writeClusterEntry(l1, t * 8, cluster);
        yield { offset: cluster * CLUSTER_SIZE, data: encodeL2(l2.get(t)!) };
      }
      yield { offset: m.l1Offset, data: l1 };
      yield { offset: m.refcountTableOffset, data: encodeRefcountTable(m) };
      for (let k = 0; k < m.refcountBlocks; k++) yield { offset: m.refcountBlockOffset + k * CLUSTER_SIZE, data: encodeRefcountBlock(m, k) };
    }
    return { writes: writes(), header };
  }

  private check(offset: number, length: number): void {
    if (!(offset >= 0 && length > 0 && offset + length <= this.size)) {
      throw virErr('INTERNAL_ERROR', 'STORAGE', `qcow2 writer: range [${offset}, ${offset + length}) is outside the ${this.size}-byte disk`);
    }
  }

  private table(cluster: number): Uint32Array {
    const t = Math.floor(cluster / L2_ENTRIES);
    let table = this.l2.get(t);
    if (!table) {
      table = new Uint32Array(L2_ENTRIES);
      this.l2.set(t, table);
    }
    return table;
  }

  private cover(cluster: number, bytes: number): void {
    if (!this.partial) return;
    const whole = Math.min(CLUSTER_SIZE, this.size - cluster * CLUSTER_SIZE);
    const done = (this.partial.get(cluster) ?? 0) + bytes;
    if (done >= whole) this.partial.delete(cluster);
    else this.partial.set(cluster, done);
  }
}

function encodeL2(table: Uint32Array): Buffer {
  const buf = Buffer.alloc(CLUSTER_SIZE);
  for (let i = 0; i < L2_ENTRIES; i++) {
    const v = table[i]!;
    if (v === ZERO) writeZeroEntry(buf, i * 8);
    else if (v !== UNALLOCATED) writeClusterEntry(buf, i * 8, v);
  }
  return buf;
}
