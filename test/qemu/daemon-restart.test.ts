// Restart survival of virtbackd (issue 6) against real QEMU: the daemon is a
// child process, clients use the SDK over its socket.
//
// A push job must still be copying when the daemon goes away: the daemons of
// the push tests run with `--backup-speed-limit`, so every push disk job starts
// rate-limited inside QEMU's own transaction (no race with a job that finishes
// first); the test lifts the limit with block-job-set-speed where it wants a
// job fast. The job that survives the restart is an incremental push over many
// small dirty regions, backed by the full backup taken before, so the chain
// restores the disk as it was at the instant.

import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import type { BlockJobEvent, JobCompletedEvent } from '../../src/api/driver.js';
import type { Connect, Domain } from '../../src/api/public.js';
import { DomainState, JobType } from '../../src/flags.js';
import { NbdClient } from '../../src/nbd/index.js';
import { QmpClient } from '../../src/qemu/qmp/client.js';
import { exists, makeTestDomain, qemuProcessesFor, sleep, waitFor, type TestDomain } from '../helpers/qemu-env.js';
import { assertSameContent, backingFile, DiskModel, K64, MiB } from './backup-util.js';
import {
  backupJobIds,
  collectEvents,
  hmpWriteVia,
  isAlive,
  makeDaemonEnv,
  qemuStateVia,
  qmp,
  stopVirtbackd,
  waitEvent,
  type DaemonEnv,
  type JobInfo,
} from './daemon-util.js';

const SIZE = 64 * MiB;
/** the push disks: large and sparse, so the incremental has many small dirty regions */
const PUSH_SIZE = 128 * MiB;
/** dirty 64 KiB regions per disk for the throttled incremental push */
const REGIONS = 1024;
const STRIDE = 2 * K64;
const SLOW = 128 * 1024;
const SPEED_LIMIT = ['--backup-speed-limit', String(SLOW)];

const isJobCompleted = (id: number) => (e: { type: string; jobId?: number }): e is JobCompletedEvent =>
  e.type === 'job-completed' && e.jobId === id;

interface Scenario {
  td: TestDomain;
  dom: Domain;
  models: DiskModel[];
  /** disk target -> its format node */
  nodes: Map<string, string>;
  /** disk target -> QEMU job id of the backup */
  jobIds: Map<string, string>;
  baseNodes: string[];
  fullTargets: string[];
  incTargets: string[];
  /** the disks at the incremental's instant */
  expected: Buffer[];
  id: number;
}

function backupXml(td: TestDomain, dir: string, prefix: string, incremental: string | null): string {
  const disks = td.disks
    .map((d) => `<disk name='${d.target}' type='file'><target file='${path.join(dir, `${prefix}-${d.target}.qcow2`)}'/><driver type='qcow2'/></disk>`)
    .join('');
  return `<domainbackup mode='push'>${incremental ? `<incremental>${incremental}</incremental>` : ''}<disks>${disks}</disks></domainbackup>`;
}

async function write(dom: Domain, td: TestDomain, m: DiskModel, off: number, len: number, pattern: number): Promise<void> {
  await hmpWriteVia(dom, td.xml, m.target, pattern, off, len);
  m.apply(off, len, pattern);
}

/** Domain with 2 disks, a full push with c1, then an incremental push since c1 (c2) left copying slowly. */
async function startSlowPush(env: DaemonEnv, conn: Connect): Promise<Scenario> {
  const td = await makeTestDomain(env.dir, { disks: 2, sizeMiB: PUSH_SIZE / MiB });
  const dom = await conn.defineXML(td.xml);
  await dom.create();
  const models = td.disks.map((d) => new DiskModel(d.target, PUSH_SIZE));
  for (const [i, m] of models.entries()) {
    for (let k = 0; k < 4; k++) await write(dom, td, m, k * 16 * MiB, 2 * MiB, 0x20 + i * 8 + k);
  }
  const baseNodes = (await qemuStateVia(dom)).nodes;
  const jobIds = await backupJobIds(dom, td.disks.map((d) => d.target));
  const nodes = new Map([...jobIds].map(([t, j]) => [t, j.slice(`backup-${t}-`.length)]));

  // full push with checkpoint c1, unthrottled
  const { events, off } = await collectEvents(conn);
  const full = await dom.backupBegin(backupXml(td, env.dir, 'full', null), '<domaincheckpoint><name>c1</name></domaincheckpoint>');
  for (const j of jobIds.values()) await qmp(dom, 'block-job-set-speed', { device: j, speed: 0 });
  const ev = await waitEvent(events, isJobCompleted(full), `job-completed of the full push ${full}`);
  assert.equal(ev.stats.success, true, ev.stats.errmsg);
  assert.equal(await dom.backupEnd(full), 1);
  off();

  // many small dirty regions since c1
  for (const [i, m] of models.entries()) {
    // 16 writes in flight (distinct regions: the order does not matter)
    for (let r = 0; r < REGIONS; r += 16) {
      await Promise.all(Array.from({ length: Math.min(16, REGIONS - r) }, (_, k) =>
        write(dom, td, m, (r + k) * STRIDE, K64, 0x60 + ((r + k + i) % 90))));
    }
  }
  const expected = models.map((m) => m.snapshot());
  // started at the daemon's --backup-speed-limit (SLOW): still copying when the daemon goes away
  const id = await dom.backupBegin(backupXml(td, env.dir, 'inc', 'c1'), '<domaincheckpoint><name>c2</name></domaincheckpoint>');
  const jobs = await qmp<JobInfo[]>(dom, 'query-jobs');
  for (const j of jobIds.values()) {
    const q = jobs.find((x) => x.id === j);
    assert.ok(q && q.status === 'running' && q['current-progress'] < q['total-progress'], `job ${j} still copying: ${JSON.stringify(q)}`);
  }
  // writes after the instant must not reach the backup
  for (const m of models) await write(dom, td, m, 0, MiB, 0xee);
  return {
    td,
    dom,
    models,
    nodes,
    jobIds,
    baseNodes,
    fullTargets: td.disks.map((d) => path.join(env.dir, `full-${d.target}.qcow2`)),
    incTargets: td.disks.map((d) => path.join(env.dir, `inc-${d.target}.qcow2`)),
    expected,
    id,
  };
}

/** After the restart: the job is known again, the backup is right, nothing of it is left in QEMU. */
async function assertJobKnown(dom: Domain, s: Scenario, running: boolean): Promise<void> {
  assert.equal((await dom.getInfo()).state, DomainState.RUNNING);
  assert.deepEqual(await dom.listJobIds(), [s.id]);
  const xml = await dom.backupGetXMLDesc(0);
  assert.match(xml, new RegExp(`<domainbackup mode=.push. id=.${s.id}.>`));
  assert.match(xml, /<incremental>c1<\/incremental>/);
  assert.equal(await dom.backupGetXMLDesc(s.id), xml);
  const stats = await dom.getJobStats();
  if (running) {
    assert.equal(stats.type, JobType.UNBOUNDED);
    assert.equal(stats.id, s.id);
    assert.ok(stats.disk_total! > 0 && stats.disk_processed! < stats.disk_total!, JSON.stringify(stats));
  } else {
    assert.equal(stats.type, JobType.NONE, 'no job running');
  }
}

async function assertBackupRestores(env: DaemonEnv, s: Scenario): Promise<void> {
  for (const [i, target] of s.incTargets.entries()) {
    assert.equal(await backingFile(target), path.basename(s.fullTargets[i]!), `${target} is incremental over the full backup`);
    await assertSameContent(s.expected[i]!, target, path.join(env.dir, 'expected.raw'));
  }
}

async function assertQemuClean(dom: Domain, s: Scenario): Promise<void> {
  const st = await qemuStateVia(dom);
  assert.deepEqual(st.nodes, s.baseNodes, 'no node of the backup left');
  assert.deepEqual(st.exports, []);
  assert.deepEqual(st.jobs, []);
  const bitmaps = [...s.nodes.values()].flatMap((n) => [`${n}/c1`, `${n}/c2`]).sort();
  assert.deepEqual(st.bitmaps, bitmaps, 'only the checkpoint bitmaps left');
}

async function finish(env: DaemonEnv, conn: Connect, dom: Domain, s: Scenario, extraFiles: string[] = []): Promise<void> {
  await dom.destroy();
  await conn.close();
  const last = env.daemons.at(-1)!;
  assert.deepEqual(await stopVirtbackd(last, 'SIGTERM'), { code: 0, signal: null });
  await env.assertAllGone([
    ...s.td.disks.map((d) => path.basename(d.path)),
    // each finished push target comes with its manifest (src/repository/manifest.ts)
    ...[...s.fullTargets, ...s.incTargets].flatMap((f) => [path.basename(f), `${path.basename(f)}.manifest.json`]),
    'expected.raw',
    ...extraFiles,
  ]);
}

test('SIGTERM while a push copies: restart finds the job, job-completed reaches a new subscriber, backupEnd 1, no leak', { timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  const d1 = await env.start(SPEED_LIMIT);
  const conn1 = await env.connect();
  const s = await startSlowPush(env, conn1);
  await conn1.close();

  assert.deepEqual(await stopVirtbackd(d1, 'SIGTERM'), { code: 0, signal: null });
  assert.equal((await qemuProcessesFor(env.dir)).length, 1, 'QEMU outlives the daemon');
  assert.equal(await exists(env.socket), false, 'a clean stop removes its socket');

  await env.start(SPEED_LIMIT);
  const conn = await env.connect();
  const dom = await conn.lookupByName(s.td.name);
  await assertJobKnown(dom, s, true);
  const { events } = await collectEvents(conn);
  for (const j of s.jobIds.values()) await qmp(dom, 'block-job-set-speed', { device: j, speed: 0 });
  const ev = await waitEvent(events, isJobCompleted(s.id), `job-completed of job ${s.id} after the restart`);
  assert.equal(ev.stats.success, true, ev.stats.errmsg);
  assert.equal(ev.stats.type, JobType.COMPLETED);
  assert.equal(ev.domain.uuid, s.td.uuid);
  await waitFor(() => events.filter((e) => e.type === 'block-job').length === 2, 'two block-job events');
  assert.equal(await dom.backupEnd(s.id), 1);
  assert.deepEqual(await dom.listJobIds(), []);
  await assertBackupRestores(env, s);
  await assertQemuClean(dom, s);
  await finish(env, conn, dom, s);
});

test('SIGKILL, and the push finishes while no daemon runs: recognised at restart, job-completed replayed once to each later subscriber', { timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  const d1 = await env.start(SPEED_LIMIT);
  const conn1 = await env.connect();
  const s = await startSlowPush(env, conn1);

  assert.deepEqual(await stopVirtbackd(d1, 'SIGKILL'), { code: null, signal: 'SIGKILL' });
  await conn1.close();
  // The daemon is gone: unthrottle through QEMU's own monitor and let the job conclude.
  const status = JSON.parse(await readFile(path.join(env.stateDir, 'status', `${s.td.uuid}.json`), 'utf8')) as { qmpSocket: string };
  const mon = await QmpClient.connect(status.qmpSocket);
  try {
    for (const j of s.jobIds.values()) await mon.executeRaw('block-job-set-speed', { device: j, speed: 0 });
    await waitFor(async () => {
      const jobs = (await mon.executeRaw('query-jobs')) as JobInfo[];
      return jobs.length === 2 && jobs.every((j) => j.status === 'concluded');
    }, 'both jobs concluded in QEMU', 30_000);
  } finally {
    await mon.close();
  }

  const d2 = await env.start(SPEED_LIMIT);
  const conn = await env.connect();
  const dom = await conn.lookupByName(s.td.name);
  const a = await collectEvents(conn);
  const ev = await waitEvent(a.events, isJobCompleted(s.id), 'the replayed job-completed');
  assert.equal(ev.stats.success, true, ev.stats.errmsg);
  assert.equal(ev.domain.uuid, s.td.uuid);
  const blockJobs = await waitFor(() => {
    const b = a.events.filter((e): e is BlockJobEvent => e.type === 'block-job');
    return b.length === 2 ? b : null;
  }, 'the replayed block-job events');
  assert.deepEqual(blockJobs.map((b) => b.disk).sort(), ['sda', 'sdb']);
  assert.match(d2.stderr(), new RegExp(`recovered at startup: job-completed of backup job ${s.id}`));

  // another client gets the backlog too; the first one does not get it again on re-subscribing
  const conn2 = await env.connect();
  const b = await collectEvents(conn2);
  await waitEvent(b.events, isJobCompleted(s.id), 'the replayed job-completed on a second connection');
  a.off();
  const again = await collectEvents(conn);
  await sleep(300);
  assert.deepEqual(again.events, [], 'the backlog is sent once per connection');

  await assertJobKnown(dom, s, false);
  const done = await dom.getJobStats({ completed: true, keepCompleted: true });
  assert.equal(done.type, JobType.COMPLETED);
  assert.equal(done.success, true);
  assert.equal(done.id, s.id);
  assert.equal(await dom.backupEnd(s.id), 1);
  assert.deepEqual(await dom.listJobIds(), []);
  await assertBackupRestores(env, s);
  await assertQemuClean(dom, s);
  await conn2.close();
  await finish(env, conn, dom, s);
});

test('SIGKILL while a pull export is read: QEMU keeps serving, the restarted daemon answers and backupEnd tears the export down', { timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  const d1 = await env.start();
  const conn1 = await env.connect();
  const td = await makeTestDomain(env.dir, { disks: 2, sizeMiB: SIZE / MiB });
  const dom1 = await conn1.defineXML(td.xml);
  await dom1.create();
  const m = new DiskModel('sda', SIZE);
  for (let k = 0; k < 8; k++) await write(dom1, td, m, k * 8 * MiB + k * K64, 3 * MiB, 0x41 + k);
  const baseState = await qemuStateVia(dom1);
  const expected = m.snapshot();
  const sock = path.join(env.dir, 'nbd.sock');
  const scratch = path.join(env.dir, 'scratch-sda.qcow2');
  const id = await dom1.backupBegin(
    `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda' type='file'><scratch file='${scratch}'/></disk><disk name='sdb' backup='no'/></disks></domainbackup>`,
  );
  assert.equal(await exists(scratch), true);
  // the guest keeps writing; the export must still show the instant
  for (let k = 0; k < 8; k++) await write(dom1, td, m, k * 8 * MiB, MiB, 0xd0 + k);

  const nbd = await NbdClient.connect({ socketPath: sock }, { exportName: 'sda' });
  const out = Buffer.alloc(SIZE);
  const chunk = 4 * MiB;
  let off = 0;
  const readSome = async (bytes: number): Promise<void> => {
    for (const end = Math.min(SIZE, off + bytes); off < end; off += chunk) (await nbd.read(off, chunk)).copy(out, off);
  };
  try {
    assert.equal(nbd.size, SIZE);
    await readSome(SIZE / 4);
    assert.deepEqual(await stopVirtbackd(d1, 'SIGKILL'), { code: null, signal: 'SIGKILL' });
    await conn1.close();
    await readSome(SIZE / 4); // nobody but QEMU serves this
    await env.start();
    await readSome(SIZE / 4);
    const conn = await env.connect();
    const dom = await conn.lookupByName(td.name);
    const xml = await dom.backupGetXMLDesc(0);
    assert.match(xml, new RegExp(`<domainbackup mode=.pull. id=.${id}.>`));
    assert.match(xml, new RegExp(`<server transport=.unix. socket=.${sock}./>`));
    assert.deepEqual(await dom.listJobIds(), [id]);
    const stats = await dom.getJobStats();
    assert.equal(stats.type, JobType.UNBOUNDED);
    assert.equal(stats.id, id);
    await readSome(SIZE);
  } finally {
    await nbd.disconnect().catch(() => {});
  }
  const pulled = path.join(env.dir, 'pulled.raw');
  await writeFile(pulled, out);
  await assertSameContent(expected, pulled, path.join(env.dir, 'expected.raw'));

  const conn = await env.connect();
  const dom = await conn.lookupByName(td.name);
  const { events } = await collectEvents(conn);
  assert.equal(await dom.backupEnd(id), 1);
  const ev = await waitEvent(events, isJobCompleted(id), 'job-completed of the pull');
  assert.equal(ev.stats.success, true);
  assert.equal(await exists(scratch), false, 'scratch removed');
  assert.equal(await exists(sock), false, 'NBD socket removed');
  const st = await qemuStateVia(dom);
  assert.deepEqual(st.nodes, baseState.nodes);
  assert.deepEqual(st.bitmaps, []);
  assert.deepEqual(st.exports, []);
  assert.deepEqual(st.jobs, []);
  assert.equal(isAlive(env.daemons[1]!.pid), true);
  await dom.destroy();
  await conn.close();
  assert.deepEqual(await stopVirtbackd(env.daemons[1]!, 'SIGTERM'), { code: 0, signal: null });
  await env.assertAllGone([...td.disks.map((d) => path.basename(d.path)), 'pulled.raw', 'expected.raw']);
});
