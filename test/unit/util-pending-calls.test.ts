// The pending-call table of the QMP, guest-agent and virtbackd clients:
// replies settle the call they answer, a timed-out call is forgotten (its
// late reply finds nothing), and the end of the connection rejects them all.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PendingCalls } from '../../src/util/pending-calls.js';

test('take() hands the call with its context to the reply, once', async () => {
  const t = new PendingCalls<string, number, string>();
  const a = t.add('a', 'query-jobs');
  const b = t.add('b', 'stop');
  assert.equal(t.size, 2);
  assert.deepEqual(t.oldest(), ['a', 'query-jobs']);
  const got = t.take('b')!;
  assert.equal(got.context, 'stop');
  got.resolve(2);
  assert.equal(await b, 2);
  assert.equal(t.take('b'), undefined, 'answered already');
  assert.equal(t.take('zz'), undefined, 'never ours');
  t.take('a')!.reject(new Error('error reply'));
  await assert.rejects(a, /error reply/);
  assert.equal(t.size, 0);
  assert.equal(t.oldest(), undefined);
});

test('a timeout rejects with its error, runs its side effect and forgets the call', async () => {
  const t = new PendingCalls<number>();
  let resync = false;
  const p = t.add(1, undefined, {
    ms: 20,
    error: () => {
      resync = true;
      return new Error('timed out');
    },
  });
  await assert.rejects(p, /timed out/);
  assert.equal(resync, true);
  assert.equal(t.size, 0);
  assert.equal(t.take(1), undefined, 'the late reply finds nothing');
});

test('no timeout for 0 or Infinity; a call answered in time does not time out', async () => {
  const t = new PendingCalls<number, string>();
  const fail = () => new Error('must not time out');
  const p0 = t.add(1, undefined, { ms: 0, error: fail });
  const pInf = t.add(2, undefined, { ms: Infinity, error: fail });
  const pShort = t.add(3, undefined, { ms: 30, error: fail });
  t.take(3)!.resolve('three');
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(t.size, 2);
  t.take(1)!.resolve('one');
  t.take(2)!.resolve('two');
  assert.deepEqual(await Promise.all([p0, pInf, pShort]), ['one', 'two', 'three']);
});

test('rejectAll fails every pending call with the connection error and clears their timers', async () => {
  const t = new PendingCalls<number>();
  const calls = [t.add(1, undefined), t.add(2, undefined, { ms: 10_000, error: () => new Error('timeout') })];
  const closed = new Error('End of file from qemu monitor');
  t.rejectAll(closed);
  for (const c of calls) await assert.rejects(c, (e) => e === closed);
  assert.equal(t.size, 0);
  // The table is usable again (a reconnecting client would start afresh).
  const again = t.add(1, undefined);
  t.take(1)!.resolve('ok');
  assert.equal(await again, 'ok');
});

test('a key registered twice is a bug', () => {
  const t = new PendingCalls<number>();
  void t.add(7, undefined);
  assert.throws(() => t.add(7, undefined), /registered twice/);
});
