import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, VirError, virErr } from '../../src/errors.js';
import { BackupBeginFlags } from '../../src/flags.js';
import { decode, encode } from '../../src/libvirt/xdr.js';
import { remoteError, remoteEvents, TypedParamType } from '../../src/libvirt/procedures.js';
import {
  backupBeginFlagsFromWire,
  backupBeginFlagsToWire,
  bytesToUuid,
  fromWireError,
  jobStatsToJobInfo,
  jobStatsToParams,
  libvirtMessage,
  lifecycleFromWire,
  lifecycleToWire,
  paramsToJobStats,
  toWireError,
  uuidToBytes,
} from '../../src/libvirt/semantics.js';

test('errors carry libvirt code, domain and wording both ways', () => {
  const w = toWireError(virErr('NO_DOMAIN', 'QEMU', "no domain with matching name 'x'"));
  assert.equal(w.code, 42);
  assert.equal(w.domain, 10);
  assert.equal(w.message, "Domain not found: no domain with matching name 'x'");
  assert.equal(w.str1, 'Domain not found: %s');
  assert.equal(w.str2, "no domain with matching name 'x'");
  assert.equal(w.level, 2);
  // a message that already has the prefix is not prefixed twice
  assert.equal(libvirtMessage(ErrorCode.OPERATION_INVALID, 'Requested operation is not valid: no job'), 'Requested operation is not valid: no job');
  assert.equal(libvirtMessage(ErrorCode.RPC, 'unknown procedure: 9999'), 'unknown procedure: 9999');
  const back = fromWireError(decode(remoteError, encode(remoteError, w)));
  assert.ok(back instanceof VirError);
  assert.deepEqual(back.toJSON(), { code: 42, domain: 10, message: "Domain not found: no domain with matching name 'x'" });
});

test('job stats become typed parameters with the types libvirt clients read them with, and back', () => {
  const stats = { type: 3, operation: 9, id: 7, time_elapsed: 1234, disk_total: 2 ** 33, disk_processed: 2 ** 33, disk_remaining: 0, success: false, errmsg: 'Operation canceled' };
  const params = jobStatsToParams(stats);
  assert.deepEqual(params.map((p) => [p.field, p.value.type]), [
    ['operation', TypedParamType.INT],
    ['time_elapsed', TypedParamType.ULLONG],
    ['disk_total', TypedParamType.ULLONG],
    ['disk_processed', TypedParamType.ULLONG],
    ['disk_remaining', TypedParamType.ULLONG],
    ['success', TypedParamType.BOOLEAN],
    ['errmsg', TypedParamType.STRING],
  ]);
  const { id, ...withoutId } = stats; // the job id is ours, not a libvirt field
  assert.equal(id, 7);
  assert.deepEqual(paramsToJobStats(3, params), withoutId);
  const body = { callbackID: 4, dom: { name: 'vm', uuid: uuidToBytes('2aa8cd4f-b7f1-4d6a-bcdf-8e036368adf6'), id: 3 }, params };
  assert.deepEqual(decode(remoteEvents.jobCompleted.body, encode(remoteEvents.jobCompleted.body, body)), body);
  const info = jobStatsToJobInfo({ type: 2, operation: 9, time_elapsed: 10, disk_temp_total: 100, disk_temp_used: 40 });
  assert.deepEqual([info.type, info.dataTotal, info.dataProcessed, info.dataRemaining], [2, 100n, 40n, 60n]);
});

test('lifecycle events, UUIDs and the moved backup-begin flag map both ways', () => {
  assert.deepEqual(lifecycleToWire({ event: 'stopped', detail: 'destroyed' }), { event: 5, detail: 1 });
  assert.deepEqual(lifecycleToWire({ event: 'started', detail: 'booted' }), { event: 2, detail: 0 });
  assert.deepEqual(lifecycleFromWire(5, 1), { event: 'stopped', detail: 'destroyed' });
  assert.equal(lifecycleToWire({ event: 'nonsense', detail: 'x' }), null);
  assert.equal(bytesToUuid(uuidToBytes('2AA8CD4FB7F14D6ABCDF8E036368ADF6')), '2aa8cd4f-b7f1-4d6a-bcdf-8e036368adf6');
  assert.throws(() => uuidToBytes('not-a-uuid'), (e: VirError) => e.code === ErrorCode.INVALID_ARG);
  assert.equal(backupBeginFlagsFromWire(1), BackupBeginFlags.REUSE_EXTERNAL);
  assert.equal(backupBeginFlagsFromWire(0), 0);
  assert.throws(() => backupBeginFlagsFromWire(2), (e: VirError) => e.code === ErrorCode.INVALID_ARG && /0x2/.test(e.message));
  assert.equal(backupBeginFlagsToWire(BackupBeginFlags.REUSE_EXTERNAL | BackupBeginFlags.QUIESCE), 1);
});
