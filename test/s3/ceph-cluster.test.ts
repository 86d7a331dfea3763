// The test cluster itself (scripts/ceph-test-cluster.sh, test/helpers/ceph.ts):
// buckets of a test's own, an object survives a kill -9 of its gateway, and a
// private gateway serves the same data as the shared one.

import { GetObjectCommand, ListBucketsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { s3Client, useCeph } from '../helpers/ceph.js';

const ceph = useCeph();

test('a bucket of the test own; an acknowledged object survives kill -9 of a gateway', { skip: ceph.skip }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const client = ceph.client(s3);
  t.after(() => client.destroy());
  const listed = await client.send(new ListBucketsCommand({}));
  assert.ok(listed.Buckets?.some((b) => b.Name === bucket));
  const body = randomBytes(1 << 20);
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'a/b', Body: body }));

  const gw = await ceph.privateGateway(t);
  const viaOwn = s3Client(s3, gw.endpoint);
  t.after(() => viaOwn.destroy());
  const read = async (c: typeof client): Promise<Buffer> =>
    Buffer.from(await (await c.send(new GetObjectCommand({ Bucket: bucket, Key: 'a/b' }))).Body!.transformToByteArray());
  assert.ok((await read(viaOwn)).equals(body));
  await gw.kill();
  await assert.rejects(read(viaOwn));
  assert.ok((await read(client)).equals(body), 'the shared gateway is unaffected');
  await gw.restart();
  assert.ok((await read(viaOwn)).equals(body));
});
