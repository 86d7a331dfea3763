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
    if (m.op === 'decode') {
      reply = { seq: m.seq, data: decodeChunk(m.id, buf(m.blob), keys) };
    } else {
      const data = buf(m.data);
      const id = chunkId(data, keys);
      reply = { seq: m.seq, id, blob: id === ZERO_CHUNK ? null : encodeObject(id, data, keys, params.level) };
    }
  } catch (e) {
    reply = { seq: m.seq, error: e instanceof Error ? e.message : String(e) };
  }
  // a decoded chunk is moved back, not copied (4 MiB each)
  const out = 'data' in reply ? ownedBuffer(reply.data) : null;
  parentPort!.postMessage(reply, out === null ? [] : [out]);
});
