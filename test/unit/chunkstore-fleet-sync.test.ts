// repo-sync on folders: only missing chunks are copied, point records last
// (an interrupted sync shows no point at the destination and the next run
// finishes it), byte-exact points after a round trip, a second sync copies
// nothing, a dry run copies nothing, and differing encryption is refused.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { openFolderStore, type ObjectStore } from '../../src/chunkstore/object-store.js';
import { ChunkRepository, type PointRecord } from '../../src/chunkstore/repo.js';
import { pointDiskSource } from '../../src/chunkstore/source.js';
import { openSyncTarget, syncRepositories } from '../../src/chunkstore/sync.js';
import { isVirError } from '../../src/errors.js';
import { runMain } from '../helpers/cli.js';
import { filesUnder, newRepo, pattern, tempDir, writePoint } from './chunkstore-fixtures.js';

const CS = 4096;
const KEY = Buffer.alloc(32, 7);

async function diskOf(repo: ChunkRepository, p: PointRecord): Promise<Buffer> {
  const src = await pointDiskSource(repo, p, 'vda');
  return src.read(0, src.size);
}

/** A store whose puts fail after `n` of them (an interrupted copy). */
function failingAfter(store: ObjectStore, n: number): ObjectStore {
  let puts = 0;
  return Object.assign(Object.create(store) as ObjectStore, {
    put: async (key: string, data: Buffer) => {
      if (++puts > n) throw new Error('injected: connection lost');
      return store.put(key, data);
    },
  });
}

test('repo-sync: folder → folder → folder, interrupted and resumed, byte-exact, a second sync copies nothing', async () => {
  const { repo: src } = await newRepo({ chunkSize: CS, encryptKey: KEY });
  const disks = [Buffer.concat([pattern(CS, 1), pattern(CS, 2), Buffer.alloc(CS)]), Buffer.concat([pattern(CS, 1), pattern(CS, 3), pattern(CS, 4)])];
  const points = [await writePoint(src, '2026-12-01T00:00:00.000Z', disks[0]!), await writePoint(src, '2026-12-02T00:00:00.000Z', disks[1]!)];
  const midDir = path.join(await tempDir(), 'mid');
  const midStore = await openFolderStore(midDir);

  // the copy breaks after the config and 3 chunks: no point may show, and the next run finishes
  const broken = await openSyncTarget(failingAfter(midStore, 4), src, KEY);
  await assert.rejects(syncRepositories(src, broken.repo, { parallel: 1 }), /injected/);
  const half = await ChunkRepository.open(midStore, { encryptKey: KEY });
  assert.deepEqual(await half.listPoints(), []);
  assert.equal((await filesUnder(midDir)).filter((f) => f.startsWith('chunks/')).length, 3);

  const dry = await syncRepositories(src, half, { dryRun: true });
  assert.deepEqual([dry.points.length, dry.chunksCopied, dry.chunksPresent, dry.indexesCopied], [2, 1, 3, 2]);
  assert.equal((await filesUnder(midDir)).filter((f) => f.startsWith('chunks/')).length, 3, 'a dry run copies nothing');

  const first = await syncRepositories(src, half);
  assert.deepEqual([first.points.length, first.chunksCopied, first.chunksPresent, first.pointsPresent], [2, 1, 3, 0]);
  const again = await syncRepositories(src, half);
  assert.deepEqual([again.points.length, again.chunksCopied, again.bytesCopied, again.pointsPresent], [0, 0, 0, 2]);

  // and back into a third folder: the same points, byte for byte
  const back = await openSyncTarget(await openFolderStore(path.join(await tempDir(), 'back')), half, KEY);
  assert.equal(back.created, true);
  const r = await syncRepositories(half, back.repo);
  assert.deepEqual([r.points.length, r.chunksCopied], [2, 4]);
  const got = await back.repo.listPoints();
  assert.deepEqual(got.map((p) => p.id), points.map((p) => p.id));
  for (const [i, p] of got.entries()) assert.ok((await diskOf(back.repo, p)).equals(disks[i]!), `point ${p.id} restores byte-exact`);
});

test('repo-sync refuses repositories with different encryption; the CLI reports what it copied', async () => {
  const { dir: plainDir, repo: plain } = await newRepo({ chunkSize: CS });
  await writePoint(plain, '2026-12-01T00:00:00.000Z', pattern(CS, 1));
  const { repo: other } = await newRepo({ chunkSize: CS, encryptKey: KEY });
  await assert.rejects(syncRepositories(plain, other), (e: Error) => isVirError(e, 'CONFIG_UNSUPPORTED') && /encrypted and the other is not/.test(e.message));

  const to = path.join(await tempDir(), 'copy');
  const dry = await runMain(['repo-sync', '--from', plainDir, '--to', to, '--dry-run', '--json']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual(JSON.parse(dry.stdout).chunksCopied, 1);
  assert.deepEqual((await filesUnder(to)).length, 0, 'a dry run writes nothing');
  const run = await runMain(['repo-sync', '--from', plainDir, '--to', to]);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /copied point vm1\/2026-12-01T00:00:00.000Z/);
  assert.match(run.stdout, /copied 1 points \(0 already there\), 1 chunks/);
  const second = await runMain(['repo-sync', '--from', plainDir, '--to', to, '--json']);
  assert.deepEqual([JSON.parse(second.stdout).points.length, JSON.parse(second.stdout).chunksCopied], [0, 0]);
  const list = await runMain(['backup-list', '--repo', to, '--json']);
  assert.equal((JSON.parse(list.stdout) as unknown[]).length, 1);
});
