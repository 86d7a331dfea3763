// A pull's scratch that fills up breaks the backup, never the guest: every
// guest write reaches the disk (QEMU's own fleecing job would fail the writes
// whose old data it cannot copy out: bench/full-target-repro.ts), the export
// of that disk refuses its reads instead of serving wrong data, the job ends
// failed, and another disk's export still serves the shared instant. The vCPUs paused for that
// instant leave no suspended/resumed event. Real QEMU, a real (small) tmpfs.

import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { DomainState } from '../../src/flags.js';
import { pullBackup } from '../../src/repository/index.js';
import { canMountTmpfs, exists, makeTestDomain, makeTestEnv, type TestEnv, withSmallTmpfs } from '../helpers/qemu-env.js';
import { assertSameContent, DiskModel, MiB, qemuState, run, waitJobCompleted, write } from './backup-util.js';

const SIZE = 64 * MiB;

test('pull: a full scratch fails the export, not the guest; two disks share the instant without a pause event', { skip: canMountTmpfs ? false : 'mounting a tmpfs needs root', timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  await withSmallTmpfs(env.dir, 4, (small) => fullScratch(env, small));
});

async function fullScratch(env: TestEnv, small: string): Promise<void> {
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  const models = [new DiskModel('sda', SIZE), new DiskModel('sdb', SIZE)];
  for (const m of models) for (let i = 0; i < 16; i++) await write(driver, uuid, m, i * MiB, MiB, 0x20 + i);
  const before = await qemuState(driver, uuid);
  const instant = models.map((m) => m.snapshot());

  const sock = path.join(env.dir, 'nbd.sock');
  const seen = env.events.length;
  const id = await driver.backupBegin(uuid,
    `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks>` +
    `<disk name='sda'><scratch file='${path.join(small, 'sda.scratch')}'/></disk><disk name='sdb'/></disks></domainbackup>`,
    null, 0);
  assert.deepEqual(env.events.slice(seen).filter((e) => e.type === 'lifecycle'), [], 'the instant\'s pause is no lifecycle event');
  assert.equal((await driver.domainGetInfo(uuid)).state, DomainState.RUNNING);

  // the guest rewrites all 16 MiB of sda: their old data does not fit in the 4 MiB scratch
  for (let i = 0; i < 16; i++) await write(driver, uuid, models[0]!, i * MiB, MiB, 0x80 + i);
  await write(driver, uuid, models[1]!, 3 * MiB, MiB, 0xee);
  assert.equal((await driver.domainGetInfo(uuid)).state, DomainState.RUNNING, 'the guest runs on');

  // sdb's export: the instant; sda's: refused, not wrong
  const out = path.join(env.dir, 'sdb.raw');
  await run('nbdcopy', [`nbd+unix:///sdb?socket=${sock}`, out]);
  await assertSameContent(instant[1]!, out, path.join(env.dir, 'expected.raw'));
  await assert.rejects(run('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, path.join(env.dir, 'sda.raw')]), 'reading the broken snapshot fails');
  // our own client says so and leaves no file that could pass for a backup
  const ours = path.join(env.dir, 'sda.qcow2');
  await assert.rejects(pullBackup({ nbd: { socketPath: sock }, exportName: 'sda', output: ours, format: 'qcow2' }), (e: Error) => {
    assert.match(e.message, /^NBD server failed .* from nbd\+unix:\/\/\/sda/, e.message);
    return true;
  });
  assert.equal(await exists(ours), false, 'no output left');

  // QEMU said nothing of the break: the end finds it, and the job failed
  await assert.rejects(driver.backupEnd(uuid, id, 0), (e: { code: number; message: string }) => {
    assert.equal(e.code, ErrorCode.OPERATION_FAILED);
    assert.match(e.message, new RegExp(`^backup job ${id} failed: the backup's view of disk 'sda' broke while the job ran: its scratch '${small}/sda.scratch' could not keep`));
    return true;
  });
  const ended = await waitJobCompleted(env.events, uuid, id);
  assert.equal(ended.stats.success, false);
  assert.deepEqual(await readdir(small), [], 'scratch removed');
  assert.deepEqual(await qemuState(driver, uuid), before, 'filters, snapshot nodes, exports gone; devices back on their disks');
  // every guest write is on the disks, including those made while the scratch was full
  await driver.domainDestroy(uuid, 0);
  for (const [i, m] of models.entries()) await assertSameContent(m.snapshot(), dom.disks[i]!.path, path.join(env.dir, 'expected.raw'));
  await env.assertClean();
}
