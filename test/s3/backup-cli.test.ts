// The backup command's schedule scenario with the repository in a bucket of a
// real Ceph gateway: `virtback repo-init --repo s3://…`, `backup` full then
// incremental (auto) of a running QEMU domain through virtbackd, backup-list,
// verify, restore byte-exact against the disk at each backup instant, prune +
// gc, and backup-serve read by nbdinfo and nbdcopy. Credentials come from the
// environment and the endpoint from --s3-endpoint, as a user would give them.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { openChunkRepository } from '../../src/cli/commands/chunk-repo.js';
import { closeObjectStore } from '../../src/chunkstore/store-url.js';
import { cliOnQemu } from '../helpers/cli-qemu.js';
import { useCeph } from '../helpers/ceph.js';
import { makeTestDomain } from '../helpers/qemu-env.js';
import { DiskModel, write } from '../qemu/backup-util.js';
import { assertRestores, MiB, sha } from '../qemu/vmbackup-helpers.js';
import { programArgs } from '../helpers/entry.js';

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ceph = useCeph();

interface BackupJson {
  pointId: string;
  level: string;
  reason: string;
  bytesRead: number;
  bytesNew: number;
}

test('virtback backup into s3://: full then auto inc, list, verify, restore exact, prune + gc, backup-serve', { skip: ceph.skip, timeout: 600_000 }, async (t) => {
  const s3 = await ceph.get();
  const bucket = await ceph.bucket(t);
  const saved = { ...process.env };
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });
  t.after(() => {
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION']) if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  });
  const { env, cli, qemu: driver } = await cliOnQemu(t);
  const def = await makeTestDomain(env.dir, { name: 'vbk-s3', sizeMiB: 64 });
  const xmlFile = path.join(env.dir, 'vbk-s3.xml');
  await fs.writeFile(xmlFile, def.xml);
  assert.equal((await cli.run('define', xmlFile)).code, 0);
  assert.equal((await cli.run('start', 'vbk-s3')).code, 0);
  const model = new DiskModel('sda', 64 * MiB);
  for (let i = 0; i < 6; i++) await write(driver(), def.uuid, model, i * 9 * MiB + 65536, 2 * MiB, 0x30 + i);

  const url = `s3://${bucket}/site-a/repo`;
  const where = ['--repo', url, '--s3-endpoint', s3.endpoint];
  let r = await cli.run('repo-init', ...where);
  assert.equal(r.code, 0, r.stderr);
  r = await cli.run('repo-init', ...where);
  assert.notEqual(r.code, 0, 'a second init is refused');
  assert.match(r.stderr, /already initialised/);

  r = await cli.run('backup', 'vbk-s3', ...where, '--json');
  assert.equal(r.code, 0, r.stderr);
  const full = JSON.parse(r.stdout) as BackupJson;
  assert.equal(full.level, 'full');
  assert.equal(full.bytesRead, 12 * MiB);
  const snapFull = new Map([['sda', model.snapshot()]]);

  await write(driver(), def.uuid, model, 40 * MiB, 1 * MiB, 0x77);
  await write(driver(), def.uuid, model, 9 * MiB + 65536, 65536, 0x78);
  r = await cli.run('backup', 'vbk-s3', ...where, '--json');
  assert.equal(r.code, 0, r.stderr);
  const inc = JSON.parse(r.stdout) as BackupJson;
  assert.equal(inc.level, 'inc', inc.reason);
  assert.equal(inc.bytesRead, 3 * MiB, 'only the data of the two touched chunks was read');
  const snapInc = new Map([['sda', model.snapshot()]]);

  r = await cli.run('backup-list', ...where, '--json');
  assert.equal(r.code, 0, r.stderr);
  const listed = JSON.parse(r.stdout) as Array<{ id: string; level: string }>;
  assert.deepEqual(listed.map((p) => [p.id, p.level]), [[full.pointId, 'full'], [inc.pointId, 'inc']]);
  r = await cli.run('verify', ...where);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /2 points verified/);

  // the restore command, compared with the disk at the inc's instant; the full point through the API on the same bucket
  const out = path.join(env.dir, 'restored');
  r = await cli.run('restore', 'vbk-s3', ...where, '--point', inc.pointId, '--output-dir', out, '--format', 'raw', '--json');
  assert.equal(r.code, 0, r.stderr);
  const restored = (await fs.readdir(out)).filter((f) => !f.endsWith('.xml'));
  assert.equal(restored.length, 1);
  assert.equal(sha(await fs.readFile(path.join(out, restored[0]!))), sha(snapInc.get('sda')!), 'restored inc equals the disk at its instant');
  const repo = await openChunkRepository(url, undefined, { s3Endpoint: s3.endpoint });
  t.after(() => closeObjectStore(repo.store));
  await assertRestores(repo, 'vbk-s3', full.pointId, snapFull, env.dir);

  // backup-serve over the bucket: nbdinfo sees the disk, nbdcopy reads it exact
  const pidfile = path.join(env.dir, 'serve.pid');
  const child = spawn(process.execPath, [...programArgs('cli/virtback'), 'backup-serve', ...where, 'vbk-s3', '--point', full.pointId, '--listen', '127.0.0.1:0', '--pidfile', pidfile, '--json'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  try {
    const deadline = Date.now() + 60_000;
    while (!existsSync(pidfile)) {
      assert.ok(Date.now() < deadline && child.exitCode === null, `backup-serve did not start: ${stderr}`);
      await new Promise((res) => setTimeout(res, 100));
    }
    const uri = (JSON.parse(stdout) as { disks: Array<{ uri: string }> }).disks[0]!.uri;
    const { stdout: info } = await run('nbdinfo', ['--json', uri]);
    assert.equal((JSON.parse(info) as { exports: Array<{ 'export-size': number }> }).exports[0]!['export-size'], 64 * MiB);
    const copy = path.join(env.dir, 'served.raw');
    await run('nbdcopy', [uri, copy]);
    assert.equal(sha(await fs.readFile(copy)), sha(snapFull.get('sda')!), 'served full point equals the disk at its instant');
  } finally {
    child.kill('SIGTERM');
    assert.equal(await exited, 0, `backup-serve exits cleanly: ${stderr}`);
  }

  // prune keeps the inc; gc (no grace) removes the chunk only the full point had, the inc still restores
  r = await cli.run('prune', 'vbk-s3', ...where, '--keep-last', '1', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual((JSON.parse(r.stdout) as { remove: string[] }).remove, [full.pointId]);
  r = await cli.run('gc', ...where, '--grace', '0', '--json');
  assert.equal(r.code, 0, r.stderr);
  const gc = JSON.parse(r.stdout) as { removedChunks: number; referencedChunks: number; removedIndexes: number };
  assert.equal(gc.removedChunks, 1, 'the chunk the inc rewrote (at 8 MiB) was referenced only by the full point');
  assert.equal(gc.referencedChunks, 9);
  await assertRestores(repo, 'vbk-s3', inc.pointId, snapInc, env.dir);
  r = await cli.run('verify', ...where);
  assert.equal(r.code, 0, r.stderr);
});
