// The main scenarios through the TypeScript SDK over virtbackd (a child
// process serving the real QEMU driver): define/start, checkpoints, push full
// and incremental with events, pull read by nbdcopy, job stats, abortJob, and
// the read-only socket refusing every mutating call with OPERATION_DENIED.

import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { connect } from '../../src/sdk/connect.js';
import type { Driver, DriverEvent, JobCompletedEvent } from '../../src/api/driver.js';
import type { Domain } from '../../src/api/public.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { DomainState, JobOperation, JobType } from '../../src/flags.js';
import { RemoteDriver } from '../../src/remote/client.js';
import { procedures } from '../../src/remote/protocol.js';
import { exists, makeTestDomain, type TestDomain } from '../helpers/qemu-env.js';
import { assertSameContent, backingFile, DiskModel, MiB, run } from './backup-util.js';
import { collectEvents, hmpWriteVia, makeDaemonEnv, qemuStateVia, stopVirtbackd, waitEvent } from './daemon-util.js';

const SIZE = 64 * MiB;

async function rejectsWith(p: Promise<unknown>, code: number, what: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof VirError, `${what}: not a VirError: ${String(e)}`);
    assert.equal(e.code, code, `${what}: code ${e.code} (${e.message})`);
    if (message) assert.match(e.message, message, what);
    return true;
  });
}

async function write(dom: Domain, td: TestDomain, m: DiskModel, off: number, len: number, pattern: number): Promise<void> {
  await hmpWriteVia(dom, td.xml, m.target, pattern, off, len);
  m.apply(off, len, pattern);
}

const completed = (id: number) => (e: DriverEvent): e is JobCompletedEvent => e.type === 'job-completed' && e.jobId === id;

test('SDK over virtbackd: domains, checkpoints, push full + incremental, pull, stats, abort, read-only', { timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const conn = await env.connect();
  assert.equal(conn.isReadOnly(), false);
  const td = await makeTestDomain(env.dir, { disks: 2, sizeMiB: SIZE / MiB, name: 'sdk-vm' });

  // ---- define / start
  const dom = await conn.defineXML(td.xml);
  assert.equal(dom.name, 'sdk-vm');
  assert.equal(dom.uuid, td.uuid);
  assert.equal((await dom.getInfo()).state, DomainState.SHUTOFF);
  await dom.create();
  const info = await dom.getInfo();
  assert.equal(info.state, DomainState.RUNNING);
  assert.ok(info.id > 0);
  assert.deepEqual((await conn.listAllDomains({ active: true })).map((d) => d.name), ['sdk-vm']);
  assert.equal((await conn.lookupByUUID(td.uuid)).name, 'sdk-vm');
  await rejectsWith(conn.lookupByName('nope'), ErrorCode.NO_DOMAIN, 'unknown domain');
  const baseState = await qemuStateVia(dom);

  const models = td.disks.map((d) => new DiskModel(d.target, SIZE));
  for (const [i, m] of models.entries()) for (let k = 0; k < 6; k++) await write(dom, td, m, k * 9 * MiB, 2 * MiB, 0x10 + i * 16 + k);

  // ---- checkpoints: create, list, parent, children, delete
  const c0 = await dom.checkpointCreateXML('<domaincheckpoint><name>c0</name><description>first</description></domaincheckpoint>');
  assert.equal(c0.getName(), 'c0');
  assert.match(await c0.getXMLDesc(), /<description>first<\/description>/);
  await rejectsWith(c0.getParent(), ErrorCode.NO_DOMAIN_CHECKPOINT, 'root parent', /does not have a parent/);
  await rejectsWith(dom.checkpointCreateXML('<domaincheckpoint><name>c0</name></domaincheckpoint>'), ErrorCode.OPERATION_INVALID, 'duplicate name', /already exists/);

  // ---- push full with checkpoint c1, events as an async iterator
  const iter = conn.events(['job-completed']);
  await conn.listAllDomainSummaries();
  await conn.listAllDomainSummaries();
  const expectedFull = models.map((m) => m.snapshot());
  const fullTargets = td.disks.map((d) => path.join(env.dir, `full-${d.target}.qcow2`));
  const targetsXml = (files: string[]): string =>
    `<disks>${td.disks.map((d, i) => `<disk name='${d.target}' type='file'><target file='${files[i]}'/><driver type='qcow2'/></disk>`).join('')}</disks>`;
  const full = await dom.backupBegin(`<domainbackup>${targetsXml(fullTargets)}</domainbackup>`, '<domaincheckpoint><name>c1</name></domaincheckpoint>');
  assert.ok(full > 0);
  const first = await iter.next();
  assert.equal(first.done, false);
  const ev1 = first.value as JobCompletedEvent;
  assert.equal(ev1.type, 'job-completed');
  assert.equal(ev1.jobId, full);
  assert.equal(ev1.domain.uuid, td.uuid);
  assert.equal(ev1.stats.success, true, ev1.stats.errmsg);
  assert.equal(ev1.stats.operation, JobOperation.BACKUP);
  assert.ok(ev1.stats.disk_total! > 0 && ev1.stats.disk_processed === ev1.stats.disk_total);
  await iter.return!();
  const last = await dom.getJobStats({ completed: true, keepCompleted: true });
  assert.equal(last.type, JobType.COMPLETED);
  assert.equal(last.id, full);
  assert.equal(await dom.backupEnd(full), 1);
  await rejectsWith(dom.backupEnd(full), ErrorCode.NO_DOMAIN_BACKUP, 'second backupEnd');
  for (const [i, f] of fullTargets.entries()) await assertSameContent(expectedFull[i]!, f, path.join(env.dir, 'expected.raw'));

  const c1 = await dom.checkpointLookupByName('c1');
  assert.equal((await c1.getParent()).getName(), 'c0');
  assert.deepEqual((await c0.listAllChildren()).map((c) => c.getName()), ['c1']);

  // ---- push incremental since c1 with c2, events through conn.on
  for (const [i, m] of models.entries()) for (let k = 0; k < 5; k++) await write(dom, td, m, k * 7 * MiB + MiB, MiB, 0x80 + i * 16 + k);
  const { events, off } = await collectEvents(conn);
  const expectedInc = models.map((m) => m.snapshot());
  const incTargets = td.disks.map((d) => path.join(env.dir, `inc-${d.target}.qcow2`));
  const inc = await dom.backupBegin(`<domainbackup><incremental>c1</incremental>${targetsXml(incTargets)}</domainbackup>`, '<domaincheckpoint><name>c2</name></domaincheckpoint>');
  assert.ok(inc > full);
  const ev2 = await waitEvent(events, completed(inc), 'job-completed of the incremental');
  assert.equal(ev2.stats.success, true, ev2.stats.errmsg);
  // one block-job event per disk; they follow job-completed and may arrive in a later read
  for (const d of td.disks) {
    await waitEvent(events, (e): e is DriverEvent => e.type === 'block-job' && e.jobId === inc && e.disk === d.target, `block-job event of ${d.target}`);
  }
  const blockJobs = events.filter((e) => e.type === 'block-job' && e.jobId === inc);
  assert.equal(blockJobs.length, 2);
  assert.equal(await dom.backupEnd(inc), 1);
  off();
  for (const [i, f] of incTargets.entries()) {
    assert.equal(await backingFile(f), path.basename(fullTargets[i]!));
    await assertSameContent(expectedInc[i]!, f, path.join(env.dir, 'expected.raw'));
  }
  assert.equal((await (await dom.checkpointLookupByName('c2')).getParent()).getName(), 'c1');
  assert.deepEqual((await dom.listAllCheckpoints({ topological: true })).map((c) => c.getName()), ['c0', 'c1', 'c2']);
  assert.deepEqual((await dom.listAllCheckpoints({ leaves: true })).map((c) => c.getName()), ['c2']);
  await c0.delete();
  await rejectsWith(dom.checkpointLookupByName('c0'), ErrorCode.NO_DOMAIN_CHECKPOINT, 'deleted checkpoint');
  assert.deepEqual((await dom.listAllCheckpoints({ roots: true })).map((c) => c.getName()), ['c1']);

  // ---- pull full, read by nbdcopy while the guest writes; stats while it runs
  const sock = path.join(env.dir, 'nbd.sock');
  const expectedPull = models[0]!.snapshot();
  const pull = await dom.backupBegin(`<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda' type='file'><scratch file='${path.join(env.dir, 'scratch.qcow2')}'/></disk><disk name='sdb' backup='no'/></disks></domainbackup>`);
  for (let k = 0; k < 4; k++) await write(dom, td, models[0]!, k * 10 * MiB, MiB, 0xe0 + k);
  const out = path.join(env.dir, 'pulled.raw');
  await run('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, out]);
  await assertSameContent(expectedPull, out, path.join(env.dir, 'expected.raw'));
  const running = await dom.getJobStats();
  assert.equal(running.type, JobType.UNBOUNDED);
  assert.equal(running.id, pull);
  assert.ok(running.disk_temp_total! > 0 && running.disk_temp_used! > 0, JSON.stringify(running));
  assert.deepEqual(await dom.listJobIds(), [pull]);
  assert.match(await dom.backupGetXMLDesc(pull), /<domainbackup mode=.pull./);
  await rejectsWith(dom.backupBegin(), ErrorCode.OPERATION_INVALID, 'second job', /another backup job/);
  assert.equal(await dom.backupEnd(pull), 1);
  assert.equal(await exists(path.join(env.dir, 'scratch.qcow2')), false);

  // ---- abortJob: a pull is ended; without a job: OPERATION_INVALID
  const pull2 = await dom.backupBegin(`<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda'/><disk name='sdb'/></disks></domainbackup>`);
  assert.deepEqual(await dom.listJobIds(), [pull2]);
  await dom.abortJob();
  assert.deepEqual(await dom.listJobIds(), []);
  assert.equal((await dom.getJobStats()).type, JobType.NONE);
  await rejectsWith(dom.abortJob(), ErrorCode.OPERATION_INVALID, 'abort without a job', /no job is active/);
  await rejectsWith(dom.backupGetXMLDesc(0), ErrorCode.NO_DOMAIN_BACKUP, 'no job');
  const st = await qemuStateVia(dom);
  assert.deepEqual(st.nodes, baseState.nodes);
  assert.deepEqual(st.exports, []);
  assert.deepEqual(st.jobs, []);

  // ---- read-only: the SDK refuses, and the daemon refuses on its own (raw remote driver)
  const ro = await connect(env.roUri, { readOnly: true });
  t.after(() => ro.close());
  assert.equal(ro.isReadOnly(), true);
  const rdom = await ro.lookupByName('sdk-vm');
  assert.equal((await rdom.getInfo()).state, DomainState.RUNNING);
  assert.match(await rdom.getXMLDesc(), /<name>sdk-vm<\/name>/);
  assert.deepEqual((await rdom.listAllCheckpoints()).map((c) => c.getName()).sort(), ['c1', 'c2']);
  assert.match(await (await rdom.checkpointLookupByName('c2')).getXMLDesc(), /<name>c2<\/name>/);
  assert.equal((await (await rdom.checkpointLookupByName('c2')).getParent()).getName(), 'c1');
  assert.deepEqual(await rdom.listJobIds(), []);
  assert.equal((await rdom.getJobStats()).type, JobType.NONE);
  assert.equal((await ro.listAllDomains()).length, 1);
  const denied = 29;
  assert.equal(ErrorCode.OPERATION_DENIED, denied);
  const sdkCalls: [string, () => Promise<unknown>][] = [
    ['defineXML', () => ro.defineXML(td.xml)],
    ['undefine', () => rdom.undefine()],
    ['create', () => rdom.create()],
    ['destroy', () => rdom.destroy()],
    ['qemuMonitorCommand', () => rdom.qemuMonitorCommand('{"execute":"query-status"}')],
    ['fsFreeze', () => rdom.fsFreeze()],
    ['fsThaw', () => rdom.fsThaw()],
    ['checkpointCreateXML', () => rdom.checkpointCreateXML('<domaincheckpoint><name>x</name></domaincheckpoint>')],
    ['checkpoint delete', async () => (await rdom.checkpointLookupByName('c2')).delete()],
    ['backupBegin', () => rdom.backupBegin()],
    ['backupEnd', () => rdom.backupEnd()],
    ['abortJob', () => rdom.abortJob()],
  ];
  for (const [what, call] of sdkCalls) await rejectsWith(call(), denied, `SDK ${what} on a read-only connection`, /read only/);
  await rejectsWith(rdom.getXMLDesc({ secure: true }), denied, 'secure XML');

  // the same against the daemon, without the SDK's own check
  const raw: Driver = await RemoteDriver.connectUnix(path.join(env.runDir, 'virtbackd-ro.sock'));
  t.after(() => raw.close());
  const u = td.uuid;
  const rawCalls: Record<string, () => Promise<unknown>> = {
    domainDefineXML: () => raw.domainDefineXML(td.xml, 0),
    domainUndefine: () => raw.domainUndefine(u, 0),
    domainCreate: () => raw.domainCreate(u, 0),
    domainDestroy: () => raw.domainDestroy(u, 0),
    domainSuspend: () => raw.domainSuspend(u),
    domainResume: () => raw.domainResume(u),
    domainSetAutostart: () => raw.domainSetAutostart(u, true),
    domainShutdown: () => raw.domainShutdown(u, 0),
    domainReboot: () => raw.domainReboot(u, 0),
    domainUpdateDevice: () => raw.domainUpdateDevice(u, "<disk type='file' device='cdrom'><target dev='sdz'/></disk>", 0),
    domainOpenConsole: () => raw.openConsole!(u, null, 0),
    qemuMonitorCommand: () => raw.qemuMonitorCommand(u, '{"execute":"quit"}', 0),
    domainFSFreeze: () => raw.domainFSFreeze(u, [], 0),
    domainFSThaw: () => raw.domainFSThaw(u, [], 0),
    checkpointCreateXML: () => raw.checkpointCreateXML(u, '<domaincheckpoint><name>x</name></domaincheckpoint>', 0),
    checkpointDelete: () => raw.checkpointDelete(u, 'c2', 0),
    backupBegin: () => raw.backupBegin(u, null, null, 0),
    backupEnd: () => raw.backupEnd(u, 0, 0),
    abortJob: () => raw.abortJob(u, 0),
  };
  const mutating = Object.entries(procedures).filter(([, p]) => p.mutating).map(([n]) => n).sort();
  assert.deepEqual(Object.keys(rawCalls).sort(), mutating, 'every mutating procedure is tried');
  for (const [name, call] of Object.entries(rawCalls)) await rejectsWith(call(), denied, `daemon ${name} on the read-only socket`);
  assert.equal((await raw.domainGetInfo(u)).state, DomainState.RUNNING, 'still running: nothing was done');
  assert.equal(await raw.domainGetAutostart(u), false, 'autostart unchanged');
  assert.deepEqual(await raw.listAllCheckpoints(u, 0).then((n) => n.sort()), ['c1', 'c2']);

  // ---- tear down
  await dom.destroy();
  await dom.undefine({ checkpointsMetadata: true });
  assert.deepEqual(await conn.listAllDomains(), []);
  await conn.close();
  await ro.close();
  await raw.close();
  assert.deepEqual(await stopVirtbackd(env.daemons[0]!, 'SIGTERM'), { code: 0, signal: null });
  await env.assertAllGone([
    ...td.disks.map((d) => path.basename(d.path)),
    ...[...fullTargets, ...incTargets].flatMap((f) => [path.basename(f), `${path.basename(f)}.manifest.json`]),
    'expected.raw',
    'pulled.raw',
  ]);
});
