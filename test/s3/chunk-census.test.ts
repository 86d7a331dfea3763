// The S3 store's chunk census (src/chunkstore/s3-census.ts) against a real
// Ceph RADOS Gateway: a new chunk costs its PUT alone once the listing has
// passed it (not a COPY that finds nothing first); a chunk another host
// stored is still claimed by a COPY that renews it (what gc's sweep spares),
// not uploaded again; one stored by another host after the listing is
// uploaded again, harmlessly; and without the census every new chunk costs a
// COPY and a PUT (what the census saves).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { chunkKey, ChunkRepository } from '../../src/chunkstore/repo.js';
import { openS3Store, type S3RequestCounts, type S3Store, type S3StoreOptions } from '../../src/chunkstore/s3-store.js';
import { useCeph } from '../helpers/ceph.js';

const ceph = useCeph();

function delta(after: S3RequestCounts, before: S3RequestCounts): S3RequestCounts {
  const d = { ...after };
  for (const k of Object.keys(d) as Array<keyof S3RequestCounts>) d[k] -= before[k];
  return d;
}

test('the chunk census: new chunks cost one PUT, chunks of another host one COPY that renews them', { skip: ceph.skip, timeout: 300_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const stores: S3Store[] = [];
  t.after(() => stores.forEach((s) => s.close()));
  const open = async (more: Partial<S3StoreOptions> = {}) => {
    const s = await openS3Store({ bucket, prefix: 'fleet', endpoint: s3.endpoint, region: s3.region, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }, ...more });
    stores.push(s);
    return s;
  };
  const hostA = await open();
  const repoA = await ChunkRepository.init(hostA);
  // host A stores 5 chunks; the rest of this test is host B's
  const shared = Array.from({ length: 5 }, () => randomBytes(64 * 1024));
  const sharedIds = [];
  for (const c of shared) sharedIds.push((await repoA.writeChunk(c)).id);

  const hostB = await open();
  const repoB = await ChunkRepository.open(hostB);
  let before = { ...hostB.requests };
  const fresh = Array.from({ length: 20 }, () => randomBytes(64 * 1024));
  for (const c of fresh) assert.ok((await repoB.writeChunk(c)).storedBytes > 0);
  const newOnes = delta(hostB.requests, before);
  t.diagnostic(`20 new chunks, written one after another: ${JSON.stringify(newOnes)}`);
  assert.equal(newOnes.PUT, 20);
  // only chunks asked about before the first page came back are probed (how many depends on the gateway's pace)
  assert.ok(newOnes.COPY <= 10, `most new chunks cost no COPY: ${JSON.stringify(newOnes)}`);
  assert.equal(newOnes.LIST, 1, 'one page lists this small repository whole');
  before = { ...hostB.requests };
  for (const c of fresh) assert.ok((await repoB.writeChunk(Buffer.concat([c, Buffer.from('2')]))).storedBytes > 0);
  assert.deepEqual(delta(hostB.requests, before), { PUT: 20, GET: 0, HEAD: 0, LIST: 0, DELETE: 0, COPY: 0 }, 'once listed, a new chunk is one PUT');

  // host A's chunks: found in the listing, claimed (COPY renews Last-Modified), not uploaded again
  const mtimes = await Promise.all(sharedIds.map(async (id) => (await hostB.stat(chunkKey(id)))!.mtimeMs));
  await sleep(1100); // Last-Modified has whole seconds
  before = { ...hostB.requests };
  for (const c of shared) assert.equal((await repoB.writeChunk(c)).storedBytes, 0, 'deduplicated across hosts');
  const reused = delta(hostB.requests, before);
  assert.equal(reused.PUT, 0);
  assert.equal(reused.COPY, 5, 'each reused chunk claimed by its COPY');
  for (const [i, id] of sharedIds.entries()) assert.ok((await hostB.stat(chunkKey(id)))!.mtimeMs > mtimes[i]!, 'the claim renewed the chunk: gc spares it');

  // a chunk host A stores after B's listing: B uploads it again (same key, same bytes), and it reads back
  const late = randomBytes(64 * 1024);
  const lateId = (await repoA.writeChunk(late)).id;
  before = { ...hostB.requests };
  assert.ok((await repoB.writeChunk(late)).storedBytes > 0, 'the listing passed it before it existed');
  assert.deepEqual(delta(hostB.requests, before).COPY, 0);
  assert.ok((await repoB.readChunk(lateId)).equals(late));
  for (const [i, c] of shared.entries()) assert.ok((await repoB.readChunk(sharedIds[i]!)).equals(c));

  // without the census: a COPY that finds nothing before every PUT
  const plain = await open({ chunkCensus: false });
  const repoP = await ChunkRepository.open(plain);
  before = { ...plain.requests };
  for (const c of fresh.slice(0, 4).map((x) => Buffer.concat([x, Buffer.from('p')]))) await repoP.writeChunk(c);
  const probed = delta(plain.requests, before);
  assert.deepEqual([probed.PUT, probed.COPY, probed.LIST], [4, 4, 0], JSON.stringify(probed));
});
