// A push whose target filesystem may not hold it is refused before anything
// is created (a target that fills up while QEMU's job runs fails the guest's
// writes: docs/troubleshooting.md); one that fits runs; the daemon option
// turns the check off; pushes of two domains onto one filesystem add up while
// the first runs. Real QEMU, a real (small) tmpfs.

import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { BackupEndFlags } from '../../src/flags.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import { canMountTmpfs, hmpWrite, makeTestDomain, makeTestEnv, type TestEnv, withSmallTmpfs } from '../helpers/qemu-env.js';
import { MiB, qemuState, waitJobCompleted } from './backup-util.js';

test('push backups and the free space of their target filesystem', { skip: canMountTmpfs ? false : 'mounting a tmpfs needs root', timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  await withSmallTmpfs(env.dir, 16, (small) => spaceChecked(env, small));
});

async function spaceChecked(env: TestEnv, small: string): Promise<void> {
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  // 24 MiB of data on sda: more than the 16 MiB tmpfs holds; 1 MiB on sdb
  await hmpWrite(driver, uuid, 'sda', 0x5a, 0, 24 * MiB);
  await hmpWrite(driver, uuid, 'sdb', 0x5b, 0, MiB);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c0</name></domaincheckpoint>', 0);
  const baseline = await qemuState(driver, uuid);
  const target = (disk: string, file: string, format = 'qcow2'): string =>
    `<disk name='${disk}' type='file'><driver type='${format}'/><target file='${path.join(small, file)}'/></disk>`;
  const refused = async (what: string, xml: string, msg: RegExp): Promise<void> => {
    await assert.rejects(driver.backupBegin(uuid, xml, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0), (e: { code: number; message: string }) => {
      assert.equal(e.code, ErrorCode.OPERATION_FAILED, `${what}: ${e.message}`);
      assert.match(e.message, msg, what);
      return true;
    });
    assert.deepEqual(await qemuState(driver, uuid), baseline, `${what}: QEMU state unchanged`);
    assert.deepEqual(await readdir(small), [], `${what}: nothing created`);
    assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c0'], `${what}: no checkpoint`);
    assert.deepEqual(await driver.listJobIds(uuid), [], `${what}: no job`);
  };

  await refused('full push of sda', `<domainbackup><disks>${target('sda', 'a.qcow2')}<disk name='sdb' backup='no'/></disks></domainbackup>`,
    new RegExp(`not enough free space for the backup of disk 'sda' in '${small}': it may need up to \\d+ bytes, \\d+ are free`));
  // 1 MiB of data on sdb, but a raw file allocates the zeroes the job writes for the rest: the whole 64 MiB disk
  await refused('full push of sdb into a raw file', `<domainbackup><disks><disk name='sda' backup='no'/>${target('sdb', 'b.raw', 'raw')}</disks></domainbackup>`,
    new RegExp(`not enough free space for the backup of disk 'sdb' in '${small}': it may need up to ${64 * MiB} bytes`));
  // 8 + 10 MiB dirty since c0: each fits alone, not both (targets on one filesystem add up)
  const inc = 8 * MiB;
  await hmpWrite(driver, uuid, 'sda', 0x6a, 4 * MiB, inc);
  await hmpWrite(driver, uuid, 'sdb', 0x5c, 2 * MiB, 10 * MiB);
  await refused('two incrementals on one filesystem',
    `<domainbackup><incremental>c0</incremental><disks>${target('sda', 'a.raw', 'raw')}${target('sdb', 'b.raw', 'raw')}</disks></domainbackup>`,
    /not enough free space .* of disks 'sda', 'sdb' in/);

  // an incremental of sda alone needs its 8 MiB dirty: it runs, and holds exactly that data
  const id = await driver.backupBegin(uuid,
    `<domainbackup><incremental>c0</incremental><disks>${target('sda', 'a.raw', 'raw')}<disk name='sdb' backup='no'/></disks></domainbackup>`, null, 0);
  await waitJobCompleted(env.events, uuid, id);
  assert.equal(await driver.backupEnd(uuid, id, 0), 1);
  const got = await readFile(path.join(small, 'a.raw'));
  assert.equal(got.length, 64 * MiB);
  assert.ok(got.subarray(4 * MiB, 4 * MiB + inc).every((b) => b === 0x6a), 'the dirty data');
  assert.ok(got.subarray(0, 4 * MiB).every((b) => b === 0) && got.subarray(4 * MiB + inc).every((b) => b === 0), 'nothing else');

  // --backup-space-check no (a daemon restarted with it): the same full push is accepted (and aborted here)
  await driver.close();
  const unchecked = await env.openDriver({ backups: (d, cps) => new QemuBackups(d, cps, { spaceCheck: false, speed: MiB }) });
  const forced = await unchecked.backupBegin(uuid, `<domainbackup><disks>${target('sda', 'f.qcow2')}<disk name='sdb' backup='no'/></disks></domainbackup>`, null, 0);
  await unchecked.backupEnd(uuid, forced, BackupEndFlags.ABORT);
  assert.deepEqual((await readdir(small)).sort(), ['a.raw', 'a.raw.manifest.json'], 'the aborted push left nothing');
  await unchecked.domainDestroy(uuid, 0);
  await env.assertClean();
}

test('pushes of two domains onto one filesystem: the running one\'s room counts until it ends', { skip: canMountTmpfs ? false : 'mounting a tmpfs needs root', timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  // a slow job (1 MiB/s), so that the first push still runs when the second begins
  const driver = await env.openDriver({ backups: (d, cps) => new QemuBackups(d, cps, { speed: MiB }) });
  const doms = [await makeTestDomain(env.dir, { name: 'first', sizeMiB: 64 }), await makeTestDomain(env.dir, { name: 'second', sizeMiB: 64 })];
  for (const d of doms) {
    await driver.domainDefineXML(d.xml, 0);
    await driver.domainCreate(d.uuid, 0);
    // 9 MiB each (a qcow2 target's bound: ~10.2 MiB; a raw one would need the whole 64 MiB disk): one fits the 16 MiB tmpfs, both do not
    await hmpWrite(driver, d.uuid, 'sda', 0x33, 0, 9 * MiB);
  }
  await withSmallTmpfs(env.dir, 16, async (small) => {
    const push = (i: number): Promise<number> => driver.backupBegin(doms[i]!.uuid,
      `<domainbackup><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${path.join(small, `${i}.qcow2`)}'/></disk></disks></domainbackup>`, null, 0);
    const first = await push(0);
    await assert.rejects(push(1), (e: { code: number; message: string }) => {
      assert.equal(e.code, ErrorCode.OPERATION_FAILED);
      assert.match(e.message, /are free after \d+ that running backups may still write/);
      return true;
    });
    assert.deepEqual((await readdir(small)).sort(), ['0.qcow2'], 'the refused push created nothing');
    await driver.backupEnd(doms[0]!.uuid, first, BackupEndFlags.ABORT);
    // the first job ended: its room is free again (its target deleted with the abort)
    const second = await push(1);
    await driver.backupEnd(doms[1]!.uuid, second, BackupEndFlags.ABORT);
  });
  for (const d of doms) await driver.domainDestroy(d.uuid, 0);
  await env.assertClean();
});
