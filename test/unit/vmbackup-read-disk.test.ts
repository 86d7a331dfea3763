// readDisk against a scripted NBD export (not QEMU): the allocation of the
// next 256 MiB window that holds a chunk to read is asked for before the
// reader gets there (while the first window's chunks are still being read),
// windows without a chunk to read are never asked, and what is read is
// exactly the data extents of the chunks the dirty bitmap touches.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChunkId, ChunkRepository } from '../../src/chunkstore/repo.js';
import * as P from '../../src/nbd/protocol.js';
import { readDisk } from '../../src/vmbackup/read-disk.js';
import { scriptedNbdServer, type Conn, type Req } from '../helpers/scripted-nbd.js';

const MiB = 1 << 20;
const CHUNK = 64 * MiB;
const WINDOW = 256 * MiB;
/** each chunk holds data in its first 4 KiB only, the rest is a hole */
const DATA = 4096;
const ALLOC = 1;
const BITMAP = 2;

/** The byte at `offset` of the export: its chunk's index, so each chunk hashes differently. */
const byteAt = (offset: number) => Math.floor(offset / CHUNK) + 1;

/** Answer base:allocation (per chunk: DATA bytes of data, then zeroes), the dirty bitmap (`dirty` chunks), and reads. */
function answer(dirty: Set<number>) {
  return (r: Req, c: Conn) => {
    if (r.type === P.NBD_CMD_READ) return c.data(r.cookie, r.offset, Buffer.alloc(r.length, byteAt(r.offset)));
    assert.equal(r.type, P.NBD_CMD_BLOCK_STATUS);
    const out: Array<[number, number]> = [];
    for (let at = r.offset; at < r.offset + r.length; at += CHUNK) {
      // requests start on chunk boundaries here
      out.push([DATA, 0], [CHUNK - DATA, P.NBD_STATE_HOLE | P.NBD_STATE_ZERO]);
    }
    const bits: Array<[number, number]> = [];
    for (let at = r.offset; at < r.offset + r.length; at += CHUNK) bits.push([CHUNK, dirty.has(at / CHUNK) ? P.NBD_STATE_DIRTY : 0]);
    // both contexts' answers; the client keeps the one asked for
    c.status(r.cookie, BITMAP, bits, false);
    c.status(r.cookie, ALLOC, out, true);
  };
}

const ZEROES = Buffer.alloc(CHUNK);
/** A chunk's stand-in id: its first byte, and whether the rest after the data is zeroes (memcmp, not a 64 MiB hash). */
const idOf = (b: Buffer) => `${b.length}:${b[0]}:${b.subarray(0, DATA).equals(Buffer.alloc(DATA, b[0]))}:${b.subarray(DATA).equals(ZEROES.subarray(DATA))}` as ChunkId;

async function run(t: import('node:test').TestContext, chunks: number, dirty: number[] | null) {
  const srv = await scriptedNbdServer(t, {
    size: chunks * CHUNK,
    contexts: { 'base:allocation': ALLOC, 'qemu:dirty-bitmap:b': BITMAP },
    onRequest: answer(new Set(dirty ?? [])),
  });
  const client = await srv.connect({ metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b'] });
  t.after(() => client.destroy());
  const base = dirty === null ? null : Array.from({ length: chunks }, (_, i) => `base${i}` as ChunkId);
  const r = await readDisk({
    client,
    repo: {} as ChunkRepository, // only its writeChunk would be used, and writeChunk is given
    chunkSize: CHUNK,
    base,
    bitmap: dirty === null ? null : 'b',
    concurrency: 1,
    writeChunk: async (data) => ({ id: idOf(data), storedBytes: 1, spent: data }), // the buffer cycles back (no 64 MiB of fresh memory per chunk)
  });
  const alloc = srv.requests().filter((q) => q.type === P.NBD_CMD_BLOCK_STATUS && q.length <= WINDOW);
  return { r, requests: srv.requests(), alloc };
}

/** The id of what chunk `i` of the export reads as: DATA bytes of its pattern, zeroes after. */
const contentId = (i: number) => `${CHUNK}:${byteAt(i * CHUNK)}:true:true`;

test('readDisk asks for the next window with a chunk to read before the reader reaches it', async (t) => {
  // 3 windows of 4 chunks, all read (a full backup), one chunk in flight
  const { r, requests, alloc } = await run(t, 12, null);
  assert.deepEqual(alloc.map((q) => q.offset), [0, WINDOW, 2 * WINDOW], 'each window asked once, in order');
  const firstRead = requests.findIndex((q) => q.type === P.NBD_CMD_READ);
  const secondWindow = requests.findIndex((q) => q.type === P.NBD_CMD_BLOCK_STATUS && q.offset === WINDOW);
  assert.ok(secondWindow >= 0 && secondWindow < firstRead, `window 2 asked (request ${secondWindow}) before the first read (request ${firstRead})`);
  const thirdWindow = requests.findIndex((q) => q.type === P.NBD_CMD_BLOCK_STATUS && q.offset === 2 * WINDOW);
  const firstReadOfSecond = requests.findIndex((q) => q.type === P.NBD_CMD_READ && q.offset >= WINDOW);
  assert.ok(thirdWindow < firstReadOfSecond, 'window 3 asked before window 2 is read');
  assert.deepEqual(r.chunks, Array.from({ length: 12 }, (_, i) => contentId(i)));
  assert.equal(r.bytesRead, 12 * DATA, 'only the data extents are read');
  assert.equal(r.chunksRead, 12);
});

test('readDisk of an incremental: windows without a dirty chunk are never asked, the next one is asked ahead', async (t) => {
  // dirty: chunk 1 (window 1) and chunk 9 (window 3); window 2 holds none
  const { r, requests, alloc } = await run(t, 12, [1, 9]);
  assert.deepEqual(alloc.map((q) => q.offset), [0, 2 * WINDOW], 'window 2 is not asked');
  const firstRead = requests.findIndex((q) => q.type === P.NBD_CMD_READ);
  assert.ok(requests.findIndex((q) => q.type === P.NBD_CMD_BLOCK_STATUS && q.offset === 2 * WINDOW) < firstRead, 'window 3 asked before the first read');
  assert.deepEqual(requests.filter((q) => q.type === P.NBD_CMD_READ).map((q) => [q.offset, q.length]), [[CHUNK, DATA], [9 * CHUNK, DATA]]);
  const want = Array.from({ length: 12 }, (_, i) => (i === 1 || i === 9 ? contentId(i) : `base${i}`));
  assert.deepEqual(r.chunks, want, 'dirty chunks read anew, the others keep the base ids');
  assert.equal(r.bytesRead, 2 * DATA);
  assert.equal(r.chunksRead, 2);
});
