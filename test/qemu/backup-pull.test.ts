// Pull backups on real QEMU: the NBD export read by nbdcopy equals the disk at
// the backup's instant although the disk is written during the read; the
// exported dirty bitmap of an incremental pull marks exactly the clusters
// written since the checkpoint (nbdinfo --map).

import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { JobType } from '../../src/flags.js';
import { exists, makeTestDomain, makeTestEnv, socketsUnder, sleep } from '../helpers/qemu-env.js';
import { assertSameContent, DiskModel, hammer, K64, MiB, qemuState, run, scatter, waitJobCompleted, write } from './backup-util.js';

const SIZE = 64 * MiB;

async function dirtyClusters(uri: string, bitmap: string): Promise<number[]> {
  const { stdout } = await run('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${bitmap}`, uri]);
  const out: number[] = [];
  for (const e of JSON.parse(stdout) as { offset: number; length: number; type: number }[]) {
    if ((e.type & 1) === 0) continue;
    for (let o = e.offset; o < e.offset + e.length; o += K64) out.push(o / K64);
  }
  return out;
}

test('pull full (unix) and pull incremental (tcp, auto port): exports equal the disk at the instant; bitmap = clusters written since c1', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 64 });
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  const disk = dom.disks[0]!;
  const m = new DiskModel(disk.target, SIZE);
  const before = await qemuState(driver, uuid);
  for (let i = 0; i < 8; i++) await write(driver, uuid, m, i * 4 * MiB, MiB, 0x30 + i);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  m.markClean();
  await scatter(driver, uuid, m, 30, 5);

  // ---- pull full over a unix socket, scratch named explicitly
  const sock = path.join(env.dir, 'nbd.sock');
  const scratch = path.join(env.dir, 'scratch1.qcow2');
  const expected1 = m.snapshot();
  const id1 = await driver.backupBegin(uuid,
    `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda'><scratch file='${scratch}'/></disk></disks></domainbackup>`,
    null, 0);
  const xml1 = await driver.backupGetXMLDesc(uuid, id1, 0);
  assert.match(xml1, /<disk name=.sda. backup=.yes. type=.file. backupmode=.full. exportname=.sda.>/);
  assert.match(xml1, /<driver type=.qcow2.\/>/);
  assert.equal(await exists(scratch), true);
  const h = hammer(driver, uuid, [m], 11);
  const out1 = path.join(env.dir, 'pull1.raw');
  await run('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, out1]);
  const stats = await driver.getJobStats(uuid, 0);
  assert.equal(stats.type, JobType.UNBOUNDED);
  assert.ok(stats.disk_temp_total! > 0, 'scratch statistics');
  assert.ok((await h.stop()) > 5);
  await assertSameContent(expected1, out1, path.join(env.dir, 'expected.raw'));
  assert.equal(await driver.backupEnd(uuid, 0, 0), 1);
  const ev1 = await waitJobCompleted(env.events, uuid, id1);
  assert.equal(ev1.stats.success, true);
  assert.equal(await exists(scratch), false, 'scratch deleted');
  assert.deepEqual(await socketsUnder(env.dir), (await socketsUnder(env.runDir)), 'NBD socket removed');
  assert.deepEqual(await driver.listJobIds(uuid), []);

  // ---- pull incremental since c1 over TCP with the port chosen by us
  await scatter(driver, uuid, m, 30, 17);
  const expected2 = m.snapshot();
  const dirty = [...m.dirty].sort((a, b) => a - b);
  const id2 = await driver.backupBegin(uuid,
    "<domainbackup mode='pull'><incremental>c1</incremental><server name='localhost'/></domainbackup>",
    '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0);
  assert.ok(id2 > id1);
  const xml2 = await driver.backupGetXMLDesc(uuid, 0, 0);
  const port = Number(/port=.(\d+)./.exec(xml2)?.[1]);
  assert.ok(port > 0, xml2);
  assert.match(xml2, /backupmode=.incremental. incremental=.c1. exportname=.sda. exportbitmap=.backup-sda./);
  const scratch2 = /<scratch file=.([^'"]+)./.exec(xml2)![1]!;
  assert.equal(scratch2, `${disk.path}.c2`);
  const h2 = hammer(driver, uuid, [m], 23);
  await sleep(100);
  const uri = `nbd://localhost:${port}/sda`;
  assert.deepEqual(await dirtyClusters(uri, 'backup-sda'), dirty);
  const out2 = path.join(env.dir, 'pull2.raw');
  await run('nbdcopy', [uri, out2]);
  await h2.stop();
  await assertSameContent(expected2, out2, path.join(env.dir, 'expected.raw'));
  await driver.abortJob(uuid, 0); // libvirt's way to end a pull: success
  const ev2 = await waitJobCompleted(env.events, uuid, id2);
  assert.equal(ev2.stats.success, true);
  assert.equal(ev2.stats.type, JobType.COMPLETED);
  assert.equal(await exists(scratch2), false);
  await assert.rejects(driver.backupGetXMLDesc(uuid, id2, 0), { code: 104 });
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1', 'c2']);

  const after = await qemuState(driver, uuid);
  assert.deepEqual(after.nodes, before.nodes);
  assert.deepEqual([after.exports, after.jobs], [[], []]);
  const node = driver.diskNodes(uuid)[0]!.formatNode;
  assert.deepEqual(after.bitmaps, [`${node}/c1`, `${node}/c2`]);
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});
