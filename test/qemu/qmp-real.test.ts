// The QMP client against a real QEMU 7.2 (TCG, no guest code: started with -S).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  qmpErrorToVirError,
  type QmpEvent,
} from '../../src/qemu/qmp/client.js';
import { ErrorCode, ErrorDomain } from '../../src/errors.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

interface Vm {
  dir: string;
  proc: ChildProcess;
  qmp: QmpClient;
}

function exited(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => proc.once('exit', () => resolve()));
}

/** A QEMU with one 64 MiB qcow2 disk (nodes disk0-storage/disk0-format, IDE device sda). */
async function startQemu(t: TestContext): Promise<Vm> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-qmp-real-'));
  let proc: ChildProcess | undefined;
  let qmp: QmpClient | undefined;
  t.after(async () => {
    await qmp?.close();
    if (proc) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited(proc);
    }
    await fs.rm(dir, { recursive: true, force: true });
  });
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'disk.qcow2'), '64M']);
  const sock = path.join(dir, 'qmp.sock');
  const log = await fs.open(path.join(dir, 'qemu.log'), 'w');
  try {
    proc = spawn(
      'qemu-system-x86_64',
      [
        '-machine', 'q35', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-S',
        '-blockdev', `driver=file,filename=${path.join(dir, 'disk.qcow2')},node-name=disk0-storage`,
        '-blockdev', 'driver=qcow2,file=disk0-storage,node-name=disk0-format',
        '-device', 'ide-hd,drive=disk0-format,bus=ide.0,id=sda',
        '-qmp', `unix:${sock},server=on,wait=off`,
      ],
      { stdio: ['ignore', log.fd, log.fd] },
    );
  } finally {
    await log.close();
  }
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) {
      throw new Error(`qemu exited: ${await fs.readFile(path.join(dir, 'qemu.log'), 'utf8')}`);
    }
    try {
      qmp = await QmpClient.connect(sock, { connectTimeoutMs: 5000 });
      break;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return { dir, proc, qmp };
}

test('real QEMU: greeting, query-named-block-nodes, error replies, HMP', async (t) => {
  const { dir, qmp } = await startQemu(t);
  assert.equal(qmp.greeting.QMP.version.qemu.major, 7);
  assert.equal(qmp.greeting.QMP.version.qemu.minor, 2);

  const nodes = await qmp.execute('query-named-block-nodes', { flat: true });
  const fmt = nodes.find((n) => n['node-name'] === 'disk0-format');
  assert.ok(fmt, 'disk0-format listed');
  assert.equal(fmt.drv, 'qcow2');
  assert.equal(fmt.image['virtual-size'], 64 * MiB);
  assert.equal(fmt.file, path.join(dir, 'disk.qcow2'));
  assert.deepEqual(fmt['dirty-bitmaps'] ?? [], []);
  assert.ok(nodes.some((n) => n['node-name'] === 'disk0-storage' && n.drv === 'file'));

  const notFound = await qmp.executeRaw('no-such-command').then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(notFound instanceof QmpCommandError);
  assert.equal(notFound.errorClass, 'CommandNotFound');
  assert.match(notFound.desc, /no-such-command/);

  const generic = await qmp.execute('blockdev-del', { 'node-name': 'nope' }).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(generic instanceof QmpCommandError);
  assert.equal(generic.errorClass, 'GenericError');
  assert.equal(generic.command, 'blockdev-del');
  const v = qmpErrorToVirError(generic);
  assert.equal(v.code, ErrorCode.INTERNAL_ERROR);
  assert.equal(v.domain, ErrorDomain.QEMU);
  assert.ok(v.message.includes(generic.desc), v.message);
  assert.match(v.message, /^unable to execute QEMU command 'blockdev-del': .*nope/);

  const info = await qmp.hmp('info block');
  assert.match(info, /^disk0-format: .*disk\.qcow2 \(qcow2\)/m);
  assert.match(info, /Attached to:\s+sda/);

  // Pipelined: several calls in flight at once, each gets its own answer.
  const [status, jobs, block] = await Promise.all([
    qmp.execute('query-status'),
    qmp.execute('query-jobs'),
    qmp.execute('query-block'),
  ]);
  assert.equal(status.status, 'prelaunch');
  assert.deepEqual(jobs, []);
  assert.equal(block.find((b) => b.qdev?.includes('sda') || b.inserted?.['node-name'] === 'disk0-format')?.inserted?.['node-name'], 'disk0-format');
});

test('real QEMU: transaction bitmap-add + blockdev-backup delivers every job event to an early listener', async (t) => {
  const { dir, qmp } = await startQemu(t);
  // Data to copy, written through the IDE device's BlockBackend.
  assert.equal(await qmp.hmp('qemu-io -d sda "write -P 0xab 1M 2M"'), '');
  const target = path.join(dir, 'target.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', target, '64M']);
  await qmp.execute('blockdev-add', { driver: 'file', filename: target, 'node-name': 'tgt-storage' });
  await qmp.execute('blockdev-add', { driver: 'qcow2', file: 'tgt-storage', 'node-name': 'tgt-format', backing: null });

  const events: QmpEvent[] = [];
  const statusesAtReply: string[] = [];
  qmp.on('*', (ev) => events.push(ev));
  const statuses = (): string[] =>
    events.filter((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'backup0').map((e) => e.data.status);
  const concluded = qmp.waitForEvent((ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data.status === 'concluded', {
    timeoutMs: 30_000,
  });
  await qmp.execute('transaction', {
    actions: [
      { type: 'block-dirty-bitmap-add', data: { node: 'disk0-format', name: 'cp1', persistent: true, disabled: false } },
      {
        type: 'blockdev-backup',
        data: { device: 'disk0-format', 'job-id': 'backup0', target: 'tgt-format', sync: 'full', 'auto-finalize': true, 'auto-dismiss': false },
      },
    ],
  });
  statusesAtReply.push(...statuses());
  await concluded.promise;

  const seen = statuses();
  assert.equal(seen[0], 'created');
  assert.equal(seen[1], 'running');
  assert.equal(seen.at(-1), 'concluded');
  for (const s of ['waiting', 'pending']) assert.ok(seen.includes(s), `saw ${s} in ${seen.join(',')}`);
  // QEMU emits created/running before the transaction's return: they must have been delivered by then.
  assert.ok(statusesAtReply.includes('created'), `at reply: ${statusesAtReply.join(',')}`);
  const completedAt = events.findIndex((e) => e.event === 'BLOCK_JOB_COMPLETED');
  assert.ok(completedAt >= 0);
  const completed = events[completedAt]!;
  assert.deepEqual(
    { device: completed.data.device, type: completed.data.type, len: completed.data.len, error: completed.data.error },
    { device: 'backup0', type: 'backup', len: 64 * MiB, error: undefined },
  );
  assert.ok(completedAt < events.findIndex((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'concluded'));

  const jobs = await qmp.execute('query-jobs');
  assert.deepEqual(
    jobs.map((j) => [j.id, j.type, j.status]),
    [['backup0', 'backup', 'concluded']],
  );
  const fmt = (await qmp.execute('query-named-block-nodes', { flat: true })).find((n) => n['node-name'] === 'disk0-format');
  const bitmap = fmt?.['dirty-bitmaps']?.find((b) => b.name === 'cp1');
  assert.ok(bitmap, 'bitmap cp1 exists');
  assert.equal(bitmap.recording, true);
  assert.equal(bitmap.persistent, true);
  assert.equal(bitmap.busy, false);
  assert.equal(bitmap.granularity, 65536);
  assert.equal(bitmap.count, 0);

  const gone = qmp.waitForEvent((ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data.status === 'null', { timeoutMs: 10_000 });
  await qmp.execute('job-dismiss', { id: 'backup0' });
  assert.equal((await gone.promise).data.id, 'backup0');
  assert.deepEqual(await qmp.execute('query-jobs'), []);

  // The copy holds what the disk held, byte for byte. (The live source cannot be
  // read from outside: QEMU caches its qcow2 metadata until it closes the image.)
  await qmp.execute('blockdev-del', { 'node-name': 'tgt-format' });
  await qmp.execute('blockdev-del', { 'node-name': 'tgt-storage' });
  const raw = path.join(dir, 'target.raw');
  await run('qemu-img', ['convert', '-O', 'raw', target, raw]);
  const expected = Buffer.alloc(64 * MiB);
  expected.fill(0xab, 1 * MiB, 3 * MiB);
  assert.ok((await fs.readFile(raw)).equals(expected), 'target content');
});

test('real QEMU: kill -9 while a call is pending rejects it and fires onClose', async (t) => {
  const { proc, qmp } = await startQemu(t);
  const pid = proc.pid!;
  const closed = new Promise<Error | undefined>((r) => qmp.onClose(r));
  // Freeze QEMU so the call is certainly still pending when it dies.
  process.kill(pid, 'SIGSTOP');
  let settled = false;
  const call = qmp.execute('query-status').finally(() => {
    settled = true;
  });
  call.catch(() => {});
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(settled, false, 'call pending while QEMU is stopped');
  process.kill(pid, 'SIGKILL');
  await assert.rejects(call, (e: unknown) => {
    assert.ok(e instanceof QmpConnectionError);
    assert.match(e.message, /End of file from qemu monitor/);
    return true;
  });
  assert.ok((await closed) instanceof QmpConnectionError);
  assert.equal(qmp.isClosed, true);
  await exited(proc);
  assert.equal(proc.signalCode, 'SIGKILL');
});
