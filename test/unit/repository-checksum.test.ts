// The block checksum definition: encoding, zero runs, and decoding that
// catches any tampering with the stored form.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { ErrorCode, VirError } from '../../src/errors.js';
import { BlockDigests, CHECKSUM_BLOCK, ZERO_BLOCK_MARKER, blockDigest, decodeChecksum } from '../../src/repository/checksum.js';

const MiB = CHECKSUM_BLOCK;

function checksumOf(content: Buffer) {
  const d = new BlockDigests(content.length);
  for (let i = 0; i < d.count; i++) {
    const { offset, length } = d.range(i);
    d.set(i, blockDigest(content.subarray(offset, offset + length)));
  }
  return d.toChecksum();
}

test('zero blocks become runs, data blocks digests; the top hash covers the list', () => {
  const c = Buffer.alloc(5 * MiB + 100);
  c[2 * MiB + 7] = 1;
  c[5 * MiB + 99] = 2; // the short last block
  const k = checksumOf(c);
  assert.deepEqual(k.zeroBlocks, [[0, 2], [3, 2]]);
  const raw = Buffer.from(k.digests, 'base64');
  assert.equal(raw.length, 64);
  assert.deepEqual(raw.subarray(0, 32), createHash('sha256').update(c.subarray(2 * MiB, 3 * MiB)).digest());
  assert.deepEqual(raw.subarray(32), createHash('sha256').update(c.subarray(5 * MiB)).digest());
  const top = createHash('sha256');
  for (const d of [ZERO_BLOCK_MARKER, ZERO_BLOCK_MARKER, raw.subarray(0, 32), ZERO_BLOCK_MARKER, ZERO_BLOCK_MARKER, raw.subarray(32)]) top.update(d);
  assert.equal(k.sha256, top.digest('hex'));
  assert.equal(k.size, c.length);
});

test('decode returns every block entry and round-trips', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 0, maxLength: 40 }), (kinds) => {
      const d = new BlockDigests(kinds.length * MiB);
      const want = kinds.map((k, i) => (k === 0 ? ZERO_BLOCK_MARKER : createHash('sha256').update(`${i}:${k}`).digest()));
      want.forEach((w, i) => d.set(i, w));
      const got = decodeChecksum(d.toChecksum(), 'm');
      assert.deepEqual(got, want);
    }),
  );
});

test('tampered checksums are rejected with the manifest named', () => {
  const c = Buffer.alloc(4 * MiB);
  c.fill(3, MiB, 2 * MiB);
  const k = checksumOf(c);
  const bad = (over: object, re: RegExp) =>
    assert.throws(
      () => decodeChecksum({ ...k, ...over }, "manifest 'x.json'"),
      (e) => e instanceof VirError && (e.code === ErrorCode.INVALID_ARG || e.code === ErrorCode.CONFIG_UNSUPPORTED) && re.test(e.message) && e.message.includes("manifest 'x.json'"),
    );
  bad({ sha256: '0'.repeat(64) }, /does not match its sha256/);
  bad({ zeroBlocks: [[0, 1]] }, /block digests for 3 non-zero blocks/);
  bad({ zeroBlocks: [[2, 2], [0, 1]] }, /out of order/);
  bad({ zeroBlocks: [[0, 1], [2, 9]] }, /beyond 4 blocks/);
  bad({ algorithm: 'md5' }, /algorithm 'md5' is not supported/);
  bad({ blockSize: 4096 }, /block size 4096/);
});

test('an uncomputed block is an internal error, not a silent zero', () => {
  const d = new BlockDigests(3 * MiB);
  d.setZero(0);
  d.setZero(2);
  assert.throws(() => d.toChecksum(), (e) => e instanceof VirError && e.code === ErrorCode.INTERNAL_ERROR && /block 1 of 3/.test(e.message));
});
