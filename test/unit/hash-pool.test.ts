// The checksum's block entries computed on worker threads equal the
// single-threaded definition (checksum.ts) however the data is split into
// jobs, and a dead worker fails its jobs and the pool instead of hanging.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { ErrorCode, VirError } from '../../src/errors.js';
import { BlockDigests, blockDigest, ZERO_BLOCK_MARKER } from '../../src/repository/checksum.js';
import { HashPool, hashBlocks, sharedBuffer } from '../../src/repository/hash-pool.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CRASHING = path.join(here, '../fixtures/hash-pool/crashing-worker.mjs');
const BLOCK = 64 * 1024;

/** Random content with all-zero blocks among the data blocks (zeroes take the marker path). */
function content(blocks: number, tail: number, zero: (i: number) => boolean): Buffer {
  const b = randomBytes(blocks * BLOCK + tail);
  for (let i = 0; i <= blocks; i++) if (zero(i)) b.fill(0, Math.min(b.length, i * BLOCK), Math.min(b.length, (i + 1) * BLOCK));
  return b;
}

function singleThreaded(c: Buffer): string {
  const d = new BlockDigests(c.length, BLOCK);
  for (let i = 0; i < d.count; i++) d.set(i, blockDigest(c.subarray(d.range(i).offset, d.range(i).offset + d.range(i).length)));
  return JSON.stringify(d.toChecksum());
}

test('entries from the pool equal the single-threaded checksum on random splits, shared or copied buffers', async (t) => {
  const pool = HashPool.start({ threads: 3 });
  t.after(() => pool.close());
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 24 }),
      fc.integer({ min: 0, max: BLOCK - 1 }),
      fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 12 }),
      fc.integer({ min: 0, max: 3 }),
      fc.boolean(),
      async (blocks, tail, cuts, zeroEvery, shared) => {
        const c = content(blocks, tail, (i) => zeroEvery > 0 && i % (zeroEvery + 1) === 0);
        const d = new BlockDigests(c.length, BLOCK);
        // jobs of `cuts[k]` blocks each (cycled), all in flight at once, settling in any order
        const jobs: Array<Promise<void>> = [];
        for (let first = 0, k = 0; first < d.count; k++) {
          const n = Math.min(cuts[k % cuts.length]!, d.count - first);
          const start = d.range(first).offset;
          const end = d.range(first + n - 1).offset + d.range(first + n - 1).length;
          let data = c.subarray(start, end);
          if (shared) data = Buffer.from(sharedBuffer(end - start).fill(data));
          const at = first;
          jobs.push(pool.blockDigests(data, BLOCK).then((entries) => {
            assert.equal(entries.length, n);
            entries.forEach((e, j) => d.set(at + j, e));
          }));
          first += n;
        }
        await Promise.all(jobs);
        assert.equal(JSON.stringify(d.toChecksum()), singleThreaded(c));
      },
    ),
    { numRuns: 40 },
  );
});

test('an all-zero block is the marker, a data block its sha256; the shared pool gives the same', async () => {
  const c = Buffer.concat([Buffer.alloc(BLOCK), randomBytes(BLOCK), Buffer.alloc(100)]);
  const entries = await hashBlocks(c, BLOCK);
  assert.equal(entries.length, 3);
  assert.ok(entries[0]!.equals(ZERO_BLOCK_MARKER) && entries[2]!.equals(ZERO_BLOCK_MARKER));
  assert.ok(entries[1]!.equals(blockDigest(c.subarray(BLOCK, 2 * BLOCK))));
  assert.ok(!entries[1]!.equals(ZERO_BLOCK_MARKER));
});

test('a worker that dies fails every job in flight and every later one; nothing resolves', async (t) => {
  const pool = HashPool.start({ threads: 1, workerFile: CRASHING });
  t.after(() => pool.close());
  const settled: string[] = [];
  const jobs = Array.from({ length: 4 }, (_v, i) =>
    pool.blockDigests(randomBytes(BLOCK), BLOCK).then(
      () => settled.push(`resolved ${i}`),
      (e: unknown) => {
        assert.ok(e instanceof VirError, String(e));
        assert.equal(e.code, ErrorCode.INTERNAL_ERROR);
        assert.match(e.message, /checksum thread exited with code 7/);
        settled.push(`failed ${i}`);
      },
    ),
  );
  await Promise.all(jobs);
  // the first job was answered before the crash; the other three die with it
  assert.deepEqual(settled.sort(), ['failed 1', 'failed 2', 'failed 3', 'resolved 0']);
  assert.equal(pool.usable, false);
  await assert.rejects(pool.blockDigests(Buffer.alloc(BLOCK), BLOCK), /checksum thread exited with code 7/);
});
