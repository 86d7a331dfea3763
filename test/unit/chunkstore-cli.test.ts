// The chunk repository commands run in-process on a real folder: repo-init,
// backup-list, prune (dry run and real), gc, verify — outputs, JSON and exit codes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { runMain } from '../helpers/cli.js';
import { openChunkRepository } from '../../src/cli/commands/chunk-repo.js';
import { chunkKey } from '../../src/chunkstore/repo.js';
import { DOMAIN, pattern, tempDir, writePoint } from './chunkstore-fixtures.js';

test('repo-init, backup-list, prune, gc, verify on a plain repository', async () => {
  const dir = path.join(await tempDir(), 'repo');
  assert.equal((await runMain(['repo-init', '--repo', dir])).code, 0);
  assert.equal((await runMain(['repo-init', '--repo', dir])).code, 1, 'a second init is refused');
  const repo = await openChunkRepository(dir);
  const ids = ['2026-12-01T10:00:00.000Z', '2026-12-02T10:00:00.000Z', '2026-12-03T10:00:00.000Z'];
  for (const [i, id] of ids.entries()) await writePoint(repo, id, pattern(repo.chunkSize, i + 1));

  const list = await runMain(['backup-list', '--repo', dir, DOMAIN.name]);
  assert.equal(list.code, 0);
  assert.match(list.stdout, /Domain +Point +Level +Time +Size +New data +Verify/);
  assert.equal(list.stdout.trim().split('\n').length, 2 + 3);
  assert.match(list.stdout, / vm1 +2026-12-01T10:00:00.000Z +full +2026-12-01T10:00:00.000Z +4.000 MiB +4.\d+ MiB +-/);
  const listed = JSON.parse((await runMain(['backup-list', '--repo', dir, '--json'])).stdout) as { id: string; size: number; verify: unknown }[];
  assert.deepEqual(listed.map((p) => [p.id, p.size, p.verify]), ids.map((id) => [id, repo.chunkSize, null]));

  assert.equal((await runMain(['prune', '--repo', dir, DOMAIN.name])).code, 2, 'no keep rule is a usage error');
  assert.equal((await runMain(['prune', '--repo', dir, DOMAIN.name, '--keep-last', 'x'])).code, 2);
  const dry = JSON.parse((await runMain(['prune', '--repo', dir, DOMAIN.name, '--keep-last', '1', '--dry-run', '--json'])).stdout) as Record<string, unknown>;
  assert.deepEqual(dry, { domain: 'vm1', dryRun: true, keep: [{ id: ids[2], rule: 'last' }], remove: [ids[1], ids[0]], checkpointsReferenced: [`cp-${ids[2]}`] });
  assert.equal((await repo.listPoints()).length, 3, 'a dry run removes nothing');
  const pruned = await runMain(['prune', '--repo', dir, DOMAIN.name, '--keep-daily', '2']);
  assert.equal(pruned.code, 0);
  assert.match(pruned.stdout, /2026-12-01T10:00:00.000Z +removed/);
  assert.deepEqual((await repo.listPoints()).map((p) => p.id), ids.slice(1));

  // chunks written an hour ago: with a grace of 60 s the pruned point's chunk goes, the referenced ones are marked
  const hourAgo = new Date(Date.now() - 3600_000);
  for (const f of await fs.readdir(path.join(dir, 'chunks'), { recursive: true })) await fs.utimes(path.join(dir, 'chunks', f), hourAgo, hourAgo);
  const young = await runMain(['gc', '--repo', dir, '--json']);
  assert.equal((JSON.parse(young.stdout) as { removedChunks: number }).removedChunks, 0, 'the default grace (24 h) spares it');
  const gc = await runMain(['gc', '--repo', dir, '--grace', '60', '--json']);
  assert.equal(gc.code, 0);
  const g = JSON.parse(gc.stdout) as { removedChunks: number; referencedChunks: number };
  assert.deepEqual([g.referencedChunks, g.removedChunks], [2, 1]);
  assert.equal(await repo.hasChunk(repo.idOf(pattern(repo.chunkSize, 1))), false);

  const ok = await runMain(['verify', '--repo', dir]);
  assert.equal(ok.code, 0);
  assert.match(ok.stdout, /2 points verified, 2 chunks ok/);
  const bad = repo.idOf(pattern(repo.chunkSize, 3));
  const file = path.join(dir, ...chunkKey(bad).split('/'));
  const blob = await fs.readFile(file);
  blob[20]! ^= 0xff;
  await fs.writeFile(file, blob);
  const failed = await runMain(['verify', '--repo', dir, DOMAIN.name, ids[2]!]);
  assert.equal(failed.code, 1);
  assert.match(failed.stdout, new RegExp(`vm1 ${ids[2]}: FAILED, first bad: ${bad}`));
  assert.match(failed.stdout, new RegExp(`bad chunk ${bad}: .*set aside as bad/${bad}-\\d+; affects vm1/${ids[2]}`));
  assert.match(failed.stderr, /verify failed: 1 bad chunks affect 1 points/);
  assert.match((await runMain(['backup-list', '--repo', dir])).stdout, new RegExp(`FAILED \\(${bad}\\)`));
});

test('an encrypted repository needs its key on every command', async () => {
  const base = await tempDir();
  const dir = path.join(base, 'repo');
  const keyFile = path.join(base, 'key');
  await fs.writeFile(keyFile, pattern(32, 9));
  await fs.writeFile(path.join(base, 'short'), 'short');
  assert.equal((await runMain(['repo-init', '--repo', dir, '--encrypt-key', path.join(base, 'short')])).code, 1);
  assert.equal((await runMain(['repo-init', '--repo', dir, '--encrypt-key', keyFile])).code, 0);
  const noKey = await runMain(['backup-list', '--repo', dir]);
  assert.equal(noKey.code, 1);
  assert.match(noKey.stderr, /encrypted: give its key/);
  await fs.writeFile(path.join(base, 'other'), pattern(32, 10));
  assert.match((await runMain(['verify', '--repo', dir, '--encrypt-key', path.join(base, 'other')])).stderr, /wrong encryption key/);
  assert.equal((await runMain(['backup-list', '--repo', dir, '--encrypt-key', keyFile])).code, 0);
});
