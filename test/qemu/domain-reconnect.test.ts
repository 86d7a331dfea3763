// QEMU outlives the driver: close() leaves it running, open() reconnects;
// a QEMU killed behind our back (while connected, or while no driver exists)
// is reported as shut off (crashed) and its leftovers are cleaned.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import type { DriverEvent } from '../../src/api/driver.js';
import { DomainState, ShutoffReason } from '../../src/flags.js';
import { processAlive, readProcStat } from '../../src/qemu/process.js';
import {
  exists,
  hmpWrite,
  imageHasPattern,
  makeTestDomain,
  makeTestEnv,
  qemuProcessesFor,
  socketsUnder,
  waitFor,
} from '../helpers/qemu-env.js';

const K64 = 65536;

function lifecycle(events: DriverEvent[], uuid: string): string[] {
  return events.flatMap((e) => (e.type === 'lifecycle' && e.domain.uuid === uuid ? [`${e.event}/${e.detail}`] : []));
}

test('close() leaves QEMU running; a new driver reconnects and drives it', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const first = await env.openDriver();
  await first.domainDefineXML(dom.xml, 0);
  await first.domainCreate(dom.uuid, 0);
  const pid = (await first.domainGetInfo(dom.uuid)).id;
  await hmpWrite(first, dom.uuid, 'sda', 0x11, 0, K64);
  await first.close();
  assert.equal(await processAlive(pid), true, 'QEMU survives close()');

  const second = await env.openDriver();
  const info = await second.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.RUNNING);
  assert.equal(info.id, pid);
  assert.deepEqual(second.diskNodes(dom.uuid).map((d) => d.formatNode), ['libvirt-1-format']);
  assert.deepEqual(JSON.parse(await second.qemuMonitorCommand(dom.uuid, '{"execute":"query-status"}', 0)).return.status, 'running');
  await hmpWrite(second, dom.uuid, 'sda', 0x22, K64, K64);
  await second.domainDestroy(dom.uuid, 0);
  assert.equal(await imageHasPattern(dom.disks[0]!.path, 0x11, 0, K64), true);
  assert.equal(await imageHasPattern(dom.disks[0]!.path, 0x22, K64, K64), true);
  assert.deepEqual(lifecycle(env.events, dom.uuid), ['defined/added', 'started/booted', 'stopped/destroyed']);
  await env.assertClean();
});

test('a paused domain is still paused after reconnecting', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const first = await env.openDriver();
  await first.domainDefineXML(dom.xml, 0);
  await first.domainCreate(dom.uuid, 0);
  await first.qemuMonitorCommand(dom.uuid, '{"execute":"stop"}', 0);
  await first.close();
  const second = await env.openDriver();
  assert.equal((await second.domainGetInfo(dom.uuid)).state, DomainState.PAUSED);
  await second.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});

test('SIGKILL while connected: shut off (crashed), event, status and run files cleaned', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  const pid = (await driver.domainGetInfo(dom.uuid)).id;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => lifecycle(env.events, dom.uuid).includes('stopped/crashed'), 'the crashed event');
  const info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.CRASHED);
  assert.equal(info.id, -1);
  assert.equal(await exists(path.join(env.runDir, dom.uuid)), false);
  await env.assertClean();
  // it can be started again
  await driver.domainCreate(dom.uuid, 0);
  assert.equal((await driver.domainGetInfo(dom.uuid)).state, DomainState.RUNNING);
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});

test('SIGKILL while no driver exists: the next open() reports it crashed and cleans up', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const first = await env.openDriver();
  await first.domainDefineXML(dom.xml, 0);
  await first.domainCreate(dom.uuid, 0);
  const pid = (await first.domainGetInfo(dom.uuid)).id;
  await first.close();
  process.kill(pid, 'SIGKILL');
  await waitFor(async () => !(await processAlive(pid)), 'QEMU to die');
  assert.equal((await socketsUnder(env.runDir)).length > 0, true, 'the dead QEMU left its sockets');

  const events: DriverEvent[] = [];
  const second = await env.openDriver({ listener: (e) => events.push(e) });
  assert.deepEqual(lifecycle(events, dom.uuid), ['stopped/crashed']);
  const info = await second.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.CRASHED);
  await env.assertClean();
  assert.equal(await exists(path.join(env.runDir, dom.uuid)), false);
});

test('a reused pid is not taken for our QEMU: start time and command line are checked', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const first = await env.openDriver();
  await first.domainDefineXML(dom.xml, 0);
  await first.domainCreate(dom.uuid, 0);
  const pid = (await first.domainGetInfo(dom.uuid)).id;
  await first.close();
  process.kill(pid, 'SIGKILL');
  await waitFor(async () => !(await processAlive(pid)), 'QEMU to die');

  const file = path.join(env.stateDir, 'status', `${dom.uuid}.json`);
  const original = await readFile(file, 'utf8');
  const impostors: ChildProcess[] = [];
  t.after(() => impostors.forEach((p) => p.kill('SIGKILL')));
  /** A live process with this argv (argv[0] set through bash's exec -a); resolves once it runs it. */
  const impostor = async (argv0: string, args: string[]) => {
    const p = spawn('bash', ['-c', 'exec -a "$0" "$@"', argv0, ...args], { stdio: 'ignore' });
    impostors.push(p);
    await waitFor(async () => (await readFile(`/proc/${p.pid}/cmdline`, 'utf8').catch(() => '')).startsWith(argv0), 'the impostor');
    return p.pid!;
  };
  const pointStatusAt = async (pid: number, startTime: number) => {
    const status = JSON.parse(original);
    status.pid = pid;
    status.pidStartTime = startTime;
    await writeFile(file, JSON.stringify(status));
  };

  // (a) the command line of our QEMU for this uuid, but another start time
  const a = await impostor('qemu-system-x86_64', ['sh', '-c', 'sleep 30; :', '-uuid', dom.uuid]);
  await pointStatusAt(a, (await readProcStat(a))!.startTime - 1);
  let driver = await env.openDriver();
  let info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.CRASHED);
  await driver.close();

  // (b) the right start time, but not a QEMU for this uuid
  const b = await impostor('qemu-system-x86_64', ['sleep', '30']);
  await pointStatusAt(b, (await readProcStat(b))!.startTime);
  driver = await env.openDriver();
  info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.CRASHED);

  assert.equal(await processAlive(a), true, 'impostor (a) was not signalled');
  assert.equal(await processAlive(b), true, 'impostor (b) was not signalled');
  await env.assertClean();
});

test('destroy after reconnect and an unrelated QEMU of another test dir is never touched', async (t) => {
  const env = await makeTestEnv(t);
  const other = await makeTestEnv(t);
  const a = await makeTestDomain(env.dir);
  const b = await makeTestDomain(other.dir);
  const da = await env.openDriver();
  const db = await other.openDriver();
  await da.domainDefineXML(a.xml, 0);
  await db.domainDefineXML(b.xml, 0);
  await da.domainCreate(a.uuid, 0);
  await db.domainCreate(b.uuid, 0);
  await da.close();
  const da2 = await env.openDriver();
  await da2.domainDestroy(a.uuid, 0);
  assert.equal((await qemuProcessesFor(other.dir)).length, 1, 'the other QEMU still runs');
  assert.equal((await db.domainGetInfo(b.uuid)).state, DomainState.RUNNING);
  await db.domainDestroy(b.uuid, 0);
  await env.assertClean();
  await other.assertClean();
});
