// The O_DIRECT output file of the copy engine and the qcow2 writer: aligned
// writes from alignedBuffer() memory go direct where the filesystem allows it,
// everything else buffered, and the file holds exactly what was written either way.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DIRECT_ALIGN, DirectFile, alignedBuffer, directWritable, releaseAlignedBuffer } from '../../src/nbd/direct-file.js';

test('directWritable: only page-aligned memory from alignedBuffer, at aligned offsets and lengths', () => {
  const a = alignedBuffer(1 << 20);
  assert.ok(a.buffer instanceof SharedArrayBuffer, 'shared, so a hashing thread reads it in place');
  assert.equal(directWritable(a, 0), true);
  assert.equal(directWritable(a.subarray(DIRECT_ALIGN, 3 * DIRECT_ALIGN), 1 << 30), true);
  assert.equal(directWritable(a.subarray(512, 512 + DIRECT_ALIGN), 0), false, 'memory not page-aligned');
  assert.equal(directWritable(a.subarray(0, DIRECT_ALIGN + 512), 0), false, 'length not a multiple');
  assert.equal(directWritable(a, 512), false, 'file offset not a multiple');
  assert.equal(directWritable(Buffer.alloc(1 << 20), 0), false, 'ordinary memory');
  releaseAlignedBuffer(a);
  assert.equal(alignedBuffer(1 << 20), a, 'a released buffer is handed out again');
  releaseAlignedBuffer(Buffer.alloc(1 << 20)); // not ours: ignored
  assert.notEqual(alignedBuffer(1 << 20).buffer, a.buffer);
});

async function mixedWrites(dir: string): Promise<{ direct: boolean }> {
  const file = path.join(dir, 'out.raw');
  const size = 4 << 20;
  const expect = Buffer.alloc(size);
  const f = await DirectFile.open(file, 'w', 0o600);
  try {
    await truncate(file, size);
    const win = alignedBuffer(1 << 20);
    randomBytes(win.length).copy(win);
    const writes: Array<[Buffer, number]> = [
      [win, 0], // aligned: direct where possible
      [win.subarray(8192, 8192 + 65536), 2 << 20], // aligned subarray
      [win.subarray(100, 4196), (3 << 20) + 4096], // unaligned memory: buffered
      [randomBytes(777), size - 777], // short tail, ordinary memory: buffered
    ];
    await Promise.all(writes.map(([d, at]) => f.write(d, at)));
    for (const [d, at] of writes) d.copy(expect, at);
    await f.sync();
    const direct = f.isDirect;
    releaseAlignedBuffer(win);
    assert.deepEqual(await readFile(file), expect, 'the file holds every write, direct or buffered');
    return { direct };
  } finally {
    await f.close();
    await f.close(); // twice is harmless
  }
}

test('aligned and unaligned writes land byte-exact (a disk filesystem)', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-direct-'));
  try {
    await mixedWrites(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('tmpfs (O_DIRECT since Linux 6.6, refused before): same bytes either way', { skip: !existsSync('/dev/shm') && 'no /dev/shm' }, async () => {
  const dir = await mkdtemp('/dev/shm/vb-direct-');
  try {
    await mixedWrites(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an fd the caller owns stays open after close(); the direct descriptor is the same file', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-direct-'));
  const { open } = await import('node:fs/promises');
  const fh = await open(path.join(dir, 'f'), 'w+');
  try {
    await fh.truncate(1 << 20);
    const f = await DirectFile.open(fh.fd);
    const b = alignedBuffer(65536).fill(0x5a);
    await f.write(b, 65536);
    await f.sync();
    await f.close();
    const back = Buffer.alloc(65536);
    await fh.read(back, 0, 65536, 65536); // still open
    assert.deepEqual(back, b);
    releaseAlignedBuffer(b);
  } finally {
    await fh.close();
    await rm(dir, { recursive: true, force: true });
  }
});
