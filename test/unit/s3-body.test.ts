// How the S3 store reads a GET's body (readBody in src/chunkstore/s3-store.ts)
// from a scripted stream: the bytes whole and in order in one buffer that owns
// its memory (a decoder thread takes it over), and a body cut short or longer
// than its Content-Length refused — the short one as a transient network
// failure, so the store's retries fetch the object again.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { test } from 'node:test';
import { isTransient, readBody } from '../../src/chunkstore/s3-store.js';

/** `data` in pieces of `size` bytes, as a socket delivers a response. */
const pieces = (data: Buffer, size: number): Buffer[] => Array.from({ length: Math.ceil(data.length / size) }, (_, i) => data.subarray(i * size, (i + 1) * size));

test('a sized body arrives whole, in order, in a buffer of its own', async () => {
  const data = randomBytes(4 * 1024 * 1024 + 16);
  const got = await readBody(Readable.from(pieces(data, 65536)), data.length);
  assert.ok(got.equals(data));
  assert.equal(got.byteOffset, 0);
  assert.equal(got.buffer.byteLength, data.length, 'the buffer owns exactly its memory (movable to a worker)');
});

test('a body without Content-Length is collected too', async () => {
  const data = randomBytes(200_000);
  const got = await readBody(Readable.from(pieces(data, 7000)), undefined);
  assert.ok(got.equals(data));
  assert.equal(got.buffer.byteLength, data.length);
});

test('an empty body', async () => {
  assert.equal((await readBody(Readable.from([]), 0)).length, 0);
});

test('a body that ends short of its Content-Length fails as a transient network error', async () => {
  const data = randomBytes(100_000);
  await assert.rejects(readBody(Readable.from(pieces(data.subarray(0, 60_000), 8192)), data.length), (e: unknown) => {
    assert.match((e as Error).message, /ended after 60000 of 100000 bytes/);
    assert.equal(isTransient(e), true);
    return true;
  });
});

test('a connection reset mid-body rejects with the stream error', async () => {
  const body = new PassThrough();
  const p = readBody(body, 10_000);
  body.write(randomBytes(4000));
  body.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
  await assert.rejects(p, (e: unknown) => (e as Error).message === 'aborted' && isTransient(e));
});

test('a body longer than its Content-Length is refused', async () => {
  const data = randomBytes(50_000);
  await assert.rejects(readBody(Readable.from(pieces(data, 16_384)), 40_000), /longer than its Content-Length 40000/);
});
