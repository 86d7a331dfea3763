// `virtback backup` of a shut-off domain on real QEMU: the chain of
// checkpoints continues across power-offs in both directions (running full →
// power off → offline incremental → start → online incremental), a start is
// refused while the offline run holds the images, and a bitmap left
// inconsistent by a killed QEMU makes the offline run read in full with the
// reason; the same through virtbackd and the CLI; a daemon killed during an
// offline run leaves no paused QEMU once it is back. Every point is restored
// and compared with the disks rebuilt from the write log.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { DomainState } from '../../src/flags.js';
import { cliOnQemu } from '../helpers/cli-qemu.js';
import { makeTestDomain, qemuProcessesFor, waitFor } from '../helpers/qemu-env.js';
import { DiskModel, run, write } from './backup-util.js';
import { hmpWriteVia, isAlive, makeDaemonEnv } from './daemon-util.js';
import { backupDomain, repositoryId } from '../../src/vmbackup/index.js';
import { MiB, assertRestores, backup, checkpoints, initRepo, startVm, type Vm } from './vmbackup-helpers.js';

const K64 = 64 * 1024;

async function state(vm: Vm): Promise<number> {
  return (await vm.dom.getInfo()).state;
}

/** The bitmaps in a disk's image, with their flags, read as a shut-off domain's images are. */
async function imageBitmaps(vm: Vm, target: string): Promise<Map<string, string[]>> {
  const file = path.join(vm.env.dir, `${vm.dom.name}-${target}.qcow2`);
  const { stdout } = await run('qemu-img', ['info', '-U', '--output=json', file]);
  const info = JSON.parse(stdout) as { 'format-specific': { data: { bitmaps?: { name: string; flags: string[] }[] } } };
  return new Map((info['format-specific'].data.bitmaps ?? []).map((b) => [b.name, b.flags]));
}

test('a shut-off domain continues the chain: running full → power off → offline inc → start → online inc', { timeout: 240_000 }, async (t) => {
  const vm = await startVm(t, { sizesMiB: [64, 80] });
  const r = await initRepo(path.join(vm.env.dir, 'repo'));
  const expected = new Map<string, Map<string, Buffer>>();

  await vm.write('sda', 0, MiB, 0x11);
  await vm.write('sdb', 3 * MiB, K64, 0x22);
  const s1 = vm.snapshot();
  const p1 = await backup(vm, r);
  expected.set(p1.pointId, s1);
  assert.equal(p1.level, 'full');
  assert.equal(p1.offline, false);

  // written while running, after p1: only the power-off stores them in the images' bitmaps
  await vm.write('sda', 9 * MiB, K64, 0x33);
  await vm.write('sdb', 17 * MiB, K64, 0x44);
  await vm.dom.destroy();
  assert.equal(await state(vm), DomainState.SHUTOFF);
  for (const target of ['sda', 'sdb']) {
    assert.deepEqual(await imageBitmaps(vm, target), new Map([[p1.checkpoint, ['auto']]]), `${target}: p1's bitmap stored cleanly`);
  }

  // the offline run: a start attempted while it reads is refused
  const during: { start?: Promise<unknown> } = {};
  const s2 = vm.snapshot();
  const p2 = await backup(vm, r, {
    onProgress: () => {
      during.start ??= vm.dom.create().then(() => 'started', (e: unknown) => e);
    },
  });
  expected.set(p2.pointId, s2);
  assert.equal(p2.offline, true);
  assert.equal(p2.level, 'inc');
  assert.equal(p2.base, p1.pointId);
  assert.equal(p2.reason, `incremental from point ${p1.pointId} (checkpoint ${p1.checkpoint})`);
  assert.deepEqual(p2.disks.map((d) => [d.target, d.chunksRead]), [['sda', 1], ['sdb', 1]], "only the chunks p1's bitmaps recorded are read");
  assert.ok(during.start !== undefined, 'progress was reported');
  const refused = await during.start;
  assert.ok(refused instanceof VirError && refused.code === ErrorCode.OPERATION_INVALID, `start during the offline backup: ${String(refused)}`);
  assert.equal(await state(vm), DomainState.SHUTOFF, 'the domain is shut off again after its offline backup');
  assert.deepEqual(await checkpoints(vm.dom), [p2.checkpoint]);
  for (const target of ['sda', 'sdb']) {
    assert.deepEqual(await imageBitmaps(vm, target), new Map([[p2.checkpoint, ['auto']]]), `${target}: the new checkpoint's bitmap is in the image, p1's merged away`);
  }

  // a second offline run in a row: nothing changed, nothing read
  const p2b = await backup(vm, r);
  expected.set(p2b.pointId, s2);
  assert.deepEqual([p2b.offline, p2b.level, p2b.base, p2b.bytesRead, p2b.bytesNew], [true, 'inc', p2.pointId, 0, 0]);

  // running again: the online run builds on the offline checkpoint
  await vm.dom.create();
  await vm.write('sda', 30 * MiB, K64, 0x55);
  const s3 = vm.snapshot();
  const p3 = await backup(vm, r);
  expected.set(p3.pointId, s3);
  assert.deepEqual([p3.offline, p3.level, p3.base], [false, 'inc', p2b.pointId]);
  assert.equal(p3.reason, `incremental from point ${p2b.pointId} (checkpoint ${p2b.checkpoint})`);
  assert.deepEqual(p3.disks.map((d) => [d.target, d.chunksRead]), [['sda', 1], ['sdb', 0]]);

  assert.deepEqual((await r.repo.listPoints(vm.dom.name)).map((p) => p.level), ['full', 'inc', 'inc', 'inc']);
  for (const [id, snap] of expected) await assertRestores(r.repo, vm.dom.name, id, snap, vm.env.dir);
});

test('an offline backup over a bitmap a killed QEMU left inconsistent reads in full and says why', { timeout: 240_000 }, async (t) => {
  const vm = await startVm(t, { sizesMiB: [64] });
  const r = await initRepo(path.join(vm.env.dir, 'repo'));
  await vm.write('sda', 0, MiB, 0x61);
  const p1 = await backup(vm, r);
  assert.equal(p1.level, 'full');
  // restarted: the checkpoint's bitmap is now loaded from the image, which marks it in use until QEMU stores it
  await vm.dom.destroy();
  await vm.dom.create();
  await vm.write('sda', 12 * MiB, K64, 0x62);
  // the data reaches the image; the bitmap stays marked in use, as after any crash
  await vm.dom.qemuMonitorCommand(`qemu-io -d ${vm.driver.diskNodes(vm.dom.uuid)[0]!.qdevId} "flush"`, { hmp: true });
  process.kill((await vm.dom.getInfo()).id, 'SIGKILL');
  await waitFor(async () => (await state(vm)) === DomainState.SHUTOFF, 'the killed domain to be shut off');
  assert.ok((await imageBitmaps(vm, 'sda')).get(p1.checkpoint)?.includes('in-use'), 'the bitmap is left in use in the image');

  const s2 = vm.snapshot();
  const p2 = await backup(vm, r);
  assert.deepEqual([p2.offline, p2.level, p2.base], [true, 'full', null]);
  assert.match(p2.reason, new RegExp(`^checkpoint ${p1.checkpoint} of previous point ${p1.pointId} is inconsistent: disk sda, bitmap ${p1.checkpoint}: bitmap inconsistent`));
  assert.equal(p2.bytesRead, MiB + K64);
  assert.equal(await state(vm), DomainState.SHUTOFF);
  await assertRestores(r.repo, vm.dom.name, p2.pointId, s2, vm.env.dir);

  // the chain starts again from the offline point
  await vm.dom.create();
  await vm.write('sda', 40 * MiB, K64, 0x63);
  const s3 = vm.snapshot();
  const p3 = await backup(vm, r);
  assert.deepEqual([p3.offline, p3.level, p3.base], [false, 'inc', p2.pointId]);
  await assertRestores(r.repo, vm.dom.name, p3.pointId, s3, vm.env.dir);
});

test('virtback backup of a shut-off domain through virtbackd: offline point, the domain shut off again', { timeout: 180_000 }, async (t) => {
  const { env, cli, qemu: driver } = await cliOnQemu(t);
  const def = await makeTestDomain(env.dir, { name: 'vbk-off', sizeMiB: 64 });
  const xmlFile = path.join(env.dir, 'vbk-off.xml');
  await fs.writeFile(xmlFile, def.xml);
  assert.equal((await cli.run('define', xmlFile)).code, 0);
  assert.equal((await cli.run('start', 'vbk-off')).code, 0);
  const model = new DiskModel('sda', 64 * MiB);
  await write(driver(), def.uuid, model, 3 * MiB, MiB, 0x71);
  const repoDir = path.join(env.dir, 'repo');
  const repo = await ChunkRepository.init(await openFolderStore(repoDir));
  let r = await cli.run('backup', 'vbk-off', '--repo', repoDir, '--json');
  assert.equal(r.code, 0, r.stderr);
  const p1 = JSON.parse(r.stdout) as { pointId: string; level: string; offline: boolean };
  assert.deepEqual([p1.level, p1.offline], ['full', false]);
  await write(driver(), def.uuid, model, 20 * MiB, K64, 0x72);
  assert.equal((await cli.run('destroy', 'vbk-off')).code, 0);

  r = await cli.run('backup', 'vbk-off', '--repo', repoDir, '--json');
  assert.equal(r.code, 0, r.stderr);
  const p2 = JSON.parse(r.stdout) as { pointId: string; level: string; offline: boolean; base: string; disks: { chunksRead: number }[] };
  assert.deepEqual([p2.level, p2.offline, p2.base, p2.disks[0]!.chunksRead], ['inc', true, p1.pointId, 1]);
  assert.match((await cli.run('domstate', 'vbk-off')).stdout, /shut off/);
  await assertRestores(repo, 'vbk-off', p2.pointId, new Map([['sda', model.snapshot()]]), env.dir);
});

test('virtbackd SIGKILLed during an offline backup: the restarted daemon destroys the paused QEMU it left, no point is listed, the next run succeeds', { timeout: 240_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  let conn = await env.connect();
  const td = await makeTestDomain(env.dir, { name: `vboffkill-${process.pid}`, sizeMiB: 64 });
  let dom = await conn.defineXML(td.xml);
  await dom.create();
  const model = new DiskModel('sda', 64 * MiB);
  await hmpWriteVia(dom, td.xml, 'sda', 0x5a, 4 * MiB, 8 * MiB);
  model.apply(4 * MiB, 8 * MiB, 0x5a);
  await dom.destroy();
  const repo = await ChunkRepository.init(await openFolderStore(path.join(env.dir, 'repo')));
  const repoId = repositoryId(repo.config);

  // the offline run: killed once its paused QEMU holds the images and the job exists
  const run = backupDomain(dom, repo, repoId, { level: 'auto' }).then(() => 'completed', (e: unknown) => `failed: ${String(e)}`);
  await waitFor(async () => (await dom.getInfo().then((i) => i.hasBackupJob, () => false)) || null, 'the offline run\'s job', 60_000);
  const paused = (await dom.getInfo()).id;
  assert.equal((await dom.getInfo()).state, DomainState.PAUSED);
  const first = env.daemons.at(-1)!;
  first.child.kill('SIGKILL');
  await first.exited;
  assert.match(await run, /^failed/);
  assert.equal(isAlive(paused), true, 'QEMU outlives the daemon');

  await env.start();
  conn = await env.connect();
  dom = await conn.lookupByUUID(td.uuid);
  const info = await dom.getInfo();
  assert.equal(info.state, DomainState.SHUTOFF, 'the orphaned paused QEMU is destroyed at reconnect');
  assert.deepEqual(await qemuProcessesFor(env.dir), [], 'no QEMU left');
  assert.match(env.daemons.at(-1)!.stderr(), /destroying an autodestroy domain/);
  assert.deepEqual(await repo.listPoints(td.name), [], 'no half point');

  const next = await backupDomain(dom, repo, repoId, { level: 'auto' });
  assert.deepEqual([next.offline, next.level], [true, 'full']);
  assert.equal((await dom.getInfo()).state, DomainState.SHUTOFF);
  await assertRestores(repo, td.name, next.pointId, new Map([['sda', model.snapshot()]]), env.dir);
});
