// Push backups on real QEMU: full + checkpoint, incremental, differential, on a
// 2-disk domain, with writes hammering both disks while every job copies.
// Each restored chain must equal the disk at the backup's instant (see the
// DiskModel note in backup-util.ts for how that instant is known).

import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import type { BlockJobEvent } from '../../src/api/driver.js';
import { BackupEndFlags, BlockJobStatus, BlockJobType, JobStatsFlags, JobType, ListDomainsFlags } from '../../src/flags.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import { exists, makeTestDomain, makeTestEnv, sleep } from '../helpers/qemu-env.js';
import {
  assertSameContent,
  backingFile,
  DiskModel,
  hammer,
  MiB,
  qemuState,
  run,
  scatter,
  setSpeed,
  waitJobCompleted,
  write,
} from './backup-util.js';

const SIZE = 64 * MiB;

test('push full + c1, incremental c1 + c2, differential from c1: restored chains equal the disks at each instant', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
  // every disk job starts throttled so the hammering lands while it copies; lifted after 400 ms
  const driver = await env.openDriver({ backups: (d, cps) => new QemuBackups(d, cps, { speed: 4 * MiB }) });
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  const models = dom.disks.map((d) => new DiskModel(d.target, SIZE));
  const jobIds = (): string[] => driver.diskNodes(uuid).map((d) => `backup-${d.target}-${d.formatNode}`);
  const before = await qemuState(driver, uuid);

  // some data: 8 MiB per disk, in 1 MiB writes
  for (const m of models) for (let i = 0; i < 8; i++) await write(driver, uuid, m, i * 4 * MiB, MiB, 0x10 + i);

  /** begin, slow the jobs, hammer while they copy, let them finish; returns the job id and expected images */
  const backup = async (backupXml: string | null, cpXml: string | null, seed: number): Promise<{ id: number; expected: Buffer[] }> => {
    const expected = models.map((m) => m.snapshot());
    const id = await driver.backupBegin(uuid, backupXml, cpXml, 0);
    for (const j of jobIds()) await setSpeed(driver, uuid, j, MiB / 2);
    assert.deepEqual(await driver.listJobIds(uuid), [id]);
    assert.equal((await driver.listAllDomains(ListDomainsFlags.HAS_BACKUP_JOB)).length, 1);
    const h = hammer(driver, uuid, models, seed);
    await sleep(400);
    const stats = await driver.getJobStats(uuid, 0);
    assert.equal(stats.type, JobType.UNBOUNDED);
    assert.equal(stats.operation, 9);
    assert.equal(stats.id, id);
    assert.ok(stats.disk_total! > 0 && stats.disk_total! <= 2 * SIZE, `disk_total ${stats.disk_total}`);
    const writes = await h.stop();
    assert.ok(writes > 10, `writes landed while the job ran (${writes})`);
    for (const j of jobIds()) await setSpeed(driver, uuid, j, 0);
    const ev = await waitJobCompleted(env.events, uuid, id);
    assert.equal(ev.stats.success, true, ev.stats.errmsg);
    assert.equal(ev.stats.type, JobType.COMPLETED);
    assert.equal(ev.stats.disk_remaining, 0);
    return { id, expected };
  };

  // 1. full push + checkpoint c1 (default targets <source>.c1)
  const full = await backup(null, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 1);
  const fullXml = await driver.backupGetXMLDesc(uuid, 0, 0);
  assert.match(fullXml, new RegExp(`<domainbackup mode="push" id="${full.id}">|<domainbackup mode='push' id='${full.id}'>`));
  for (const [i, d] of dom.disks.entries()) {
    assert.match(fullXml, new RegExp(`name=.${d.target}. backup=.yes. type=.file. backupmode=.full.`));
    await assertSameContent(full.expected[i]!, `${d.path}.c1`, path.join(env.dir, 'expected.raw'));
    assert.equal(await backingFile(`${d.path}.c1`), null);
  }
  assert.equal(await driver.backupEnd(uuid, full.id, 0), 1);
  assert.deepEqual(await driver.listJobIds(uuid), []);
  const blockEvents = env.events.filter((e): e is BlockJobEvent => e.type === 'block-job' && e.jobId === full.id);
  assert.deepEqual(blockEvents.map((e) => [e.disk, e.blockJobType, e.status]).sort(),
    dom.disks.map((d) => [d.target, BlockJobType.BACKUP, BlockJobStatus.COMPLETED]).sort());
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1']);

  // 2. incremental since c1 + checkpoint c2: backing file = the full backup (same folder: relative)
  for (const m of models) await scatter(driver, uuid, m, 40, 7);
  const inc = await backup("<domainbackup><incremental>c1</incremental></domainbackup>",
    '<domaincheckpoint><name>c2</name></domaincheckpoint>', 2);
  for (const [i, d] of dom.disks.entries()) {
    assert.equal(await backingFile(`${d.path}.c2`), `${path.basename(d.path)}.c1`);
    await assertSameContent(inc.expected[i]!, `${d.path}.c2`, path.join(env.dir, 'expected.raw'));
  }
  const incXml = await driver.backupGetXMLDesc(uuid, inc.id, 0);
  assert.match(incXml, /backupmode=.incremental. incremental=.c1./);
  assert.equal(await driver.backupEnd(uuid, 0, 0), 1);

  // 3. differential: incremental since c1 again (no checkpoint: the suffix is the epoch second)
  for (const m of models) await scatter(driver, uuid, m, 40, 99);
  const diff = await backup("<domainbackup><incremental>c1</incremental></domainbackup>", null, 3);
  const diffXml = await driver.backupGetXMLDesc(uuid, 0, 0);
  for (const [i, d] of dom.disks.entries()) {
    const m = new RegExp(`<target file=.(${d.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.\\d+).`).exec(diffXml);
    assert.ok(m, `target of ${d.target} in ${diffXml}`);
    assert.equal(await backingFile(m[1]!), `${path.basename(d.path)}.c1`);
    await assertSameContent(diff.expected[i]!, m[1]!, path.join(env.dir, 'expected.raw'));
  }
  // stats of the last completed job, kept
  const done = await driver.getJobStats(uuid, JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED);
  assert.equal(done.id, diff.id);
  assert.equal(done.success, true);
  assert.equal((await driver.getJobStats(uuid, JobStatsFlags.COMPLETED)).id, diff.id);
  assert.equal((await driver.getJobStats(uuid, JobStatsFlags.COMPLETED)).type, JobType.NONE);
  assert.equal(await driver.backupEnd(uuid, 0, BackupEndFlags.ABORT), 1, 'ABORT after completion changes nothing');
  await assert.rejects(driver.backupEnd(uuid, diff.id, 0), { code: 104 });

  // nothing of ours stays in QEMU; the checkpoints' bitmaps do
  const after = await qemuState(driver, uuid);
  assert.deepEqual(after.nodes, before.nodes);
  assert.deepEqual(after.exports, []);
  assert.deepEqual(after.jobs, []);
  assert.deepEqual(after.bitmaps, driver.diskNodes(uuid).flatMap((d) => [`${d.formatNode}/c1`, `${d.formatNode}/c2`]).sort());
  assert.ok(full.id < inc.id && inc.id < diff.id);

  await driver.domainDestroy(uuid, 0);
  // the full chain restores with qemu-img convert alone
  const restored = path.join(env.dir, 'restored.raw');
  await run('qemu-img', ['convert', '-O', 'raw', `${dom.disks[0]!.path}.c2`, restored]);
  await assertSameContent(inc.expected[0]!, restored, path.join(env.dir, 'expected.raw'));
  assert.equal(await exists(`${dom.disks[0]!.path}.c1`), true);
  await env.assertClean();
});
