// The restore's chunk fetch (restore-chunks.ts): chunks are fetched several
// at once and decoded on the codec pool, so a store with a round trip per GET
// (S3) is kept busy; never more than `concurrency` in flight; the restored
// image is exact, plain and encrypted; a bad chunk fails the restore naming it
// and leaves no image behind.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { openFolderStore, type ObjectStore } from '../../src/chunkstore/object-store.js';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { VirError } from '../../src/errors.js';
import { restoreDomain } from '../../src/vmbackup/restore.js';
import { RESTORE_CONCURRENCY } from '../../src/vmbackup/restore-chunks.js';
import { pattern, pointRecord, tamperChunk, tempDir, writeDisk } from './chunkstore-fixtures.js';

const CS = 65536;
const XML = "<domain type='qemu'><name>vm1</name><uuid>11111111-2222-3333-4444-555555555555</uuid><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/old/vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>";

/** The store with a delay per GET (a gateway's round trip), counting the GETs in flight at once. */
function slowGets(store: ObjectStore, delayMs: number): { store: ObjectStore; maxInFlight: () => number; gets: () => number } {
  let now = 0;
  let max = 0;
  let gets = 0;
  const get = async (key: string): Promise<Buffer> => {
    if (!key.startsWith('chunks/')) return store.get(key);
    gets++;
    max = Math.max(max, ++now);
    try {
      await sleep(delayMs);
      return await store.get(key);
    } finally {
      now--;
    }
  };
  return { store: Object.assign(Object.create(store) as ObjectStore, { get }), maxInFlight: () => max, gets: () => gets };
}

/** A disk of 40 chunks: random data with 6 zero chunks and a short last chunk. */
function diskData(seed: number): Buffer {
  const data = Buffer.concat([pattern(39 * CS, seed), pattern(CS / 2, seed + 1)]);
  for (const i of [0, 5, 6, 17, 30, 38]) data.fill(0, i * CS, (i + 1) * CS);
  return data;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('restore fetches chunks in parallel (bounded), decodes them on the pool, and writes the exact image', async () => {
  for (const encryptKey of [undefined, randomBytes(32)]) {
    const dir = await tempDir();
    const key = encryptKey ? { encryptKey } : {};
    const repo = await ChunkRepository.init(await openFolderStore(path.join(dir, 'repo')), { chunkSize: CS, ...key });
    const data = diskData(encryptKey ? 11 : 12);
    const id = '2026-12-06T00:00:00.000Z';
    await repo.writePoint(pointRecord(id, [await writeDisk(repo, id, 'vda', data)], { domainXml: XML }));

    const slow = slowGets(await openFolderStore(path.join(dir, 'repo')), 15);
    const reader = await ChunkRepository.open(slow.store, key);
    // the main thread's decoder is not used: the pool decodes and re-hashes
    reader.readChunk = () => Promise.reject(new Error('decoded on the main thread'));
    const r = await restoreDomain(reader, null, { domain: 'vm1', outputDir: path.join(dir, 'out'), format: 'raw' });
    const image = await fs.readFile(r.disks[0]!.path);
    assert.equal(sha(image), sha(data), 'the restored image is the disk');
    assert.equal(slow.gets(), 34, 'one GET per data chunk, none for the 6 zero chunks');
    assert.equal(slow.maxInFlight(), RESTORE_CONCURRENCY, 'the default number of GETs in flight, never more');

    const three = slowGets(await openFolderStore(path.join(dir, 'repo')), 15);
    const r3 = await restoreDomain(await ChunkRepository.open(three.store, key), null, { domain: 'vm1', outputDir: path.join(dir, 'out3'), format: 'raw', concurrency: 3 });
    assert.equal(sha(await fs.readFile(r3.disks[0]!.path)), sha(data));
    assert.equal(three.maxInFlight(), 3, '--concurrency bounds the GETs in flight');
  }
});

test('a tampered chunk fails the restore naming the chunk; no image is left', async () => {
  const dir = await tempDir();
  const store = await openFolderStore(path.join(dir, 'repo'));
  const repo = await ChunkRepository.init(store, { chunkSize: CS });
  const data = diskData(21);
  const id = '2026-12-06T00:00:00.000Z';
  const disk = await writeDisk(repo, id, 'vda', data);
  await repo.writePoint(pointRecord(id, [disk], { domainXml: XML }));
  const bad = (await repo.readIndex(disk.index)).chunks[20]!;
  await tamperChunk(path.join(dir, 'repo'), bad);
  const out = path.join(dir, 'out');
  await assert.rejects(restoreDomain(repo, null, { domain: 'vm1', outputDir: out, format: 'raw' }), (e: unknown) => e instanceof VirError && e.message.includes(bad));
  assert.deepEqual(await fs.readdir(out), [], 'nothing of the failed restore remains');
});
