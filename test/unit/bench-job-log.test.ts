// bench/scale.ts measures from QEMU's job timestamps in virtbackd's JSON log:
// the parser picks exactly the JOB_STATUS_CHANGE lines of one status.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JOB_STATUS_MSG, statusTimes } from '../../bench/job-log.js';

const line = (fields: Record<string, unknown>): string =>
  JSON.stringify({ level: 'debug', time: '2026-12-05T21:00:00.000Z', pid: 42, ...fields });

const sample = [
  line({ msg: 'virtbackd ready', driver: 'qemu:///session' }),
  line({ domain: 'vm-a', job: 'backup-vda-libvirt-1-format', status: 'running', qemuTime: 1764968400000.5, msg: JOB_STATUS_MSG }),
  line({ domain: 'vm-a', job: 'backup-vda-libvirt-1-format', status: 'concluded', qemuTime: 1764968401234.567, msg: JOB_STATUS_MSG }),
  line({ domain: 'vm-a', job: 'backup-vdb-libvirt-2-format', status: 'concluded', qemuTime: 1764968401240.001, msg: JOB_STATUS_MSG }),
  line({ domain: 'vm-b', job: 'backup-vda-libvirt-1-format', status: 'null', qemuTime: 1764968402000.25, msg: JOB_STATUS_MSG }),
  // the same job id in a later round: the later line wins
  line({ domain: 'vm-a', job: 'backup-vdb-libvirt-2-format', status: 'concluded', qemuTime: 1764968500000.125, msg: JOB_STATUS_MSG }),
  // another message that mentions the msg text in a field, and a line cut short
  line({ msg: 'something else', note: JOB_STATUS_MSG, status: 'concluded', domain: 'vm-c', job: 'x', qemuTime: 1 }),
  `{"level":"debug","msg":"${JOB_STATUS_MSG}","domain":"vm-c","job":"backup-vda`,
  '',
].join('\n');

test('concluded times per domain and job, from JSON lines only', () => {
  const got = statusTimes(sample, 'concluded');
  assert.deepEqual(
    got,
    new Map([
      [
        'vm-a',
        new Map([
          ['backup-vda-libvirt-1-format', 1764968401234.567],
          ['backup-vdb-libvirt-2-format', 1764968500000.125],
        ]),
      ],
    ]),
  );
});

test('another status; a log without such lines gives nothing', () => {
  assert.deepEqual(statusTimes(sample, 'null'), new Map([['vm-b', new Map([['backup-vda-libvirt-1-format', 1764968402000.25]])]]));
  assert.deepEqual(statusTimes(sample, 'aborting'), new Map());
  assert.deepEqual(statusTimes('', 'concluded'), new Map());
});

test('a qemuTime logged as a numeric string is read too; a missing one is skipped', () => {
  const log = [
    line({ msg: JOB_STATUS_MSG, domain: 'u-1', job: 'j', status: 'concluded', qemuTime: '1764968401234.567' }),
    line({ msg: JOB_STATUS_MSG, domain: 'u-2', job: 'j', status: 'concluded' }),
  ].join('\n');
  assert.deepEqual(statusTimes(log, 'concluded'), new Map([['u-1', new Map([['j', 1764968401234.567]])]]));
});
