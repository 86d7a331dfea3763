// The S3 ObjectStore against a real Ceph RADOS Gateway (test/helpers/ceph.ts):
// the contract every backend keeps (put/get/stat/list/delete/touch, deferred
// puts), listing past one page, prefixes that keep repositories apart, the
// errors a user meets (wrong credentials, missing bucket, a stopped gateway)
// and a gateway restarting while a request waits.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { makeS3Client, openS3Store, S3Store, type S3StoreOptions } from '../../src/chunkstore/s3-store.js';
import { openObjectStore, parseS3Url } from '../../src/chunkstore/store-url.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { useCeph, type CephS3 } from '../helpers/ceph.js';

const ceph = useCeph();

function opts(s3: CephS3, bucket: string, more: Partial<S3StoreOptions> = {}): S3StoreOptions {
  return { bucket, endpoint: s3.endpoint, region: s3.region, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }, ...more };
}

function isVir(code: keyof typeof ErrorCode, re: RegExp) {
  return (e: unknown) => e instanceof VirError && e.code === ErrorCode[code] && re.test(e.message);
}

async function keysOf(store: { list(p: string): AsyncIterable<{ key: string }> }, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of store.list(prefix)) keys.push(o.key);
  return keys.sort();
}

test('the ObjectStore contract on S3: put/get/stat/list/delete/touch under a prefix', { skip: ceph.skip, timeout: 300_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const a = await openS3Store(opts(s3, bucket, { prefix: 'site/a' }));
  const b = await openS3Store(opts(s3, bucket, { prefix: 'site/b/' }));
  t.after(() => (a.close(), b.close()));

  const body = randomBytes(300_000);
  await a.put('chunks/ab/cd/x', body);
  await a.put('points/dom%2Fx/1.json', Buffer.from('{}'));
  await b.put('chunks/ab/cd/x', Buffer.from('other repository'));
  assert.ok((await a.get('chunks/ab/cd/x')).equals(body));
  assert.equal((await b.get('chunks/ab/cd/x')).toString(), 'other repository', 'prefixes keep repositories apart');
  const st = await a.stat('chunks/ab/cd/x');
  assert.equal(st?.size, body.length);
  assert.ok(Math.abs(st!.mtimeMs - Date.now()) < 60_000);
  assert.equal(await a.stat('chunks/ab/cd/y'), null);
  await assert.rejects(a.get('chunks/ab/cd/y'), isVir('NO_STORAGE_VOL', /not found/));
  assert.deepEqual(await keysOf(a, ''), ['chunks/ab/cd/x', 'points/dom%2Fx/1.json']);
  assert.deepEqual(await keysOf(a, 'chunks/'), ['chunks/ab/cd/x']);
  assert.deepEqual(await keysOf(a, 'chunks/ab/c'), ['chunks/ab/cd/x'], 'a prefix that ends inside a name');
  await assert.rejects(a.stat('../escape'), isVir('INVALID_ARG', /not a relative name/));

  // touch renews Last-Modified (second resolution) and keeps the content; a missing key is NO_STORAGE_VOL
  await sleep(1100);
  const copiesBefore = a.requests.COPY;
  await a.touch('chunks/ab/cd/x');
  assert.equal(a.requests.COPY, copiesBefore + 1, 'one COPY per touch');
  const touched = await a.stat('chunks/ab/cd/x');
  assert.ok(touched!.mtimeMs > st!.mtimeMs, `mtime renewed: ${touched!.mtimeMs} > ${st!.mtimeMs}`);
  assert.ok((await a.get('chunks/ab/cd/x')).equals(body));
  await assert.rejects(a.touch('chunks/ab/cd/y'), isVir('NO_STORAGE_VOL', /not found/));

  await a.delete('chunks/ab/cd/x');
  await a.delete('chunks/ab/cd/x'); // missing is fine
  assert.equal(await a.stat('chunks/ab/cd/x'), null);
  assert.equal((await b.get('chunks/ab/cd/x')).toString(), 'other repository');

  // multipart above 64 MiB, still one object
  const big = randomBytes(70 * 1024 * 1024);
  const putsBefore = a.requests.PUT;
  await a.put('big', big);
  assert.ok(a.requests.PUT - putsBefore >= 3, 'create + parts + complete');
  assert.ok((await a.get('big')).equals(big));
});

test('deferred puts: bounded in flight, flush waits for all; listing pages past 1000 keys', { skip: ceph.skip, timeout: 300_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const store = await openS3Store(opts(s3, bucket, { prefix: 'p', parallel: 32 }));
  t.after(() => store.close());
  const n = 1001; // one past a listing page
  let maxInFlight = 0;
  const inFlight = (store as unknown as { inflight: Set<unknown> }).inflight;
  for (let i = 0; i < n; i++) {
    await store.putDeferred(`k/${String(i).padStart(5, '0')}`, Buffer.from(`v${i}`));
    maxInFlight = Math.max(maxInFlight, inFlight.size);
  }
  assert.ok(maxInFlight <= 32 && maxInFlight > 1, `at most 32 uploads in flight (and more than one), saw ${maxInFlight}`);
  await store.flush();
  assert.equal(inFlight.size, 0);
  const lists = store.requests.LIST;
  const keys = await keysOf(store, 'k/');
  assert.equal(keys.length, n);
  assert.equal(keys[1000], 'k/01000');
  assert.equal(store.requests.LIST - lists, 2, 'two pages of 1000');
  assert.equal((await store.get('k/00777')).toString(), 'v777');
  assert.equal(store.requests.PUT, n);
});

test('a deferred put says when its upload settled (the caller may then reuse the memory)', { skip: ceph.skip, timeout: 120_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const store = await openS3Store(opts(s3, bucket, { prefix: 'm' }));
  t.after(() => store.close());
  const a = randomBytes(300_000);
  let settled = false;
  await store.putDeferred('x/a', a);
  const released = store.released(a).then(() => (settled = true));
  assert.equal(settled, false, 'the upload is under way when putDeferred returns');
  await released;
  assert.ok((await store.get('x/a')).equals(a), 'settled: stored, and the memory is free');
  await store.released(randomBytes(10)); // never given: at once
});

test('a failing flush throws, and the next putDeferred refuses at once', { skip: ceph.skip, timeout: 120_000 }, async (t) => {
  const s3 = await ceph.get();
  // a store on a bucket that does not exist (not opened: open would refuse it), so every upload fails
  const o = opts(s3, `vb-missing-${randomBytes(4).toString('hex')}`, { parallel: 4 });
  const store = new S3Store(makeS3Client(o), o);
  t.after(() => store.close());
  for (let i = 0; i < 4; i++) await store.putDeferred(`k/${i}`, Buffer.from('x'));
  await assert.rejects(store.flush(), isVir('NO_STORAGE_POOL', new RegExp(`bucket '${o.bucket}'.*does not exist`)));
  await store.flush(); // the failure was reported once; nothing is pending
  for (let i = 0; i < 4; i++) await store.putDeferred(`k/${i}`, Buffer.from('x'));
  await sleep(500);
  await assert.rejects(store.putDeferred('k/9', Buffer.from('x')), isVir('NO_STORAGE_POOL', /does not exist/));
  await assert.rejects(store.flush());
});

test('clear errors: wrong credentials, a missing bucket, a stopped gateway; a restart within the retry budget is ridden out', { skip: ceph.skip, timeout: 300_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const wrongSecret = 'not-the-secret-0123456789';
  await assert.rejects(
    openS3Store({ ...opts(s3, bucket), credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: wrongSecret } }),
    (e: unknown) => isVir('AUTH_FAILED', new RegExp(`${s3.endpoint}.*access key id '${s3.accessKeyId}'`))(e) && !(e as Error).message.includes(wrongSecret),
  );
  await assert.rejects(openS3Store({ ...opts(s3, bucket), credentials: { accessKeyId: 'NOSUCHKEY', secretAccessKey: 'x' } }), isVir('AUTH_FAILED', /NOSUCHKEY/));
  await assert.rejects(openS3Store(opts(s3, 'vb-no-such-bucket')), isVir('NO_STORAGE_POOL', /'vb-no-such-bucket'.*does not exist/));
  // through the URL, with credentials from the environment the way the AWS tools take them
  const saved = { ...process.env };
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });
  t.after(() => {
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION']) if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  });
  const viaUrl = await openObjectStore(`s3://${bucket}/env`, { s3Endpoint: s3.endpoint });
  await viaUrl.put('x', Buffer.from('y'));
  assert.equal((await viaUrl.get('x')).toString(), 'y');
  (viaUrl as S3Store).close();
  assert.deepEqual(parseS3Url('s3://my-bucket/a/b/'), { bucket: 'my-bucket', prefix: 'a/b' });
  assert.equal(parseS3Url('/srv/repo'), null);
  assert.throws(() => parseS3Url('s3://UPPER/x'), isVir('INVALID_ARG', /bucket name/));

  // a gateway of this test's own: stopped → a clear error after the retry budget; restarted meanwhile → the request succeeds
  const gw = await ceph.privateGateway(t);
  const store = await openS3Store(opts(s3, bucket, { endpoint: gw.endpoint, retryBudgetMs: 3000, sdkAttempts: 1 }));
  t.after(() => store.close());
  await store.put('k', Buffer.from('v'));
  await gw.kill();
  await assert.rejects(store.get('k'), isVir('SYSTEM_ERROR', new RegExp(`cannot reach ${gw.endpoint}.*ECONNREFUSED`)));
  const patient = await openS3Store(opts(s3, bucket, { endpoint: gw.endpoint, retryBudgetMs: 60_000, sdkAttempts: 1 })).catch((e: unknown) => e);
  assert.ok(patient instanceof VirError, 'open refuses a stopped gateway (after its shorter budget)');
  const late = new S3Store(makeS3Client(opts(s3, bucket, { endpoint: gw.endpoint, sdkAttempts: 1 })), opts(s3, bucket, { endpoint: gw.endpoint, retryBudgetMs: 60_000 }));
  t.after(() => late.close());
  const reading = late.get('k');
  await sleep(1000);
  await gw.restart();
  assert.equal((await reading).toString(), 'v', 'the read waited out the restart');
  assert.ok(late.requests.GET >= 2, `retried: ${late.requests.GET} GETs`);
});

test('a chunk repository on S3: init, chunks, indexes, points; a re-open sees them', { skip: ceph.skip, timeout: 120_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const store = await openS3Store(opts(s3, bucket, { prefix: 'repo1' }));
  t.after(() => store.close());
  const repo = await ChunkRepository.init(store, { encryptKey: randomBytes(32) });
  const data = randomBytes(4 << 20);
  const w = await repo.writeChunk(data);
  assert.ok(w.storedBytes > 0);
  const again = await repo.writeChunk(data);
  assert.equal(again.storedBytes, 0, 'present: not uploaded again');
  assert.ok((await repo.readChunk(w.id)).equals(data));
  await assert.rejects(ChunkRepository.init(store), /already initialised/);
  await assert.rejects(ChunkRepository.open(store), /encrypted/);
});
