// The public wrapper's checks (libvirt's src/libvirt-domain*.c rules): each
// refusal has its code and message, and the driver is never called.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectLocal } from '../../src/sdk/connect.js';
import type { Connect, Domain } from '../../src/api/public.js';
import {
  BackupBeginFlags,
  BackupEndFlags,
  CheckpointCreateFlags,
  CheckpointDeleteFlags,
  CheckpointXMLFlags,
  DomainXMLFlags,
  ListDomainsFlags,
} from '../../src/flags.js';
import { driverProcNames, procedures } from '../../src/remote/protocol.js';
import { CheckedDriver } from '../../src/api/checked-driver.js';
import { fakeDriver, sampleArgs, type FakeDriver } from './remote-fixtures.js';
import { refused } from '../helpers/errors.js';

function open(readOnly = false): { conn: Connect; driver: FakeDriver; dom: Domain } {
  const driver = fakeDriver();
  const conn = connectLocal(driver, { readOnly });
  return { conn, driver, dom: conn.domain({ name: 'vm1', uuid: '6f1c2b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f' }) };
}


const RO = 'operation forbidden for read only access';

test('read-only connection: every mutating call is refused with OPERATION_DENIED before the driver', async () => {
  const { conn, driver, dom } = open(true);
  assert.equal(conn.isReadOnly(), true);
  const chk = (await dom.listAllCheckpoints())[0]!;
  driver.calls.length = 0;
  const attempts: Array<[string, () => Promise<unknown>]> = [
    ['defineXML', () => conn.defineXML('<domain/>')],
    ['undefine', () => dom.undefine()],
    ['create', () => dom.create()],
    ['destroy', () => dom.destroy()],
    ['qemuMonitorCommand', () => dom.qemuMonitorCommand('{"execute":"quit"}')],
    ['fsFreeze', () => dom.fsFreeze()],
    ['fsThaw', () => dom.fsThaw()],
    ['checkpointCreateXML', () => dom.checkpointCreateXML('<domaincheckpoint/>')],
    ['checkpoint delete', () => chk.delete()],
    ['backupBegin', () => dom.backupBegin()],
    ['backupEnd', () => dom.backupEnd(0)],
    ['abortJob', () => dom.abortJob()],
  ];
  for (const [what, f] of attempts) await refused(f(), 29, RO).catch((e: Error) => assert.fail(`${what}: ${e.message}`));
  assert.equal(driver.calls.length, 0);
  await refused(dom.getXMLDesc({ secure: true }), 29, 'virDomainGetXMLDesc with secure flag');
  await refused(chk.getXMLDesc(CheckpointXMLFlags.SECURE), 29, 'virDomainCheckpointGetXMLDesc with secure flag');
  assert.equal(driver.calls.length, 0);
  // Getters pass.
  await dom.getXMLDesc({ inactive: true });
  await chk.getXMLDesc({ noDomain: true });
  await dom.getJobStats({ completed: true });
  await dom.backupGetXMLDesc();
  await conn.listAllDomains();
  assert.equal(driver.calls.length, 5);
});

test('the read-only rules of the SDK and the protocol table agree procedure by procedure', async () => {
  for (const p of driverProcNames) {
    const driver = fakeDriver();
    const checked = new CheckedDriver(driver, true);
    const call = (checked[p] as (...a: unknown[]) => Promise<unknown>).apply(checked, sampleArgs[p] as unknown[]);
    if (procedures[p].mutating) await refused(call, 29, RO);
    else await call;
    assert.equal(driver.calls.length, procedures[p].mutating ? 0 : 1, p);
  }
});

test('checkpointCreateXML: REDEFINE and QUIESCE are exclusive; REDEFINE_VALIDATE needs REDEFINE; XML required', async () => {
  const { dom, driver } = open();
  await refused(
    dom.checkpointCreateXML('<domaincheckpoint/>', { redefine: true, quiesce: true }),
    8,
    "Flags 'VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE' and 'VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE' are mutually exclusive",
  );
  await refused(
    dom.checkpointCreateXML('<domaincheckpoint/>', CheckpointCreateFlags.REDEFINE_VALIDATE),
    8,
    "Flag 'VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE' is required by flag 'VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE'",
  );
  await refused(dom.checkpointCreateXML(''), 8, 'xmlDesc in virDomainCheckpointCreateXML must not be empty');
  await refused(dom.checkpointCreateXML(null as unknown as string), 8, 'xmlDesc in virDomainCheckpointCreateXML must not be NULL');
  await refused(dom.checkpointCreateXML('<x/>', 1 << 5), 8, 'unsupported flags (0x20) in function virDomainCheckpointCreateXML');
  assert.equal(driver.calls.length, 0);
  await dom.checkpointCreateXML('<domaincheckpoint/>', { redefine: true, redefineValidate: true });
  assert.deepEqual(driver.calls[0]!.args.slice(1), ['<domaincheckpoint/>', CheckpointCreateFlags.REDEFINE | CheckpointCreateFlags.REDEFINE_VALIDATE]);
});

test('checkpointDelete: CHILDREN and CHILDREN_ONLY are exclusive', async () => {
  const { dom, driver } = open();
  const chk = await dom.checkpointLookupByName('c1');
  driver.calls.length = 0;
  await refused(
    chk.delete({ children: true, childrenOnly: true }),
    8,
    "Flags 'VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN' and 'VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY' are mutually exclusive",
  );
  assert.equal(driver.calls.length, 0);
  await chk.delete({ childrenOnly: true, metadataOnly: true });
  assert.equal(driver.calls[0]!.args[2], CheckpointDeleteFlags.CHILDREN_ONLY | CheckpointDeleteFlags.METADATA_ONLY);
});

test('backupBegin: NO_METADATA requires checkpointXml; unknown bits refused; options map to the numeric flags', async () => {
  const { dom, driver } = open();
  await refused(dom.backupBegin(null, null, { noMetadata: true }), 8, 'checkpointXml in virDomainBackupBegin must not be NULL');
  await refused(dom.backupBegin(undefined, '', BackupBeginFlags.NO_METADATA), 8, /checkpointXml .* must not be NULL/);
  await refused(dom.backupBegin(null, null, 1 << 7), 8, 'unsupported flags (0x80) in function virDomainBackupBegin');
  assert.equal(driver.calls.length, 0);
  await dom.backupBegin(undefined, '<domaincheckpoint/>', { noMetadata: true, quiesce: true, reuseExternal: true });
  assert.deepEqual(driver.calls[0]!.args.slice(1), [
    null,
    '<domaincheckpoint/>',
    BackupBeginFlags.NO_METADATA | BackupBeginFlags.QUIESCE | BackupBeginFlags.REUSE_EXTERNAL,
  ]);
});

test('job ids must be >= 0; 0 is the current job', async () => {
  const { dom, driver } = open();
  await refused(dom.backupGetXMLDesc(-1), 8, 'id in virDomainBackupGetXMLDesc must be zero or greater');
  await refused(dom.backupEnd(-5, { abort: true }), 8, 'id in virDomainBackupEnd must be zero or greater');
  await refused(dom.backupEnd(1.5), 8, 'id in virDomainBackupEnd must be an integer');
  await refused(dom.backupGetXMLDesc(0, 1), 8, 'unsupported flags (0x1) in function virDomainBackupGetXMLDesc');
  assert.equal(driver.calls.length, 0);
  await dom.backupGetXMLDesc();
  await dom.backupEnd(3, BackupEndFlags.ABORT);
  assert.deepEqual(
    driver.calls.map((c) => c.args.slice(1)),
    [
      [0, 0],
      [3, 1],
    ],
  );
});

test('unknown flag bits and unknown option names are INVALID_ARG naming the function', async () => {
  const { conn, dom, driver } = open();
  await refused(conn.listAllDomains(1 << 20), 8, 'unsupported flags (0x100000) in function virConnectListAllDomains');
  await refused(dom.getXMLDesc(DomainXMLFlags.SECURE | 8), 8, 'unsupported flags (0x8) in function virDomainGetXMLDesc');
  // bit 0 is START_PAUSED now; bit 4 (START_VALIDATE) is virDomainCreateXML's, not CreateWithFlags'
  await refused(dom.create(1 << 4), 8, 'unsupported flags (0x10) in function virDomainCreateWithFlags');
  await refused(dom.abortJob(1), 8, 'unsupported flags (0x1) in function virDomainAbortJobFlags');
  await refused(dom.getJobStats(4), 8, 'unsupported flags (0x4) in function virDomainGetJobStats');
  await refused(dom.listAllCheckpoints(16), 8, 'unsupported flags (0x10) in function virDomainListAllCheckpoints');
  await refused(dom.qemuMonitorCommand('info', 2), 8, 'unsupported flags (0x2) in function virDomainQemuMonitorCommand');
  await refused(dom.undefine(1), 8, 'unsupported flags (0x1) in function virDomainUndefineFlags');
  await refused(dom.getJobStats(-1), 8, /non-negative 32-bit integer/);
  await refused(
    dom.backupBegin(null, null, { noMetdata: true } as never),
    8,
    /unknown option 'noMetdata' in function virDomainBackupBegin/,
  );
  await refused(dom.backupEnd(0, { abort: 'yes' } as never), 8, "option 'abort' must be a boolean in function virDomainBackupEnd");
  assert.equal(driver.calls.length, 0);
  await conn.listAllDomains({ active: true, hasCheckpoint: true, noBackupJob: true });
  assert.equal(driver.calls[0]!.args[0], ListDomainsFlags.ACTIVE | ListDomainsFlags.HAS_CHECKPOINT | ListDomainsFlags.NO_BACKUP_JOB);
});

test('required strings: NULL or empty names, XML and commands are INVALID_ARG', async () => {
  const { conn, dom, driver } = open();
  await refused(conn.lookupByName(''), 8, 'name in virDomainLookupByName must not be empty');
  await refused(conn.lookupByName(undefined as unknown as string), 8, 'name in virDomainLookupByName must not be NULL');
  await refused(conn.defineXML(''), 8, 'xml in virDomainDefineXMLFlags must not be empty');
  await refused(conn.lookupByUUID('not-a-uuid'), 8, /uuidstr in virDomainLookupByUUIDString must be a valid UUID/);
  await refused(dom.qemuMonitorCommand(''), 8, 'cmd in virDomainQemuMonitorCommand must not be empty');
  await refused(dom.checkpointLookupByName(''), 8, 'name in virDomainCheckpointLookupByName must not be empty');
  await refused(dom.fsFreeze(['/', '']), 8, 'mountpoints in virDomainFSFreeze must not be empty');
  assert.equal(driver.calls.length, 0);
  await conn.lookupByUUID('6F1C2B1E2D3A4C5B8E9F0A1B2C3D4E5F');
  assert.deepEqual(driver.calls[0]!.args, ['6f1c2b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f'], 'UUID canonicalised');
});

test('handles: checkpoints know their domain; events are typed and delivered with a Domain; iterator unsubscribes', async () => {
  const { conn, dom, driver } = open();
  const chk = await dom.checkpointLookupByName('c1');
  assert.equal(chk.getName(), 'c1');
  assert.equal(chk.getDomain(), dom);
  assert.equal((await chk.getParent()).getName(), 'c1');
  assert.deepEqual((await chk.listAllChildren({ descendants: true })).map((c) => c.getName()), ['c2']);
  const seen: string[] = [];
  const off = conn.on('job-completed', (ev, d) => seen.push(`${ev.jobId}@${d.name}`));
  const it = conn.events(['lifecycle']);
  driver.emit({ type: 'job-completed', domain: { name: 'vm1', uuid: 'u' }, jobId: 4, stats: { type: 3 } });
  driver.emit({ type: 'lifecycle', domain: { name: 'vm1', uuid: 'u' }, event: 'started', detail: 'booted' });
  assert.deepEqual(seen, ['4@vm1']);
  const first = await it.next();
  assert.equal(first.done, false);
  assert.equal((first.value as { event: string }).event, 'started');
  off();
  await it.return!();
  assert.equal(driver.listenerCount(), 0, 'no driver subscription left');
  await conn.close();
  assert.equal(driver.closed, true);
});
