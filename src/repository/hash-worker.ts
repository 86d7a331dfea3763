// Worker thread of HashPool (hash-pool.ts): the checksum's block entries of
// one buffer, with the pure definition in checksum.ts, so SHA-256 never runs
// on the main thread.

import { parentPort } from 'node:worker_threads';
import { blockDigest } from './checksum.js';
import type { HashReply, HashRequest } from './hash-pool.js';

parentPort!.on('message', (m: HashRequest) => {
  let reply: HashReply;
  try {
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    const n = Math.ceil(data.length / m.blockSize);
    const entries = Buffer.allocUnsafe(32 * n);
    for (let i = 0; i < n; i++) blockDigest(data.subarray(i * m.blockSize, Math.min(data.length, (i + 1) * m.blockSize))).copy(entries, 32 * i);
    reply = { seq: m.seq, entries };
  } catch (e) {
    reply = { seq: m.seq, error: e instanceof Error ? e.message : String(e) };
  }
  parentPort!.postMessage(reply, 'entries' in reply ? [reply.entries.buffer as ArrayBuffer] : []);
});
