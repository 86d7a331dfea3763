// The byte queue under the NBD and frame codecs: bytes come out in order,
// whatever the chunking, and nothing is consumed until all asked-for bytes are there.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteQueue } from '../../src/util/byte-queue.js';

const stream = Buffer.from(Array.from({ length: 64 }, (_, i) => i));

/** `stream` pushed in pieces cut at `cuts`. */
function queued(cuts: number[]): ByteQueue {
  const q = new ByteQueue();
  let at = 0;
  for (const c of [...cuts, stream.length]) {
    q.push(stream.subarray(at, c));
    at = c;
  }
  return q;
}

test('take returns exactly the next n bytes for every split of the stream, in any take sizes', () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    for (const size of [1, 3, 7, 16]) {
      const q = queued([cut, Math.min(stream.length, cut + 5)]);
      const out: Buffer[] = [];
      for (;;) {
        const b = size % 2 ? q.take(size) : q.takeCopy(size);
        if (!b) break;
        assert.equal(b.length, size);
        out.push(b);
      }
      const got = Buffer.concat(out);
      assert.deepEqual(got, stream.subarray(0, got.length), `cut ${cut}, size ${size}`);
      assert.equal(q.length, stream.length - got.length, 'the remainder is still held');
      assert.ok(q.length < size);
    }
  }
});

test('an incomplete take consumes nothing; peek never consumes', () => {
  const q = new ByteQueue();
  q.push(Buffer.from('ab'));
  q.push(Buffer.alloc(0));
  q.push(Buffer.from('c'));
  assert.equal(q.take(4), undefined);
  assert.equal(q.peek(4), undefined);
  assert.equal(q.length, 3);
  assert.equal(q.peek(3)!.toString(), 'abc');
  assert.equal(q.peek(1)!.toString(), 'a');
  assert.equal(q.length, 3);
  q.push(Buffer.from('d'));
  assert.equal(q.take(4)!.toString(), 'abcd');
  assert.equal(q.length, 0);
  assert.equal(q.take(0)!.length, 0);
  assert.equal(q.peek(0)!.length, 0);
});

test('takeCopy does not share memory with the pushed chunk; take from one chunk does', () => {
  const chunk = Buffer.from('hello world');
  const q = new ByteQueue();
  q.push(chunk);
  const view = q.take(5)!;
  const copy = q.takeCopy(6)!;
  chunk.fill(0x2e);
  assert.equal(view.toString(), '.....', 'a view into the chunk');
  assert.equal(copy.toString(), ' world', 'a copy of it');
});

test('clear drops everything', () => {
  const q = queued([10, 20]);
  q.clear();
  assert.equal(q.length, 0);
  assert.equal(q.take(1), undefined);
  q.push(Buffer.from('x'));
  assert.equal(q.take(1)!.toString(), 'x');
});
