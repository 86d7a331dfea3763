// The CLI's pure formatting against virsh's formats: vshTable, vshTreePrint,
// domjobinfo, blockjob --info, diskspec parsing, event lines.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkpointCreateAsXml, formatCheckpointTable, formatTree, parseDiskspec, sortByName } from '../../src/cli/commands/checkpoint.js';
import { domainDisks, formatDiskList, formatDomainList, memoryKiB } from '../../src/cli/commands/domain.js';
import { formatEvent } from '../../src/cli/commands/event.js';
import { formatBlockJobInfo, formatJobStats, formatRawJobStats } from '../../src/cli/commands/job.js';
import { formatCapacity, formatLocalTime, formatTable, formatTimestamp, prettyCapacity } from '../../src/cli/output.js';
import { LineProgress, backupDisks, percent } from '../../src/cli/progress.js';
import { BlockJobStatus, BlockJobType, DomainState, JobOperation, JobType } from '../../src/flags.js';
import { parseXml } from '../../src/xml/tree.js';
import { isVirError } from '../../src/errors.js';
import { loadXml } from '../../src/cli/xml-parser.js';

// the commands load libxml2 when they connect; these call their XML helpers directly
await loadXml();

test('formatTable lays out cells as vshTable does', () => {
  // vshTablePrint: the dashed line is sum(column width + 3) long (2+8+7 + 9 = 26)
  assert.equal(
    formatTable(['Id', 'Name', 'State'], [['1', 'fedora28', 'running'], ['2', 'rhel7.5', 'running']]),
    ' Id   Name       State\n' + '-'.repeat(26) + '\n' + ' 1    fedora28   running\n' + ' 2    rhel7.5    running\n',
  );
  assert.equal(formatTable(['Id', 'Name'], [['1', 'a']], false), ' 1   a\n');
});

test('virsh list: inactive domains have "-" as id and come after the running ones', () => {
  const base = { uuid: 'u', reason: 0, persistent: true, checkpoints: 0, hasBackupJob: false };
  const text = formatDomainList([
    { ...base, name: 'zeta', id: -1, state: DomainState.SHUTOFF },
    { ...base, name: 'beta', id: 7, state: DomainState.RUNNING },
    { ...base, name: 'alpha', id: -1, state: DomainState.SHUTOFF },
  ]);
  assert.equal(text, ' Id   Name    State\n' + '------------------------\n' + ' 7    beta    running\n' + ' -    alpha   shut off\n' + ' -    zeta    shut off\n');
});

test('formatTree matches vshTreePrint', () => {
  const items = [
    { name: 'a', parent: null },
    { name: 'b', parent: 'a' },
    { name: 'c', parent: 'b' },
    { name: 'd', parent: 'a' },
  ];
  assert.equal(formatTree(items, 0), 'a\n' + '  |\n' + '  +- b\n' + '  |   |\n' + '  |   +- c\n' + '  |     \n' + '  +- d\n' + '    \n');
  assert.equal(formatTree([{ name: 'solo', parent: null }], 0), 'solo\n\n');
});

test('checkpoint table: Parent column on request, Inconsistent column only when one is', () => {
  const t0 = 1_700_000_000;
  const rows = [
    { name: 'b', parent: 'a', creationTime: t0 + 60, inconsistent: null },
    { name: 'a', parent: null, creationTime: t0, inconsistent: null },
  ];
  const sorted = sortByName(rows);
  const plain = formatCheckpointTable(sorted, true);
  assert.match(plain, /^ Name {3}Creation Time {15}Parent\n-+\n a {6}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} {3}\n b /);
  assert.ok(!plain.includes('Inconsistent'));
  const marked = formatCheckpointTable([{ ...rows[1]!, inconsistent: 'bitmap missing' }], false);
  assert.match(marked, /^ Name {3}Creation Time +Inconsistent\n/);
  assert.match(marked, /bitmap missing\n$/);
});

test('formatLocalTime is strftime %Y-%m-%d %H:%M:%S %z in local time', () => {
  const s = formatLocalTime(1_700_000_000);
  const d = new Date(1_700_000_000_000);
  assert.match(s, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}$/);
  assert.equal(s.slice(11, 13), String(d.getHours()).padStart(2, '0'));
  assert.match(formatTimestamp(d), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$/);
});

test('parseDiskspec: virsh syntax, ",," escapes, errors in virsh words', () => {
  assert.deepEqual(parseDiskspec('vda'), { name: 'vda', checkpoint: null, bitmap: null });
  assert.deepEqual(parseDiskspec('vda,checkpoint=bitmap,bitmap=b1'), { name: 'vda', checkpoint: 'bitmap', bitmap: 'b1' });
  assert.deepEqual(parseDiskspec('/a,,b.img,checkpoint=no'), { name: '/a,b.img', checkpoint: 'no', bitmap: null });
  for (const bad of ['', 'vda,foo=1', 'vda,checkpoint=no,checkpoint=bitmap']) {
    assert.throws(() => parseDiskspec(bad), (e) => isVirError(e) && e.message === `unable to parse diskspec: ${bad}`);
  }
});

test('checkpointCreateAsXml builds what virsh builds', () => {
  assert.equal(checkpointCreateAsXml({ diskspecs: [] }), '<domaincheckpoint>\n</domaincheckpoint>\n');
  assert.equal(
    checkpointCreateAsXml({ name: 'c<1>', description: 'd', diskspecs: ['sda,checkpoint=bitmap,bitmap=x', 'sdb,checkpoint=no'] }),
    '<domaincheckpoint>\n  <name>c&lt;1&gt;</name>\n  <description>d</description>\n  <disks>\n' +
      "    <disk name='sda' checkpoint='bitmap' bitmap='x'/>\n    <disk name='sdb' checkpoint='no'/>\n  </disks>\n</domaincheckpoint>\n",
  );
});

test('domjobinfo layouts: human and --rawstats', () => {
  assert.equal(formatJobStats({ type: JobType.NONE }), 'Job type:         None        \n');
  const s = {
    type: JobType.UNBOUNDED,
    operation: JobOperation.BACKUP,
    id: 3,
    time_elapsed: 1500,
    disk_total: 64 * 1024 * 1024,
    disk_processed: 16 * 1024 * 1024,
    disk_remaining: 48 * 1024 * 1024,
  };
  assert.equal(
    formatJobStats(s),
    'Job type:         Unbounded   \n' +
      'Operation:        Backup      \n' +
      'Job ID:           3           \n' +
      'Time elapsed:     1500         ms\n' +
      'File processed:   16.000 MiB\n' +
      'File remaining:   48.000 MiB\n' +
      'File total:       64.000 MiB\n',
  );
  assert.equal(
    formatRawJobStats({ ...s, type: JobType.FAILED, success: false, errmsg: 'boom' }),
    'Job type: 4\n\noperation: 9\ntime_elapsed: 1500\ndisk_total: 67108864\ndisk_processed: 16777216\ndisk_remaining: 50331648\n' +
      'success: no\nerrmsg: boom\nid: 3\n',
  );
  assert.match(formatJobStats({ type: JobType.FAILED, operation: 9, errmsg: 'boom' }), /Error message: {4}boom\n$/);
});

test('prettyCapacity picks the unit as vshPrettyCapacity', () => {
  assert.deepEqual(prettyCapacity(1023), { value: 1023, unit: 'B' });
  assert.deepEqual(prettyCapacity(1024), { value: 1, unit: 'KiB' });
  assert.equal(formatCapacity(1536 * 1024), '1.500 MiB');
  assert.equal(formatCapacity(3 * 1024 ** 3), '3.000 GiB');
});

test('blockjob --info line and progress percentages', () => {
  assert.equal(formatBlockJobInfo(BlockJobType.BACKUP, 42, 100), 'Backup: [ 42 %]\n');
  assert.equal(formatBlockJobInfo(BlockJobType.BACKUP, 100, 100), 'Backup: [100 %]\n');
  assert.equal(formatBlockJobInfo(BlockJobType.BACKUP, 0, 0), 'Backup: [100 %]\n');
  assert.equal(percent(1, 3), 33);
  assert.equal(percent(0, 0), 0);
});

test('event lines as virsh prints them', () => {
  const domain = { name: 'vm1', uuid: 'u' };
  assert.equal(formatEvent({ type: 'lifecycle', domain, event: 'started', detail: 'booted' }), "event 'lifecycle' for domain 'vm1': Started Booted\n");
  assert.equal(
    formatEvent({ type: 'block-job', domain, jobId: 1, disk: 'sda', path: '/i/a.qcow2', blockJobType: BlockJobType.BACKUP, status: BlockJobStatus.COMPLETED }),
    "event 'block-job' for domain 'vm1': Backup for /i/a.qcow2 completed\n",
  );
  assert.equal(
    formatEvent({ type: 'job-completed', domain, jobId: 1, stats: { type: 3, operation: 9, time_elapsed: 5, success: true } }),
    "event 'job-completed' for domain 'vm1':\n\toperation: 9\n\ttime_elapsed: 5\n\tsuccess: yes\n",
  );
  // virsh's two lines of one I/O error: io-error without the reason, io-error-reason with it
  const io = { type: 'io-error', domain, disk: 'vda', srcPath: '/i/a.qcow2', devAlias: 'virtio-disk0', action: 1, reason: 'enospc' } as const;
  assert.equal(formatEvent(io), "event 'io-error' for domain 'vm1': /i/a.qcow2 (virtio-disk0) pause\n");
  assert.equal(formatEvent(io, 'io-error-reason'), "event 'io-error-reason' for domain 'vm1': /i/a.qcow2 (virtio-disk0) pause due to enospc\n");
  assert.equal(formatEvent({ ...io, action: 2, reason: '' }, 'io-error-reason'), "event 'io-error-reason' for domain 'vm1': /i/a.qcow2 (virtio-disk0) report due to \n");
  assert.equal(formatEvent({ ...io, action: 0 }), "event 'io-error' for domain 'vm1': /i/a.qcow2 (virtio-disk0) none\n");
});

test('domblklist reads disks in order, "-" for an empty drive', () => {
  const xml =
    "<domain><name>x</name><devices><disk type='file' device='disk'><source file='/a.qcow2'/><target dev='sda'/></disk>" +
    "<disk type='file' device='cdrom'><target dev='sdb'/></disk></devices></domain>";
  const rows = domainDisks(xml);
  assert.equal(formatDiskList(rows, false), ' Target   Source\n' + '-'.repeat(20) + '\n' + ' sda      /a.qcow2\n' + ' sdb      -\n');
  assert.match(formatDiskList(rows, true), /^ Type {3}Device {3}Target {3}Source\n/);
  assert.equal(memoryKiB(parseXml("<memory unit='MiB'>128</memory>")), 131072);
  assert.equal(memoryKiB(parseXml('<memory>4096</memory>')), 4096);
});

test('backupDisks and the plain progress lines', () => {
  assert.deepEqual(
    backupDisks("<domainbackup><disks><disk name='sda' backup='yes'/><disk name='sdb' backup='no'/><disk name='sdc'/></disks></domainbackup>"),
    ['sda', 'sdc'],
  );
  let text = '';
  const view = new LineProgress((s) => (text += s));
  const MiB = 1024 * 1024;
  view.update([{ disk: 'sda', processed: 16 * MiB, total: 64 * MiB, state: 'running' }]);
  view.update([{ disk: 'sda', processed: 16 * MiB, total: 64 * MiB, state: 'running' }]);
  view.update([{ disk: 'sda', processed: 64 * MiB, total: 64 * MiB, state: 'completed' }]);
  assert.equal(text, 'sda: 25% (16.0/64.0 MiB)\nsda: completed\n');
});

test('BarProgress draws one cli-progress bar per disk on a terminal', async () => {
  const { BarProgress } = await import('../../src/cli/progress.js');
  let text = '';
  const tty = {
    isTTY: true,
    columns: 120,
    write: (s: string) => ((text += s), true),
    cursorTo: () => true,
    moveCursor: () => true,
    clearLine: () => true,
    clearScreenDown: () => true,
    on: () => tty,
    removeListener: () => tty,
  };
  const view = new BarProgress(tty as unknown as NodeJS.WriteStream);
  const MiB = 1024 * 1024;
  view.update([
    { disk: 'sda', processed: 32 * MiB, total: 64 * MiB, state: 'running' },
    { disk: 'sdb', processed: 64 * MiB, total: 64 * MiB, state: 'completed' },
  ]);
  view.stop();
  assert.match(text, /sda \[[^\]]+\] 50% \| 32\.0\/64\.0 MiB \| running/);
  assert.match(text, /sdb \[[^\]]+\] 100% \| 64\.0\/64\.0 MiB \| completed/);
});
