// The entry-point table is the one source of the API's flag rules: a rule
// changed in a copy of the table changes the SDK's checks and named
// options, the wire's read-only rule and the CLI's options together; every
// row's rules reach the wire table unchanged; PRESERVE_SHUTDOWN_DOMAIN is
// accepted by the API and refused by a driver that cannot do it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CheckedDriver } from '../../src/api/checked-driver.js';
import { entryPointNames, entryPoints, type EntryPointTable } from '../../src/api/entry-points.js';
import { optionName } from '../../src/api/options.js';
import { Connect } from '../../src/api/public.js';
import { TestDriver } from '../../src/api/test-driver.js';
import { buildProgram } from '../../src/cli/virtback.js';
import {
  BackupBeginFlags,
  CheckpointDeleteFlags,
  CheckpointListFlags,
  CheckpointXMLFlags,
  DomainXMLFlags,
  JobStatsFlags,
  ListDomainsFlags,
  UndefineFlags,
} from '../../src/flags.js';
import { entryProcedures, procedures } from '../../src/remote/protocol.js';
import { runMain, startCliDaemon } from '../helpers/cli.js';
import { fakeDriver } from './remote-fixtures.js';
import { refused } from '../helpers/errors.js';

const UUID = '6f1c2b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f';
const SECURE_DENIED = 'virDomainGetXMLDesc with secure flag';

/** Our table with one row changed: domainGetXMLDesc gains MIGRATABLE, which becomes its secure flag and needs INACTIVE. */
const MIGRATABLE = 1 << 3;
const changed: EntryPointTable = {
  ...entryPoints,
  domainGetXMLDesc: {
    ...entryPoints.domainGetXMLDesc,
    flags: { ...DomainXMLFlags, MIGRATABLE },
    secure: 'MIGRATABLE',
    requires: [['MIGRATABLE', 'INACTIVE']],
  },
};

function sdk(table: EntryPointTable, readOnly: boolean) {
  const driver = fakeDriver();
  const conn = new Connect(new CheckedDriver(driver, readOnly, table), readOnly);
  return { driver, dom: conn.domain({ name: 'vm1', uuid: UUID }) };
}


/** main(argv, table) with its output captured. */
const cli = (argv: string[], table: EntryPointTable) => runMain(argv, table);

const dumpxmlOptions = (table: EntryPointTable): string[] =>
  buildProgram(table)
    .commands.find((c) => c.name() === 'dumpxml')!
    .options.map((o) => o.long ?? '');

test('a flag rule changed in the table changes the SDK, the wire read-only rule and the CLI together', async () => {
  // As the table is: SECURE is the secure flag; there is no MIGRATABLE anywhere.
  const before = sdk(entryPoints, true);
  await refused(before.dom.getXMLDesc({ secure: true }), 29, SECURE_DENIED);
  await refused(before.dom.getXMLDesc({ migratable: true } as never), 8, /unknown option 'migratable' in function virDomainGetXMLDesc/);
  assert.equal(procedures.domainGetXMLDesc.deniedReadOnly!([UUID, DomainXMLFlags.SECURE]), SECURE_DENIED);
  assert.equal(procedures.domainGetXMLDesc.deniedReadOnly!([UUID, MIGRATABLE]), null);
  assert.deepEqual(dumpxmlOptions(entryPoints), ['--security-info', '--inactive']);
  assert.equal((await cli(['-c', 'test:///nowhere', 'dumpxml', 'vm1', '--migratable'], entryPoints)).code, 2, 'unknown option');

  // SDK, read-only: the secure rule moved from SECURE to MIGRATABLE.
  const ro = sdk(changed, true);
  await refused(ro.dom.getXMLDesc({ migratable: true, inactive: true } as never), 29, SECURE_DENIED);
  assert.equal(ro.driver.calls.length, 0);
  await ro.dom.getXMLDesc({ secure: true });
  assert.deepEqual(ro.driver.calls.map((c) => c.args), [[UUID, DomainXMLFlags.SECURE]]);
  // SDK, read-write: the new option exists, with its required flag.
  const rw = sdk(changed, false);
  await refused(
    rw.dom.getXMLDesc({ migratable: true } as never),
    8,
    "Flag 'VIR_DOMAIN_XML_INACTIVE' is required by flag 'VIR_DOMAIN_XML_MIGRATABLE'",
  );
  await rw.dom.getXMLDesc({ migratable: true, inactive: true } as never);
  assert.deepEqual(rw.driver.calls.map((c) => c.args), [[UUID, MIGRATABLE | DomainXMLFlags.INACTIVE]]);

  // The wire's read-only rule.
  const wire = entryProcedures(changed).domainGetXMLDesc;
  assert.equal(wire.deniedReadOnly!([UUID, MIGRATABLE]), SECURE_DENIED);
  assert.equal(wire.deniedReadOnly!([UUID, DomainXMLFlags.SECURE]), null);

  // The CLI: a --migratable option, and the required flag is a usage error in virsh's words (before any connection).
  assert.deepEqual(dumpxmlOptions(changed), ['--security-info', '--inactive', '--migratable']);
  const usage = await cli(['-c', 'test:///nowhere', 'dumpxml', 'vm1', '--migratable'], changed);
  assert.equal(usage.code, 2);
  assert.ok(usage.stderr.startsWith('error: Option --inactive is required by option --migratable\n'), usage.stderr);
});

test('every row reaches the wire table and the SDK options unchanged', () => {
  for (const name of entryPointNames) {
    const row = entryPoints[name];
    const p = procedures[name];
    assert.equal(p.mutating, row.mutates, name);
    assert.equal('deniedReadOnly' in p, row.secure !== null, name);
    assert.ok(p.doc.startsWith(row.libvirt), name);
  }
  // Rows that are not mutating but have a secure flag: exactly the two XML getters.
  assert.deepEqual(
    entryPointNames.filter((n) => entryPoints[n].secure !== null),
    ['domainGetXMLDesc', 'checkpointGetXMLDesc'],
  );
  assert.equal(optionName('PRESERVE_SHUTDOWN_DOMAIN'), 'preserveShutdownDomain');
});

test('the checked wrapper refuses a row rule before the driver, in libvirt words, whatever the row', async () => {
  // A rule only in a copy of the table: backupEnd's ABORT exclusive with a new FORCE flag.
  const table: EntryPointTable = {
    ...entryPoints,
    backupEnd: { ...entryPoints.backupEnd, flags: { ABORT: 1, FORCE: 2 }, exclusive: [['ABORT', 'FORCE']] },
  };
  const { driver, dom } = sdk(table, false);
  await refused(dom.backupEnd(0, 3), 8, "Flags 'VIR_DOMAIN_BACKUP_END_ABORT' and 'VIR_DOMAIN_BACKUP_END_FORCE' are mutually exclusive");
  assert.equal(driver.calls.length, 0);
  await dom.backupEnd(0, { force: true } as never);
  assert.deepEqual(driver.calls[0]!.args, [UUID, 0, 2]);
  // The real table does not know FORCE.
  await refused(sdk(entryPoints, false).dom.backupEnd(0, 2), 8, 'unsupported flags (0x2) in function virDomainBackupEnd');
});

test('PRESERVE_SHUTDOWN_DOMAIN: the API accepts it; a driver that cannot keep the domain refuses it itself', async (t) => {
  const { driver, dom } = sdk(entryPoints, false);
  await dom.backupBegin(null, null, { preserveShutdownDomain: true });
  assert.deepEqual(driver.calls[0]!.args, [UUID, null, null, BackupBeginFlags.PRESERVE_SHUTDOWN_DOMAIN]);

  // The in-memory driver, like the QEMU one (test/qemu/backup-errors.test.ts), refuses it with its own check.
  const env = await startCliDaemon(t);
  const file = path.join(env.dir, 'vm.xml');
  await writeFile(
    file,
    `<domain type='qemu'><name>vm1</name><uuid>${UUID}</uuid><memory unit='MiB'>128</memory><vcpu>1</vcpu>` +
      "<os><type arch='x86_64'>hvm</type></os><devices/></domain>",
  );
  assert.equal((await env.run('define', file)).code, 0);
  assert.equal((await env.run('start', 'vm1')).code, 0);
  assert.deepEqual(await env.run('backup-begin', 'vm1', '--preserve-domain-on-shutdown'), {
    code: 1,
    stdout: '',
    stderr: 'error: unsupported flags (0x8) in function virDomainBackupBegin\n',
  });
  assert.deepEqual(await env.driver.listJobIds(UUID), []);
  assert.equal((await env.run('backup-begin', 'vm1', '--reuse-external')).code, 0);
  assert.ok(env.driver instanceof TestDriver);
});

test('the CLI options set exactly their rows bits, virsh names and --no-* options included', async (t) => {
  const env = await startCliDaemon(t, { openDriver: async () => fakeDriver() });
  const cpXml = path.join(env.dir, 'cp.xml');
  await writeFile(cpXml, '<domaincheckpoint/>');
  const F = BackupBeginFlags;
  const cases: [string[], string, number][] = [
    [['backup-begin', 'vm1', '--checkpointxml', cpXml, '--no-metadata', '--quiesce'], 'backupBegin', F.NO_METADATA | F.QUIESCE],
    [['backup-begin', 'vm1', '--reuse-external', '--preserve-domain-on-shutdown'], 'backupBegin', F.REUSE_EXTERNAL | F.PRESERVE_SHUTDOWN_DOMAIN],
    [['backup-begin', 'vm1'], 'backupBegin', 0],
    [['dumpxml', 'vm1', '--security-info', '--inactive'], 'domainGetXMLDesc', DomainXMLFlags.SECURE | DomainXMLFlags.INACTIVE],
    [['checkpoint-dumpxml', 'vm1', 'c1', '--no-domain', '--size'], 'checkpointGetXMLDesc', CheckpointXMLFlags.NO_DOMAIN | CheckpointXMLFlags.SIZE],
    [['checkpoint-delete', 'vm1', 'c1', '--children', '--metadata'], 'checkpointDelete', CheckpointDeleteFlags.CHILDREN | CheckpointDeleteFlags.METADATA_ONLY],
    [['checkpoint-list', 'vm1', '--name', '--leaves', '--no-leaves', '--topological'], 'listAllCheckpoints', CheckpointListFlags.LEAVES | CheckpointListFlags.NO_LEAVES | CheckpointListFlags.TOPOLOGICAL],
    [['checkpoint-list', 'vm1', '--name', '--from', 'c1', '--descendants', '--no-leaves'], 'checkpointListAllChildren', CheckpointListFlags.DESCENDANTS | CheckpointListFlags.NO_LEAVES],
    [['domjobinfo', 'vm1', '--completed', '--keep-completed'], 'getJobStats', JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED],
    [['undefine', 'vm1', '--checkpoints-metadata'], 'domainUndefine', UndefineFlags.CHECKPOINTS_METADATA],
    [['list', '--inactive', '--with-checkpoint', '--without-backup'], 'listAllDomains', ListDomainsFlags.INACTIVE | ListDomainsFlags.HAS_CHECKPOINT | ListDomainsFlags.NO_BACKUP_JOB],
    [['list'], 'listAllDomains', ListDomainsFlags.ACTIVE],
  ];
  for (const [argv, proc, flags] of cases) {
    env.driver.calls.length = 0;
    const r = await env.run(...argv);
    assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    const call = env.driver.calls.find((c) => c.proc === proc);
    assert.ok(call, `${argv.join(' ')} calls ${proc}`);
    assert.equal(call.args.at(-1), flags, argv.join(' '));
  }
});
