// Ending backups other than by finishing: push aborted midway, QEMU SIGKILLed
// mid-backup, and the driver restarted (close + open) while a push or pull runs,
// including a push that finished while no driver was connected.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import type { BlockJobEvent } from '../../src/api/driver.js';
import { BackupBeginFlags, BackupEndFlags, BlockJobStatus, DomainState, JobStatsFlags, JobType } from '../../src/flags.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import type { CheckpointAccess, DomainHost } from '../../src/qemu/host.js';
import { processAlive } from '../../src/qemu/process.js';
import { QmpClient } from '../../src/qemu/qmp/client.js';
import { exists, makeTestDomain, makeTestEnv, sleep, waitFor } from '../helpers/qemu-env.js';
import { assertSameContent, DiskModel, MiB, qemuState, qmp, run, waitJobCompleted, write } from './backup-util.js';

const SIZE = 64 * MiB;
const slow = (speed = MiB / 4) => ({ backups: (d: DomainHost, cps: CheckpointAccess) => new QemuBackups(d, cps, { speed }) });

async function started(env: Awaited<ReturnType<typeof makeTestEnv>>, driverOpts = slow()) {
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 64 });
  const driver = await env.openDriver(driverOpts as never);
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  const m = new DiskModel('sda', SIZE);
  for (let i = 0; i < 8; i++) await write(driver, uuid, m, i * 4 * MiB, MiB, 0x50 + i);
  return { dom, driver, uuid, m, disk: dom.disks[0]! };
}

test('abort a push midway: 0, targets we created deleted, REUSE_EXTERNAL files kept, event says cancelled', async (t) => {
  const env = await makeTestEnv(t);
  const { driver, uuid, disk } = await started(env);
  const before = await qemuState(driver, uuid);
  const id = await driver.backupBegin(uuid, null, null, 0);
  const target = /<target file=.([^'"]+)./.exec(await driver.backupGetXMLDesc(uuid, id, 0))![1]!;
  assert.ok(target.startsWith(`${disk.path}.`));
  await sleep(200);
  const mid = await driver.getJobStats(uuid, 0);
  assert.ok(mid.disk_remaining! > 0, 'still copying');
  assert.equal(await driver.backupEnd(uuid, id, BackupEndFlags.ABORT), 0);
  const ev = await waitJobCompleted(env.events, uuid, id);
  assert.equal(ev.stats.type, JobType.CANCELLED);
  assert.equal(ev.stats.success, false);
  const be = env.events.filter((e): e is BlockJobEvent => e.type === 'block-job' && e.jobId === id);
  assert.deepEqual(be.map((e) => e.status), [BlockJobStatus.CANCELED]);
  assert.equal(await exists(target), false);
  assert.deepEqual(await qemuState(driver, uuid), before);

  // REUSE_EXTERNAL: the caller's file survives an abort (abortJob, libvirt's way)
  const mine = path.join(env.dir, 'mine.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', mine, '64M']);
  const id2 = await driver.backupBegin(uuid, `<domainbackup><disks><disk name='sda' type='file'><target file='${mine}'/></disk></disks></domainbackup>`, null, BackupBeginFlags.REUSE_EXTERNAL);
  assert.ok(id2 > id);
  await driver.abortJob(uuid, 0);
  assert.equal((await waitJobCompleted(env.events, uuid, id2)).stats.type, JobType.CANCELLED);
  assert.equal(await exists(mine), true);
  assert.deepEqual(await qemuState(driver, uuid), before);
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('QEMU SIGKILLed mid-backup: job fails and says why, domain shut off, nothing of ours left', async (t) => {
  const env = await makeTestEnv(t);
  const { driver, uuid, disk } = await started(env);
  const id = await driver.backupBegin(uuid, null, '<domaincheckpoint><name>k1</name></domaincheckpoint>', 0);
  const target = `${disk.path}.k1`;
  assert.equal(await exists(target), true);
  process.kill((await driver.domainGetInfo(uuid)).id, 'SIGKILL');
  const ev = await waitJobCompleted(env.events, uuid, id);
  assert.equal(ev.stats.type, JobType.FAILED);
  assert.equal(ev.stats.success, false);
  assert.match(ev.stats.errmsg ?? '', /crashed during the backup/);
  assert.equal((await driver.domainGetInfo(uuid)).state, DomainState.SHUTOFF);
  assert.equal(await exists(target), false);
  assert.equal((await driver.getJobStats(uuid, JobStatsFlags.COMPLETED)).type, JobType.FAILED);
  await assert.rejects(driver.backupEnd(uuid, id, 0), /crashed/);
  await assert.rejects(driver.backupGetXMLDesc(uuid, 0, 0), { code: 104 });

  // the same for a pull: the scratch file goes
  await driver.domainCreate(uuid, 0);
  const sock = path.join(env.dir, 'p.sock');
  const id2 = await driver.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/></domainbackup>`, null, 0);
  assert.ok(id2 > id);
  const scratch = /<scratch file=.([^'"]+)./.exec(await driver.backupGetXMLDesc(uuid, 0, 0))![1]!;
  assert.equal(await exists(scratch), true);
  process.kill((await driver.domainGetInfo(uuid)).id, 'SIGKILL');
  assert.equal((await waitJobCompleted(env.events, uuid, id2)).stats.success, false);
  assert.equal(await exists(scratch), false);
  assert.equal(await exists(sock), false);
  await env.assertClean();
});

test('driver restart mid-push: reconciled and completed; also when it finished while no driver ran', async (t) => {
  const env = await makeTestEnv(t);
  const { driver, uuid, disk, m } = await started(env);
  const expected = m.snapshot();
  const id = await driver.backupBegin(uuid, null, '<domaincheckpoint><name>r1</name></domaincheckpoint>', 0);
  await driver.close();

  const second = await env.openDriver(slow() as never);
  assert.equal((await second.getJobStats(uuid, 0)).id, id);
  assert.match(await second.backupGetXMLDesc(uuid, id, 0), /mode=.push./);
  assert.deepEqual(await second.listJobIds(uuid), [id]);
  await assert.rejects(second.backupBegin(uuid, null, null, 0), { code: 55 });
  await qmp(second, uuid, 'block-job-set-speed', { device: `backup-sda-${second.diskNodes(uuid)[0]!.formatNode}`, speed: 0 });
  const ev = await waitJobCompleted(env.events, uuid, id);
  assert.equal(ev.stats.success, true);
  assert.equal(await second.backupEnd(uuid, id, 0), 1);
  await assertSameContent(expected, `${disk.path}.r1`, path.join(env.dir, 'expected.raw'));

  // finished while closed: the next open() processes the completion and keeps the event for replay
  for (let i = 0; i < 4; i++) await write(second, uuid, m, i * 8 * MiB, MiB, 0x77); // several chunks: throttled for seconds
  const expected2 = m.snapshot();
  const id2 = await second.backupBegin(uuid, "<domainbackup><incremental>r1</incremental></domainbackup>", '<domaincheckpoint><name>r2</name></domaincheckpoint>', 0);
  const node = second.diskNodes(uuid)[0]!.formatNode!;
  await second.close();
  const raw = await QmpClient.connect(path.join(env.runDir, uuid, 'qmp.sock'));
  await raw.executeRaw('block-job-set-speed', { device: `backup-sda-${node}`, speed: 0 });
  await waitFor(async () => (await raw.execute('query-jobs')).every((j) => j.status === 'concluded'), 'job concluded');
  await raw.close();
  let backups: QemuBackups | null = null;
  const third = await env.openDriver({ backups: (d, cps) => (backups = new QemuBackups(d, cps)) });
  const ev2 = await waitJobCompleted(env.events, uuid, id2);
  assert.equal(ev2.stats.success, true);
  const replay = backups!.recoveredEvents();
  assert.ok(replay.some((e) => e.type === 'job-completed' && e.jobId === id2), 'job-completed kept for replay');
  assert.equal((await third.getJobStats(uuid, JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED)).id, id2);
  assert.equal(await third.backupEnd(uuid, 0, 0), 1);
  assert.equal(await exists(`${disk.path}.r2`), true);
  await assertSameContent(expected2, `${disk.path}.r2`, path.join(env.dir, 'expected.raw'));
  assert.deepEqual((await qemuState(third, uuid)).jobs, []);
  await third.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('driver restart mid-pull: the export keeps serving, backupEnd tears it down', async (t) => {
  const env = await makeTestEnv(t);
  const { driver, uuid, m } = await started(env);
  const before = await qemuState(driver, uuid);
  const sock = path.join(env.dir, 'r.sock');
  const expected = m.snapshot();
  const id = await driver.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/></domainbackup>`, null, 0);
  const scratch = /<scratch file=.([^'"]+)./.exec(await driver.backupGetXMLDesc(uuid, 0, 0))![1]!;
  await driver.close();
  const second = await env.openDriver();
  await write(second, uuid, m, 0, MiB, 0x99);
  const out = path.join(env.dir, 'out.raw');
  await promisify(execFile)('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, out]);
  await assertSameContent(expected, out, path.join(env.dir, 'expected.raw'));
  assert.equal(await second.backupEnd(uuid, id, 0), 1);
  assert.equal((await waitJobCompleted(env.events, uuid, id)).stats.success, true);
  assert.equal(await exists(scratch), false);
  assert.deepEqual(await qemuState(second, uuid), before);
  await second.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('QEMU killed while no driver ran: open() ends the job failed, deletes the target, keeps the event for replay', async (t) => {
  const env = await makeTestEnv(t);
  const { driver, uuid, disk } = await started(env);
  const id = await driver.backupBegin(uuid, null, '<domaincheckpoint><name>z1</name></domaincheckpoint>', 0);
  const pid = (await driver.domainGetInfo(uuid)).id;
  await driver.close();
  process.kill(pid, 'SIGKILL');
  await waitFor(async () => !(await processAlive(pid)), 'QEMU gone');
  let backups: QemuBackups | null = null;
  const second = await env.openDriver({ backups: (d, cps) => (backups = new QemuBackups(d, cps)) });
  const replay = backups!.recoveredEvents();
  const ev = replay.find((e) => e.type === 'job-completed' && e.jobId === id);
  assert.ok(ev && ev.type === 'job-completed', 'job-completed kept for replay');
  assert.equal(ev.stats.success, false);
  assert.match(ev.stats.errmsg ?? '', /crashed during the backup/);
  assert.equal(await exists(`${disk.path}.z1`), false);
  assert.equal((await second.domainGetInfo(uuid)).state, DomainState.SHUTOFF);
  await env.assertClean();
});
