// Domain lifecycle against real QEMU: define, start, write through HMP
// qemu-io, destroy, read the bytes back from the image; state on disk; the
// monitor pass-through; listing filters; undefine of a running domain.

import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { isVirError } from '../../src/errors.js';
import { DomainState, DomainXMLFlags, ListDomainsFlags, MonitorCommandFlags, ShutoffReason } from '../../src/flags.js';
import { readProcStat } from '../../src/qemu/process.js';
import {
  exists,
  hmpWrite,
  imageHasPattern,
  imageSha256,
  makeTestDomain,
  makeTestEnv,
  qemuProcessesFor,
} from '../helpers/qemu-env.js';

const K64 = 65536;

test('define, start, write through HMP qemu-io, destroy: the bytes are in the image', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
  const driver = await env.openDriver();
  const before = await imageSha256(dom.disks[1]!.path);

  const ref = await driver.domainDefineXML(dom.xml, 0);
  assert.deepEqual(ref, { name: dom.name, uuid: dom.uuid });
  assert.ok(await exists(path.join(env.stateDir, 'domains', `${dom.uuid}.xml`)));
  let info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.id, -1);

  await driver.domainCreate(dom.uuid, 0);
  info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.RUNNING);
  assert.equal(info.reason, 1, 'running (booted)');
  const procs = await qemuProcessesFor(env.dir);
  assert.deepEqual(procs.map((p) => p.pid), [info.id], 'one QEMU, whose pid is the domain id');
  assert.ok(procs[0]!.argv.includes(dom.uuid));

  await hmpWrite(driver, dom.uuid, 'sda', 0xab, 0, K64);
  await hmpWrite(driver, dom.uuid, 'sda', 0xcd, 1 << 20, K64);
  await driver.domainDestroy(dom.uuid, 0);

  info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.DESTROYED);
  assert.equal(await imageHasPattern(dom.disks[0]!.path, 0xab, 0, K64), true);
  assert.equal(await imageHasPattern(dom.disks[0]!.path, 0xcd, 1 << 20, K64), true);
  assert.equal(await imageHasPattern(dom.disks[0]!.path, 0x00, K64, K64), true, 'nothing written between');
  assert.equal(await imageSha256(dom.disks[1]!.path), before, 'the other disk is untouched');

  assert.deepEqual(
    env.events.map((e) => (e.type === 'lifecycle' ? `${e.event}/${e.detail}` : e.type)),
    ['defined/added', 'started/booted', 'stopped/destroyed'],
  );
  await env.assertClean();
  assert.deepEqual(await readdir(env.runDir), [], 'the domain run dir is removed');
});

test('status file: pid, start time, sockets, node names; removed on stop', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 2 });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  const file = path.join(env.stateDir, 'status', `${dom.uuid}.json`);
  const status = JSON.parse(await readFile(file, 'utf8'));
  const info = await driver.domainGetInfo(dom.uuid);
  assert.equal(status.pid, info.id);
  assert.equal(status.pidStartTime, (await readProcStat(info.id))!.startTime);
  assert.equal(status.qmpSocket, path.join(env.runDir, dom.uuid, 'qmp.sock'));
  assert.equal(status.runDir, driver.domainRunDir(dom.uuid));
  assert.deepEqual(status.disks.map((d: { target: string; formatNode: string }) => [d.target, d.formatNode]), [
    ['sda', 'libvirt-2-format'],
    ['sdb', 'libvirt-1-format'],
  ]);
  assert.match(status.liveXml, new RegExp(dom.uuid));
  assert.equal(await driver.allocateNodeIndex(dom.uuid), 3);
  assert.equal(await driver.allocateNodeIndex(dom.uuid), 4);
  assert.equal(JSON.parse(await readFile(file, 'utf8')).extra.lastNodeIndex, 4, 'the allocation is persisted');
  await driver.domainDestroy(dom.uuid, 0);
  assert.equal(await exists(file), false);
  await env.assertClean();
});

test('scsi, sata and virtio disks: node names and qdev ids match what QEMU reports', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, {
    disks: 3,
    bus: ['scsi', 'sata', 'virtio'],
    devicesXml:
      "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n" +
      "      <target dev='sdd' bus='scsi'/>\n      <readonly/>\n    </disk>\n",
  });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);

  const nodes = driver.diskNodes(dom.uuid);
  assert.deepEqual(nodes.map((n) => [n.target, n.qdevId, n.formatNode]), [
    ['sda', 'scsi0-0-0-0', 'libvirt-3-format'],
    ['sdb', 'sata0-0-1', 'libvirt-2-format'],
    ['vda', 'virtio-disk0', 'libvirt-1-format'],
    ['sdd', 'scsi0-0-0-3', null],
  ]);
  const blocks = JSON.parse(await driver.qemuMonitorCommand(dom.uuid, '{"execute":"query-block"}', 0)).return as {
    qdev: string; inserted?: { 'node-name': string; file: string };
  }[];
  // virtio-blk reports the QOM path of its backend (/machine/peripheral/virtio-disk0/virtio-backend)
  const byQdev = new Map(blocks.map((b) => [b.qdev.replace(/^\/machine\/peripheral\/([^/]+)\/.*$/, '$1'), b]));
  for (const [i, n] of nodes.slice(0, 3).entries()) {
    const b = byQdev.get(n.qdevId);
    assert.ok(b, `QEMU has device ${n.qdevId}`);
    assert.equal(b.inserted?.['node-name'], n.formatNode);
    assert.equal(b.inserted?.file, dom.disks[i]!.path);
  }
  assert.equal(byQdev.get('scsi0-0-0-3')?.inserted, undefined, 'the cdrom is empty');

  // HMP qemu-io works on sata too; QEMU cannot do it on virtio-blk.
  await hmpWrite(driver, dom.uuid, 'sdb', 0x5a, 4096, 4096);
  await assert.rejects(hmpWrite(driver, dom.uuid, 'vda', 0x5a, 0, 4096));
  await driver.domainDestroy(dom.uuid, 0);
  assert.equal(await imageHasPattern(dom.disks[1]!.path, 0x5a, 4096, 4096), true);
  await env.assertClean();
});

test('a readonly disk cannot be written', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 1 });
  const xml = dom.xml.replace("<target dev='sda' bus='scsi'/>", "<target dev='sda' bus='scsi'/>\n      <readonly/>");
  const driver = await env.openDriver();
  await driver.domainDefineXML(xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await assert.rejects(hmpWrite(driver, dom.uuid, 'sda', 0xab, 0, K64), /read-only/);
  await driver.domainDestroy(dom.uuid, 0);
  assert.equal(await imageHasPattern(dom.disks[0]!.path, 0, 0, K64), true);
  await env.assertClean();
});

test('qemuMonitorCommand: QMP JSON in and out, error replies passed through, HMP text', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await assert.rejects(driver.qemuMonitorCommand(dom.uuid, '{"execute":"query-status"}', 0),
    (e) => isVirError(e, 'OPERATION_INVALID') && /domain is not running/.test(e.message));
  await driver.domainCreate(dom.uuid, 0);

  assert.deepEqual(JSON.parse(await driver.qemuMonitorCommand(dom.uuid, '{"execute":"query-status"}', 0)),
    { return: { status: 'running', singlestep: false, running: true } });
  assert.deepEqual(JSON.parse(await driver.qemuMonitorCommand(dom.uuid, '{"execute":"no-such-command"}', 0)),
    { error: { class: 'CommandNotFound', desc: 'The command no-such-command has not been found' } });
  const named = JSON.parse(await driver.qemuMonitorCommand(dom.uuid,
    '{"execute":"query-named-block-nodes","arguments":{"flat":true}}', 0)).return as { 'node-name': string }[];
  assert.deepEqual(named.map((n) => n['node-name']).sort(), ['libvirt-1-format', 'libvirt-1-storage']);
  assert.match(await driver.qemuMonitorCommand(dom.uuid, 'info status', MonitorCommandFlags.HMP), /VM status: running/);
  await assert.rejects(driver.qemuMonitorCommand(dom.uuid, 'not json', 0), (e) => isVirError(e, 'INTERNAL_ERROR'));
  await assert.rejects(driver.qemuMonitorCommand(dom.uuid, '{}', 0), (e) => isVirError(e, 'INVALID_ARG'));
  await assert.rejects(driver.qemuMonitorCommand(dom.uuid, 'info status', 4), (e) => isVirError(e, 'INVALID_ARG'));

  // stop/cont through the monitor: the domain state follows QEMU's events
  await driver.qemuMonitorCommand(dom.uuid, '{"execute":"stop"}', 0);
  assert.equal((await driver.domainGetInfo(dom.uuid)).state, DomainState.PAUSED);
  assert.deepEqual((await driver.listAllDomains(ListDomainsFlags.PAUSED)).map((d) => d.uuid), [dom.uuid]);
  await driver.qemuMonitorCommand(dom.uuid, '{"execute":"cont"}', 0);
  assert.equal((await driver.domainGetInfo(dom.uuid)).state, DomainState.RUNNING);
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});

test('listAllDomains filters by state and persistence; undefine while running makes it transient', async (t) => {
  const env = await makeTestEnv(t);
  const a = await makeTestDomain(env.dir, { name: 'a-running' });
  const b = await makeTestDomain(env.dir, { name: 'b-off' });
  const driver = await env.openDriver();
  await driver.domainDefineXML(a.xml, 0);
  await driver.domainDefineXML(b.xml, 0);
  await driver.domainCreate(a.uuid, 0);
  const F = ListDomainsFlags;
  const names = async (flags: number) => (await driver.listAllDomains(flags)).map((d) => d.name);
  assert.deepEqual(await names(0), ['a-running', 'b-off']);
  assert.deepEqual(await names(F.ACTIVE), ['a-running']);
  assert.deepEqual(await names(F.INACTIVE), ['b-off']);
  assert.deepEqual(await names(F.ACTIVE | F.INACTIVE), ['a-running', 'b-off']);
  assert.deepEqual(await names(F.RUNNING), ['a-running']);
  assert.deepEqual(await names(F.SHUTOFF), ['b-off']);
  assert.deepEqual(await names(F.PAUSED), []);
  assert.deepEqual(await names(F.PERSISTENT), ['a-running', 'b-off']);
  assert.deepEqual(await names(F.TRANSIENT), []);
  assert.deepEqual(await names(F.NO_CHECKPOINT | F.NO_BACKUP_JOB), ['a-running', 'b-off']);
  assert.deepEqual(await names(F.HAS_CHECKPOINT), []);
  assert.deepEqual(await names(F.HAS_BACKUP_JOB), []);
  assert.deepEqual(await names(F.ACTIVE | F.SHUTOFF), []);

  await driver.domainUndefine(a.uuid, 0);
  assert.equal(await exists(path.join(env.stateDir, 'domains', `${a.uuid}.xml`)), false);
  assert.deepEqual(await names(F.TRANSIENT), ['a-running']);
  assert.equal((await driver.domainGetInfo(a.uuid)).state, DomainState.RUNNING);
  await assert.rejects(driver.domainUndefine(a.uuid, 0), (e) => isVirError(e, 'OPERATION_INVALID'));
  await driver.domainDestroy(a.uuid, 0);
  await assert.rejects(driver.domainLookupByName('a-running'), (e) => isVirError(e, 'NO_DOMAIN'));
  assert.deepEqual(await names(0), ['b-off']);

  await driver.domainUndefine(b.uuid, 0);
  assert.deepEqual(await names(0), []);
  assert.deepEqual(
    env.events.filter((e) => e.type === 'lifecycle' && e.domain.name === 'a-running')
      .map((e) => (e.type === 'lifecycle' ? `${e.event}/${e.detail}` : '')),
    ['defined/added', 'started/booted', 'undefined/removed', 'stopped/destroyed'],
  );
  await env.assertClean();
});

test('redefining a running domain changes the next start, not the live XML', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { memoryMiB: 128 });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await driver.domainDefineXML(dom.xml.replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>96</memory>"), 0);
  assert.match(await driver.domainGetXMLDesc(dom.uuid, 0), /<memory unit='KiB'>131072<\/memory>/);
  assert.match(await driver.domainGetXMLDesc(dom.uuid, DomainXMLFlags.INACTIVE), /<memory unit='KiB'>98304<\/memory>/);
  await driver.domainDestroy(dom.uuid, 0);
  assert.match(await driver.domainGetXMLDesc(dom.uuid, 0), /<memory unit='KiB'>98304<\/memory>/);
  await driver.domainCreate(dom.uuid, 0);
  const procs = await qemuProcessesFor(env.dir);
  assert.ok(procs[0]!.argv.includes('size=98304k'), 'QEMU started with the new memory size');
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});
