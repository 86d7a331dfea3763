// The chunk census of the S3 store (src/chunkstore/s3-census.ts) against a
// scripted listing: what it answers before and after the listing passes a
// key, that it never lists more pages than chunks were asked about, and that
// a failed page leaves every later key to be probed.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { ChunkCensus, type CensusPage } from '../../src/chunkstore/s3-census.js';
import { chunkKey } from '../../src/chunkstore/repo.js';

const key = (n: number) => chunkKey(createHash('sha256').update(`chunk ${n}`).digest('hex'));

/** A bucket listing of `keys` (sorted), `size` keys per page; counts the pages asked for. */
function lister(keys: string[], size: number, fail?: (page: number) => boolean) {
  const sorted = [...keys].sort();
  const calls: Array<string | undefined> = [];
  const fetch = async (token: string | undefined): Promise<CensusPage> => {
    calls.push(token);
    const at = token === undefined ? 0 : Number(token);
    if (fail?.(calls.length)) throw new Error('gateway down');
    const next = at + size < sorted.length ? String(at + size) : undefined;
    return { keys: sorted.slice(at, at + size), next };
  };
  return { sorted, calls, fetch };
}

test('an empty bucket: after one LIST every chunk is absent', async () => {
  const l = lister([], 1000);
  const c = new ChunkCensus(l.fetch);
  assert.equal(c.lookup(key(1)), null, 'the listing has only just begun: ask the bucket');
  await c.settle();
  for (let i = 2; i < 50; i++) assert.equal(c.lookup(key(i)), 'absent');
  await c.settle();
  assert.equal(l.calls.length, 1);
});

test('listed chunks are listed, others absent once the listing passed them, unknown beyond it', async () => {
  const present = Array.from({ length: 30 }, (_, i) => key(i));
  const absent = Array.from({ length: 30 }, (_, i) => key(100 + i));
  const l = lister(present, 10);
  const c = new ChunkCensus(l.fetch);
  c.lookup(key(1000));
  await c.settle(); // one page of 10: its last key is the cursor
  const cursor = l.sorted[9]!;
  for (const k of present) assert.equal(c.lookup(k), k <= cursor ? 'listed' : null, k);
  await c.settle();
  // asked enough: the listing goes on to the end, and then answers for every key
  for (let i = 0; i < 5 && l.calls.length < 3; i++) {
    c.lookup(key(2000 + i));
    await c.settle();
  }
  assert.equal(l.calls.length, 3);
  for (const k of present) assert.equal(c.lookup(k), 'listed');
  for (const k of absent) assert.equal(c.lookup(k), 'absent');
  assert.equal(c.lookup('chunks/00/00/not-a-chunk'), null, 'not a chunk key: nothing known');
  assert.equal(ChunkCensus.covers('chunks/00/00/not-a-chunk'), false);
  assert.equal(ChunkCensus.covers('points/web/x.json'), false);
  assert.equal(ChunkCensus.covers(key(1)), true);
});

test('never more LIST pages than chunks asked about', async () => {
  const l = lister(Array.from({ length: 500 }, (_, i) => key(i)), 10);
  const c = new ChunkCensus(l.fetch);
  for (let asked = 1; asked <= 20; asked++) {
    c.lookup(key(10_000 + asked));
    await c.settle();
    assert.ok(l.calls.length <= asked, `${l.calls.length} pages for ${asked} chunks`);
  }
  assert.equal(l.calls.length, 20, 'one page per chunk asked while the listing lasts');
  // a key beyond the cursor is probed, not waited for
  const beyond = l.sorted.find((k) => k > l.sorted[199]!)!;
  assert.equal(c.lookup(beyond), null);
});

test('a failed page ends the listing: keys beyond it are probed from then on', async () => {
  const l = lister(Array.from({ length: 40 }, (_, i) => key(i)), 10, (n) => n === 2);
  const c = new ChunkCensus(l.fetch);
  c.lookup(key(500));
  await c.settle();
  c.lookup(key(501));
  await c.settle();
  const cursor = l.sorted[9]!;
  for (let i = 0; i < 10; i++) {
    c.lookup(key(600 + i));
    await c.settle();
  }
  assert.equal(l.calls.length, 2, 'no page after the failed one');
  for (const k of l.sorted) assert.equal(c.lookup(k), k <= cursor ? 'listed' : null);
});

test('a chunk stored after the listing passed it is listed', async () => {
  const l = lister([], 1000);
  const c = new ChunkCensus(l.fetch);
  c.lookup(key(1));
  await c.settle();
  assert.equal(c.lookup(key(7)), 'absent');
  c.noteStored(key(7));
  c.noteStored('points/web/x.json');
  assert.equal(c.lookup(key(7)), 'listed');
  assert.equal(c.stale, false);
});

test('a chunk sharing its first 32 id bits with a listed one reads as listed (it is then claimed, found missing and uploaded)', async () => {
  const listed = chunkKey(`abcdef01${'1'.repeat(56)}`);
  const twin = chunkKey(`abcdef01${'2'.repeat(56)}`);
  const other = chunkKey(`abcdef02${'1'.repeat(56)}`);
  const l = lister([listed], 1000);
  const c = new ChunkCensus(l.fetch);
  c.lookup(other);
  await c.settle();
  assert.deepEqual([c.lookup(listed), c.lookup(twin), c.lookup(other)], ['listed', 'listed', 'absent']);
});
