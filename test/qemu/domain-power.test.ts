// Asking a real guest to reboot and to power off (virDomainReboot,
// virDomainShutdownFlags), over ACPI and over the guest agent, and
// <on_poweroff>restart: the tiny guest boots again or ends, the domain's state,
// reason and lifecycle events say so as libvirt's would. Checkpoints and
// incremental backups keep working across all of it.

import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { DomainRebootFlags, DomainShutdownFlags, DomainState, RunningReason, ShutoffReason } from '../../src/flags.js';
import { domainReasonString, domainStateString } from '../../src/cli/output.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { refused } from '../helpers/errors.js';
import { makeTestDomain, makeTestEnv, waitFor, type TestEnv } from '../helpers/qemu-env.js';
import { guestBoots, tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';
import { libvirtUri, virsh, virshMissing, virshOk } from '../helpers/libvirt-clients.js';
import { makeDaemonEnv } from './daemon-util.js';
import { assertSameContent, backingFile, DiskModel, MiB, run, scatter, waitJobCompleted, write } from './backup-util.js';

const { ACPI_POWER_BTN, GUEST_AGENT } = DomainShutdownFlags;

function lifecycle(env: TestEnv): [string, string][] {
  return env.events.flatMap((e) => (e.type === 'lifecycle' ? [[e.event, e.detail] as [string, string]] : []));
}

async function stateWords(driver: QemuDriver, uuid: string): Promise<string> {
  const info = await driver.domainGetInfo(uuid);
  return `${domainStateString(info.state)} (${domainReasonString(info.state, info.reason)})`;
}

async function poweredGuest(t: test.TestContext, domainXml = ''): Promise<{ env: TestEnv; driver: QemuDriver; uuid: string }> {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 32, agent: true, osXml: tinyGuestOsXml(guest), domainXml });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await waitForAgent(driver, dom.uuid);
  return { env, driver, uuid: dom.uuid };
}

test('reboot over ACPI and over the agent boots the guest again; shutdown over ACPI ends in "shut off (shutdown)"', { timeout: 600_000 }, async (t) => {
  const { env, driver, uuid } = await poweredGuest(t);
  assert.equal(await guestBoots(env.runDir, uuid), 1);

  // ACPI: the power button, the guest powers off, QEMU pauses, the driver resets it (libvirt's fake reboot)
  env.events.length = 0;
  await driver.domainReboot(uuid, DomainRebootFlags.ACPI_POWER_BTN);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 2, 'the second boot', 120_000);
  await waitForAgent(driver, uuid);
  assert.equal(await stateWords(driver, uuid), 'running (booted)');
  assert.deepEqual(lifecycle(env), [['resumed', 'unpaused']], 'no shutdown, no stop: the domain kept running');
  // the shutdown action is poweroff again: the next power-off is a real one
  const actions = await driver.qemuMonitorCommand(uuid, '{"execute":"query-status"}', 0);
  assert.equal((JSON.parse(actions) as { return: { status: string } }).return.status, 'running');

  // agent: guest-shutdown mode=reboot; QEMU resets the guest itself (<on_reboot> restart)
  await driver.domainReboot(uuid, DomainRebootFlags.GUEST_AGENT);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 3, 'the third boot', 120_000);
  await waitForAgent(driver, uuid);
  assert.equal((await driver.domainGetInfo(uuid)).state, DomainState.RUNNING);

  // a paused guest cannot see the button
  await driver.domainSuspend(uuid);
  await refused(driver.domainShutdown(uuid, ACPI_POWER_BTN), ErrorCode.OPERATION_INVALID, 'Requested operation is not valid: domain is not running');
  await driver.domainResume(uuid);
  await refused(driver.domainShutdown(uuid, DomainShutdownFlags.SIGNAL), ErrorCode.INVALID_ARG, /unsupported flags \(0x8\) in function virDomainShutdownFlags/);

  // ACPI shutdown: the guest's acpid powers it off, QEMU exits
  env.events.length = 0;
  await driver.domainShutdown(uuid, ACPI_POWER_BTN);
  await waitFor(async () => (await driver.domainGetInfo(uuid)).state === DomainState.SHUTOFF, 'shut off', 120_000);
  assert.equal(await stateWords(driver, uuid), 'shut off (shutdown)');
  assert.deepEqual(lifecycle(env), [['shutdown', 'guest'], ['stopped', 'shutdown']]);
  await env.assertClean();

  // destroy, for the other reason
  await driver.domainCreate(uuid, 0);
  await driver.domainDestroy(uuid, 0);
  assert.equal(await stateWords(driver, uuid), 'shut off (destroyed)');
  await env.assertClean();
});

test('shutdown over the agent; <on_poweroff>restart turns the guest powering off into a reboot', { timeout: 600_000 }, async (t) => {
  const { env, driver, uuid } = await poweredGuest(t, '  <on_poweroff>restart</on_poweroff>\n');
  env.events.length = 0;
  await driver.domainShutdown(uuid, ACPI_POWER_BTN);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 2, 'the boot after powering off', 120_000);
  await waitForAgent(driver, uuid);
  const info = await driver.domainGetInfo(uuid);
  assert.deepEqual([info.state, info.reason], [DomainState.RUNNING, RunningReason.BOOTED]);
  assert.deepEqual(lifecycle(env), [['resumed', 'unpaused']]);

  // destroy, then the default definition: the agent's powerdown ends the domain
  await driver.domainDestroy(uuid, 0);
  const xml = (await driver.domainGetXMLDesc(uuid, 0)).replace(/\s*<on_poweroff>restart<\/on_poweroff>/, '');
  await driver.domainDefineXML(xml, 0);
  await driver.domainCreate(uuid, 0);
  await waitForAgent(driver, uuid);
  env.events.length = 0;
  await driver.domainShutdown(uuid, GUEST_AGENT);
  await waitFor(async () => (await driver.domainGetInfo(uuid)).state === DomainState.SHUTOFF, 'shut off', 120_000);
  const off = await driver.domainGetInfo(uuid);
  assert.deepEqual([off.state, off.reason], [DomainState.SHUTOFF, ShutoffReason.SHUTDOWN]);
  assert.deepEqual(lifecycle(env), [['shutdown', 'guest'], ['stopped', 'shutdown']]);
  await env.assertClean();
});

test('checkpoints and incremental backups across reboot, suspend/resume and shutdown/start: full, inc, inc, each chain equal to the disk', { timeout: 600_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  // the guest leaves its disk alone (tg.disks=none): only the test writes to it, through qemu-io
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 32, agent: true, osXml: tinyGuestOsXml(guest, 'tg.disks=none') });
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  const disk = dom.disks[0]!;
  const m = new DiskModel(disk.target, 32 * MiB);
  const expectedRaw = path.join(env.dir, 'expected.raw');
  const backup = async (incremental: string | null, checkpoint: string): Promise<void> => {
    const expected = m.snapshot();
    const xml = incremental === null ? null : `<domainbackup><incremental>${incremental}</incremental></domainbackup>`;
    const id = await driver.backupBegin(uuid, xml, `<domaincheckpoint><name>${checkpoint}</name></domaincheckpoint>`, 0);
    assert.equal((await waitJobCompleted(env.events, uuid, id)).stats.success, true);
    assert.equal(await driver.backupEnd(uuid, id, 0), 1);
    // the target's backing chain (full <- inc <- inc) read as one image is the disk at the backup instant
    await assertSameContent(expected, `${disk.path}.${checkpoint}`, expectedRaw);
  };

  await driver.domainCreate(uuid, 0);
  await waitForAgent(driver, uuid);
  for (let i = 0; i < 4; i++) await write(driver, uuid, m, i * 4 * MiB, MiB, 0x20 + i);
  await backup(null, 'c1');

  // reboot (ACPI, the guest resets): the bitmaps live in QEMU throughout
  await driver.domainReboot(uuid, DomainRebootFlags.ACPI_POWER_BTN);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 2, 'the second boot', 120_000);
  await scatter(driver, uuid, m, 30, 5);
  await driver.domainSuspend(uuid);
  await scatter(driver, uuid, m, 10, 6); // written while paused: still dirty
  await driver.domainResume(uuid);
  await backup('c1', 'c2');
  assert.equal(await backingFile(`${disk.path}.c2`), `${path.basename(disk.path)}.c1`);

  // shutdown (ACPI) and start: QEMU stored the persistent bitmaps in the image and loads them again
  await driver.domainShutdown(uuid, ACPI_POWER_BTN);
  await waitFor(async () => (await driver.domainGetInfo(uuid)).state === DomainState.SHUTOFF, 'shut off', 120_000);
  assert.equal(await stateWords(driver, uuid), 'shut off (shutdown)');
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-U', disk.path]);
  const bitmaps = (JSON.parse(stdout) as { 'format-specific': { data: { bitmaps?: { name: string }[] } } })['format-specific'].data.bitmaps ?? [];
  assert.deepEqual(bitmaps.map((b) => b.name).sort(), ['c1', 'c2'], 'both bitmaps were stored in the image');
  await driver.domainCreate(uuid, 0);
  await waitForAgent(driver, uuid);
  await scatter(driver, uuid, m, 30, 7);
  await backup('c2', 'c3');
  assert.equal(await backingFile(`${disk.path}.c3`), `${path.basename(disk.path)}.c2`);
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1', 'c2', 'c3']);
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('virsh reboot --mode acpi and virsh shutdown through virtbackd\'s libvirt socket', { skip: virshMissing(), timeout: 600_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeDaemonEnv(t);
  await env.start();
  const uri = libvirtUri(env.runDir);
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 16, osXml: tinyGuestOsXml(guest, 'tg.disks=none') });
  const file = path.join(env.dir, 'dom.xml');
  await writeFile(file, dom.xml);
  await virshOk(uri, 'define', file);
  await virshOk(uri, 'start', dom.name);
  await waitFor(async () => (await guestBoots(env.runDir, dom.uuid)) === 1, 'the first boot', 120_000);
  // virDomainReboot (procedure 27) with ACPI_POWER_BTN
  assert.equal((await virshOk(uri, 'reboot', dom.name, '--mode', 'acpi')).trim(), `Domain '${dom.name}' is being rebooted`);
  await waitFor(async () => (await guestBoots(env.runDir, dom.uuid)) === 2, 'the second boot', 120_000);
  assert.equal((await virshOk(uri, 'domstate', dom.name, '--reason')).trim(), 'running (booted)');
  // virDomainShutdown (procedure 33): no agent channel, so the power button
  assert.equal((await virshOk(uri, 'shutdown', dom.name)).trim(), `Domain '${dom.name}' is being shutdown`);
  await waitFor(async () => (await virshOk(uri, 'domstate', dom.name, '--reason')).trim() === 'shut off (shutdown)', 'shut off (shutdown)', 120_000);
  // virDomainShutdownFlags (procedure 258) on a shut-off domain: libvirt's refusal
  const r = await virsh(uri, ['shutdown', dom.name, '--mode', 'agent']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /Requested operation is not valid: domain is not running/);
});
