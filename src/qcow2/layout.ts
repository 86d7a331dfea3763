// The qcow2 (version 3) structures a backup writer needs, as bytes: the header
// with its extensions, L1/L2 entries, the refcount table and blocks, and where
// each goes in a file laid out as
//
//   header cluster | data clusters (write order) | L2 tables | L1 | refcount table | refcount blocks
//
// Every cluster of such a file is used exactly once, so every refcount is 1
// and the refcount structures only have to count the clusters, themselves
// included (sized by iteration). Pure: no files here (docs/interop/qcow2.txt
// in QEMU's tree is the format).

import { virErr } from '../errors.js';

export const CLUSTER_BITS = 16;
export const CLUSTER_SIZE = 1 << CLUSTER_BITS;
/** 16-bit refcounts, QEMU's default. */
export const REFCOUNT_ORDER = 4;
export const REFCOUNTS_PER_BLOCK = (CLUSTER_SIZE * 8) >> REFCOUNT_ORDER;
/** 8-byte entries per L2 table (no extended L2 entries). */
export const L2_ENTRIES = CLUSTER_SIZE / 8;
/** The 104 bytes of a v3 header, then compression_type (zlib = 0) padded to 8, as QEMU writes it. */
export const HEADER_LENGTH = 112;
export const MAGIC = 0x514649fb;
export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
/** The spec's limit on the backing file name. */
export const MAX_BACKING_NAME = 1023;
/** L2/L1 entry bit 63 ("refcount is exactly one"), as the high word's top bit. */
const COPIED_HIGH = 0x80000000;
/** L2 entry bit 0: the cluster reads as zeroes (the backing file does not show through). */
const ZERO_FLAG = 1;
const TWO_32 = 2 ** 32;

export interface Qcow2Backing {
  /** As stored: relative names resolve against the overlay's folder. */
  file: string;
  /** Recorded in the backing-format header extension (what `-F` sets). */
  format: string;
}

export interface HeaderFields {
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  backing?: Qcow2Backing;
}

/** L1 entries for a disk of `size` bytes: one per L2 table's span (512 MiB). */
export function l1Entries(size: number): number {
  return Math.ceil(size / (CLUSTER_SIZE * L2_ENTRIES));
}

function u64(buf: Buffer, at: number, n: number): void {
  buf.writeUInt32BE(Math.floor(n / TWO_32), at);
  buf.writeUInt32BE(n % TWO_32, at + 4);
}

/** Bytes of a header extension of `length` data bytes, padded to 8. */
const extLength = (length: number) => 8 + Math.ceil(length / 8) * 8;

/** The header cluster's bytes: header, extensions (backing format, end), backing file name; the rest of the cluster stays zero. */
export function encodeHeader(h: HeaderFields): Buffer {
  const format = Buffer.from(h.backing?.format ?? '', 'utf8');
  const name = Buffer.from(h.backing?.file ?? '', 'utf8');
  if (name.length > MAX_BACKING_NAME) throw virErr('INVALID_ARG', 'STORAGE', `backing file name '${h.backing!.file}' is longer than ${MAX_BACKING_NAME} bytes`);
  const extensions = (h.backing ? extLength(format.length) : 0) + extLength(0);
  const buf = Buffer.alloc(HEADER_LENGTH + extensions + name.length);
  buf.writeUInt32BE(MAGIC, 0);
  buf.writeUInt32BE(3, 4);
  if (h.backing) {
    u64(buf, 8, HEADER_LENGTH + extensions);
    buf.writeUInt32BE(name.length, 16);
  }
  buf.writeUInt32BE(CLUSTER_BITS, 20);
  u64(buf, 24, h.size);
  // 32: no encryption
  buf.writeUInt32BE(h.l1Size, 36);
  u64(buf, 40, h.l1TableOffset);
  u64(buf, 48, h.refcountTableOffset);
  buf.writeUInt32BE(h.refcountTableClusters, 56);
  // 60..71: no snapshots; 72..95: no incompatible, compatible or autoclear features
  buf.writeUInt32BE(REFCOUNT_ORDER, 96);
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  // 104: compression type zlib (0), padded
  let at = HEADER_LENGTH;
  if (h.backing) {
    buf.writeUInt32BE(EXT_BACKING_FORMAT, at);
    buf.writeUInt32BE(format.length, at + 4);
    format.copy(buf, at + 8);
    at += extLength(format.length);
  }
  buf.writeUInt32BE(EXT_END, at); // length 0 follows
  name.copy(buf, at + 8);
  return buf;
}

/** Write an L1/L2 entry pointing at host cluster `cluster` (refcount 1) at `at`. */
export function writeClusterEntry(buf: Buffer, at: number, cluster: number): void {
  // offset = cluster << 16: the high word holds the cluster's top 16 bits, the low word the rest shifted up
  buf.writeUInt32BE((COPIED_HIGH | (cluster >>> 16)) >>> 0, at);
  buf.writeUInt32BE((cluster & 0xffff) * CLUSTER_SIZE, at + 4);
}

/** Write an L2 entry that reads as zeroes without a host cluster at `at`. */
export function writeZeroEntry(buf: Buffer, at: number): void {
  buf.writeUInt32BE(0, at);
  buf.writeUInt32BE(ZERO_FLAG, at + 4);
}

/** Where the metadata after the data goes (byte offsets), and the file's clusters in all. */
export interface MetadataLayout {
  /** First L2 table; the others follow in L1 order. */
  l2Offset: number;
  l1Offset: number;
  l1Clusters: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  /** First refcount block; the others follow. */
  refcountBlockOffset: number;
  refcountBlocks: number;
  /** Clusters of the whole file, header to last refcount block: each has refcount 1. */
  clusters: number;
}

/**
 * Lay out the metadata after `dataEnd` (the first cluster after the data, header
 * included). The refcount blocks count themselves and the table that points at
 * them, so their number is the least fixed point of blocks = ceil(clusters / per block),
 * found by iterating from one block and one table cluster (both counts only grow).
 */
export function metadataLayout(dataEnd: number, l2Tables: number, l1Size: number): MetadataLayout {
  const l1Clusters = Math.ceil((l1Size * 8) / CLUSTER_SIZE);
  const before = dataEnd + l2Tables + l1Clusters;
  let blocks = 1;
  let table = 1;
  for (;;) {
    const nextBlocks = Math.ceil((before + table + blocks) / REFCOUNTS_PER_BLOCK);
    const nextTable = Math.ceil((nextBlocks * 8) / CLUSTER_SIZE);
    if (nextBlocks === blocks && nextTable === table) break;
    blocks = nextBlocks;
    table = nextTable;
  }
  const at = (cluster: number) => cluster * CLUSTER_SIZE;
  return {
    l2Offset: at(dataEnd),
    l1Offset: at(dataEnd + l2Tables),
    l1Clusters,
    refcountTableOffset: at(before),
    refcountTableClusters: table,
    refcountBlockOffset: at(before + table),
    refcountBlocks: blocks,
    clusters: before + table + blocks,
  };
}

/** The refcount table: one entry per refcount block, pointing at it. */
export function encodeRefcountTable(m: MetadataLayout): Buffer {
  const buf = Buffer.alloc(m.refcountTableClusters * CLUSTER_SIZE);
  for (let k = 0; k < m.refcountBlocks; k++) u64(buf, k * 8, m.refcountBlockOffset + k * CLUSTER_SIZE);
  return buf;
}

/** Refcount block `k`: refcount 1 for each of its clusters that is part of the file. */
export function encodeRefcountBlock(m: MetadataLayout, k: number): Buffer {
  const buf = Buffer.alloc(CLUSTER_SIZE);
  const used = Math.min(REFCOUNTS_PER_BLOCK, m.clusters - k * REFCOUNTS_PER_BLOCK);
  for (let i = 0; i < used; i++) buf.writeUInt16BE(1, i * 2);
  return buf;
}
