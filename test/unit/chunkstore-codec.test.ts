// The pure parts of the chunk store: chunk codec (ids, zstd, AES-GCM, header),
// the binary disk index, and the folder store's key checks and atomic put.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { ErrorCode, VirError } from '../../src/errors.js';
import { chunkId, decodeChunk, deriveKeys, encodeObject, isAllZero, ZERO_CHUNK } from '../../src/chunkstore/chunk-codec.js';
import { decodeIndex, encodeIndex } from '../../src/chunkstore/disk-index.js';
import { checkKey, openFolderStore } from '../../src/chunkstore/object-store.js';
import { filesUnder, pattern, tempDir } from './chunkstore-fixtures.js';

const keys = deriveKeys(randomBytes(32), randomBytes(32));

function corruptErr(id: string) {
  return (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_FAILED && e.message.includes(id);
}

test('chunk ids: SHA-256 of the content, HMAC under the naming key when keyed, ZERO_CHUNK for zeros', () => {
  const data = pattern(100_000, 1);
  assert.equal(chunkId(data, null), createHash('sha256').update(data).digest('hex'));
  assert.notEqual(chunkId(data, keys), chunkId(data, null));
  assert.equal(chunkId(data, keys), chunkId(Buffer.from(data), keys));
  assert.equal(chunkId(Buffer.alloc(4 << 20), null), ZERO_CHUNK);
  assert.equal(chunkId(Buffer.alloc(4 << 20), keys), ZERO_CHUNK);
  assert.equal(isAllZero(Buffer.from([0, 0, 1])), false);
});

test('codec round trip: compressible, incompressible, plain and sealed', () => {
  for (const data of [Buffer.alloc(65536, 7), randomBytes(65536), Buffer.from('x'), pattern(4096, 2)]) {
    for (const k of [null, keys]) {
      const id = chunkId(data, k);
      const blob = encodeObject(id, data, k);
      assert.ok(decodeChunk(id, blob, k).equals(data));
    }
  }
  const text = Buffer.alloc(1 << 20, 'abcd');
  assert.ok(encodeObject(chunkId(text, null), text, null).length < 10_000, 'zstd shrinks repetitive data');
  const noise = randomBytes(1 << 16);
  assert.equal(encodeObject('x', noise, null).length, noise.length + 16, 'incompressible data is stored raw behind the header');
});

test('a flipped byte anywhere in a stored chunk fails decoding, naming the chunk', () => {
  fc.assert(
    fc.property(fc.boolean(), fc.nat(), fc.integer({ min: 1, max: 255 }), (sealed, where, xor) => {
      const data = pattern(8192, 3);
      const k = sealed ? keys : null;
      const id = chunkId(data, k);
      const blob = encodeObject(id, data, k);
      const at = where % blob.length;
      const bad = Buffer.from(blob);
      bad[at]! ^= xor;
      assert.throws(() => decodeChunk(id, bad, k), corruptErr(id));
    }),
    { numRuns: 300 },
  );
});

test('sealed chunks: another name, another key or no key do not open', () => {
  const data = pattern(8192, 4);
  const id = chunkId(data, keys);
  const blob = encodeObject(id, data, keys);
  const other = deriveKeys(randomBytes(32), randomBytes(32));
  assert.throws(() => decodeChunk(ZERO_CHUNK.replace(/^0/, '1'), blob, keys), /authentication failed/);
  assert.throws(() => decodeChunk(id, blob, other), /authentication failed/);
  assert.throws(() => decodeChunk(id, blob, null), /encrypted but the repository is not/);
  assert.ok(!blob.includes(data.subarray(0, 64)), 'no plaintext in the sealed blob');
  assert.throws(() => deriveKeys(Buffer.alloc(8), randomBytes(32)), /at least 16/);
});

test('disk index: round trip, short last chunk, zero chunks; corruption is caught', () => {
  const idx = { target: 'vda', size: 3 * 4096 + 100, chunkSize: 4096, chunks: [chunkId(pattern(64, 1), null), ZERO_CHUNK, chunkId(pattern(64, 2), null), ZERO_CHUNK] };
  const buf = encodeIndex(idx);
  assert.equal(buf.length, 26 + 3 + 4 * 32 + 32);
  assert.deepEqual(decodeIndex(buf, 'x'), idx);
  for (const at of [0, 9, 20, 30, buf.length - 1]) {
    const bad = Buffer.from(buf);
    bad[at]! ^= 1;
    assert.throws(() => decodeIndex(bad, "'k'"), (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_FAILED && e.message.includes("'k'"));
  }
  assert.throws(() => encodeIndex({ ...idx, chunks: idx.chunks.slice(1) }), /3 chunks for 12388 bytes \(expected 4\)/);
});

test('object keys: only relative names inside the store', () => {
  for (const bad of ['', '/etc/passwd', '../x', 'a/../b', 'a//b', 'a/./b', '.hidden', 'a/.tmp', 'a\\b', 'a/', 'x\0y']) {
    assert.throws(() => checkKey(bad), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG, bad);
  }
  for (const good of ['config.json', 'chunks/ab/cd/abcd', 'points/vm%2F1/2026-12-06T03:00:00.123Z.json']) checkKey(good);
});

test('folder store: atomic put leaves no temp file, get/stat/list/delete/touch, missing objects', async () => {
  const dir = await tempDir();
  const s = await openFolderStore(dir);
  await s.put('a/b/one', Buffer.from('1'));
  await s.put('a/b/one', Buffer.from('11'));
  await s.put('a/c/two', Buffer.from('2'));
  await s.put('top', Buffer.from('3'));
  assert.deepEqual(await filesUnder(dir), ['a/b/one', 'a/c/two', 'top']);
  assert.equal((await s.get('a/b/one')).toString(), '11');
  assert.equal((await s.stat('a/b/one'))?.size, 2);
  assert.equal(await s.stat('a/b/none'), null);
  await fs.writeFile(path.join(dir, 'a/b/.one.tmp-1-1'), 'half');
  const keysOf = async (prefix: string) => {
    const out: string[] = [];
    for await (const o of s.list(prefix)) out.push(o.key);
    return out.sort();
  };
  assert.deepEqual(await keysOf(''), ['a/b/one', 'a/c/two', 'top']);
  assert.deepEqual(await keysOf('a/'), ['a/b/one', 'a/c/two']);
  assert.deepEqual(await keysOf('a/b'), ['a/b/one']);
  assert.deepEqual(await keysOf('nothing/'), []);
  const old = new Date(Date.now() - 3600_000);
  await fs.utimes(path.join(dir, 'top'), old, old);
  await s.touch('top');
  assert.ok((await s.stat('top'))!.mtimeMs > Date.now() - 60_000);
  await s.delete('top');
  await s.delete('top');
  await assert.rejects(s.get('top'), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL);
  await assert.rejects(s.touch('top'), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL);
});
