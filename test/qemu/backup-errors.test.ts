// Every refusal and failure of backupBegin/End with its code; after each one
// QEMU holds no extra node, bitmap, export or job and no file was left behind,
// and the next backup works.

import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { CheckedDriver } from '../../src/api/checked-driver.js';
import { ErrorCode } from '../../src/errors.js';
import { BackupBeginFlags } from '../../src/flags.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import { hmpWrite, makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';
import { MiB, qemuState, qmp, run, waitJobCompleted } from './backup-util.js';

test('backup errors: codes, and nothing left behind after each failure', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
  const driver = await env.openDriver({ backups: (d, cps) => new QemuBackups(d, cps, { speed: MiB }) });
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);

  await assert.rejects(driver.backupBegin(uuid, null, null, 0), {
    code: ErrorCode.OPERATION_UNSUPPORTED, message: 'cannot perform disk backup for inactive domain',
  });
  await driver.domainCreate(uuid, 0);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  // a pull socket path that exists: QEMU would unlink it before binding, backup-end would remove it
  const victim = path.join(env.dir, 'victim.txt');
  await writeFile(victim, 'precious');
  await mkdir(path.join(env.dir, 'victim.d'));
  const baseline = await qemuState(driver, uuid);
  const files = async (): Promise<string[]> => (await readdir(env.dir)).filter((f) => f !== 'state' && f !== 'run').sort();
  const baseFiles = await files();

  const fails = async (what: string, code: number, p: Promise<unknown>, msg?: RegExp): Promise<void> => {
    await assert.rejects(p, (e: { code: number; message: string }) => {
      assert.equal(e.code, code, `${what}: ${e.message}`);
      if (msg) assert.match(e.message, msg, what);
      return true;
    });
    assert.deepEqual(await qemuState(driver, uuid), baseline, `${what}: QEMU state unchanged`);
    assert.deepEqual(await files(), baseFiles, `${what}: no file left`);
    assert.deepEqual(await driver.listJobIds(uuid), [], what);
    assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1'], what);
  };

  // the public API's rule (the entry-point table), not the driver's
  await fails('NO_METADATA without checkpoint', ErrorCode.INVALID_ARG,
    new CheckedDriver(driver, false).backupBegin(uuid, null, null, BackupBeginFlags.NO_METADATA), /checkpointXml .* must not be NULL/);
  for (const existing of ['victim.txt', 'victim.d']) {
    const p = path.join(env.dir, existing);
    await fails(`pull socket ${existing} exists`, ErrorCode.INVALID_ARG,
      driver.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${p}'/></domainbackup>`, null, 0),
      /socket path '.*' for the NBD server already exists \((a file|a directory)\)/);
  }
  assert.equal(await readFile(victim, 'utf8'), 'precious', 'the file is untouched');
  await fails('unsupported flag', ErrorCode.INVALID_ARG, driver.backupBegin(uuid, null, null, BackupBeginFlags.PRESERVE_SHUTDOWN_DOMAIN));
  await fails('unknown checkpoint', ErrorCode.NO_DOMAIN_CHECKPOINT,
    driver.backupBegin(uuid, '<domainbackup><incremental>nope</incremental></domainbackup>', null, 0),
    /Checkpoint 'nope' for incremental backup of disk 'sda' not found/);
  await fails('no disks', ErrorCode.CONFIG_UNSUPPORTED,
    driver.backupBegin(uuid, "<domainbackup><disks><disk name='sda' backup='no'/><disk name='sdb' backup='no'/></disks></domainbackup>", null, 0),
    /no disks selected for backup/);
  await fails('unknown disk', ErrorCode.CONFIG_UNSUPPORTED,
    driver.backupBegin(uuid, "<domainbackup><disks><disk name='sdz'/></disks></domainbackup>", null, 0), /no disk named 'sdz'/);
  // the schema allows only qcow2 scratch files (the driver says the same in words)
  await fails('pull raw scratch', ErrorCode.XML_INVALID_SCHEMA,
    driver.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${env.dir}/s'/><disks><disk name='sda' type='file'><driver type='raw'/></disk></disks></domainbackup>`, null, 0),
  );
  await fails('pull tls', ErrorCode.OPERATION_INVALID,
    driver.backupBegin(uuid, "<domainbackup mode='pull'><server name='localhost' tls='yes'/></domainbackup>", null, 0),
    /backup TLS directory not configured/);
  await fails('existing checkpoint name', ErrorCode.OPERATION_INVALID,
    driver.backupBegin(uuid, null, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0));

  // QUIESCE without a guest agent: refused after nodes were prepared, which are undone
  await fails('quiesce without agent', ErrorCode.ARGUMENT_UNSUPPORTED,
    driver.backupBegin(uuid, null, null, BackupBeginFlags.QUIESCE), /guest agent is not configured/);

  // an existing target is refused and left alone
  const existing = path.join(env.dir, 'exists.qcow2');
  await writeFile(existing, 'mine');
  baseFiles.push('exists.qcow2');
  baseFiles.sort();
  await fails('existing target', ErrorCode.INVALID_ARG,
    driver.backupBegin(uuid, `<domainbackup><disks><disk name='sda' type='file'><target file='${existing}'/></disk></disks></domainbackup>`, null, 0),
    new RegExp(`store '${existing}' for backup of 'sda' exists`));

  // c1 was made by checkpointCreateXML: no push backup to back an incremental target
  await fails('incremental push without its previous backup', ErrorCode.OPERATION_INVALID,
    driver.backupBegin(uuid, '<domainbackup><incremental>c1</incremental></domainbackup>', null, 0),
    /incremental backup of disk 'sda' since checkpoint 'c1' needs the push backup taken with 'c1' \(e\.g\. '.*\.c1'\), which was not found/);

  // failure half-way: sda's target is created and attached, sdb's cannot be created
  await fails('second target in a missing directory', ErrorCode.SYSTEM_ERROR,
    driver.backupBegin(uuid, `<domainbackup><disks><disk name='sda' type='file'><target file='${env.dir}/t-sda.qcow2'/></disk>` +
      `<disk name='sdb' type='file'><target file='${env.dir}/missing/t-sdb.qcow2'/></disk></disks></domainbackup>`, null, 0),
    /failed to create image file/);

  // failure in the transaction (a bitmap named like the new checkpoint is in the way):
  // the targets created and attached before it are removed
  const sdaNode = driver.diskNodes(uuid).find((d) => d.target === 'sda')!.formatNode!;
  await qmp(driver, uuid, 'block-dirty-bitmap-add', { node: sdaNode, name: 'c9', disabled: true });
  const withBlocker = await qemuState(driver, uuid);
  await assert.rejects(
    driver.backupBegin(uuid, null, '<domaincheckpoint><name>c9</name></domaincheckpoint>', 0),
    (e: { code: number; message: string }) => e.code === ErrorCode.INTERNAL_ERROR && /transaction/.test(e.message),
  );
  assert.deepEqual(await qemuState(driver, uuid), withBlocker, 'transaction failure: QEMU state unchanged');
  assert.deepEqual(await files(), baseFiles, 'transaction failure: targets removed');
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1'], 'the checkpoint of a failed begin is not recorded');
  await qmp(driver, uuid, 'block-dirty-bitmap-remove', { node: sdaNode, name: 'c9' });

  // failure after the transaction (pull: the second export has the same name): the checkpoint stays
  const sock = path.join(env.dir, 'n.sock');
  await assert.rejects(
    driver.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks>` +
      `<disk name='sda' exportname='x'/><disk name='sdb' exportname='x'/></disks></domainbackup>`,
    '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0),
    { code: ErrorCode.INTERNAL_ERROR },
  );
  const afterExport = await qemuState(driver, uuid);
  assert.deepEqual({ ...afterExport, bitmaps: [] }, { ...baseline, bitmaps: [] });
  assert.deepEqual(afterExport.bitmaps, [...baseline.bitmaps, ...driver.diskNodes(uuid).map((d) => `${d.formatNode}/c2`)].sort());
  assert.deepEqual(await files(), baseFiles);
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1', 'c2']);
  await driver.checkpointDelete(uuid, 'c2', 0);

  // job-level errors
  await assert.rejects(driver.backupGetXMLDesc(uuid, 0, 0), { code: ErrorCode.NO_DOMAIN_BACKUP, message: 'no domain backup job present' });
  await assert.rejects(driver.backupEnd(uuid, 0, 0), { code: ErrorCode.NO_DOMAIN_BACKUP });
  await assert.rejects(driver.abortJob(uuid, 0), { code: ErrorCode.OPERATION_INVALID, message: 'no job is active on the domain' });

  // the domain is ready for the next backup (raw target, checkpoint without metadata); a second one is refused while it runs
  await hmpWrite(driver, uuid, 'sdb', 0x42, MiB, 2 * MiB);
  const id = await driver.backupBegin(uuid,
    `<domainbackup><disks><disk name='sdb' type='file'><driver type='raw'/><target file='${env.dir}/ok.raw'/></disk></disks></domainbackup>`,
    "<domaincheckpoint><name>nm</name><disks><disk name='sdb' checkpoint='bitmap'/></disks></domaincheckpoint>", BackupBeginFlags.NO_METADATA);
  await assert.rejects(driver.backupBegin(uuid, null, null, 0), { code: ErrorCode.OPERATION_INVALID, message: `another backup job is already running (job ${id})` });
  await assert.rejects(driver.backupEnd(uuid, id + 1, 0),
    { code: ErrorCode.NO_DOMAIN_BACKUP, message: `no domain backup job with id ${id + 1} present (the domain's backup job is ${id})` });
  await assert.rejects(driver.backupEnd(uuid, id, 0), { code: ErrorCode.OPERATION_INVALID });
  await qmp(driver, uuid, 'block-job-set-speed', { device: `backup-sdb-${driver.diskNodes(uuid).find((d) => d.target === 'sdb')!.formatNode}`, speed: 0 });
  await waitJobCompleted(env.events, uuid, id);
  assert.equal(await driver.backupEnd(uuid, id, 0), 1);
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1'], 'NO_METADATA: not recorded');
  const sdbNode = driver.diskNodes(uuid).find((d) => d.target === 'sdb')!.formatNode!;
  assert.ok((await qemuState(driver, uuid)).bitmaps.includes(`${sdbNode}/nm`), 'NO_METADATA: the bitmap exists');
  await driver.domainDestroy(uuid, 0);
  await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', dom.disks[1]!.path, path.join(env.dir, 'ok.raw')]);
  await env.assertClean();
});
