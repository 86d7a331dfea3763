import assert from 'node:assert/strict';
import test from 'node:test';
import { backingFileName, BACKUP_PERF, planBackup, type PlanDiskInput } from '../../src/qemu/backup-plan.js';
import { applyQemuJobs, previousBackup, jobStats, decideEnd, type BackupJobRecord, type FinishedTarget } from '../../src/qemu/backup-job.js';
import { alignBackupDisks, applyBackupDefaults, parseBackupXML } from '../../src/xml/backup.js';
import type { TransactionAction } from '../../src/qemu/qmp/commands.js';

const domain = {
  disks: [
    { target: 'sda', source: '/v/a.qcow2', readonly: false, type: 'file' },
    { target: 'sdb', source: '/v/b.qcow2', readonly: false, type: 'file' },
  ],
};

function disk(target: string, nodeIndex: number, extra: Partial<PlanDiskInput> = {}): PlanDiskInput {
  return {
    target,
    diskNode: target === 'sda' ? 'libvirt-2-format' : 'libvirt-1-format',
    qdevId: target === 'sda' ? 'scsi0-0-0-0' : 'scsi0-0-0-1',
    diskPath: `/v/${target === 'sda' ? 'a' : 'b'}.qcow2`,
    diskFormat: 'qcow2',
    virtualSize: 64 << 20,
    nodeIndex,
    base: null,
    previous: null,
    ...extra,
  };
}

function aligned(xml: string, suffix = 'c2') {
  const def = parseBackupXML(xml);
  alignBackupDisks(def, domain, suffix);
  applyBackupDefaults(def);
  return def;
}

const cpAdd: TransactionAction[] = [
  { type: 'block-dirty-bitmap-add', data: { node: 'libvirt-2-format', name: 'c2', persistent: true, disabled: false } },
];

test('push full: nodes, create job, backing null, one transaction with the checkpoint first', () => {
  const plan = planBackup({ def: aligned('<domainbackup/>'), disks: [disk('sda', 3), disk('sdb', 4)], checkpointActions: cpAdd, reuseExternal: false, port: null });
  assert.equal(plan.nbdServer, null);
  const a = plan.disks[0]!;
  assert.equal(a.path, '/v/a.qcow2.c2');
  assert.equal(a.jobId, 'backup-sda-libvirt-2-format');
  assert.deepEqual(a.addStorage, { driver: 'file', filename: '/v/a.qcow2.c2', 'node-name': 'libvirt-3-storage', 'auto-read-only': true, discard: 'unmap' });
  assert.deepEqual(a.create, { jobId: 'create-libvirt-3-format', options: { driver: 'qcow2', file: 'libvirt-3-storage', size: 64 << 20, 'cluster-size': 65536 } });
  assert.deepEqual(a.addFormat, { driver: 'qcow2', 'node-name': 'libvirt-3-format', 'read-only': false, file: 'libvirt-3-storage', backing: null });
  assert.equal(a.tempBitmap, null);
  assert.deepEqual(plan.transaction.map((x) => x.type), ['block-dirty-bitmap-add', 'blockdev-backup', 'blockdev-backup']);
  assert.deepEqual(plan.transaction[1]!.data, {
    device: 'libvirt-2-format', 'job-id': 'backup-sda-libvirt-2-format', target: 'libvirt-3-format', sync: 'full',
    'auto-finalize': true, 'auto-dismiss': false, 'x-perf': BACKUP_PERF,
  });
});

test('push incremental: disabled temp bitmap merged from the checkpoint, sync against the temp bitmap, backing = previous backup', () => {
  const plan = planBackup({
    def: aligned("<domainbackup><incremental>c1</incremental><disks><disk name='sda'/></disks></domainbackup>"),
    disks: [disk('sda', 5, { base: { bitmap: 'c1', granularity: 65536 }, previous: { path: '/v/a.qcow2.c1', format: 'qcow2' } })],
    checkpointActions: [], reuseExternal: false, port: null, perf: null,
  });
  const a = plan.disks[0]!;
  assert.equal(a.backingFile, 'a.qcow2.c1', 'relative: same folder');
  assert.equal(a.create!.options['backing-file'], 'a.qcow2.c1');
  assert.equal((a.addFormat as { backing: string }).backing, 'libvirt-2-format');
  assert.deepEqual(plan.transaction, [
    { type: 'block-dirty-bitmap-add', data: { node: 'libvirt-2-format', name: 'backup-sda', persistent: false, disabled: true, granularity: 65536 } },
    { type: 'block-dirty-bitmap-merge', data: { node: 'libvirt-2-format', target: 'backup-sda', bitmaps: [{ node: 'libvirt-2-format', name: 'c1' }] } },
    { type: 'blockdev-backup', data: { device: 'libvirt-2-format', 'job-id': 'backup-sda-libvirt-2-format', target: 'libvirt-5-format', sync: 'incremental', bitmap: 'backup-sda', 'auto-finalize': true, 'auto-dismiss': false } },
  ]);
  // no previous backup known: the live disk, as libvirt
  const p2 = planBackup({
    def: aligned("<domainbackup><incremental>c1</incremental><disks><disk name='sda' type='file'><target file='/w/x.qcow2'/></disk></disks></domainbackup>"),
    disks: [disk('sda', 5, { base: { bitmap: 'c1', granularity: 65536 } })], checkpointActions: [], reuseExternal: false, port: null,
  });
  assert.equal(p2.disks[0]!.backingFile, '/v/a.qcow2');
});

test('push raw and REUSE_EXTERNAL: no format step', () => {
  const raw = planBackup({
    def: aligned("<domainbackup><disks><disk name='sda' type='file'><driver type='raw'/><target file='/w/a.raw'/></disk></disks></domainbackup>"),
    disks: [disk('sda', 3)], checkpointActions: [], reuseExternal: false, port: null,
  });
  assert.equal(raw.disks[0]!.create, null);
  assert.equal(raw.disks[0]!.createFile, true);
  assert.deepEqual(raw.disks[0]!.addFormat, { driver: 'raw', 'node-name': 'libvirt-3-format', 'read-only': false, file: 'libvirt-3-storage' });
  const reuse = planBackup({ def: aligned('<domainbackup/>'), disks: [disk('sda', 3), disk('sdb', 4)], checkpointActions: [], reuseExternal: true, port: null });
  assert.deepEqual(reuse.disks.map((d) => [d.createFile, d.create]), [[false, null], [false, null]]);
});

test('pull incremental: scratch backed by the disk, copy-before-write filter onto it, snapshot-access exported with the bitmap (merged after the instant)', () => {
  const def = aligned("<domainbackup mode='pull'><incremental>c1</incremental><server name='localhost'/><disks><disk name='sda' exportname='e' exportbitmap='bm'/></disks></domainbackup>");
  const plan = planBackup({ def, disks: [disk('sda', 7, { base: { bitmap: 'c1', granularity: 131072 } })], checkpointActions: cpAdd, reuseExternal: false, port: 10900 });
  assert.deepEqual(plan.nbdServer, { addr: { type: 'inet', data: { host: 'localhost', port: '10900' } } });
  const a = plan.disks[0]!;
  assert.equal(a.create!.options['backing-file'], 'a.qcow2', 'scratch next to the disk: relative');
  assert.equal((a.addFormat as { backing: string }).backing, 'libvirt-2-format');
  assert.deepEqual(a.snapshot, {
    device: '/machine/peripheral/scsi0-0-0-0',
    cbwNode: 'virtback-7-cbw',
    snapNode: 'virtback-7-snapshot',
    addCbw: {
      driver: 'copy-before-write', 'node-name': 'virtback-7-cbw', file: 'libvirt-2-format', target: 'libvirt-7-format',
      'on-cbw-error': 'break-snapshot', 'cbw-timeout': 60,
    },
    addSnap: { driver: 'snapshot-access', 'node-name': 'virtback-7-snapshot', file: 'virtback-7-cbw' },
  });
  assert.deepEqual(a.export, { type: 'nbd', id: 'virtback-nbd-libvirt-7-format', 'node-name': 'virtback-7-snapshot', writable: false, name: 'e', bitmaps: ['bm'] });
  // no QEMU job: the filter holds the instant; the checkpoint's bitmap is made before it, the export's after
  assert.deepEqual(plan.transaction, [cpAdd[0]]);
  assert.deepEqual(plan.afterInstant, [
    { type: 'block-dirty-bitmap-add', data: { node: 'virtback-7-snapshot', name: 'bm', persistent: false, disabled: true, granularity: 131072 } },
    { type: 'block-dirty-bitmap-merge', data: { node: 'virtback-7-snapshot', target: 'bm', bitmaps: [{ node: 'libvirt-2-format', name: 'c1' }] } },
  ]);
  assert.equal(plan.pauseAtInstant, false, 'one disk: no pause');
});

test('pull over unix; tcp without a port; no disks', () => {
  const unix = planBackup({ def: aligned("<domainbackup mode='pull'><server transport='unix' socket='/r/s'/></domainbackup>"), disks: [disk('sda', 3), disk('sdb', 4)], checkpointActions: [], reuseExternal: false, port: null });
  assert.deepEqual(unix.nbdServer, { addr: { type: 'unix', data: { path: '/r/s' } } });
  assert.deepEqual(unix.disks.map((d) => d.export!.name), ['sda', 'sdb']);
  assert.equal(unix.pauseAtInstant, true, 'two disks move onto their filters at one instant');
  assert.deepEqual(unix.transaction, [], 'no checkpoint, no QEMU job: nothing in a transaction');
  assert.throws(() => planBackup({ def: aligned("<domainbackup mode='pull'><server name='localhost'/></domainbackup>"), disks: [disk('sda', 3), disk('sdb', 4)], checkpointActions: [], reuseExternal: false, port: null }),
    { code: 84, message: '<domainbackup> must specify TCP port for now' });
  assert.throws(() => planBackup({ def: aligned("<domainbackup><disks><disk name='sda' backup='no'/><disk name='sdb' backup='no'/></disks></domainbackup>"), disks: [], checkpointActions: [], reuseExternal: false, port: null }),
    { code: 67, message: 'no disks selected for backup' });
});

test('backing file names, previous backup lookup, end decision, stats', () => {
  assert.equal(backingFileName('/a/t.qcow2', '/a/p.qcow2'), 'p.qcow2');
  assert.equal(backingFileName('/a/t.qcow2', '/b/p.qcow2'), '/b/p.qcow2');
  const f = (path: string, checkpoint: string | null, disk = 'sda'): FinishedTarget => ({ disk, path, format: 'qcow2', checkpoint, incremental: null, jobId: 1, time: 0 });
  const finished = [f('/f1', 'c1'), f('/i1', 'c2'), f('/f1b', 'c1'), f('/x', 'c1', 'sdb')];
  assert.equal(previousBackup(finished, 'sda', 'c1', () => true)?.path, '/f1b');
  assert.equal(previousBackup(finished, 'sda', 'c1', (p) => p !== '/f1b')?.path, '/f1');
  assert.equal(previousBackup(finished, 'sda', 'c3', () => true), null);

  const rec = (mode: 'push' | 'pull', states: ('complete' | 'cancelled' | 'failed' | 'running')[]): BackupJobRecord => ({
    id: 3, mode, phase: 'running', startedAt: 1000, endedAt: null, xml: '', checkpoint: null, steps: [], stopping: null, end: null, errmsg: null,
    disks: states.map((state, i) => ({
      target: `sd${i}`, source: '', diskNode: 'n', jobId: `j${i}`, path: '', format: 'qcow2', formatNode: '', storageNode: '', incremental: null,
      backingFile: null, virtualSize: 100, createdFile: true, state, current: 40, total: 100, error: state === 'failed' ? 'EIO' : null,
    })),
  });
  assert.equal(decideEnd(rec('push', ['complete', 'complete'])), 'completed');
  assert.equal(decideEnd(rec('push', ['complete', 'cancelled'])), 'cancelled');
  assert.equal(decideEnd(rec('pull', ['cancelled', 'cancelled'])), 'completed', 'a cancelled pull is a success');
  assert.equal(decideEnd(rec('push', ['cancelled', 'failed'])), 'failed');
  const live = jobStats(rec('push', ['running', 'complete']), 1500, [{ id: 'j0', type: 'backup', status: 'running', 'current-progress': 70, 'total-progress': 100 }]);
  assert.deepEqual(live, { type: 2, operation: 9, id: 3, time_elapsed: 500, disk_total: 200, disk_processed: 110, disk_remaining: 90 });
  const pull = jobStats(rec('pull', ['running']), 1200);
  assert.deepEqual(pull, { type: 2, operation: 9, id: 3, time_elapsed: 200, disk_temp_used: 40, disk_temp_total: 100 });
  // QEMU's jobs: a concluded one gives its outcome, a vanished push job fails; a pull's frozen view has none and runs on
  const both = rec('push', ['running', 'running']);
  applyQemuJobs(both, [{ id: 'j0', type: 'backup', status: 'concluded', 'current-progress': 100, 'total-progress': 100 }]);
  assert.deepEqual(both.disks.map((d) => [d.state, d.error]), [['complete', null], ['failed', "QEMU job 'j1' vanished"]]);
  const frozen = rec('pull', ['running', 'running']);
  frozen.disks[0]!.snapshot = { cbwNode: 'virtback-1-cbw', snapNode: 'virtback-1-snapshot' };
  frozen.disks[1]!.snapshot = { cbwNode: 'virtback-2-cbw', snapNode: 'virtback-2-snapshot' };
  frozen.disks[1]!.state = 'cancelling';
  applyQemuJobs(frozen, []);
  assert.deepEqual(frozen.disks.map((d) => d.state), ['running', 'cancelled']);
  const done = { ...rec('push', ['failed']), phase: 'done' as const, end: 'failed' as const, errmsg: 'EIO', endedAt: 3000 };
  assert.deepEqual(jobStats(done, 9999), { type: 4, operation: 9, id: 3, time_elapsed: 2000, disk_total: 100, disk_processed: 40, disk_remaining: 60, success: false, errmsg: 'EIO' });
});

test('block-device targets and scratch: host_device, never created, raw shows the disk size, absolute backing file', () => {
  const raw = planBackup({
    def: aligned("<domainbackup><disks><disk name='sda' type='block'><driver type='raw'/><target dev='/dev/vg/full'/></disk><disk name='sdb' backup='no'/></disks></domainbackup>"),
    disks: [disk('sda', 3, { storeSize: 68 << 20 })], checkpointActions: [], reuseExternal: false, port: null,
  }).disks[0]!;
  assert.equal(raw.createFile, false);
  assert.deepEqual(raw.addStorage, { driver: 'host_device', filename: '/dev/vg/full', 'node-name': 'libvirt-3-storage', 'auto-read-only': true, discard: 'unmap' });
  assert.deepEqual(raw.addFormat, { driver: 'raw', 'node-name': 'libvirt-3-format', 'read-only': false, file: 'libvirt-3-storage', size: 64 << 20 });
  assert.equal(raw.create, null);

  const incr = planBackup({
    def: aligned("<domainbackup><incremental>c1</incremental><disks><disk name='sda' type='block'><target dev='/dev/vg/incr'/></disk><disk name='sdb' backup='no'/></disks></domainbackup>"),
    disks: [disk('sda', 4, { base: { bitmap: 'c1', granularity: 65536 }, previous: { path: '/dev/vg/full', format: 'raw' }, storeSize: 72 << 20 })],
    checkpointActions: [], reuseExternal: false, port: null,
  }).disks[0]!;
  assert.equal(incr.createFile, false);
  assert.equal(incr.backingFile, '/dev/vg/full', 'not relative to /dev/vg');
  assert.deepEqual(incr.create?.options, {
    driver: 'qcow2', file: 'libvirt-4-storage', size: 64 << 20, 'cluster-size': 65536, 'backing-file': '/dev/vg/full', 'backing-fmt': 'raw',
  });

  const pull = planBackup({
    def: aligned("<domainbackup mode='pull'><server transport='unix' socket='/run/s'/><disks><disk name='sda' type='block'><scratch dev='/dev/vg/s'/></disk><disk name='sdb' backup='no'/></disks></domainbackup>"),
    disks: [disk('sda', 5, { storeSize: 72 << 20 })], checkpointActions: [], reuseExternal: false, port: null,
  }).disks[0]!;
  assert.equal(pull.createFile, false);
  assert.equal(pull.addStorage.driver, 'host_device');
  assert.equal(pull.backingFile, '/v/a.qcow2');
});
