// Disk buses and CD-ROM drives on real QEMU (issue 13): an i440fx ('pc')
// domain with a SATA disk (ich9-ahci), an IDE disk (the built-in IDE), an
// IDE CD-ROM holding an image and an empty SATA CD-ROM drive. Checkpoints and
// push backups (full, then incremental) of both disks equal the disks at the
// backup's instant; the CD-ROMs are read-only and not backed up by default.
// q35 has no IDE: refused with libvirt's words.

import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { runMain } from '../helpers/cli.js';
import { refused } from '../helpers/errors.js';
import { libvirtUri, parseTable, virshFails, virshMissing, virshOk } from '../helpers/libvirt-clients.js';
import { exists, makeTestEnv } from '../helpers/qemu-env.js';
import { assertSameContent, backingFile, DiskModel, MiB, qmp, run, scatter, waitJobCompleted, write } from './backup-util.js';
import { makeDaemonEnv } from './daemon-util.js';

const SIZE = 32 * MiB;

test('sata and ide disks on i440fx: checkpoints and push backups; cdroms read-only, skipped by default', async (t) => {
  const env = await makeTestEnv(t);
  const img = (n: string) => path.join(env.dir, n);
  for (const n of ['sata.qcow2', 'ide.qcow2']) await run('qemu-img', ['create', '-q', '-f', 'qcow2', img(n), `${SIZE}`]);
  await writeFile(img('disc.iso'), Buffer.alloc(MiB, 0x5a));
  const driver = await env.openDriver();
  const xml = `<domain type='qemu'><name>bus-${path.basename(env.dir)}</name><memory unit='MiB'>128</memory>
    <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='cdrom'/><boot dev='hd'/></os><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${img('sata.qcow2')}'/><target dev='sda' bus='sata'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${img('ide.qcow2')}'/><target dev='hda' bus='ide'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='${img('disc.iso')}'/><target dev='hdc' bus='ide'/></disk>
    <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/></disk>
    </devices></domain>`;
  const { uuid } = await driver.domainDefineXML(xml, 0);
  await driver.domainCreate(uuid, 0);

  const blocks = (await qmp(driver, uuid, 'query-block')) as { qdev: string; removable: boolean; inserted?: { ro: boolean; file: string } }[];
  assert.deepEqual(blocks.map((b) => [b.qdev, b.removable, b.inserted?.ro ?? null, b.inserted?.file ?? null]).sort(), [
    ['ide0-0-0', false, false, img('ide.qcow2')],
    ['ide0-1-0', true, true, img('disc.iso')],
    ['sata0-0-0', false, false, img('sata.qcow2')],
    ['sata0-0-1', true, null, null],
  ]);
  const bootindex = async (id: string) => qmp(driver, uuid, 'qom-get', { path: `/machine/peripheral/${id}`, property: 'bootindex' });
  assert.deepEqual([await bootindex('ide0-1-0'), await bootindex('sata0-0-0'), await bootindex('ide0-0-0')], [1, 2, -1], "<boot dev='cdrom'/><boot dev='hd'/>");

  const models = [new DiskModel('sda', SIZE), new DiskModel('hda', SIZE)];
  for (const m of models) for (let i = 0; i < 4; i++) await write(driver, uuid, m, i * 4 * MiB, MiB, 0x21 + i);
  const full = await driver.backupBegin(uuid, null, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  assert.match(await driver.backupGetXMLDesc(uuid, full, 0), /<disk name='hdc' backup='no'\/>\s*<disk name='sdb' backup='no'\/>|<disk name='sdb' backup='no'\/>[^]*<disk name='hdc' backup='no'\/>/);
  const expected1 = models.map((m) => m.snapshot());
  assert.equal((await waitJobCompleted(env.events, uuid, full)).stats.success, true);
  assert.equal(await driver.backupEnd(uuid, full, 0), 1);
  for (const [i, m] of models.entries()) await assertSameContent(expected1[i]!, `${img(m.target === 'sda' ? 'sata.qcow2' : 'ide.qcow2')}.c1`, img(`e1-${m.target}.raw`));

  for (const [i, m] of models.entries()) await scatter(driver, uuid, m, 20, 3 + i);
  const expected2 = models.map((m) => m.snapshot());
  const inc = await driver.backupBegin(uuid, '<domainbackup><incremental>c1</incremental></domainbackup>', '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0);
  assert.equal((await waitJobCompleted(env.events, uuid, inc)).stats.success, true);
  assert.equal(await driver.backupEnd(uuid, inc, 0), 1);
  for (const [i, m] of models.entries()) {
    const base = img(m.target === 'sda' ? 'sata.qcow2' : 'ide.qcow2');
    assert.equal(await backingFile(`${base}.c2`), path.basename(`${base}.c1`));
    await assertSameContent(expected2[i]!, `${base}.c2`, img(`e2-${m.target}.raw`));
  }

  // ---- change-media (virDomainUpdateDeviceFlags with the drive's <disk>): live by default while running
  await writeFile(img('disc2.iso'), Buffer.alloc(MiB, 0x6b));
  const media = async () => Object.fromEntries(((await qmp(driver, uuid, 'query-block')) as { qdev: string; inserted?: { file: string; ro: boolean } }[])
    .filter((b) => /ide0-1-0|sata0-0-1/.test(b.qdev)).map((b) => [b.qdev, b.inserted ? `${b.inserted.file}${b.inserted.ro ? ' ro' : ''}` : null]));
  await driver.domainUpdateDevice(uuid, "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>", 0);
  await driver.domainUpdateDevice(uuid, `<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='${img('disc2.iso')}'/><target dev='sdb' bus='sata'/><readonly/><address type='drive' controller='0' bus='0' target='0' unit='1'/></disk>`, 0);
  assert.deepEqual(await media(), { 'ide0-1-0': null, 'sata0-0-1': `${img('disc2.iso')} ro` });
  assert.match(await driver.domainGetXMLDesc(uuid, 0), new RegExp(`<source file='${img('disc2.iso')}'/>\\s*<target dev='sdb' bus='sata'/>`));
  assert.match(await driver.domainGetXMLDesc(uuid, 2), new RegExp(`<source file='${img('disc.iso')}'/>\\s*<target dev='hdc' bus='ide'/>`), 'the definition unchanged');
  // the old image's nodes are gone, the new one's are there, read-only
  const nodeFiles = ((await qmp(driver, uuid, 'query-named-block-nodes', { flat: true })) as { file: string; drv: string }[])
    .filter((n) => n.drv === 'raw' && n.file.endsWith('.iso')).map((n) => n.file);
  assert.deepEqual(nodeFiles, [img('disc2.iso')]);
  // CONFIG: the definition only; applied at the next start
  await driver.domainUpdateDevice(uuid, `<disk type='file' device='cdrom'><source file='${img('disc2.iso')}'/><target dev='hdc' bus='ide'/></disk>`, 2);
  assert.equal((await media())['ide0-1-0'], null);
  await refused(driver.domainUpdateDevice(uuid, `<disk type='file' device='disk'><source file='${img('x.qcow2')}'/><target dev='sda' bus='sata'/></disk>`, 0),
    84, "disk 'sda': only the media of a cdrom can be changed");
  await refused(driver.domainUpdateDevice(uuid, "<disk type='file' device='cdrom'><target dev='hdd' bus='ide'/></disk>", 0), 8, "disk 'hdd' not found in domain");
  await driver.domainDestroy(uuid, 0);
  await driver.domainCreate(uuid, 0);
  assert.deepEqual(await media(), { 'ide0-1-0': `${img('disc2.iso')} ro`, 'sata0-0-1': null });
  await refused(driver.domainUpdateDevice(uuid, "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>", 1 << 3), 8, /unsupported flags \(0x8\)/);
  await driver.domainDestroy(uuid, 0);
  await refused(driver.domainUpdateDevice(uuid, "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>", 1), 55, 'Requested operation is not valid: domain is not running');
});

test('an IDE disk on q35 is refused at start with libvirt\'s words', async (t) => {
  const env = await makeTestEnv(t);
  const file = path.join(env.dir, 'a.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, '16M']);
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(`<domain type='qemu'><name>q-${path.basename(env.dir)}</name><memory unit='MiB'>64</memory>
    <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${file}'/><target dev='hda' bus='ide'/></disk></devices></domain>`, 0);
  await refused(driver.domainCreate(uuid, 0), 67, 'IDE controllers are unsupported for this QEMU binary or machine type');
  await env.assertClean();
});

test('virsh change-media and undefine --nvram through virtbackd (virDomainUpdateDeviceFlags on the wire); virtback change-media', { skip: virshMissing() ?? false, timeout: 120_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const uri = libvirtUri(env.runDir);
  const iso = path.join(env.dir, 'disc.iso');
  await writeFile(iso, Buffer.alloc(MiB, 0x11));
  const name = `cd-${path.basename(env.dir)}`;
  const xmlFile = path.join(env.dir, 'dom.xml');
  await writeFile(xmlFile, `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory>
    <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
    <devices><disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='${iso}'/><target dev='sdc' bus='sata'/><readonly/></disk></devices></domain>`);
  await virshOk(uri, 'define', xmlFile);
  await virshOk(uri, 'start', name);
  const sources = async () => parseTable(await virshOk(uri, 'domblklist', name)).map((r) => [r.Target, r.Source]);
  assert.deepEqual(await sources(), [['sdc', iso]]);
  assert.equal((await virshOk(uri, 'change-media', name, 'sdc', '--eject')).trim(), 'Successfully ejected media.');
  assert.deepEqual(await sources(), [['sdc', '-']]);
  assert.equal((await virshOk(uri, 'change-media', name, 'sdc', iso, '--insert')).trim(), 'Successfully inserted media.');
  assert.deepEqual(await sources(), [['sdc', iso]]);
  // our own CLI, over virtbackd's socket
  const cli = await runMain(['-c', env.uri, 'change-media', name, 'sdc', '--eject']);
  assert.equal(cli.stdout, 'Successfully ejected media.\n', cli.stderr);
  assert.deepEqual(await sources(), [['sdc', '-']]);
  await virshOk(uri, 'destroy', name);
  // the UEFI domain's NVRAM: libvirt's refusal, then --nvram removes it
  await virshFails(uri, ['undefine', name], /^error: Requested operation is not valid: cannot undefine domain with nvram$/m);
  const nvram = path.join(env.stateDir, 'nvram', `${name}_VARS.fd`);
  assert.equal(await exists(nvram), true);
  await virshOk(uri, 'undefine', name, '--nvram');
  assert.equal(await exists(nvram), false);
});
