// Block devices on real QEMU (issue 13): a domain whose disk is a block device
// (an LV of a volume group on a loop device, or a plain loop device where the
// kernel has no device-mapper), a push backup onto block devices (raw full,
// then qcow2 incremental backed by the full one), a pull with block scratch,
// and a restore onto a loop device; every image is compared byte-exact with
// the disk at the backup's instant. Block devices are never created nor
// removed by the backup (libvirt's rule): they are there afterwards.

import assert from 'node:assert/strict';
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { restoreBackup } from '../../src/repository/restore.js';
import { verifyBackup } from '../../src/repository/verify.js';
import { blockDevicesUnusable, makeBlockDevices, makeLoopDevice } from '../helpers/block-devices.js';
import { refused } from '../helpers/errors.js';
import { exists, makeTestEnv } from '../helpers/qemu-env.js';
import { assertSameContent, backingFile, DiskModel, hammer, MiB, qemuState, run, scatter, waitJobCompleted, write } from './backup-util.js';

const SIZE = 64 * MiB;
const skip = await blockDevicesUnusable();

test('disk, push targets and pull scratch on block devices; restore onto a loop device', { skip: skip ?? false }, async (t) => {
  const env = await makeTestEnv(t);
  const blk = await makeBlockDevices(t, env.dir, 512);
  t.diagnostic(`block devices from ${blk.kind}`);
  const diskDev = await blk.make('disk', 72);
  const full = await blk.make('full', 64);
  const incr = await blk.make('incr', 72);
  const scratch = await blk.make('scratch', 72);
  const small = await blk.make('small', 32);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', diskDev, '64M']);

  const driver = await env.openDriver();
  const xml = `<domain type='qemu'><name>blk-${path.basename(env.dir)}</name><memory unit='MiB'>128</memory>
    <os><type arch='x86_64' machine='q35'>hvm</type></os>
    <devices><disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='${diskDev}'/><target dev='sda' bus='scsi'/></disk></devices></domain>`;
  const { uuid } = await driver.domainDefineXML(xml, 0);
  assert.match(await driver.domainGetXMLDesc(uuid, 0), new RegExp(`<disk type=.block. device=.disk.>\\s*<driver name=.qemu. type=.qcow2./>\\s*<source dev=.${diskDev}./>`));
  await driver.domainCreate(uuid, 0);
  const before = await qemuState(driver, uuid);
  const m = new DiskModel('sda', SIZE);
  for (let i = 0; i < 8; i++) await write(driver, uuid, m, i * 4 * MiB, MiB, 0x40 + i);

  // ---- refused before anything is made: no device, not a device, a raw device too small
  const pushTo = (dev: string, fmt: string) =>
    `<domainbackup><disks><disk name='sda' type='block'><driver type='${fmt}'/><target dev='${dev}'/></disk></disks></domainbackup>`;
  const plain = path.join(env.dir, 'plain.img');
  await writeFile(plain, '');
  await refused(driver.backupBegin(uuid, pushTo('/dev/vb-no-such-device', 'raw'), null, 0), 8,
    "block device '/dev/vb-no-such-device' for backup of 'sda' does not exist");
  await refused(driver.backupBegin(uuid, pushTo(plain, 'raw'), null, 0), 8, `'${plain}' for backup of 'sda' is not a block device`);
  await refused(driver.backupBegin(uuid, pushTo(small, 'raw'), null, 0), 8,
    `block device '${small}' (${32 * MiB} bytes) is smaller than disk 'sda' (${SIZE} bytes)`);
  assert.deepEqual(await qemuState(driver, uuid), before);

  // ---- full push, raw, onto a block device, with checkpoint c1
  const expected1 = m.snapshot();
  const id1 = await driver.backupBegin(uuid, pushTo(full, 'raw'), '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  assert.match(await driver.backupGetXMLDesc(uuid, id1, 0), new RegExp(`<disk name=.sda. backup=.yes. type=.block. backupmode=.full.>\\s*<driver type=.raw./>\\s*<target dev=.${full}./>`));
  assert.equal((await waitJobCompleted(env.events, uuid, id1)).stats.success, true);
  assert.equal(await driver.backupEnd(uuid, id1, 0), 1);
  await assertSameContent(expected1, full, path.join(env.dir, 'expected1.raw'));

  // ---- incremental push since c1, qcow2 formatted onto a block device, backed by the full one
  m.markClean();
  await scatter(driver, uuid, m, 30, 7);
  const expected2 = m.snapshot();
  const id2 = await driver.backupBegin(uuid,
    `<domainbackup><incremental>c1</incremental><disks><disk name='sda' type='block'><driver type='qcow2'/><target dev='${incr}'/></disk></disks></domainbackup>`,
    '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0);
  assert.equal((await waitJobCompleted(env.events, uuid, id2)).stats.success, true);
  assert.equal(await driver.backupEnd(uuid, id2, 0), 1);
  assert.equal(await backingFile(incr), full, 'absolute backing file on a device');
  await assertSameContent(expected2, incr, path.join(env.dir, 'expected2.raw'));

  // ---- restore the chain onto a loop device: written in place (a device is never created nor truncated)
  const restoreDev = await makeLoopDevice(t, env.dir, SIZE);
  const r = await restoreBackup({ target: incr, output: restoreDev, format: 'raw' });
  assert.deepEqual(r.chain, [incr, full]);
  assert.ok((await stat(restoreDev)).isBlockDevice());
  // verify reads a chain on devices (no manifest beside a device: nothing to check against)
  const v = await verifyBackup({ target: incr });
  assert.deepEqual(v.chain.map((l) => [l.file, l.status, l.manifest]), [[incr, 'unverified', null], [full, 'unverified', null]]);
  assert.equal(await exists(`${full}.manifest.json`), false, 'no manifest written into /dev');
  await assertSameContent(expected2, restoreDev, path.join(env.dir, 'expected2b.raw'));

  // ---- pull with block scratch while the disk is written; the scratch device stays
  const sock = path.join(env.dir, 'nbd.sock');
  const expected3 = m.snapshot();
  const id3 = await driver.backupBegin(uuid,
    `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda' type='block'><scratch dev='${scratch}'/></disk></disks></domainbackup>`,
    null, 0);
  assert.match(await driver.backupGetXMLDesc(uuid, id3, 0), new RegExp(`<scratch dev=.${scratch}./>`));
  const h = hammer(driver, uuid, [m], 13);
  const out = path.join(env.dir, 'pull.raw');
  await run('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, out]);
  assert.ok((await h.stop()) > 3);
  await assertSameContent(expected3, out, path.join(env.dir, 'expected3.raw'));
  assert.equal(await driver.backupEnd(uuid, 0, 0), 1);
  assert.equal((await waitJobCompleted(env.events, uuid, id3)).stats.success, true);
  assert.ok((await stat(scratch)).isBlockDevice(), 'scratch device kept');
  assert.deepEqual(await qemuState(driver, uuid).then((s) => s.nodes), before.nodes);

  await driver.domainDestroy(uuid, 0);
  assert.ok((await stat(full)).isBlockDevice() && (await stat(incr)).isBlockDevice(), 'targets kept');
});
