// A restarted virtbackd still counts the room of the push it recovers: a
// push of another domain onto the same (small) filesystem is refused as it
// is without the restart, and the room is free again once the recovered job
// ends — aborted, or found finished at the next start. Before the room was
// saved with the job record, the restarted daemon held nothing for the
// recovered job and let the second push count on the same free bytes.
// Real QEMU, real virtbackd processes, a real tmpfs.

import assert from 'node:assert/strict';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import type { Connect, Domain } from '../../src/api/public.js';
import { ErrorCode } from '../../src/errors.js';
import { JobType } from '../../src/flags.js';
import { QmpClient } from '../../src/qemu/qmp/client.js';
import { refused } from '../helpers/errors.js';
import { canMountTmpfs, makeTestDomain, waitFor, withSmallTmpfs } from '../helpers/qemu-env.js';
import { MiB } from './backup-util.js';
import { hmpWriteVia, makeDaemonEnv, qmp, stopVirtbackd, type DaemonEnv, type JobInfo } from './daemon-util.js';

/** 128 KiB/s: 9 MiB take over a minute, so the push still copies after a restart */
const SPEED_LIMIT = ['--backup-speed-limit', String(128 * 1024)];

test('a push recovered by a restarted daemon keeps its room on the filesystem until its job ends', { skip: canMountTmpfs ? false : 'mounting a tmpfs needs root', timeout: 240_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await withSmallTmpfs(env.dir, 16, (small) => roomAcrossRestarts(env, small));
});

async function roomAcrossRestarts(env: DaemonEnv, small: string): Promise<void> {
  let daemon = await env.start(SPEED_LIMIT);
  let conn = await env.connect();
  const tds = [await makeTestDomain(env.dir, { name: 'first', sizeMiB: 64 }), await makeTestDomain(env.dir, { name: 'second', sizeMiB: 64 })];
  for (const td of tds) {
    const dom = await conn.defineXML(td.xml);
    await dom.create();
    // 9 MiB each (a qcow2 target's bound: ~10.2 MiB): one push fits the 16 MiB tmpfs, both do not
    await hmpWriteVia(dom, td.xml, 'sda', 0x33, 0, 9 * MiB);
  }
  const xml = (i: number): string =>
    `<domainbackup><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${path.join(small, `${i}.qcow2`)}'/></disk></disks></domainbackup>`;
  const lookup = (c: Connect): Promise<Domain[]> => Promise.all(tds.map((td) => c.lookupByName(td.name)));
  const restart = async (sig: NodeJS.Signals): Promise<Domain[]> => {
    await stopVirtbackd(daemon, sig);
    await conn.close().catch(() => {});
    daemon = await env.start(SPEED_LIMIT);
    conn = await env.connect();
    return lookup(conn);
  };
  // the refusal the check gives without a restart (backup-space.test.ts)
  const secondRefused = async (b: Domain, what: string): Promise<void> => {
    await refused(b.backupBegin(xml(1)), ErrorCode.OPERATION_FAILED,
      new RegExp(`not enough free space for the backup of disk 'sda' in '${small}': it may need up to \\d+ bytes, \\d+ are free after \\d+ that running backups may still write`));
    assert.deepEqual((await readdir(small)).sort(), ['0.qcow2'], `${what}: the refused push created nothing`);
    assert.deepEqual(await b.listJobIds(), [], `${what}: no job`);
  };

  let [a, b] = await lookup(conn) as [Domain, Domain];
  const first = await a.backupBegin(xml(0));
  await secondRefused(b, 'before the restart');

  // SIGKILL: the first push runs on in QEMU and is recovered, still copying
  [a, b] = await restart('SIGKILL') as [Domain, Domain];
  assert.deepEqual(await a.listJobIds(), [first], 'the first push is recovered');
  const [job] = await qmp<JobInfo[]>(a, 'query-jobs');
  assert.ok(job?.status === 'running' && job['current-progress'] < job['total-progress'], `still copying: ${JSON.stringify(job)}`);
  await secondRefused(b, 'after the restart');
  // its end frees the room (the aborted target is deleted)
  assert.equal(await a.backupEnd(first, { abort: true }), 0);
  const second = await b.backupBegin(xml(1));
  assert.equal(await b.backupEnd(second, { abort: true }), 0);
  assert.deepEqual(await readdir(small), [], 'the aborted pushes left nothing');

  // a push that finishes while no daemon runs: the next start ends it and must not keep its room
  const again = await a.backupBegin(xml(0));
  const [qemuJob] = await qmp<JobInfo[]>(a, 'query-jobs');
  const status = JSON.parse(await readFile(path.join(env.stateDir, 'status', `${tds[0]!.uuid}.json`), 'utf8')) as { qmpSocket: string };
  await stopVirtbackd(daemon, 'SIGKILL');
  const mon = await QmpClient.connect(status.qmpSocket);
  try {
    await mon.executeRaw('block-job-set-speed', { device: qemuJob!.id, speed: 0 });
    await waitFor(async () => ((await mon.executeRaw('query-jobs')) as JobInfo[]).every((j) => j.status === 'concluded'), 'the push concluded in QEMU', 60_000);
  } finally {
    await mon.close();
  }
  [a, b] = await restart('SIGKILL') as [Domain, Domain];
  const ended = await a.getJobStats({ completed: true, keepCompleted: true });
  assert.equal(ended.type, JobType.COMPLETED, `ended at the start: ${JSON.stringify(ended)}`);
  assert.equal(await a.backupEnd(again), 1);
  // the backup is moved away: its bytes are free, and no room is held for its job any more
  await rm(path.join(small, '0.qcow2'));
  await rm(path.join(small, '0.qcow2.manifest.json'), { force: true });
  const last = await b.backupBegin(xml(1));
  assert.equal(await b.backupEnd(last, { abort: true }), 0);
  assert.deepEqual(await readdir(small), []);

  for (const dom of [a, b]) await dom.destroy();
  await conn.close();
  assert.deepEqual(await stopVirtbackd(daemon, 'SIGTERM'), { code: 0, signal: null });
}
