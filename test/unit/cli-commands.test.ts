// Every virtback command end to end against an in-process virtbackd serving
// the in-memory TestDriver: output, exit status and the effect on the
// driver; the read-only connection refusing every mutating command; bad
// usage exiting 2; and real child-process runs (also through a bin symlink).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { onEventLoopReady } from '../../src/cli/commands/event.js';
import { DomainState, JobType } from '../../src/flags.js';
import { runMain, startCliDaemon } from '../helpers/cli.js';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '..', '..');
const UUID = '6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b';
const DOMAIN_XML =
  `<domain type='qemu'><name>vm1</name><uuid>${UUID}</uuid><memory unit='MiB'>128</memory><vcpu>2</vcpu>` +
  "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>" +
  "<source file='/img/vm1-sda.qcow2'/><target dev='sda' bus='scsi'/></disk></devices></domain>";

async function defineAndStart(env: Awaited<ReturnType<typeof startCliDaemon>>): Promise<string> {
  const file = path.join(env.dir, 'vm1.xml');
  await writeFile(file, DOMAIN_XML);
  assert.equal((await env.run('define', file)).code, 0);
  assert.equal((await env.run('start', 'vm1')).code, 0);
  return file;
}

test('domain commands: define, list, start, dominfo, domstate, dumpxml, domblklist, monitor, fsfreeze, destroy, undefine', async (t) => {
  const env = await startCliDaemon(t);
  const file = path.join(env.dir, 'vm1.xml');
  await writeFile(file, DOMAIN_XML);

  assert.deepEqual(await env.run('define', file), { code: 0, stdout: `Domain 'vm1' defined from ${file}\n`, stderr: '' });
  assert.equal((await env.run('list')).stdout, ' Id   Name   State\n--------------------\n');
  assert.equal((await env.run('list', '--all')).stdout, ' Id   Name   State\n-----------------------\n -    vm1    shut off\n');
  assert.equal((await env.run('list', '--inactive', '--name')).stdout, 'vm1\n');
  assert.equal((await env.run('list', '--all', '--uuid')).stdout, `${UUID}\n`);
  assert.equal((await env.run('domstate', 'vm1')).stdout, 'shut off\n');

  assert.deepEqual(await env.run('start', 'vm1'), { code: 0, stdout: "Domain 'vm1' started\n", stderr: '' });
  const info = await env.driver.domainGetInfo(UUID);
  assert.equal(info.state, DomainState.RUNNING);
  const id = String(info.id);
  assert.equal((await env.run('list')).stdout, formatListRow(id));
  assert.equal((await env.run('list', '--inactive')).stdout.split('\n').length, 3, 'only the header');
  assert.equal((await env.run('domstate', '--reason', id)).stdout, 'running (booted)\n', 'looked up by id');
  assert.equal((await env.run('domstate', UUID.toUpperCase())).stdout, 'running\n', 'looked up by uuid');

  const dominfo = await env.run('dominfo', 'vm1');
  assert.equal(dominfo.code, 0);
  assert.match(dominfo.stdout, new RegExp(`^Id:             ${id}\nName:           vm1\nUUID:           ${UUID}\nOS Type:        hvm\nState:          running\nCPU\\(s\\):         2\nMax memory:     131072 KiB\n`));
  assert.match(dominfo.stdout, /Checkpoints: {4}0\nBackup job: {5}no\n$/);
  const dj = JSON.parse((await env.run('dominfo', 'vm1', '--json')).stdout) as Record<string, unknown>;
  assert.deepEqual([dj.name, dj.state, dj.cpus, dj.maxMemoryKiB], ['vm1', 'running', 2, 131072]);
  const lj = JSON.parse((await env.run('list', '--all', '--json')).stdout) as { name: string; id: number }[];
  assert.deepEqual(lj.map((d) => [d.name, d.id]), [['vm1', info.id]]);

  assert.equal((await env.run('dumpxml', 'vm1')).stdout, `${DOMAIN_XML}\n`);
  assert.equal((await env.run('domblklist', 'vm1')).stdout, ' Target   Source\n------------------------------\n sda      /img/vm1-sda.qcow2\n');
  assert.deepEqual(await env.run('domblkerror', 'vm1'), { code: 0, stdout: 'No errors found\n', stderr: '' });
  assert.equal((await env.run('domblkerror', 'vm1', '--json')).stdout, '[]\n');
  assert.match((await env.run('domblklist', 'vm1', '--details')).stdout, /^ Type {3}Device {3}Target {3}Source\n-+\n file {3}disk {5}sda {6}\/img\/vm1-sda.qcow2\n$/);
  assert.deepEqual(JSON.parse((await env.run('domblklist', 'vm1', '--json')).stdout), [
    { type: 'file', device: 'disk', target: 'sda', source: '/img/vm1-sda.qcow2' },
  ]);

  const qmp = await env.run('qemu-monitor-command', 'vm1', '--pretty', '{"execute":"query-status"}');
  assert.equal(qmp.code, 0);
  assert.deepEqual(JSON.parse(qmp.stdout), { return: {}, id: '{"execute":"query-status"}'.length });
  assert.match(qmp.stdout, /^\{\n {2}"return"/);
  assert.equal((await env.run('domfsfreeze', 'vm1')).stdout, 'Froze 1 filesystem(s)\n');
  assert.equal((await env.run('domfsfreeze', 'vm1', '--mountpoint', '/', '--mountpoint', '/boot')).stdout, 'Froze 2 filesystem(s)\n');
  assert.equal((await env.run('domfsthaw', 'vm1')).stdout, 'Thawed 1 filesystem(s)\n');

  assert.deepEqual(await env.run('destroy', 'vm1'), { code: 0, stdout: "Domain 'vm1' destroyed\n", stderr: '' });
  assert.equal((await env.run('domstate', 'vm1', '--reason')).stdout, 'shut off (destroyed)\n');
  assert.deepEqual(await env.run('undefine', 'vm1'), { code: 0, stdout: "Domain 'vm1' has been undefined\n", stderr: '' });
  assert.deepEqual(await env.run('dominfo', 'vm1'), { code: 1, stdout: '', stderr: "error: failed to get domain 'vm1'\n" });
});

function formatListRow(id: string): string {
  const w = Math.max(2, id.length);
  return ` ${'Id'.padEnd(w)}   Name   State\n${'-'.repeat(w + 3 + 4 + 3 + 7 + 3)}\n ${id.padEnd(w)}   vm1    running\n`;
}

test('list filters: --with-checkpoint/--without-checkpoint, --with-backup/--without-backup', async (t) => {
  const env = await startCliDaemon(t);
  await defineAndStart(env);
  assert.equal((await env.run('list', '--all', '--with-checkpoint', '--name')).stdout, '');
  assert.equal((await env.run('list', '--all', '--without-checkpoint', '--name')).stdout, 'vm1\n');
  await env.run('checkpoint-create-as', 'vm1', '--name', 'c1');
  assert.equal((await env.run('list', '--all', '--with-checkpoint', '--name')).stdout, 'vm1\n');
  assert.equal((await env.run('list', '--all', '--without-backup', '--name')).stdout, 'vm1\n');
  await env.run('backup-begin', 'vm1', '--backupxml', await pullXml(env.dir));
  assert.equal((await env.run('list', '--all', '--with-backup', '--name')).stdout, 'vm1\n');
  assert.equal((await env.run('list', '--all', '--without-backup', '--name')).stdout, '');
  assert.equal((await env.run('undefine', 'vm1')).code, 1, 'running with checkpoints');
});

async function pullXml(dir: string): Promise<string> {
  const f = path.join(dir, 'pull.xml');
  await writeFile(f, "<domainbackup mode='pull'><server transport='unix' socket='/tmp/x.sock'/></domainbackup>");
  return f;
}

test('checkpoint commands: create, create-as, list (all forms), dumpxml, parent, info, delete', async (t) => {
  const env = await startCliDaemon(t);
  await defineAndStart(env);
  const cpFile = path.join(env.dir, 'cp.xml');
  await writeFile(cpFile, '<domaincheckpoint><name>B</name></domaincheckpoint>');

  assert.deepEqual(await env.run('checkpoint-create-as', 'vm1', '--name', 'a'), { code: 0, stdout: 'Domain checkpoint a created\n', stderr: '' });
  assert.deepEqual(await env.run('checkpoint-create', 'vm1', cpFile), { code: 0, stdout: `Domain checkpoint B created from '${cpFile}'\n`, stderr: '' });
  assert.equal((await env.run('checkpoint-create-as', 'vm1', '--name', 'c')).code, 0);
  const plain = await env.run('checkpoint-create', 'vm1');
  assert.match(plain.stdout, /^Domain checkpoint \d+ created\n$/);
  const auto = plain.stdout.split(' ')[2]!;
  assert.deepEqual(await env.driver.listAllCheckpoints(UUID, 0), ['a', 'B', 'c', auto]);

  // --print-xml creates nothing
  const printed = await env.run('checkpoint-create-as', 'vm1', '--name', 'p', '--description', 'x', '--diskspec', 'sda,checkpoint=bitmap,bitmap=p', '--print-xml');
  assert.equal(
    printed.stdout,
    "<domaincheckpoint>\n  <name>p</name>\n  <description>x</description>\n  <disks>\n    <disk name='sda' checkpoint='bitmap' bitmap='p'/>\n  </disks>\n</domaincheckpoint>\n\n",
  );
  assert.equal((await env.driver.listAllCheckpoints(UUID, 0)).length, 4);
  assert.deepEqual(await env.run('checkpoint-create-as', 'vm1', '--diskspec', 'sda,bogus=1'), { code: 1, stdout: '', stderr: 'error: unable to parse diskspec: sda,bogus=1\n' });

  // a -> B -> c -> auto: a chain; the table is sorted case-insensitively by name
  const table = await env.run('checkpoint-list', 'vm1', '--parent');
  const lines = table.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^ Name +Creation Time +Parent$/);
  assert.deepEqual(lines.slice(2).map((l) => l.trim().split(/\s+/)[0]), [auto, 'a', 'B', 'c']);
  assert.match(lines[3]!, /^ a +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} *$/);
  assert.match(lines[4]!, / a$/);
  assert.equal((await env.run('checkpoint-list', 'vm1', '--name')).stdout, `${auto}\na\nB\nc\n`);
  assert.equal((await env.run('checkpoint-list', 'vm1', '--name', '--topological')).stdout, `a\nB\nc\n${auto}\n`);
  assert.equal((await env.run('checkpoint-list', 'vm1', '--roots', '--name')).stdout, 'a\n');
  assert.equal((await env.run('checkpoint-list', 'vm1', '--from', 'a', '--name')).stdout, 'B\n');
  assert.equal((await env.run('checkpoint-list', 'vm1', '--from', 'a', '--descendants', '--name')).stdout, `${auto}\nB\nc\n`);
  assert.equal(
    (await env.run('checkpoint-list', 'vm1', '--tree')).stdout,
    `a\n  |\n  +- B\n      |\n      +- c\n          |\n          +- ${auto}\n            \n`,
  );
  assert.equal((await env.run('checkpoint-list', 'vm1', '--tree', '--from', 'c')).stdout, `c\n  |\n  +- ${auto}\n    \n`);
  const js = JSON.parse((await env.run('checkpoint-list', 'vm1', '--json')).stdout) as { name: string; parent: string | null }[];
  assert.deepEqual(js.map((c) => [c.name, c.parent]), [[auto, 'c'], ['a', null], ['B', 'a'], ['c', 'B']]);

  // virsh's mutual exclusions are usage errors
  const usage: [string[], string][] = [
    [['--tree', '--name'], 'Options --tree and --name are mutually exclusive'],
    [['--parent', '--roots'], 'Options --parent and --roots are mutually exclusive'],
    [['--parent', '--tree'], 'Options --parent and --tree are mutually exclusive'],
    [['--roots', '--tree'], 'Options --roots and --tree are mutually exclusive'],
    [['--roots', '--from', 'a'], 'Options --roots and --from are mutually exclusive'],
    [['--tree', '--leaves'], '--leaves and --tree are mutually exclusive'],
    [['--tree', '--no-leaves'], '--no-leaves and --tree are mutually exclusive'],
    [['--descendants'], '--descendants requires --from'],
  ];
  for (const [args, msg] of usage) {
    const r = await env.run('checkpoint-list', 'vm1', ...args);
    assert.equal(r.code, 2, args.join(' '));
    assert.ok(r.stderr.startsWith(`error: ${msg}\n`), r.stderr);
  }
  const rv = await env.run('checkpoint-create', 'vm1', '--redefine-validate');
  assert.equal(rv.code, 2);
  assert.ok(rv.stderr.startsWith('error: Option --redefine is required by option --redefine-validate\n'));

  assert.match((await env.run('checkpoint-dumpxml', 'vm1', 'B')).stdout, /^<domaincheckpoint>\n {2}<name>B<\/name>\n {2}<parent>\n {4}<name>a<\/name>/);
  assert.deepEqual(await env.run('checkpoint-parent', 'vm1', 'B'), { code: 0, stdout: 'a\n', stderr: '' });
  assert.deepEqual(await env.run('checkpoint-parent', 'vm1', 'a'), { code: 1, stdout: '', stderr: "error: checkpoint 'a' has no parent\n" });
  assert.deepEqual(await env.run('checkpoint-info', 'vm1', 'B'), {
    code: 0,
    stdout: 'Name:           B\nDomain:         vm1\nParent:         a\nChildren:       1\nDescendants:    2\n',
    stderr: '',
  });
  assert.deepEqual(JSON.parse((await env.run('checkpoint-info', 'vm1', 'a', '--json')).stdout), {
    name: 'a', domain: 'vm1', parent: null, children: 1, descendants: 3, inconsistent: null,
  });
  assert.deepEqual(await env.run('checkpoint-info', 'vm1', 'nope'), { code: 1, stdout: '', stderr: "error: no domain checkpoint with matching name 'nope'\n" });

  assert.deepEqual(await env.run('checkpoint-delete', 'vm1', 'c', '--children-only'), { code: 0, stdout: 'Domain checkpoint c children deleted\n', stderr: '' });
  assert.deepEqual(await env.driver.listAllCheckpoints(UUID, 0), ['a', 'B', 'c']);
  assert.deepEqual(await env.run('checkpoint-delete', 'vm1', 'B', '--metadata'), { code: 0, stdout: 'Domain checkpoint B deleted\n', stderr: '' });
  assert.deepEqual(await env.run('checkpoint-delete', 'vm1', 'a', '--children'), { code: 0, stdout: 'Domain checkpoint a deleted\n', stderr: '' });
  assert.deepEqual(await env.driver.listAllCheckpoints(UUID, 0), []);
  const both = await env.run('checkpoint-delete', 'vm1', 'x', '--children', '--children-only');
  assert.equal(both.code, 1);
});

test('backup and job commands: begin, dumpxml, domjobinfo, blockjob, domjobabort, end, --wait', async (t) => {
  const env = await startCliDaemon(t);
  await defineAndStart(env);

  // pull: stays until ended
  const begun = await env.run('backup-begin', 'vm1', '--backupxml', await pullXml(env.dir));
  assert.deepEqual(begun, { code: 0, stdout: 'Backup started, job id 1\n', stderr: '' });
  assert.deepEqual(await env.driver.listJobIds(UUID), [1]);
  assert.equal((await env.run('backup-dumpxml', 'vm1')).stdout, "<domainbackup mode='pull' id='1'/>\n");
  assert.equal((await env.run('backup-dumpxml', 'vm1', '--id', '1')).stdout, "<domainbackup mode='pull' id='1'/>\n");
  assert.deepEqual(await env.run('backup-dumpxml', 'vm1', '--id', '7'), { code: 1, stdout: '', stderr: 'error: no domain backup job present\n' });
  assert.equal((await env.run('backup-dumpxml', 'vm1', '--id', 'x')).code, 2);
  // --id 0 is the current job, as in the API and on the wire
  assert.deepEqual(await env.run('backup-dumpxml', 'vm1', '--id', '0'), { code: 0, stdout: "<domainbackup mode='pull' id='1'/>\n", stderr: '' });
  assert.equal((await env.run('backup-dumpxml', 'vm1', '--id', '-1')).code, 2);
  assert.equal((await env.run('backup-end', 'vm1', '--id', '2147483648')).code, 2);
  const ji = await env.run('domjobinfo', 'vm1');
  assert.match(ji.stdout, /^Job type: {9}Unbounded {3}\nOperation: {8}Backup {6}\nJob ID: {11}1 {11}\nTime elapsed: {5}\d+ +ms\n$/);
  assert.match((await env.run('domjobinfo', 'vm1', '--rawstats')).stdout, /^Job type: 2\n\noperation: 9\ntime_elapsed: \d+\nid: 1\n$/);
  assert.equal((JSON.parse((await env.run('domjobinfo', 'vm1', '--json')).stdout) as { typeName: string }).typeName, 'Unbounded');
  assert.equal((await env.run('blockjob', 'vm1', 'sda', '--info')).stdout, 'Backup: [100 %]\n');
  assert.equal((await env.run('blockjob', 'vm1', '/img/vm1-sda.qcow2')).stdout, 'Backup: [100 %]\n', 'by source path');
  assert.equal((await env.run('blockjob', 'vm1', 'sdz', '--info')).stdout, 'No current block job for sdz\n');
  const busy = await env.run('backup-begin', 'vm1');
  assert.deepEqual(busy, { code: 1, stdout: '', stderr: 'error: another backup job is already running\n' });
  assert.deepEqual(await env.run('backup-end', 'vm1'), { code: 0, stdout: 'Backup job 1 ended, backup complete\n', stderr: '' });
  assert.deepEqual(await env.driver.listJobIds(UUID), []);
  assert.deepEqual(await env.run('backup-end', 'vm1'), { code: 1, stdout: '', stderr: 'error: no domain backup job present\n' });
  assert.equal((await env.run('blockjob', 'vm1', 'sda')).stdout, 'No current block job for sda\n');
  assert.equal((await env.run('domjobinfo', 'vm1')).stdout, 'Job type:         None        \n');

  // push with --wait (not a terminal: plain lines), then the completed job's stats
  const waited = await env.run('backup-begin', 'vm1', '--wait');
  assert.equal(waited.code, 0, waited.stderr);
  assert.match(waited.stdout, /^Backup started, job id 2\n(total: \d+% .*\n)*(vda|total): completed\n(.*\n)*Backup job 2 completed\n$/);
  const done = await env.run('domjobinfo', 'vm1', '--completed', '--keep-completed');
  assert.match(done.stdout, /^Job type: {9}Completed {3}\nOperation: {8}Backup {6}\nJob ID: {11}2 {11}\nTime elapsed: {5}\d+ +ms\nFile processed: {3}1\.000 MiB\nFile remaining: {3}0\.000 B\nFile total: {7}1\.000 MiB\n$/);
  assert.match((await env.run('domjobinfo', 'vm1', '--completed')).stdout, /^Job type: {9}Completed/);
  assert.equal((await env.run('domjobinfo', 'vm1', '--completed')).stdout, 'Job type:         None        \n', 'read without keep: discarded');
  assert.equal((await env.run('domjobinfo', 'vm1', '--keep-completed')).code, 2);
  assert.equal((await env.run('backup-end', 'vm1', '--id', '2')).stdout, 'Backup job 2 ended, backup complete\n');

  // push aborted while --wait follows it: exit 1 with the outcome
  const pending = env.run('backup-begin', 'vm1', '--wait');
  for (let i = 0; i < 100 && (await env.driver.listJobIds(UUID)).length === 0; i++) await new Promise((r) => setTimeout(r, 5));
  await env.driver.abortJob(UUID, 0);
  const aborted = await pending;
  assert.equal(aborted.code, 1);
  assert.match(aborted.stdout, /^Backup started, job id 3\n/);
  assert.equal(aborted.stderr, 'error: backup job 3 was cancelled\n');

  // domjobabort and backup-end --abort on running push jobs
  assert.equal((await env.run('backup-begin', 'vm1')).stdout, 'Backup started, job id 4\n');
  assert.deepEqual(await env.run('domjobabort', 'vm1'), { code: 0, stdout: '', stderr: '' });
  assert.equal((await env.driver.getJobStats(UUID, 1 | 2)).type, JobType.CANCELLED);
  assert.deepEqual(await env.run('domjobabort', 'vm1'), { code: 1, stdout: '', stderr: 'error: no job is active on the domain\n' });
  assert.equal((await env.run('backup-begin', 'vm1')).stdout, 'Backup started, job id 5\n');
  assert.deepEqual(await env.run('backup-end', 'vm1', '--id', '5', '--abort'), { code: 0, stdout: 'Backup job 5 aborted\n', stderr: '' });

  // backup-end --id 0 ends the current job
  assert.equal((await env.run('backup-begin', 'vm1', '--backupxml', await pullXml(env.dir))).stdout, 'Backup started, job id 6\n');
  assert.deepEqual(await env.run('backup-end', 'vm1', '--id', '0'), { code: 0, stdout: 'Backup job 6 ended, backup complete\n', stderr: '' });
  assert.deepEqual(await env.driver.listJobIds(UUID), []);
});

test('event: lifecycle, block-job and job-completed lines, --loop, --timeout, --timestamp, domain filter', async (t) => {
  const env = await startCliDaemon(t);
  const file = path.join(env.dir, 'vm1.xml');
  await writeFile(file, DOMAIN_XML);
  await env.run('define', file);
  t.after(() => onEventLoopReady(null));

  // one-shot: the first lifecycle event of vm1
  onEventLoopReady(() => void env.driver.domainCreate(UUID, 0));
  assert.deepEqual(await env.run('event', 'vm1', '--event', 'lifecycle'), {
    code: 0,
    stdout: "event 'lifecycle' for domain 'vm1': Started Booted\nevents received: 1\n",
    stderr: '',
  });

  // --loop with --timeout: block-job and job-completed of a push backup, with timestamps
  onEventLoopReady(() => void env.driver.backupBegin(UUID, null, null, 0));
  const r = await env.run('event', '--all', '--loop', '--timeout', '1', '--timestamp');
  assert.equal(r.code, 0);
  const stamp = '\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{3}[+-]\\d{4}: ';
  assert.match(
    r.stdout,
    new RegExp(
      `^${stamp}event 'block-job' for domain 'vm1': Backup for /dev/null completed\n` +
        `${stamp}event 'job-completed' for domain 'vm1':\n\toperation: 9\n\ttime_elapsed: \\d+\n\tdisk_total: 1048576\n\tdisk_processed: 1048576\n\tdisk_remaining: 0\n\tsuccess: yes\n` +
        'event loop timed out\nevents received: 2\n$',
    ),
  );

  // filtered to another domain: nothing arrives
  await writeFile(file, DOMAIN_XML.replace('vm1', 'vm2').replace(UUID, '00000000-0000-4000-8000-000000000002'));
  await env.run('define', file);
  onEventLoopReady(() => void env.driver.domainDestroy(UUID, 0));
  assert.equal((await env.run('event', 'vm2', '--event', 'lifecycle', '--timeout', '1')).stdout, 'event loop timed out\nevents received: 0\n');
  onEventLoopReady(null);
  assert.equal((await env.run('event', '--list')).stdout, 'lifecycle\nreboot\nio-error\nio-error-reason\nblock-job\njob-completed\n');
  assert.equal((await env.run('event', 'vm1')).code, 2);
  assert.equal((await env.run('event', '--event', 'nope')).code, 2);
});

test('read-only connection: every mutating command fails with OPERATION_DENIED, getters work', async (t) => {
  const env = await startCliDaemon(t);
  const file = await defineAndStart(env);
  await env.run('checkpoint-create-as', 'vm1', '--name', 'c1');
  const denied = 'error: operation forbidden for read only access\n';
  const mutating: string[][] = [
    ['define', file],
    ['undefine', 'vm1'],
    ['start', 'vm1'],
    ['destroy', 'vm1'],
    ['qemu-monitor-command', 'vm1', '{"execute":"query-status"}'],
    ['domfsfreeze', 'vm1'],
    ['domfsthaw', 'vm1'],
    ['checkpoint-create', 'vm1'],
    ['checkpoint-create-as', 'vm1', '--name', 'c2'],
    ['checkpoint-delete', 'vm1', 'c1'],
    ['backup-begin', 'vm1'],
    ['backup-end', 'vm1'],
    ['domjobabort', 'vm1'],
  ];
  for (const args of mutating) {
    assert.deepEqual(await env.runRO(...args), { code: 1, stdout: '', stderr: denied }, args.join(' '));
  }
  assert.equal((await env.driver.domainGetInfo(UUID)).state, DomainState.RUNNING);
  assert.deepEqual(await env.driver.listAllCheckpoints(UUID, 0), ['c1']);
  assert.deepEqual(await env.driver.listJobIds(UUID), []);
  for (const args of [['list', '--all'], ['dominfo', 'vm1'], ['dumpxml', 'vm1'], ['checkpoint-list', 'vm1'], ['checkpoint-info', 'vm1', 'c1'], ['domjobinfo', 'vm1']]) {
    assert.equal((await env.runRO(...args)).code, 0, args.join(' '));
  }
  assert.equal((await env.runRO('dumpxml', 'vm1', '--security-info')).code, 1);
});

test('usage and connection errors: exit 2 for bad usage, 1 with "error: …" for failures', async (t) => {
  const env = await startCliDaemon(t);
  assert.equal((await env.run('no-such-command')).code, 2);
  assert.equal((await env.run('start')).code, 2, 'missing argument');
  assert.equal((await env.run('list', '--bogus')).code, 2);
  assert.equal((await env.run('qemu-monitor-command', 'x', '--hmp', '--pretty', 'info')).code, 2);
  assert.deepEqual(await env.run('define', path.join(env.dir, 'missing.xml')), {
    code: 1,
    stdout: '',
    stderr: `error: Failed to open file '${path.join(env.dir, 'missing.xml')}': No such file or directory\n`,
  });
  const gone = await runMain(['-c', `virtback+unix:///?socket=${path.join(env.dir, 'none.sock')}`, 'list']);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /^error: .+\n$/);
  assert.equal((await runMain(['-c', 'bogus://x', 'list'])).code, 1);
});

test('child process: VIRTBACK_URI, exit codes, and running through an npm bin symlink', async (t) => {
  const env = await startCliDaemon(t);
  const bin = await mkdtemp(path.join(os.tmpdir(), 'vbbin-'));
  t.after(() => rm(bin, { recursive: true, force: true }));
  const link = path.join(bin, 'virtback');
  await symlink(path.join(root, 'src', 'cli', 'virtback.ts'), link);
  const file = path.join(env.dir, 'vm1.xml');
  await writeFile(file, DOMAIN_XML);
  const opts = { cwd: root, env: { ...process.env, VIRTBACK_URI: env.uri } };
  const ok = await run(process.execPath, ['--import', 'tsx', link, 'define', file], opts);
  assert.equal(ok.stdout, `Domain 'vm1' defined from ${file}\n`);
  const list = await run(process.execPath, ['--import', 'tsx', link, 'list', '--all', '--name'], opts);
  assert.equal(list.stdout, 'vm1\n');
  const fail = await run(process.execPath, ['--import', 'tsx', link, '-r', 'start', 'vm1'], opts).then(
    () => assert.fail('should exit 1'),
    (e: { code: number; stderr: string }) => e,
  );
  assert.equal(fail.code, 1);
  assert.equal(fail.stderr, 'error: operation forbidden for read only access\n');
  const usage = await run(process.execPath, ['--import', 'tsx', link, 'list', '--nope'], opts).then(
    () => assert.fail('should exit 2'),
    (e: { code: number }) => e,
  );
  assert.equal(usage.code, 2);
});
