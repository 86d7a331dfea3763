// Chunk store rates (not a test): what one core does per 4 MiB chunk in
// memory — SHA-256, HMAC-SHA256, zstd levels 1–3 (compress and decompress),
// AES-256-GCM — and writeChunk's throughput into a folder, one chunk at a time
// and with N in flight, syncing each chunk or batching the syncs (flush
// included in the time). The data is "mixed": half of each chunk random, half
// text-like, so zstd has work to do and something to gain. These numbers tell
// the backup flow how to pipeline: hashing and zstd are synchronous on the
// calling thread, so N in flight overlaps only the file I/O; more cores need
// worker threads.
//
//   node --import tsx bench/chunkstore.ts [--chunks N] [--json]

import { createCipheriv, createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { compress, decompress } from 'zstd-napi';
import { openFolderStore } from '../src/chunkstore/object-store.js';
import { CHUNK_SIZE, ChunkRepository } from '../src/chunkstore/repo.js';

const MiB = 1024 * 1024;
const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
};
const CHUNKS = Number(arg('--chunks') ?? 32);
const asJson = process.argv.includes('--json');

/** Half random, half repeated text with a little variation: a disk with data and with files. */
function mixedChunk(seed: number): Buffer {
  const text = Buffer.from(`virtback chunk ${seed}: the quick brown fox jumps over the lazy dog. `.repeat(64));
  const b = Buffer.alloc(CHUNK_SIZE);
  randomBytes(CHUNK_SIZE / 2).copy(b, 0);
  for (let at = CHUNK_SIZE / 2; at < CHUNK_SIZE; at += text.length) text.copy(b, at);
  return b;
}

function rate(bytes: number, seconds: number): number {
  return bytes / MiB / seconds;
}

/** The better of two passes: the first pass over fresh data runs markedly slower here (allocation, caches). */
function timeSync(chunks: Buffer[], fn: (c: Buffer) => unknown): number {
  let best = 0;
  for (let pass = 0; pass < 2; pass++) {
    const t0 = process.hrtime.bigint();
    for (const c of chunks) fn(c);
    best = Math.max(best, rate(chunks.length * CHUNK_SIZE, Number(process.hrtime.bigint() - t0) / 1e9));
  }
  return best;
}

async function timeWrites(chunks: Buffer[], inFlight: number, encrypted: boolean, batchSync: boolean): Promise<{ mibPerSec: number; storedRatio: number }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'virtback-bench-chunkstore-'));
  try {
    const repo = await ChunkRepository.init(await openFolderStore(dir), encrypted ? { encryptKey: randomBytes(32) } : {});
    repo.setBatchSync(batchSync);
    let next = 0;
    let stored = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < chunks.length) {
          const w = await repo.writeChunk(chunks[next++]!);
          stored += w.storedBytes;
        }
      }),
    );
    await repo.flushChunks();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    return { mibPerSec: rate(chunks.length * CHUNK_SIZE, s), storedRatio: stored / (chunks.length * CHUNK_SIZE) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const chunks = Array.from({ length: CHUNKS }, (_, i) => mixedChunk(i));
  const key = randomBytes(32);
  const results: Record<string, number> = {};
  results['sha256'] = timeSync(chunks, (c) => createHash('sha256').update(c).digest());
  results['hmac-sha256'] = timeSync(chunks, (c) => createHmac('sha256', key).update(c).digest());
  for (const level of [1, 2, 3]) {
    let out = 0;
    results[`zstd-${level}`] = timeSync(chunks, (c) => (out += compress(c, { compressionLevel: level }).length));
    results[`zstd-${level}-ratio`] = out / 2 / (chunks.length * CHUNK_SIZE);
  }
  const packed = chunks.map((c) => compress(c, { compressionLevel: 1 }));
  const t0 = process.hrtime.bigint();
  for (const p of packed) decompress(p);
  results['zstd-decompress'] = rate(chunks.length * CHUNK_SIZE, Number(process.hrtime.bigint() - t0) / 1e9);
  results['aes-256-gcm'] = timeSync(chunks, (c) => {
    const cipher = createCipheriv('aes-256-gcm', key, randomBytes(12));
    cipher.update(c);
    cipher.final();
  });
  for (const [encrypted, batch] of [[false, false], [false, true], [true, true]] as const) {
    const name = `writeChunk-${encrypted ? 'encrypted' : 'plain'}-${batch ? 'batched-sync' : 'sync-each'}`;
    for (const n of [1, 4]) {
      const r = await timeWrites(chunks, n, encrypted, batch);
      results[`${name}-${n}-in-flight`] = r.mibPerSec;
      results[`${name}-stored-ratio`] = r.storedRatio;
    }
  }
  if (asJson) {
    process.stdout.write(`${JSON.stringify({ cpus: os.cpus().length, chunkMiB: CHUNK_SIZE / MiB, chunks: CHUNKS, results })}\n`);
    return;
  }
  process.stdout.write(`chunk store rates, one thread, ${CHUNKS} mixed chunks of ${CHUNK_SIZE / MiB} MiB (${os.cpus().length} cpus):\n`);
  for (const [name, v] of Object.entries(results)) {
    process.stdout.write(`  ${name.padEnd(48)} ${name.endsWith('ratio') ? v.toFixed(3) : `${v.toFixed(0)} MiB/s`}\n`);
  }
}

await main();
