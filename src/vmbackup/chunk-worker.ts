// Worker thread of ChunkEncoderPool (chunk-encoder.ts): names and encodes
// chunks (hash, zstd, AES-GCM when keyed) with the pure chunk codec, so the
// main thread only reads the export and stores blobs.

import { parentPort, workerData } from 'node:worker_threads';
import { chunkId, encodeObject, ZERO_CHUNK, type RepoKeys } from '../chunkstore/chunk-codec.js';
import type { EncodeReply, EncodeRequest, EncoderParams } from './chunk-encoder.js';

const params = workerData as EncoderParams;
const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
const keys: RepoKeys | null = params.keys === null ? null : { idKey: buf(params.keys.idKey), encKey: buf(params.keys.encKey), verifier: params.keys.verifier };

parentPort!.on('message', (m: EncodeRequest) => {
  let reply: EncodeReply;
  try {
    const data = buf(m.data);
    const id = chunkId(data, keys);
    reply = { seq: m.seq, id, blob: id === ZERO_CHUNK ? null : encodeObject(id, data, keys, params.level) };
  } catch (e) {
    reply = { seq: m.seq, error: e instanceof Error ? e.message : String(e) };
  }
  parentPort!.postMessage(reply);
});
