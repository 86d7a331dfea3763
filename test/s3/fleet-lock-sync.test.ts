// Against a real Ceph RADOS Gateway: S3 Object Lock (repo-init
// --object-lock-days puts every object under retention; an early delete is
// refused; prune and gc skip and report what they could not delete; a folder
// refuses the option), and repo-sync folder → S3 → folder: byte-exact, and a
// second sync copies nothing.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { DeleteBucketCommand, DeleteObjectCommand, HeadObjectCommand, ListObjectVersionsCommand, type S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { openChunkRepository } from '../../src/cli/commands/chunk-repo.js';
import { chunkKey } from '../../src/chunkstore/repo.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { isVirError } from '../../src/errors.js';
import { useCeph, type CephS3 } from '../helpers/ceph.js';
import { runMain } from '../helpers/cli.js';
import { newRepo, pattern, tempDir, writePoint } from '../unit/chunkstore-fixtures.js';

const ceph = useCeph();
const CS = 64 * 1024;

/** The in-process CLI takes endpoint and credentials the way the AWS tools do: from the environment. */
function useEnv(t: TestContext, s3: CephS3): void {
  const saved = { ...process.env };
  Object.assign(process.env, { AWS_ENDPOINT_URL: s3.endpoint, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });
  t.after(() => {
    for (const k of ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION']) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });
}

/** A locked bucket is emptied version by version, bypassing GOVERNANCE retention. */
async function removeLockedBucket(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const page = await client.send(new ListObjectVersionsCommand({ Bucket: bucket }));
    const all = [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])];
    if (all.length === 0) break;
    for (const v of all) await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: v.Key!, VersionId: v.VersionId!, BypassGovernanceRetention: true }));
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

test('object lock: every object under retention, an early delete refused, prune and gc skip and report; a folder refuses the option', { skip: ceph.skip, timeout: 300_000 }, async (t) => {
  const s3 = await ceph.get();
  useEnv(t, s3);
  const client = ceph.client(s3);
  const bucket = `vb-lock-${randomBytes(5).toString('hex')}`;
  t.after(async () => {
    await removeLockedBucket(client, bucket).catch(() => undefined);
    client.destroy();
  });
  const url = `s3://${bucket}/repo`;
  const init = await runMain(['repo-init', '--repo', url, '--create-bucket', '--object-lock-days', '1', '--object-lock-mode', 'GOVERNANCE', '--json']);
  assert.equal(init.code, 0, init.stderr);
  assert.deepEqual(JSON.parse(init.stdout).objectLock, { mode: 'GOVERNANCE', days: 1 });

  const repo = await openChunkRepository(url);
  const p = await writePoint(repo, '2026-12-01T00:00:00.000Z', Buffer.concat([pattern(repo.chunkSize, 1)]));
  const orphan = await repo.writeChunk(pattern(repo.chunkSize, 2)); // no point names it: gc would remove it
  const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: `repo/${chunkKey(orphan.id)}` }));
  assert.equal(head.ObjectLockMode, 'GOVERNANCE');
  const until = head.ObjectLockRetainUntilDate!.getTime();
  assert.ok(Math.abs(until - (Date.now() + 86_400_000)) < 600_000, `retained about a day: ${head.ObjectLockRetainUntilDate?.toISOString()}`);

  await assert.rejects(repo.store.delete(chunkKey(orphan.id)), (e: Error) => isVirError(e, 'OPERATION_DENIED'));
  assert.ok(await repo.hasChunk(orphan.id), 'the early delete was refused');

  await new Promise((r) => setTimeout(r, 1100)); // LastModified has whole seconds: be older than gc's start
  const gc = await runMain(['gc', '--repo', url, '--grace', '0']);
  assert.equal(gc.code, 0, gc.stderr);
  assert.match(gc.stdout, /removed 0 chunks/);
  assert.match(gc.stdout, /1 unreferenced objects are under object lock until 20\d\d-/);
  const prune = await runMain(['prune', '--repo', url, 'vm1', '--keep-last', '1', '--json']);
  assert.equal(prune.code, 0);
  const pruneAll = JSON.parse((await runMain(['prune', '--repo', url, 'vm1', '--keep-hourly', '1', '--json'])).stdout) as { remove: string[] };
  assert.deepEqual(pruneAll.remove, [], 'the one point is kept by the policy');
  // removing the point itself: refused by the lock, reported, the point stays whole
  const { prunePoints } = await import('../../src/chunkstore/prune.js');
  const applied = await prunePoints(repo, { keep: [], remove: [p] });
  assert.deepEqual(applied.removed, []);
  assert.equal(applied.retained.count, 1);
  const src = await pointDiskSource(repo, (await repo.listPoints())[0]!, 'vda');
  assert.ok((await src.read(0, src.size)).equals(pattern(repo.chunkSize, 1)));

  const folder = await runMain(['repo-init', '--repo', path.join(await tempDir(), 'f'), '--object-lock-days', '1']);
  assert.equal(folder.code, 1);
  assert.match(folder.stderr, /object lock needs an S3 repository/);
  const unlocked = await ceph.bucket(t);
  const noLock = await runMain(['repo-init', '--repo', `s3://${unlocked}/r`, '--object-lock-days', '1']);
  assert.equal(noLock.code, 1);
  assert.match(noLock.stderr, /has no object lock/);
});

test('repo-sync folder → S3 → folder: byte-exact, a second sync copies nothing, --dry-run copies nothing', { skip: ceph.skip, timeout: 300_000 }, async (t) => {
  const s3 = await ceph.get();
  useEnv(t, s3);
  const bucket = await ceph.bucket(t);
  const key = path.join(await tempDir(), 'key');
  await (await import('node:fs/promises')).writeFile(key, randomBytes(32));
  const keyBytes = await (await import('node:fs/promises')).readFile(key);
  const { dir, repo } = await newRepo({ chunkSize: CS, encryptKey: keyBytes });
  const disks = [Buffer.concat([pattern(CS, 1), pattern(CS, 2), Buffer.alloc(CS)]), Buffer.concat([pattern(CS, 1), pattern(CS, 3)])];
  for (const [i, d] of disks.entries()) await writePoint(repo, `2026-12-0${i + 1}T00:00:00.000Z`, d);
  const url = `s3://${bucket}/off-site`;

  const dry = await runMain(['repo-sync', '--from', dir, '--to', url, '--encrypt-key', key, '--dry-run', '--json']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual([JSON.parse(dry.stdout).points.length, JSON.parse(dry.stdout).chunksCopied], [2, 3]);
  const up = await runMain(['repo-sync', '--from', dir, '--to', url, '--encrypt-key', key, '--json']);
  assert.equal(up.code, 0, up.stderr);
  assert.deepEqual([JSON.parse(up.stdout).points.length, JSON.parse(up.stdout).chunksCopied, JSON.parse(up.stdout).created], [2, 3, true]);
  const again = JSON.parse((await runMain(['repo-sync', '--from', dir, '--to', url, '--encrypt-key', key, '--json'])).stdout) as { points: string[]; chunksCopied: number; bytesCopied: number };
  assert.deepEqual([again.points.length, again.chunksCopied, again.bytesCopied], [0, 0, 0]);

  const back = path.join(await tempDir(), 'back');
  const down = await runMain(['repo-sync', '--from', url, '--to', back, '--encrypt-key', key]);
  assert.equal(down.code, 0, down.stderr);
  assert.match(down.stdout, /copied 2 points \(0 already there\), 3 chunks/);
  const restored = await openChunkRepository(back, key);
  const points = await restored.listPoints();
  assert.equal(points.length, 2);
  for (const [i, p] of points.entries()) {
    const src = await pointDiskSource(restored, p, 'vda');
    assert.ok((await src.read(0, src.size)).equals(disks[i]!), `point ${p.id} byte-exact after folder → S3 → folder`);
  }
  const wrongKey = path.join(await tempDir(), 'other-key');
  await (await import('node:fs/promises')).writeFile(wrongKey, randomBytes(32));
  const refused = await runMain(['repo-sync', '--from', url, '--to', path.join(await tempDir(), 'x'), '--encrypt-key', wrongKey]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /wrong encryption key/);
});
