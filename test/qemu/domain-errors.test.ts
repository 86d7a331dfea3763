// Error cases of the domain API, with libvirt's codes and wording, and the
// extension points (checkpoint/backup delegates, hooks) the later modules use.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import { ErrorCode, isVirError, VirError } from '../../src/errors.js';
import { DomainState, ListDomainsFlags, ShutoffReason, UndefineFlags } from '../../src/flags.js';
import type { CheckpointAccess, CheckpointOps, BackupOps } from '../../src/qemu/host.js';
import type { DomainObject } from '../../src/qemu/domain-object.js';
import { makeTestDomain, makeTestEnv, qemuProcessesFor } from '../helpers/qemu-env.js';

const run = promisify(execFile);

function rejectsWith(code: keyof typeof ErrorCode, message: RegExp | string) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof VirError, `expected a VirError, got ${String(e)}`);
    assert.equal(e.codeName, code, e.message);
    if (typeof message === 'string') assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  };
}

test('unknown domains: NO_DOMAIN with libvirt wording', async (t) => {
  const env = await makeTestEnv(t);
  const driver = await env.openDriver();
  await assert.rejects(driver.domainLookupByName('x'),
    rejectsWith('NO_DOMAIN', "Domain not found: no domain with matching name 'x'"));
  const uuid = '11111111-2222-3333-4444-555555555555';
  for (const p of [
    driver.domainLookupByUUID(uuid), driver.domainCreate(uuid, 0), driver.domainDestroy(uuid, 0),
    driver.domainGetInfo(uuid), driver.domainGetXMLDesc(uuid, 0), driver.domainUndefine(uuid, 0),
    driver.qemuMonitorCommand(uuid, '{"execute":"query-status"}', 0),
  ]) {
    await assert.rejects(p, rejectsWith('NO_DOMAIN', `Domain not found: no domain with matching uuid '${uuid}'`));
  }
  assert.equal(new VirError(ErrorCode.NO_DOMAIN, 0, '').code, 42);
});

test('start a running domain / destroy a stopped one: OPERATION_INVALID (55)', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await assert.rejects(driver.domainDestroy(dom.uuid, 0),
    rejectsWith('OPERATION_INVALID', 'Requested operation is not valid: domain is not running'));
  await driver.domainCreate(dom.uuid, 0);
  await assert.rejects(driver.domainCreate(dom.uuid, 0),
    rejectsWith('OPERATION_INVALID', 'Requested operation is not valid: domain is already running'));
  assert.equal((await qemuProcessesFor(env.dir)).length, 1);
  await driver.domainDestroy(dom.uuid, 0);
  await assert.rejects(driver.domainDestroy(dom.uuid, 0), rejectsWith('OPERATION_INVALID', /domain is not running/));
  assert.throws(() => driver.diskNodes(dom.uuid), rejectsWith('OPERATION_INVALID', /domain is not running/));
  await env.assertClean();
});

test('concurrent starts of one domain: one QEMU, one success, one OPERATION_INVALID', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  const results = await Promise.allSettled([driver.domainCreate(dom.uuid, 0), driver.domainCreate(dom.uuid, 0)]);
  assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  assert.ok(isVirError((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason, 'OPERATION_INVALID'));
  assert.equal((await qemuProcessesFor(env.dir)).length, 1);
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});

test('define: name clash with another uuid, uuid clash with another name; same uuid updates', async (t) => {
  const env = await makeTestEnv(t);
  const a = await makeTestDomain(env.dir, { name: 'vm', memoryMiB: 128 });
  const driver = await env.openDriver();
  await driver.domainDefineXML(a.xml, 0);
  const otherUuid = '9b1f0b3e-7c2a-4d1e-9f00-5a6b7c8d9e0f';
  await assert.rejects(driver.domainDefineXML(a.xml.replace(a.uuid, otherUuid), 0),
    rejectsWith('OPERATION_FAILED', `operation failed: domain 'vm' already exists with uuid ${a.uuid}`));
  await assert.rejects(driver.domainDefineXML(a.xml.replace('<name>vm</name>', '<name>vm2</name>'), 0),
    rejectsWith('OPERATION_FAILED', `operation failed: domain 'vm' is already defined with uuid ${a.uuid}`));
  const ref = await driver.domainDefineXML(a.xml.replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>256</memory>"), 0);
  assert.deepEqual(ref, { name: 'vm', uuid: a.uuid });
  assert.equal((await driver.listAllDomains(0)).length, 1);
  assert.match(await driver.domainGetXMLDesc(a.uuid, 0), /<memory unit='KiB'>262144<\/memory>/);
  // the uuid is matched without regard to case
  assert.equal((await driver.domainLookupByUUID(a.uuid.toUpperCase())).name, 'vm');
  // the definition survives a new driver
  await driver.close();
  const again = await env.openDriver();
  assert.match(await again.domainGetXMLDesc(a.uuid, 0), /<memory unit='KiB'>262144<\/memory>/);
  assert.deepEqual(await readdir(path.join(env.stateDir, 'domains')), [`${a.uuid}.xml`], 'no temp files left');
  assert.equal(env.events.filter((e) => e.type === 'lifecycle' && e.event === 'defined').length, 2);
  await assert.rejects(again.domainDefineXML('<domain', 0), (e) => isVirError(e, 'XML_ERROR'));
  // an unknown flag (1 is VALIDATE, accepted)
  await assert.rejects(again.domainDefineXML(a.xml, 2), (e) => isVirError(e, 'INVALID_ARG'));
});

test('a missing disk image fails before QEMU is started', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 2 });
  await rm(dom.disks[1]!.path);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  const uid = process.getuid!();
  const gid = process.getgid!();
  await assert.rejects(driver.domainCreate(dom.uuid, 0), rejectsWith('SYSTEM_ERROR',
    `Cannot access storage file '${dom.disks[1]!.path}' (as uid:${uid}, gid:${gid}): No such file or directory`));
  assert.deepEqual(await qemuProcessesFor(env.dir), []);
  const info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.deepEqual(await readdir(env.runDir), [], 'no run dir was made');
  await env.assertClean();
});

test('QEMU failing to start: INTERNAL_ERROR carrying QEMU\'s own message', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  // a raw file declared as qcow2: QEMU refuses it while starting
  await rm(dom.disks[0]!.path);
  await writeFile(dom.disks[0]!.path, Buffer.alloc(1 << 20));
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await assert.rejects(driver.domainCreate(dom.uuid, 0), rejectsWith('INTERNAL_ERROR',
    /^internal error: process exited while connecting to monitor: .*qemu-system-x86_64: .*Image is not in qcow2 format/));
  const info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.FAILED);
  assert.deepEqual(await qemuProcessesFor(env.dir), []);
  assert.deepEqual(await readdir(env.runDir), []);
  await env.assertClean();
  // the image is untouched
  const { stdout } = await run('qemu-img', ['info', '--output=json', dom.disks[0]!.path]);
  assert.equal(JSON.parse(stdout).format, 'raw');
});

test('guest agent: not running -> OPERATION_INVALID, no channel -> ARGUMENT_UNSUPPORTED (74, as libvirt), nobody answering -> AGENT_UNRESPONSIVE', async (t) => {
  const env = await makeTestEnv(t);
  const plain = await makeTestDomain(env.dir, { name: 'plain' });
  const withAgent = await makeTestDomain(env.dir, { name: 'with-agent', agent: true });
  const driver = await env.openDriver();
  await driver.domainDefineXML(plain.xml, 0);
  await driver.domainDefineXML(withAgent.xml, 0);
  await assert.rejects(driver.domainFSFreeze(plain.uuid, [], 0), rejectsWith('OPERATION_INVALID', /domain is not running/));
  await driver.domainCreate(plain.uuid, 0);
  await driver.domainCreate(withAgent.uuid, 0);
  await assert.rejects(driver.domainFSFreeze(plain.uuid, [], 0),
    rejectsWith('ARGUMENT_UNSUPPORTED', 'QEMU guest agent is not configured'));
  await assert.rejects(driver.domainFSThaw(withAgent.uuid, ['/mnt'], 0),
    rejectsWith('OPERATION_UNSUPPORTED', 'specifying mountpoints is not supported'));
  // no guest OS boots here, so no agent ever answers on the channel
  await assert.rejects(driver.domainFSFreeze(withAgent.uuid, [], 0), rejectsWith('AGENT_UNRESPONSIVE', /^Guest agent is not responding/));
  await driver.domainDestroy(plain.uuid, 0);
  await driver.domainDestroy(withAgent.uuid, 0);
  await env.assertClean();
});

test('checkpoint and backup calls on an unknown domain: NO_DOMAIN', async (t) => {
  const env = await makeTestEnv(t);
  const driver = await env.openDriver();
  const u = '11111111-2222-3333-4444-555555555555';
  const noDomain = rejectsWith('NO_DOMAIN', `Domain not found: no domain with matching uuid '${u}'`);
  await assert.rejects(driver.checkpointCreateXML(u, '<domaincheckpoint/>', 0), noDomain);
  await assert.rejects(driver.listAllCheckpoints(u, 0), noDomain);
  await assert.rejects(driver.backupBegin(u, null, null, 0), noDomain);
  await assert.rejects(driver.getJobStats(u, 0), noDomain);
});

test('extension points: delegates, per-domain stores, hooks, list filters, undefine with checkpoints', async (t) => {
  const env = await makeTestEnv(t);
  const a = await makeTestDomain(env.dir, { name: 'a' });
  const b = await makeTestDomain(env.dir, { name: 'b' });
  const counts = new Map<string, number>([[a.uuid, 2]]);
  const jobs = new Set<string>([b.uuid]);
  const hookLog: string[] = [];
  const discarded: string[] = [];
  const checkpoints: CheckpointOps & CheckpointAccess = {
    checkpointCreateXML: async (uuid) => `created-for-${uuid}`,
    checkpointGetXMLDesc: async () => '',
    listAllCheckpoints: async () => [],
    checkpointListAllChildren: async () => [],
    checkpointLookupByName: async () => '',
    checkpointGetParent: async () => '',
    checkpointDelete: async () => {},
    listUnknownBitmaps: async () => [],
    prepare: () => { throw new Error('not used'); },
    ensureUsable: () => { throw new Error('not used'); },
    quiesced: () => { throw new Error('not used'); },
    discardAllMetadata: async (dom: DomainObject) => {
      discarded.push(dom.name);
      counts.set(dom.uuid, 0);
    },
  };
  const backups = { listJobIds: async () => [7] } as unknown as BackupOps;
  const driver = await env.openDriver({
    checkpoints: (d) => {
      d.addHooks({
        onLoaded: (dom) => {
          hookLog.push(`loaded ${dom.name}`);
          dom.checkpoints = { count: () => counts.get(dom.uuid) ?? 0 };
          dom.backupJobs = { hasActiveJob: () => jobs.has(dom.uuid) };
        },
        onStarted: (dom) => { hookLog.push(`started ${dom.name} ${dom.run?.qmp ? 'with' : 'without'} monitor`); },
        onStopped: (dom, reason) => { hookLog.push(`stopped ${dom.name} ${reason}`); },
        onRemoved: (dom) => { hookLog.push(`removed ${dom.name}`); },
      });
      return checkpoints;
    },
    backups: () => backups,
  });
  await driver.domainDefineXML(a.xml, 0);
  await driver.domainDefineXML(b.xml, 0);
  assert.equal(await driver.checkpointCreateXML(a.uuid, '', 0), `created-for-${a.uuid}`);
  assert.deepEqual(await driver.listJobIds(a.uuid), [7]);

  const F = ListDomainsFlags;
  const names = async (flags: number) => (await driver.listAllDomains(flags)).map((d) => d.name);
  assert.deepEqual(await names(F.HAS_CHECKPOINT), ['a']);
  assert.deepEqual(await names(F.NO_CHECKPOINT), ['b']);
  assert.deepEqual(await names(F.HAS_BACKUP_JOB), ['b']);
  assert.deepEqual(await names(F.NO_BACKUP_JOB), ['a']);
  assert.deepEqual(await names(F.HAS_CHECKPOINT | F.HAS_BACKUP_JOB), []);
  assert.equal((await driver.domainGetInfo(a.uuid)).checkpoints, 2);
  assert.equal((await driver.domainGetInfo(b.uuid)).hasBackupJob, true);

  await assert.rejects(driver.domainUndefine(a.uuid, 0),
    rejectsWith('OPERATION_INVALID', 'Requested operation is not valid: cannot delete inactive domain with 2 checkpoints'));
  await driver.domainCreate(b.uuid, 0);
  await driver.domainDestroy(b.uuid, 0);
  await driver.domainUndefine(a.uuid, UndefineFlags.CHECKPOINTS_METADATA);
  assert.deepEqual(discarded, ['a']);
  assert.deepEqual(await names(0), ['b']);
  assert.deepEqual(hookLog, [
    'loaded a', 'loaded b', `started b with monitor`, `stopped b ${ShutoffReason.DESTROYED}`, 'removed a',
  ]);
  await env.assertClean();
});
