import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FrameDecoder, MAX_JSON_DEPTH, encodeFrame, jsonDepthExceeds } from '../../src/remote/frame.js';
import { VirError } from '../../src/errors.js';

const payloads = [Buffer.from('{"type":"call"}'), Buffer.alloc(0), Buffer.from('é€𝄞 unicode'), Buffer.alloc(300, 7)];
const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));

test('encodeFrame writes a 4-byte big-endian length before the payload', () => {
  const f = encodeFrame(Buffer.from('abc'));
  assert.deepEqual([...f], [0, 0, 0, 3, 0x61, 0x62, 0x63]);
  const big = encodeFrame(Buffer.alloc(0x010203));
  assert.deepEqual([...big.subarray(0, 4)], [0, 1, 2, 3]);
});

test('every split of the stream into two chunks gives the same frames', () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new FrameDecoder();
    const frames = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    assert.deepEqual(frames, payloads, `cut at ${cut}`);
    assert.equal(d.pendingBytes, 0);
  }
});

test('byte-by-byte feeding gives the same frames', () => {
  const d = new FrameDecoder();
  const frames: Buffer[] = [];
  for (const b of stream) frames.push(...d.push(Buffer.from([b])));
  assert.deepEqual(frames, payloads);
});

test('random chunkings of random frames round-trip (property)', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 10 }),
      fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 20 }),
      (frames, sizes) => {
        const bufs = frames.map((f) => Buffer.from(f));
        const all = Buffer.concat(bufs.map((b) => encodeFrame(b)));
        const d = new FrameDecoder();
        const out: Buffer[] = [];
        let pos = 0;
        let i = 0;
        while (pos < all.length) {
          const n = sizes[i++ % sizes.length]!;
          out.push(...d.push(all.subarray(pos, pos + n)));
          pos += n;
        }
        assert.deepEqual(out, bufs);
      },
    ),
  );
});

test('a length prefix over the maximum is refused before its payload is buffered', () => {
  const d = new FrameDecoder(1024);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1025);
  assert.throws(
    () => d.push(header),
    (e: unknown) => e instanceof VirError && e.code === 39 && /1025 bytes exceeds the maximum frame size of 1024/.test(e.message),
  );
  assert.equal(d.pendingBytes, 0);
  // The stream has lost its framing: the decoder stays failed.
  assert.throws(() => d.push(Buffer.from([0])), VirError);
});

test('a frame of exactly the maximum is accepted; encodeFrame refuses one byte more', () => {
  const d = new FrameDecoder(8);
  assert.deepEqual(d.push(encodeFrame(Buffer.alloc(8, 1), 8)), [Buffer.alloc(8, 1)]);
  assert.throws(() => encodeFrame(Buffer.alloc(9), 8), (e: unknown) => e instanceof VirError && e.code === 39);
});

test('pending bytes stay bounded by one frame', () => {
  const d = new FrameDecoder(100);
  const f = encodeFrame(Buffer.alloc(100, 2), 100);
  assert.deepEqual(d.push(f.subarray(0, 60)), []);
  assert.equal(d.pendingBytes, 60);
  assert.equal(d.push(f.subarray(60)).length, 1);
  assert.equal(d.pendingBytes, 0);
});

test('jsonDepthExceeds counts array/object nesting outside strings, before any parsing', () => {
  const nest = (n: number): string => '['.repeat(n) + ']'.repeat(n);
  assert.equal(jsonDepthExceeds(Buffer.from(nest(MAX_JSON_DEPTH))), false);
  assert.equal(jsonDepthExceeds(Buffer.from(nest(MAX_JSON_DEPTH + 1))), true);
  assert.equal(jsonDepthExceeds(Buffer.from(`{"a":${nest(MAX_JSON_DEPTH)}}`)), true);
  // brackets inside strings, escaped quotes and backslashes do not count
  assert.equal(jsonDepthExceeds(Buffer.from(JSON.stringify({ s: '['.repeat(100), t: '\\"[[[', u: '\\' }))), false);
  assert.equal(jsonDepthExceeds(Buffer.from(JSON.stringify(['x\\', nest(50), { y: '"{{{' }]))), false);
  // siblings do not add up
  assert.equal(jsonDepthExceeds(Buffer.from(`[${Array(1000).fill(nest(10)).join(',')}]`)), false);
  // agrees with the depth JSON.parse sees, on random documents
  fc.assert(fc.property(fc.jsonValue({ maxDepth: 40 }), (v) => {
    const text = JSON.stringify(v);
    const depth = (x: unknown): number => (typeof x === 'object' && x !== null ? 1 + Math.max(0, ...Object.values(x).map(depth)) : 0);
    assert.equal(jsonDepthExceeds(Buffer.from(text), 10), depth(v) > 10);
  }), { numRuns: 300 });
});
