// The driver entry points libvirt clients call beyond define/start/destroy,
// against real QEMU: autostart (persisted, honoured by virtbackd once per
// boot), start paused + suspend/resume, START_AUTODESTROY (in-process and per
// connection of virtbackd's socket), graceful destroy, define VALIDATE,
// virDomainInfo's fields and the block job of a running push backup.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import type { LifecycleEvent } from '../../src/api/driver.js';
import { Daemon } from '../../src/daemon/daemon.js';
import {
  BlockJobInfoFlags,
  BlockJobType,
  DomainCreateFlags,
  DomainDefineFlags,
  DomainDestroyFlags,
  DomainState,
  PausedReason,
  RunningReason,
  ShutoffReason,
} from '../../src/flags.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import { QemuDriver } from '../../src/qemu/driver.js';
import { readProcCmdline, readProcCpuTimeNs } from '../../src/qemu/process.js';
import { RemoteDriver } from '../../src/remote/client.js';
import { refused } from '../helpers/errors.js';
import {
  hmpWrite,
  makeTestDomain,
  makeTestEnv,
  qemuProcessesFor,
  recordingLogger,
  waitFor,
  type TestEnv,
} from '../helpers/qemu-env.js';

const MiB = 1024 * 1024;
const INVALID_ARG = 8;
const OPERATION_INVALID = 55;
const SYSTEM_ERROR = 38;

const lifecycle = (env: TestEnv, uuid: string): string[] =>
  env.events
    .filter((e): e is LifecycleEvent => e.type === 'lifecycle' && e.domain.uuid === uuid)
    .map((e) => `${e.event}/${e.detail}`);

async function queryStatus(driver: QemuDriver, uuid: string): Promise<{ running: boolean; status: string }> {
  const out = JSON.parse(await driver.qemuMonitorCommand(uuid, '{"execute":"query-status"}', 0)) as {
    return: { running: boolean; status: string };
  };
  return { running: out.return.running, status: out.return.status };
}

/** virtbackd in this process, serving a QemuDriver on the env's directories. */
function startDaemon(env: TestEnv, log = recordingLogger()): Promise<Daemon> {
  return Daemon.start({
    stateDir: env.stateDir,
    runDir: env.runDir,
    logger: log.log,
    openDriver: (dirs) => QemuDriver.open(dirs),
  });
}

test('autostart: stored with the definition, started by virtbackd once per boot; a failure is logged, not fatal', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const broken = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainDefineXML(broken.xml, 0);
  assert.equal(await driver.domainGetAutostart(dom.uuid), false);
  await driver.domainSetAutostart(dom.uuid, true);
  await driver.domainSetAutostart(broken.uuid, true);
  assert.equal(await driver.domainGetAutostart(dom.uuid), true);
  assert.ok(existsSync(path.join(env.stateDir, 'autostart', dom.uuid)));
  await rm(broken.disks[0]!.path); // cannot start any more
  await driver.close();
  assert.equal((await qemuProcessesFor(env.dir)).length, 0, 'setting autostart starts nothing');

  const log = recordingLogger();
  const daemon = await startDaemon(env, log);
  try {
    const info = await daemon.driver.domainGetInfo(dom.uuid);
    assert.equal(info.state, DomainState.RUNNING, 'autostarted');
    assert.equal(await daemon.driver.domainGetAutostart(dom.uuid), true, 'survived the restart');
    assert.equal((await daemon.driver.domainGetInfo(broken.uuid)).state, DomainState.SHUTOFF);
    const failed = log.entries.find((e) => e.msg === 'cannot autostart domain');
    assert.equal(failed?.fields.domain, broken.name);
    assert.match(String(failed?.fields.err ?? JSON.stringify(failed?.fields)), /Cannot access storage file/);
    await daemon.driver.domainDestroy(dom.uuid, 0);
  } finally {
    await daemon.stop();
  }

  // the same boot (run directory kept): a domain its user shut off stays off
  const again = await startDaemon(env, log);
  try {
    assert.equal((await again.driver.domainGetInfo(dom.uuid)).state, DomainState.SHUTOFF);
    assert.ok(log.entries.some((e) => e.msg === 'domains were autostarted since boot already: not again'));
    await again.driver.domainSetAutostart(dom.uuid, false);
    assert.equal(await again.driver.domainGetAutostart(dom.uuid), false);
    assert.equal(existsSync(path.join(env.stateDir, 'autostart', dom.uuid)), false);
  } finally {
    await again.stop();
  }

  // transient: refused; undefine drops the mark
  const d2 = await env.openDriver();
  await d2.domainSetAutostart(dom.uuid, true);
  await d2.domainCreate(dom.uuid, 0);
  await d2.domainUndefine(dom.uuid, 0);
  assert.equal(existsSync(path.join(env.stateDir, 'autostart', dom.uuid)), false);
  assert.equal(await d2.domainGetAutostart(dom.uuid), false);
  await refused(d2.domainSetAutostart(dom.uuid, true), OPERATION_INVALID,
    'Requested operation is not valid: cannot set autostart for transient domain');
  await d2.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});

test('start paused: -S, paused (user), never cont; resume and suspend switch QEMU and the state', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, DomainCreateFlags.PAUSED);
  let info = await driver.domainGetInfo(dom.uuid);
  assert.deepEqual([info.state, info.reason], [DomainState.PAUSED, PausedReason.USER]);
  assert.ok((await readProcCmdline(info.id))!.includes('-S'));
  assert.deepEqual(await queryStatus(driver, dom.uuid), { running: false, status: 'prelaunch' });

  await driver.domainResume(dom.uuid);
  info = await driver.domainGetInfo(dom.uuid);
  assert.deepEqual([info.state, info.reason], [DomainState.RUNNING, RunningReason.UNPAUSED]);
  assert.deepEqual(await queryStatus(driver, dom.uuid), { running: true, status: 'running' });
  await driver.domainResume(dom.uuid); // running already: nothing to do, as libvirt

  await driver.domainSuspend(dom.uuid);
  info = await driver.domainGetInfo(dom.uuid);
  assert.deepEqual([info.state, info.reason], [DomainState.PAUSED, PausedReason.USER]);
  assert.deepEqual(await queryStatus(driver, dom.uuid), { running: false, status: 'paused' });
  await driver.domainSuspend(dom.uuid);

  await driver.domainDestroy(dom.uuid, 0);
  await refused(driver.domainResume(dom.uuid), OPERATION_INVALID, 'Requested operation is not valid: domain is not running');
  assert.deepEqual(lifecycle(env, dom.uuid), [
    'defined/added', 'started/booted', 'suspended/paused', 'resumed/unpaused', 'suspended/paused', 'stopped/destroyed',
  ]);
  // RESET_NVRAM is run since issue 13 (UEFI): test/qemu/domain-firmware.test.ts
  for (const f of [DomainCreateFlags.BYPASS_CACHE, DomainCreateFlags.FORCE_BOOT]) {
    await refused(driver.domainCreate(dom.uuid, f), INVALID_ARG,
      `unsupported flags (0x${f.toString(16)}) in function virDomainCreateWithFlags`);
  }
  assert.equal((await driver.domainGetInfo(dom.uuid)).state, DomainState.SHUTOFF);
  await env.assertClean();
});

test('START_AUTODESTROY in-process: the domain dies when the driver that started it is closed', async (t) => {
  const env = await makeTestEnv(t);
  const auto = await makeTestDomain(env.dir);
  const kept = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(auto.xml, 0);
  await driver.domainDefineXML(kept.xml, 0);
  await driver.domainCreate(auto.uuid, DomainCreateFlags.AUTODESTROY);
  await driver.domainCreate(kept.uuid, 0);
  const autoPid = (await driver.domainGetInfo(auto.uuid)).id;
  await driver.close();
  const left = (await qemuProcessesFor(env.dir)).map((p) => p.pid);
  assert.equal(left.length, 1);
  assert.equal(left.includes(autoPid), false, 'the autodestroy QEMU is gone');
  const second = await env.openDriver();
  // (a fresh driver does not know why it is shut off: reasons live in memory)
  assert.equal((await second.domainGetInfo(auto.uuid)).state, DomainState.SHUTOFF);
  const stopped = env.events.filter((e): e is LifecycleEvent => e.type === 'lifecycle' && e.event === 'stopped');
  assert.deepEqual(stopped.map((e) => [e.domain.uuid, e.detail]), [[auto.uuid, 'destroyed']], 'destroyed on close');
  assert.equal((await second.domainGetInfo(kept.uuid)).state, DomainState.RUNNING);
  await second.domainDestroy(kept.uuid, 0);
  await env.assertClean();
});

test('START_AUTODESTROY through virtbackd: destroyed when the starting client disconnects, not another instance', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const daemon = await startDaemon(env);
  t.after(() => daemon.stop());
  const a = await RemoteDriver.connectUnix(daemon.socketPath);
  const b = await RemoteDriver.connectUnix(daemon.socketPath);
  await a.domainDefineXML(dom.xml, 0);
  await a.domainCreate(dom.uuid, DomainCreateFlags.AUTODESTROY | DomainCreateFlags.PAUSED);
  assert.equal((await b.domainGetInfo(dom.uuid)).state, DomainState.PAUSED);
  await a.close();
  await waitFor(async () => (await b.domainGetInfo(dom.uuid)).state === DomainState.SHUTOFF || null, 'autodestroy');
  assert.equal((await b.domainGetInfo(dom.uuid)).reason, ShutoffReason.DESTROYED);
  assert.equal((await qemuProcessesFor(env.dir)).length, 0);

  // started with AUTODESTROY by c, destroyed and started again (plainly) by b: c's close leaves it alone
  const c = await RemoteDriver.connectUnix(daemon.socketPath);
  await c.domainCreate(dom.uuid, DomainCreateFlags.AUTODESTROY);
  await b.domainDestroy(dom.uuid, 0);
  await b.domainCreate(dom.uuid, 0);
  const pid = (await b.domainGetInfo(dom.uuid)).id;
  await c.close();
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual([(await b.domainGetInfo(dom.uuid)).state, (await b.domainGetInfo(dom.uuid)).id], [DomainState.RUNNING, pid]);
  await b.domainDestroy(dom.uuid, 0);
  await b.close();
  await daemon.stop();
  await env.assertClean();
});

test('destroy GRACEFUL: SIGTERM ends QEMU; a QEMU that does not go stays running and the destroy fails', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver({ gracefulDestroyMs: 1500 });
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await driver.domainDestroy(dom.uuid, DomainDestroyFlags.GRACEFUL);
  let info = await driver.domainGetInfo(dom.uuid);
  assert.deepEqual([info.state, info.reason], [DomainState.SHUTOFF, ShutoffReason.DESTROYED]);
  assert.equal((await qemuProcessesFor(env.dir)).length, 0);

  await driver.domainCreate(dom.uuid, 0);
  const pid = (await driver.domainGetInfo(dom.uuid)).id;
  process.kill(pid, 'SIGSTOP'); // SIGTERM stays pending: QEMU cannot act on it
  try {
    await refused(driver.domainDestroy(dom.uuid, DomainDestroyFlags.GRACEFUL), SYSTEM_ERROR,
      `Failed to terminate process ${pid} with SIGTERM: Device or resource busy`);
    info = await driver.domainGetInfo(dom.uuid);
    assert.deepEqual([info.state, info.id], [DomainState.RUNNING, pid], 'still running, still ours');
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  // the pending SIGTERM now ends QEMU: the domain is seen shut off
  await waitFor(async () => (await driver.domainGetInfo(dom.uuid)).state === DomainState.SHUTOFF || null, 'QEMU exit');
  await env.assertClean();
});

test('define VALIDATE is accepted (every definition is validated); other bits refused', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  assert.equal((await driver.domainDefineXML(dom.xml, DomainDefineFlags.VALIDATE)).uuid, dom.uuid);
  const bad = dom.xml.replace('<vcpu>1</vcpu>', '<vcpu>one</vcpu>');
  const plain = await driver.domainDefineXML(bad, 0).then(() => null, (e: unknown) => e as { code: number; message: string });
  const validated = await driver.domainDefineXML(bad, DomainDefineFlags.VALIDATE).then(() => null, (e: unknown) => e as { code: number; message: string });
  assert.ok(plain !== null, 'the schema refuses it without the flag too');
  assert.equal(plain.code, 92, 'XML_INVALID_SCHEMA');
  assert.deepEqual(validated && [validated.code, validated.message], [plain.code, plain.message]);
  await refused(driver.domainDefineXML(dom.xml, 2), INVALID_ARG, 'unsupported flags (0x2) in function virDomainDefineXMLFlags');
});

test("domainGetInfo: virDomainInfo's memory, vcpus and the QEMU process's CPU time", async (t) => {
  const env = await makeTestEnv(t);
  // <currentMemory> equals <memory>: without a balloon nothing else runs (a lower one is refused, see domain-support.test.ts)
  const dom = await makeTestDomain(env.dir, { memoryMiB: 128, domainXml: "  <currentMemory unit='MiB'>128</currentMemory>\n" });
  const xml = dom.xml.replace('<vcpu>1</vcpu>', '<vcpu>2</vcpu>');
  const driver = await env.openDriver();
  await driver.domainDefineXML(xml, 0);
  let info = await driver.domainGetInfo(dom.uuid);
  assert.deepEqual([info.maxMem, info.memory, info.nrVirtCpu, info.cpuTime], [131072, 131072, 2, 0]);
  await driver.domainCreate(dom.uuid, 0);
  info = await driver.domainGetInfo(dom.uuid);
  const stat = (await readFile(`/proc/${info.id}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  const after = await readProcCpuTimeNs(info.id);
  assert.ok(info.cpuTime! > 0, 'QEMU used some CPU starting up');
  assert.ok(info.cpuTime! <= after!, 'never more than a later reading');
  // utime + stime ticks in ns; QEMU keeps running between the two reads, so the later one may be a few ticks on
  const ticks = (Number(stat[11]) + Number(stat[12])) * 1e7;
  assert.ok(after! >= ticks && after! - ticks <= 5e8, `utime + stime ticks in ns: ${after} vs ${ticks}`);
  assert.equal(info.cpuTime! % 1e7, 0, 'whole clock ticks');
  const listed = (await driver.listAllDomains(0)).find((d) => d.uuid === dom.uuid)!;
  assert.equal(listed.cpuTime, undefined, 'listAllDomains leaves them out');
  await driver.domainDestroy(dom.uuid, 0);
  assert.equal((await driver.domainGetInfo(dom.uuid)).cpuTime, 0);
  await env.assertClean();
});

test('domainGetBlockJobInfo: the running push backup of a disk, by target or path; none otherwise', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 2 });
  const driver = await env.openDriver({ backups: (d, cps) => new QemuBackups(d, cps, { speed: MiB }) });
  await driver.domainDefineXML(dom.xml, 0);
  await refused(driver.domainGetBlockJobInfo(dom.uuid, 'sda', 0), OPERATION_INVALID, /domain is not running/);
  await driver.domainCreate(dom.uuid, 0);
  const none = { found: false, type: 0, bandwidth: 0, cur: 0, end: 0 };
  assert.deepEqual(await driver.domainGetBlockJobInfo(dom.uuid, 'sda', 0), none);
  await refused(driver.domainGetBlockJobInfo(dom.uuid, 'sdz', 0), INVALID_ARG, "invalid argument: disk 'sdz' not found in domain");
  for (let i = 0; i < 4; i++) await hmpWrite(driver, dom.uuid, 'sda', 0x60 + i, i * 4 * MiB, MiB);

  const id = await driver.backupBegin(dom.uuid, null, null, 0);
  const byTarget = await driver.domainGetBlockJobInfo(dom.uuid, 'sda', 0);
  assert.equal(byTarget.found, true);
  assert.equal(byTarget.type, BlockJobType.BACKUP);
  assert.equal(byTarget.bandwidth, 1, 'MiB/s');
  assert.equal(byTarget.end, 64 * MiB);
  assert.ok(byTarget.cur < byTarget.end, 'still copying at 1 MiB/s');
  const byPath = await driver.domainGetBlockJobInfo(dom.uuid, dom.disks[0]!.path, BlockJobInfoFlags.BANDWIDTH_BYTES);
  assert.deepEqual([byPath.found, byPath.type, byPath.bandwidth, byPath.end], [true, BlockJobType.BACKUP, MiB, 64 * MiB]);
  assert.ok(byPath.cur >= byTarget.cur, 'progress only grows');
  const stats = await driver.getJobStats(dom.uuid, 0);
  assert.ok(stats.disk_total! >= byPath.end, 'the job covers the disk');
  await refused(driver.domainGetBlockJobInfo(dom.uuid, 'sda', 2), INVALID_ARG, 'unsupported flags (0x2) in function virDomainGetBlockJobInfo');

  await driver.abortJob(dom.uuid, 0);
  assert.equal((await driver.listJobIds(dom.uuid)).includes(id), false);
  assert.deepEqual(await driver.domainGetBlockJobInfo(dom.uuid, 'sda', 0), none);
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});
