// Worker thread of ChunkCodecPool (chunk-codec-pool.ts): names and encodes
// chunks (hash, zstd, AES-GCM when keyed), or decodes and re-hashes them, with
// the pure chunk codec, so the main thread only moves bytes.

import { parentPort, workerData } from 'node:worker_threads';
import { chunkId, decodeChunk, encodeObject, ZERO_CHUNK, type RepoKeys } from '../chunkstore/chunk-codec.js';
import type { CodecReply, CodecRequest, EncoderParams } from './chunk-codec-pool.js';
import { ownedBuffer } from './owned-buffer.js';

const params = workerData as EncoderParams;
const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
const keys: RepoKeys | null = params.keys === null ? null : { idKey: buf(params.keys.idKey), encKey: buf(params.keys.encKey), verifier: params.keys.verifier };

parentPort!.on('message', (m: CodecRequest) => {
  let reply: CodecReply;
  try {
    if (m.op === 'decode' && m.into !== undefined) {
      reply = { seq: m.seq, length: decodeChunk(m.id, buf(m.blob), keys, buf(m.into)).length };
    } else if (m.op === 'decode') {
      reply = { seq: m.seq, data: decodeChunk(m.id, buf(m.blob), keys) };
    } else {
      const data = buf(m.data);
      const id = chunkId(data, keys);
      reply = { seq: m.seq, id, blob: id === ZERO_CHUNK ? null : encodeObject(id, data, keys, params.level, m.spare ? buf(m.spare) : undefined) };
      // the content moved in goes back for the reader's next chunk (the blob is a copy, never a view of it)
      if (ownedBuffer(m.data) !== null) reply.data = m.data;
    }
  } catch (e) {
    reply = { seq: m.seq, error: e instanceof Error ? e.message : String(e) };
  }
  // the chunk (decoded, or its stored form and its content) is moved back, not copied (4 MiB each)
  const request = m.op === 'decode' ? m.blob : m.data;
  // a blob written into the spare is a view of memory that came with the message: moved back too
  const spare = m.op === 'encode' && m.spare ? m.spare : null;
  const blobMoves = 'blob' in reply && reply.blob !== null && spare !== null && reply.blob.buffer === spare.buffer ? movable(spare, spare) : 'blob' in reply ? movable(reply.blob, request) : [];
  const out = [...('data' in reply && reply.data ? movable(reply.data, request) : []), ...blobMoves];
  parentPort!.postMessage(reply, [...new Set(out)]);
});

/**
 * What of `u` can be moved: all of its memory when it owns it, or the
 * request's memory it is a view of (a chunk stored uncompressed decodes to a
 * view of its blob) — the request's ArrayBuffer came with the message (moved
 * or cloned), so nothing else in this thread uses it. Never the memory of a
 * view into this thread's Buffer pool.
 */
function movable(u: Uint8Array | null, request: Uint8Array): ArrayBuffer[] {
  if (u === null) return [];
  const own = ownedBuffer(u) ?? (u.buffer === request.buffer && u.buffer instanceof ArrayBuffer ? u.buffer : null);
  return own === null ? [] : [own];
}
