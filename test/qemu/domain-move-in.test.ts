// Moving a libvirt VM in (docs/domain.md, "Moving a VM in"), from saved
// files: the `virsh dumpxml` of a typical VM is refused as it is, its edited
// form (test/fixtures/domain/libvirt-typical.moved.xml) passes domxml-check and
// defines, its checkpoint is redefined from `virsh checkpoint-dumpxml`, and the
// first backup in virtbackd is incremental since that libvirt checkpoint: on
// top of the full backup made before the move, it restores the disks exactly.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { BackupBeginFlags, CheckpointCreateFlags } from '../../src/flags.js';
import { checkDomainXML } from '../../src/xml/domain-check.js';
import { refused } from '../helpers/errors.js';
import { makeTestEnv } from '../helpers/qemu-env.js';
import { run, waitJobCompleted } from './backup-util.js';

const fixtures = path.join(import.meta.dirname, '..', 'fixtures', 'domain');
const MiB = 1024 * 1024;

/** Bytes the top image of `file` holds itself (not its backing file). */
async function ownData(file: string): Promise<number> {
  const { stdout } = await run('qemu-img', ['map', '--output=json', file]);
  return (JSON.parse(stdout) as { depth: number; data: boolean; length: number }[])
    .filter((e) => e.depth === 0 && e.data).reduce((n, e) => n + e.length, 0);
}

test('a libvirt VM moved in: edited definition, checkpoint redefined, first backup incremental since it', { timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const imagesDir = '/var/lib/libvirt/images/';
  const disks = ['web01.qcow2', 'web01-data.qcow2'].map((f) => path.join(env.dir, f));

  // What libvirt left: images with data, the persistent bitmap of checkpoint cp1,
  // the full backup taken at cp1, and writes after it (tracked in cp1)
  for (const [i, img] of disks.entries()) {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', img, '16M']);
    await run('qemu-io', ['-f', 'qcow2', img, '-c', `write -P 0x${(0x11 + i).toString(16)} 0 2M`]);
    await run('qemu-img', ['bitmap', '--add', img, 'cp1']);
    await run('qemu-img', ['convert', '-O', 'qcow2', img, `${img}.full`]);
    await run('qemu-io', ['-f', 'qcow2', img, '-c', `write -P 0x${(0x21 + i).toString(16)} ${4 + i}M 1M`]);
  }

  const driver = await env.openDriver();
  // as dumped: refused, naming the first element in the way
  const dumped = (await readFile(path.join(fixtures, 'libvirt-typical.xml'), 'utf8')).replaceAll(imagesDir, `${env.dir}/`);
  await refused(driver.domainDefineXML(dumped, 0), ErrorCode.CONFIG_UNSUPPORTED, /is not supported by virtback's QEMU runtime/);
  assert.deepEqual(await driver.listAllDomains(0), []);

  // edited as docs/domain.md says: nothing refused, defined
  const moved = (await readFile(path.join(fixtures, 'libvirt-typical.moved.xml'), 'utf8')).replaceAll(imagesDir, `${env.dir}/`);
  assert.deepEqual(checkDomainXML(moved).filter((f) => f.kind === 'refused'), []);
  const { uuid } = await driver.domainDefineXML(moved.replace("unit='KiB'>2097152<", "unit='KiB'>262144<").replace("unit='KiB'>2097152<", "unit='KiB'>262144<"), 0);
  assert.equal(uuid, '4a8c2f3e-9d1b-4c6e-8f2a-7b3d5e9c1a04', "the VM keeps libvirt's uuid");

  // the checkpoint, as `virsh checkpoint-dumpxml web01 cp1` printed it
  const cp1 = await readFile(path.join(fixtures, 'libvirt-typical.cp1.xml'), 'utf8');
  assert.equal(await driver.checkpointCreateXML(uuid, cp1, CheckpointCreateFlags.REDEFINE), 'cp1');
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['cp1']);
  assert.deepEqual(await driver.listUnknownBitmaps(uuid), [], 'the images\' bitmaps all belong to a checkpoint');
  const cpXml = await driver.checkpointGetXMLDesc(uuid, 'cp1', 0);
  assert.match(cpXml, /<description>before the upgrade<\/description>/);
  assert.match(cpXml, /<creationTime>1764950400<\/creationTime>/);

  await driver.domainCreate(uuid, 0);
  const targets = disks.map((img) => `${img}.inc`);
  for (const [i, img] of disks.entries()) {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `${img}.full`, '-F', 'qcow2', targets[i]!, '16M']);
  }
  const backupXml = '<domainbackup><incremental>cp1</incremental><disks>' +
    ['vda', 'vdb'].map((d, i) => `<disk name='${d}' type='file'><target file='${targets[i]}'/><driver type='qcow2'/></disk>`).join('') +
    '</disks></domainbackup>';
  const id = await driver.backupBegin(uuid, backupXml, null, BackupBeginFlags.REUSE_EXTERNAL);
  const done = await waitJobCompleted(env.events, uuid, id);
  assert.equal(done.stats.success, true, done.stats.errmsg);
  assert.equal(await driver.backupEnd(uuid, id, 0), 1);
  await driver.domainDestroy(uuid, 0);

  for (const [i, img] of disks.entries()) {
    // only what changed since cp1 was copied (the bitmap libvirt's QEMU kept)...
    assert.equal(await ownData(targets[i]!), MiB, `${path.basename(img)}: the incremental holds the 1 MiB written after cp1`);
    // ...and over the full backup it is the disk, byte for byte
    await run('qemu-img', ['compare', '-q', img, targets[i]!]);
  }
  await env.assertClean();
});
