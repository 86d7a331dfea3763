// Manifests of finished push backups are written in the background after
// job-completed; a driver (daemon) stop before that must not lose them.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { QemuBackups } from '../../src/qemu/backup.js';
import { verifyBackup } from '../../src/repository/index.js';
import { exists, hmpWrite, makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';

test('manifests of a push survive a driver stop: the next open writes them', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 16 });
  // a manifest writer that never finishes: the driver goes away with the manifest still queued
  const d1 = await env.openDriver({ backups: (x, cps) => new QemuBackups(x, cps, { afterPushComplete: () => new Promise<void>(() => {}) }) });
  await d1.domainDefineXML(dom.xml, 0);
  await d1.domainCreate(dom.uuid, 0);
  await hmpWrite(d1, dom.uuid, 'sda', 0x5a, 0, 1 << 20);
  const target = path.join(env.dir, 'full.qcow2');
  const id = await d1.backupBegin(dom.uuid,
    `<domainbackup><disks><disk name='sda' type='file'><target file='${target}'/></disk></disks></domainbackup>`, null, 0);
  await waitFor(() => env.events.some((e) => e.type === 'job-completed' && e.jobId === id), 'job-completed');
  const metaFile = path.join(env.stateDir, 'backups', dom.uuid, 'meta.json');
  const pending = async () => (JSON.parse(await readFile(metaFile, 'utf8')) as { pendingAfterPush: { jobId: number }[] }).pendingAfterPush;
  assert.deepEqual((await pending()).map((p) => p.jobId), [id], 'recorded before the event');
  assert.equal(await exists(`${target}.manifest.json`), false);
  await d1.close();

  const d2 = await env.openDriver();
  await waitFor(() => exists(`${target}.manifest.json`), 'the manifest written by the next driver', 30_000);
  await waitFor(async () => (await pending()).length === 0, 'the pending list to empty');
  const manifest = JSON.parse(await readFile(`${target}.manifest.json`, 'utf8')) as { jobId: number; disk: string; checksum: unknown };
  assert.equal(manifest.jobId, id);
  assert.equal(manifest.disk, 'sda');
  assert.notEqual(manifest.checksum, null);
  assert.equal((await verifyBackup({ target })).ok, true);
  await d2.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});
