// A disk's fixed index as bytes (pure): which chunk holds each CHUNK_SIZE
// piece of the disk. 32 bytes per chunk, so a 1 TiB disk's index is 8 MiB.
//
//   0  magic 'VBIX'          16  chunk size, u32 BE
//   4  version (1)           20  chunk count, u32 BE
//   5  reserved (0, 0, 0)    24  target name length, u16 BE, then the name (UTF-8)
//   8  disk size, u64 BE         then count × 32-byte chunk ids (ZERO_CHUNK as 32 zero bytes)
//                                then SHA-256 of everything before it

import { createHash } from 'node:crypto';
import { virErr } from '../errors.js';
import { isChunkId, type ChunkId } from './chunk-codec.js';

export interface DiskIndex {
  target: string;
  size: number;
  chunkSize: number;
  chunks: ChunkId[];
}

const MAGIC = Buffer.from('VBIX', 'ascii');
const VERSION = 1;
const FIXED = 26;
const ID = 32;
const DIGEST = 32;

/** How many chunks cover `size` bytes (the last one may be short). */
export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/** Bytes of chunk `i` of a disk: chunkSize, but the last may be shorter. */
export function chunkLength(index: Pick<DiskIndex, 'size' | 'chunkSize'>, i: number): number {
  return Math.min(index.chunkSize, index.size - i * index.chunkSize);
}

function bad(what: string, why: string): never {
  throw virErr('OPERATION_FAILED', 'STORAGE', `disk index ${what} is corrupt: ${why}`);
}

export function checkIndex(index: DiskIndex, what = `of '${index.target}'`): void {
  if (!Number.isSafeInteger(index.size) || index.size < 0) bad(what, `size ${index.size} is not a byte count`);
  if (!Number.isInteger(index.chunkSize) || index.chunkSize <= 0 || index.chunkSize > 0xffffffff) bad(what, `chunk size ${index.chunkSize}`);
  const n = chunkCount(index.size, index.chunkSize);
  if (index.chunks.length !== n) bad(what, `${index.chunks.length} chunks for ${index.size} bytes (expected ${n})`);
  const bad_ = index.chunks.find((c) => !isChunkId(c));
  if (bad_ !== undefined) bad(what, `'${bad_}' is not a chunk id`);
}

export function encodeIndex(index: DiskIndex): Buffer {
  checkIndex(index);
  const target = Buffer.from(index.target, 'utf8');
  if (target.length > 0xffff) bad(`of '${index.target}'`, 'target name too long');
  const buf = Buffer.alloc(FIXED + target.length + index.chunks.length * ID + DIGEST);
  MAGIC.copy(buf, 0);
  buf[4] = VERSION;
  buf.writeBigUInt64BE(BigInt(index.size), 8);
  buf.writeUInt32BE(index.chunkSize, 16);
  buf.writeUInt32BE(index.chunks.length, 20);
  buf.writeUInt16BE(target.length, 24);
  target.copy(buf, FIXED);
  let at = FIXED + target.length;
  for (const id of index.chunks) at += buf.write(id, at, ID, 'hex');
  createHash('sha256').update(buf.subarray(0, at)).digest().copy(buf, at);
  return buf;
}

export function decodeIndex(buf: Buffer, what: string): DiskIndex {
  if (buf.length < FIXED + DIGEST || !buf.subarray(0, 4).equals(MAGIC)) bad(what, 'no index header');
  if (buf[4] !== VERSION) bad(what, `format version ${buf[4]} is not ${VERSION}`);
  const body = buf.subarray(0, buf.length - DIGEST);
  if (!createHash('sha256').update(body).digest().equals(buf.subarray(body.length))) bad(what, 'its checksum does not match');
  const size = Number(buf.readBigUInt64BE(8));
  const chunkSize = buf.readUInt32BE(16);
  const count = buf.readUInt32BE(20);
  const targetLength = buf.readUInt16BE(24);
  if (body.length !== FIXED + targetLength + count * ID) bad(what, `${body.length} bytes for ${count} chunks`);
  const target = buf.toString('utf8', FIXED, FIXED + targetLength);
  const chunks: ChunkId[] = [];
  for (let at = FIXED + targetLength; at < body.length; at += ID) chunks.push(buf.toString('hex', at, at + ID));
  const index = { target, size, chunkSize, chunks };
  checkIndex(index, what);
  return index;
}
