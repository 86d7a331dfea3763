// Chunks and metadata objects as stored bytes (pure: buffers in, buffers out).
//
// A stored object is self-describing: a 16-byte header, then (encrypted only)
// a 12-byte nonce and a 16-byte GCM tag, then the payload.
//
//   0  magic 'VBCK'          8  raw (content) length, u32 BE
//   4  version (1)          12  payload length, u32 BE
//   5  flags: 1 zstd, 2 AES-256-GCM
//   6  reserved (0, 0)
//
// The header and the object's name are the GCM additional data, so a blob
// moved to another name or with an edited header fails to open. Chunk ids are
// SHA-256 of the content, or HMAC-SHA256 under a key derived from the key file
// in an encrypted repository (the store sees neither content nor its hash).

import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import zstd from 'zstd-napi/binding.js';
import { virErr } from '../errors.js';

export type ChunkId = string;

/** The id of an all-zero chunk of any length: reserved, never stored. */
export const ZERO_CHUNK: ChunkId = '0'.repeat(64);

const MAGIC = Buffer.from('VBCK', 'ascii');
const VERSION = 1;
const HEADER = 16;
const NONCE = 12;
const TAG = 16;
const FLAG_ZSTD = 1;
const FLAG_AES_GCM = 2;
/** Default zstd level: 1 keeps up with SHA-256 on one core (bench/chunkstore.ts measures 1–3). */
export const DEFAULT_ZSTD_LEVEL = 1;

/** Keys of an encrypted repository, derived from the key file (HKDF-SHA256, one `info` per use). */
export interface RepoKeys {
  /** HMAC key naming chunks. */
  readonly idKey: Buffer;
  /** AES-256-GCM key sealing chunk and metadata payloads. */
  readonly encKey: Buffer;
  /** Stored in the repository's config: proves a key right or wrong without decrypting anything. */
  readonly verifier: string;
}

export const MIN_KEY_BYTES = 16;

export function deriveKeys(keyMaterial: Buffer, salt: Buffer): RepoKeys {
  if (keyMaterial.length < MIN_KEY_BYTES) {
    throw virErr('INVALID_ARG', 'STORAGE', `encryption key has ${keyMaterial.length} bytes; at least ${MIN_KEY_BYTES} are needed (e.g. head -c 32 /dev/urandom > FILE)`);
  }
  const derive = (info: string): Buffer => Buffer.from(hkdfSync('sha256', keyMaterial, salt, info, 32));
  return {
    idKey: derive('virtback chunk names'),
    encKey: derive('virtback chunk encryption'),
    verifier: derive('virtback key verifier').toString('hex'),
  };
}

/** Whether `keys` are the ones whose verifier the repository recorded (constant time). */
export function keyMatches(keys: RepoKeys, verifier: string): boolean {
  const a = Buffer.from(keys.verifier, 'hex');
  const b = Buffer.from(verifier, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

let zeros = Buffer.alloc(0);

export function isAllZero(data: Buffer): boolean {
  if (zeros.length < data.length) zeros = Buffer.alloc(data.length);
  return data.equals(zeros.subarray(0, data.length));
}

/** The chunk's name: SHA-256 of the content, or HMAC-SHA256 under the naming key. All-zero content is ZERO_CHUNK. */
export function chunkId(data: Buffer, keys: RepoKeys | null): ChunkId {
  if (isAllZero(data)) return ZERO_CHUNK;
  return (keys ? createHmac('sha256', keys.idKey) : createHash('sha256')).update(data).digest('hex');
}

export function isChunkId(s: string): boolean {
  return /^[0-9a-f]{64}$/.test(s);
}

/**
 * One zstd context per thread and one output buffer it reuses: fresh memory
 * costs a page fault per 4 KiB, and on this project's machines faulting in
 * a 4 MiB buffer took longer than compressing or decompressing into warm
 * memory (12-16 ms against 1.5 ms for a chunk of text).
 */
let cctx: zstd.CCtx | undefined;
let dctx: zstd.DCtx | undefined;
let packBuffer = Buffer.alloc(0);

/** `data` compressed, a view of the reused buffer valid until the next call; null when that saves nothing. */
function pack(data: Buffer, level: number): Buffer | null {
  cctx ??= new zstd.CCtx();
  const bound = zstd.compressBound(data.length);
  if (packBuffer.length < bound) packBuffer = Buffer.allocUnsafeSlow(bound);
  const n = cctx.compress(packBuffer, data, level);
  return n < data.length ? packBuffer.subarray(0, n) : null;
}

/**
 * Compress (when that saves space) and seal (when keyed) `data` as the stored
 * object called `name` (a chunk's id, or a metadata object's key). `out`:
 * memory the plain blob may be written into (a view of it is returned) when
 * it is large enough.
 */
export function encodeObject(name: string, data: Buffer, keys: RepoKeys | null, level = DEFAULT_ZSTD_LEVEL, out?: Buffer): Buffer {
  const packed = pack(data, level);
  let payload = packed ?? data;
  const header = Buffer.alloc(HEADER);
  MAGIC.copy(header, 0);
  header[4] = VERSION;
  header[5] = (packed !== null ? FLAG_ZSTD : 0) | (keys ? FLAG_AES_GCM : 0);
  header.writeUInt32BE(data.length, 8);
  header.writeUInt32BE(payload.length, 12);
  if (!keys) {
    const blob = out !== undefined && out.length >= HEADER + payload.length ? out.subarray(0, HEADER + payload.length) : Buffer.allocUnsafeSlow(HEADER + payload.length);
    header.copy(blob, 0);
    payload.copy(blob, HEADER);
    return blob;
  }
  const nonce = randomBytes(NONCE);
  const cipher = createCipheriv('aes-256-gcm', keys.encKey, nonce);
  cipher.setAAD(Buffer.concat([header, Buffer.from(name, 'utf8')]));
  payload = Buffer.concat([cipher.update(payload), cipher.final()]);
  return Buffer.concat([header, nonce, cipher.getAuthTag(), payload]);
}

function corrupt(what: string, why: string): never {
  throw virErr('OPERATION_FAILED', 'STORAGE', `${what} is corrupt: ${why}`);
}

/**
 * The content of stored object `name`; throws OPERATION_FAILED naming `what`
 * when it does not open. With `into` (at least the content's length) the
 * content is written there and a view of it returned; without, a compressed
 * object decodes into new memory and a plain one to a view of its blob.
 */
export function decodeObject(name: string, blob: Buffer, keys: RepoKeys | null, what = `object '${name}'`, into?: Buffer): Buffer {
  if (blob.length < HEADER || !blob.subarray(0, 4).equals(MAGIC)) corrupt(what, 'no chunk header');
  if (blob[4] !== VERSION) corrupt(what, `format version ${blob[4]} is not ${VERSION}`);
  const flags = blob[5]!;
  if ((flags & ~(FLAG_ZSTD | FLAG_AES_GCM)) !== 0 || blob[6] !== 0 || blob[7] !== 0) corrupt(what, `unknown flags ${flags} or reserved bytes set`);
  const rawLength = blob.readUInt32BE(8);
  const payloadLength = blob.readUInt32BE(12);
  const encrypted = (flags & FLAG_AES_GCM) !== 0;
  if (encrypted !== (keys !== null)) corrupt(what, encrypted ? 'it is encrypted but the repository is not' : 'it is not encrypted but the repository is');
  const start = HEADER + (encrypted ? NONCE + TAG : 0);
  if (blob.length !== start + payloadLength) corrupt(what, `${blob.length} bytes stored, header says ${start + payloadLength}`);
  let payload = blob.subarray(start);
  if (keys) {
    const decipher = createDecipheriv('aes-256-gcm', keys.encKey, blob.subarray(HEADER, HEADER + NONCE));
    decipher.setAAD(Buffer.concat([blob.subarray(0, HEADER), Buffer.from(name, 'utf8')]));
    decipher.setAuthTag(blob.subarray(HEADER + NONCE, start));
    try {
      payload = Buffer.concat([decipher.update(payload), decipher.final()]);
    } catch {
      corrupt(what, 'authentication failed (tampered, or sealed under another key or name)');
    }
  }
  if (into !== undefined && into.length < rawLength) throw virErr('INTERNAL_ERROR', 'STORAGE', `${what}: ${rawLength} bytes of content do not fit the ${into.length} given`);
  if ((flags & FLAG_ZSTD) === 0) {
    if (payload.length !== rawLength) corrupt(what, `${payload.length} bytes of content, header says ${rawLength}`);
    // stored uncompressed: a view of the blob, not a copy (4 MiB each; the caller owns the blob)
    return into === undefined ? payload : into.subarray(0, payload.copy(into));
  }
  const out = (into ?? Buffer.allocUnsafeSlow(rawLength)).subarray(0, rawLength);
  let n: number;
  try {
    dctx ??= new zstd.DCtx();
    n = dctx.decompress(out, payload);
  } catch (e) {
    corrupt(what, `zstd: ${(e as Error).message}`);
  }
  if (n !== rawLength) corrupt(what, `${n} bytes of content, header says ${rawLength}`);
  return out;
}

/** A chunk's content, re-hashed: a blob that does not hash to its id throws naming the chunk. */
export function decodeChunk(id: ChunkId, blob: Buffer, keys: RepoKeys | null, into?: Buffer): Buffer {
  const what = `chunk ${id}`;
  const data = decodeObject(id, blob, keys, what, into);
  const actual = chunkId(data, keys);
  if (actual !== id) corrupt(what, `its content hashes to ${actual}`);
  return data;
}
