// The qcow2 writer's pure part: header bytes, refcount sizing at its
// boundaries, and (fast-check) that any order of writes and zeroes gives a file
// whose guest content is the model's and whose every cluster is referenced
// exactly once with refcount 1. The file is assembled in memory and read back
// by a small qcow2 reader written here from the spec, independent of the writer.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCode, VirError } from '../../src/errors.js';
import { ClusterMap } from '../../src/qcow2/cluster-map.js';
import { CLUSTER_SIZE, REFCOUNTS_PER_BLOCK, encodeHeader, l1Entries, metadataLayout } from '../../src/qcow2/layout.js';

const CS = CLUSTER_SIZE;
const MiB = 1 << 20;
const OFFSET_MASK = (1n << 56n) - 1n - 511n;

/** The file a map produces, data included: `data` maps host offsets to bytes written there. */
function assemble(map: ClusterMap, data: Array<{ host: number; bytes: Buffer }>): Buffer {
  const { writes, header } = map.metadata();
  const parts = [...data.map((d) => ({ offset: d.host, data: d.bytes })), ...writes, { offset: 0, data: header }];
  const file = Buffer.alloc(Math.max(...parts.map((p) => p.offset + p.data.length)));
  for (const p of parts) p.data.copy(file, p.offset);
  return file;
}

interface Parsed {
  size: number;
  backing?: { file: string; format: string };
  /** Guest content, reading `backing` where the image holds nothing. */
  read(backing?: Buffer): Buffer;
}

/** A qcow2 v3 reader (no snapshots, compression or encryption) that also checks the refcounts. */
function parse(file: Buffer): Parsed {
  assert.equal(file.readUInt32BE(0), 0x514649fb, 'magic');
  assert.equal(file.readUInt32BE(4), 3, 'version');
  assert.equal(file.readUInt32BE(20), 16, 'cluster_bits');
  assert.equal(file.readUInt32BE(96), 4, 'refcount_order');
  const hlen = file.readUInt32BE(100);
  const size = Number(file.readBigUInt64BE(24));
  const l1Size = file.readUInt32BE(36);
  const l1Offset = Number(file.readBigUInt64BE(40));
  const rtOffset = Number(file.readBigUInt64BE(48));
  const rtClusters = file.readUInt32BE(56);
  assert.equal(file.readBigUInt64BE(72), 0n, 'no incompatible features');
  assert.equal(file.length % CS, 0, 'the file is whole clusters');
  const refs = new Uint32Array(file.length / CS);
  const ref = (offset: number, clusters = 1) => {
    assert.equal(offset % CS, 0, `aligned: ${offset}`);
    for (let i = 0; i < clusters; i++) refs[offset / CS + i]! += 1;
  };
  ref(0);
  ref(l1Offset, Math.ceil((l1Size * 8) / CS));
  ref(rtOffset, rtClusters);
  let backing: Parsed['backing'];
  let format = '';
  for (let at = hlen; ; ) {
    const type = file.readUInt32BE(at);
    const len = file.readUInt32BE(at + 4);
    if (type === 0) break;
    if (type === 0xe2792aca) format = file.toString('utf8', at + 8, at + 8 + len);
    at += 8 + Math.ceil(len / 8) * 8;
  }
  const bOffset = Number(file.readBigUInt64BE(8));
  if (bOffset !== 0) backing = { file: file.toString('utf8', bOffset, bOffset + file.readUInt32BE(16)), format };
  // guest cluster -> host offset, 'zero', or undefined (not in this image)
  const guest = new Map<number, number | 'zero'>();
  for (let i = 0; i < l1Size; i++) {
    const e = file.readBigUInt64BE(l1Offset + i * 8);
    if (e === 0n) continue;
    assert.equal(e >> 63n, 1n, 'L1 entry: refcount exactly one');
    const l2 = Number(e & OFFSET_MASK);
    ref(l2);
    for (let j = 0; j < CS / 8; j++) {
      const v = file.readBigUInt64BE(l2 + j * 8);
      if (v === 0n) continue;
      const c = i * (CS / 8) + j;
      assert.ok(c * CS < size, 'no entry beyond the disk');
      if (v === 1n) guest.set(c, 'zero');
      else {
        assert.equal(v >> 62n, 2n, 'L2 entry: standard, refcount exactly one');
        assert.equal(v & 511n, 0n);
        guest.set(c, Number(v & OFFSET_MASK));
        ref(Number(v & OFFSET_MASK));
      }
    }
  }
  const refcounts = new Uint16Array(refs.length);
  for (let k = 0; k < (rtClusters * CS) / 8; k++) {
    const b = Number(file.readBigUInt64BE(rtOffset + k * 8));
    if (b === 0) continue;
    ref(b);
    for (let i = 0; i < REFCOUNTS_PER_BLOCK; i++) {
      const c = k * REFCOUNTS_PER_BLOCK + i;
      const n = file.readUInt16BE(b + i * 2);
      if (c < refs.length) refcounts[c] = n;
      else assert.equal(n, 0, `no refcount beyond the file (cluster ${c})`);
    }
  }
  for (let c = 0; c < refs.length; c++) {
    assert.equal(refs[c], 1, `cluster ${c} referenced once`);
    assert.equal(refcounts[c], 1, `cluster ${c} has refcount 1`);
  }
  return {
    size,
    ...(backing ? { backing } : {}),
    read(base?: Buffer) {
      const out = Buffer.alloc(size);
      for (let c = 0; c * CS < size; c++) {
        const n = Math.min(CS, size - c * CS);
        const g = guest.get(c);
        if (typeof g === 'number') file.copy(out, c * CS, g, g + n);
        else if (g === undefined && base) base.copy(out, c * CS, c * CS, c * CS + n);
      }
      return out;
    },
  };
}

type Op = { offset: number; length: number; fill: number | 'zero' };

/** Apply `ops` in order to a fresh map; the writes' bytes are a pattern of (fill, guest offset). */
function build(size: number, ops: Op[], backing?: { file: string; format: string }): Buffer {
  const map = new ClusterMap({ size, ...(backing ? { backing } : {}) });
  const data: Array<{ host: number; bytes: Buffer }> = [];
  for (const op of ops) {
    if (op.fill === 'zero') {
      map.zero(op.offset, op.length);
      continue;
    }
    const bytes = pattern(op.offset, op.length, op.fill);
    for (const r of map.place(op.offset, op.length)) data.push({ host: r.host, bytes: bytes.subarray(r.from, r.from + r.length) });
  }
  return assemble(map, data);
}

function pattern(offset: number, length: number, fill: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 512) b.fill((fill + (offset + i) / 512) & 0xff || 1, i, Math.min(length, i + 512));
  return b;
}

/** Cut [start, end) into pieces at 512-byte boundaries chosen by `cuts` (fractions). */
function cut(start: number, end: number, cuts: number[]): Array<[number, number]> {
  const points = [...new Set(cuts.map((f) => start + Math.floor((f * (end - start)) / 512) * 512))].filter((p) => p > start && p < end).sort((a, b) => a - b);
  const edges = [start, ...points, end];
  return edges.slice(1).map((e, i) => [edges[i]!, e]);
}

describe('qcow2 layout', () => {
  test('an empty 1 GiB image: header fields, then L1, refcount table and block after the header', () => {
    const file = build(1 << 30, []);
    const h = encodeHeader({ size: 1 << 30, l1Size: 2, l1TableOffset: CS, refcountTableOffset: 2 * CS, refcountTableClusters: 1 });
    assert.deepEqual(file.subarray(0, h.length), h);
    assert.equal(h.length, 112 + 8, 'header, then the end extension');
    assert.equal(file.readUInt32BE(36), 2, 'l1_size: 512 MiB per L2 table');
    assert.equal(file.readBigUInt64BE(40), BigInt(CS), 'L1 after the header');
    assert.equal(file.readBigUInt64BE(48), BigInt(2 * CS), 'refcount table');
    assert.equal(file.readUInt32BE(56), 1);
    assert.equal(file.readBigUInt64BE(2 * CS), BigInt(3 * CS), 'one refcount block, after the table');
    assert.equal(file.length, 4 * CS);
    assert.equal(parse(file).size, 1 << 30);
  });

  test('an overlay header names its backing file and format', () => {
    const h = encodeHeader({ size: MiB, l1Size: 1, l1TableOffset: CS, refcountTableOffset: 2 * CS, refcountTableClusters: 1, backing: { file: 'full.qcow2', format: 'qcow2' } });
    assert.equal(h.readUInt32BE(112), 0xe2792aca);
    assert.equal(h.readUInt32BE(116), 5);
    assert.equal(h.toString('utf8', 120, 125), 'qcow2');
    assert.equal(h.readUInt32BE(128), 0, 'end extension');
    assert.equal(h.readBigUInt64BE(8), 136n, 'backing name right after the extensions');
    assert.equal(h.readUInt32BE(16), 10);
    assert.equal(h.toString('utf8', 136), 'full.qcow2');
    assert.deepEqual(parse(build(MiB, [], { file: 'full.qcow2', format: 'qcow2' })).backing, { file: 'full.qcow2', format: 'qcow2' });
  });

  test('refcount sizing: least blocks and table clusters that count every cluster, themselves included', () => {
    // One block counts 32768 clusters: the data end at which a second block becomes needed.
    const one = metadataLayout(REFCOUNTS_PER_BLOCK - 3, 0, 1); // + L1 + table + block = 32768
    assert.deepEqual([one.clusters, one.refcountBlocks], [REFCOUNTS_PER_BLOCK, 1]);
    const two = metadataLayout(REFCOUNTS_PER_BLOCK - 2, 0, 1);
    assert.deepEqual([two.clusters, two.refcountBlocks], [REFCOUNTS_PER_BLOCK + 2, 2]);
    // 8192 blocks fill one table cluster; one more needs a second table cluster.
    const full = metadataLayout(8192 * REFCOUNTS_PER_BLOCK - 8192 - 2, 0, 1);
    assert.deepEqual([full.refcountBlocks, full.refcountTableClusters], [8192, 1]);
    const more = metadataLayout(8192 * REFCOUNTS_PER_BLOCK - 8192 - 1, 0, 1);
    assert.deepEqual([more.refcountBlocks, more.refcountTableClusters], [8193, 2]);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 34 }), fc.integer({ min: 0, max: 4096 }), fc.integer({ min: 0, max: 1 << 21 }), (dataEnd, l2, l1) => {
        const m = metadataLayout(dataEnd, l2, l1);
        assert.equal(m.clusters, dataEnd + l2 + m.l1Clusters + m.refcountTableClusters + m.refcountBlocks);
        assert.ok(m.refcountBlocks * REFCOUNTS_PER_BLOCK >= m.clusters && (m.refcountBlocks - 1) * REFCOUNTS_PER_BLOCK < m.clusters);
        assert.ok(m.refcountTableClusters * (CS / 8) >= m.refcountBlocks);
        assert.equal(m.l1Clusters, Math.ceil((l1 * 8) / CS));
      }),
    );
  });

  test('a 1 TiB disk: a 16 KiB L1, and only touched L2 tables held', () => {
    const size = 2 ** 40;
    assert.equal(l1Entries(size) * 8, 16 * 1024);
    const map = new ClusterMap({ size });
    for (let i = 0; i < 100; i++) map.place(i * 10_000 * MiB, 4096);
    assert.equal(map.l2Tables, 100, 'one L2 table (32 KiB) per 512 MiB touched');
    assert.equal(map.dataClusters, 100);
    const writes = [...map.metadata().writes];
    assert.equal(writes.length, 100 + 1 + 1 + 1, 'L2 tables, L1, refcount table, one block');
  });

  test('full image: any order of data writes and zeroes gives the model content; refcounts exact', () => {
    const size = 3 * MiB + 3 * 512;
    const piece = fc.record({ cut: fc.double({ min: 0, max: 1, noNaN: true }), kind: fc.constantFrom('data', 'zero', 'skip'), fill: fc.integer({ min: 1, max: 255 }) });
    fc.assert(
      fc.property(fc.array(piece, { minLength: 1, maxLength: 40 }), fc.func(fc.integer()), (pieces, order) => {
        const spans = cut(0, size, pieces.map((p) => p.cut));
        const ops: Op[] = spans.flatMap(([s, e], i) => {
          const p = pieces[i % pieces.length]!;
          return p.kind === 'skip' ? [] : [{ offset: s, length: e - s, fill: p.kind === 'zero' ? 'zero' : p.fill }];
        });
        const want = Buffer.alloc(size);
        for (const op of ops) if (op.fill !== 'zero') pattern(op.offset, op.length, op.fill).copy(want, op.offset);
        const shuffled = [...ops].sort((a, b) => order(a.offset) - order(b.offset));
        for (const seq of [ops, shuffled, [...ops].reverse()]) assert.ok(parse(build(size, seq)).read().equals(want));
      }),
      { numRuns: 60 },
    );
  });

  test('overlay: dirty clusters hold data or the zero flag, clean ones show the backing file', () => {
    const clusters = 20;
    const size = clusters * CS - 1024; // a short last cluster
    const base = Buffer.alloc(size, 0x5a);
    const dirtyCluster = fc.record({ dirty: fc.boolean(), cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 }), kinds: fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }) });
    fc.assert(
      fc.property(fc.array(dirtyCluster, { minLength: clusters, maxLength: clusters }), fc.func(fc.integer()), (plan, order) => {
        const ops: Op[] = [];
        const want = Buffer.from(base);
        plan.forEach((p, c) => {
          if (!p.dirty) return;
          cut(c * CS, Math.min(size, (c + 1) * CS), p.cuts).forEach(([s, e], i) => {
            const op: Op = { offset: s, length: e - s, fill: p.kinds[i]! ? 7 + c : 'zero' };
            ops.push(op);
            if (op.fill === 'zero') want.fill(0, s, e);
            else pattern(s, e - s, op.fill).copy(want, s);
          });
        });
        const backing = { file: 'parent.qcow2', format: 'qcow2' };
        const shuffled = [...ops].sort((a, b) => order(a.offset + a.length) - order(b.offset + b.length));
        for (const seq of [ops, shuffled]) assert.ok(parse(build(size, seq, backing)).read(base).equals(want));
      }),
      { numRuns: 60 },
    );
  });

  test('refused: an overlay cluster written in part, a size not in sectors, a backing name over 1023 bytes', () => {
    const map = new ClusterMap({ size: MiB, backing: { file: 'p', format: 'qcow2' } });
    map.place(CS + 4096, 4096);
    map.zero(CS, 4096);
    assert.throws(() => map.metadata(), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INTERNAL_ERROR && /65536 is only partly written/.test(e.message));
    assert.throws(() => new ClusterMap({ size: MiB + 100 }), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG);
    assert.throws(() => new ClusterMap({ size: MiB }).place(MiB - 512, 1024), (e: unknown) => e instanceof VirError && /outside/.test(e.message));
    const long = new ClusterMap({ size: MiB, backing: { file: 'x'.repeat(1024), format: 'qcow2' } });
    assert.throws(() => long.metadata(), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG && /1023/.test(e.message));
  });
});
