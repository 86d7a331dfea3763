// virtbackd's web console on real QEMU: a real virtbackd (qemu driver) with
// --web over HTTPS and a folder repository, a running domain whose disk is
// written through the monitor (and into a model). Through the API: the
// domain is listed; a backup task writes a full point, then an incremental
// one; verify marks both ok; restore writes a new file equal byte for byte to
// the disk at the backup instant, and refuses an existing one; a raw pull job
// runs and is aborted; the event stream carries the job-completed events and
// task progress; a read-only session is refused every action and nothing
// changes; user-controlled names and descriptions come back as JSON strings.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Connect } from '../../src/api/public.js';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { connect } from '../../src/sdk/connect.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { DiskModel, MiB } from '../qemu/backup-util.js';
import { hmpWriteVia, stopVirtbackd } from '../qemu/daemon-util.js';
import { sha } from '../qemu/vmbackup-helpers.js';
import { MUTATING_ROUTES, startConsoleDaemon, type WebClient } from './web-client.js';

interface Task {
  task: string;
  state: string;
  processed: number;
  total: number;
  result: { level?: string; pointId?: string } | null;
  error: { message: string } | null;
}

async function finished(c: WebClient, task: string, timeoutMs = 120_000): Promise<Task> {
  return waitFor(async () => {
    const r = await c.get<Task>(`/api/tasks/${task}`);
    assert.equal(r.status, 200, r.text);
    return r.json.state === 'running' ? null : r.json;
  }, `task ${task}`, timeoutMs);
}

async function runTask(c: WebClient, route: string, body: unknown): Promise<Task> {
  const r = await c.post<{ task: string }>(route, body);
  assert.equal(r.status, 202, r.text);
  const t = await finished(c, r.json.task);
  assert.equal(t.state, 'completed', JSON.stringify(t.error));
  return t;
}

const EVIL_NAME = `evil"'<script>x`;
const EVIL_DESCRIPTION = `<script>alert("x")</script> & 'quoted' <b>`;
const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

test('web console on QEMU: backup full then inc, verify, restore byte-exact, raw job abort, events, read-only refused', { timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const repoDir = path.join(env.dir, 'repo');
  const repo = await ChunkRepository.init(await openFolderStore(repoDir));
  const cd = await startConsoleDaemon(env, ['--web-repo', repoDir, '--backup-speed-limit', String(4 * 1024 * 1024)]);
  t.after(() => stopVirtbackd(cd.daemon, 'SIGKILL'));
  const conn: Connect = await connect(`virtback+unix:///?socket=${path.join(env.runDir, 'virtbackd.sock')}`);
  t.after(() => conn.close());

  const def = await makeTestDomain(env.dir, { name: 'web-vm', sizeMiB: 32 });
  const dom = await conn.defineXML(def.xml);
  await dom.create();
  const evil = await conn.defineXML(
    `<domain type='qemu'><name>${xmlEscape(EVIL_NAME)}</name><description>${xmlEscape(EVIL_DESCRIPTION)}</description>` +
      `<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='q35'>hvm</type></os></domain>`,
  );
  const model = new DiskModel('sda', 32 * MiB);
  const write = async (off: number, len: number, pattern: number) => {
    await hmpWriteVia(dom, def.xml, 'sda', pattern, off, len);
    model.apply(off, len, pattern);
  };
  for (let i = 0; i < 6; i++) await write(i * 4 * MiB + i * 65536, MiB, 0x30 + i);

  const admin = cd.client();
  assert.equal((await admin.login(cd.adminToken)).status, 200);
  const stream = await admin.events();

  // the list: the running domain, no checkpoint, no point yet; the evil one as plain strings
  type Row = { uuid: string; name: string; state: string; checkpoints: number; lastPoint: { level: string; id: string } | null; job: { id: number; kind: string } | null };
  let rows = (await admin.get<Row[]>('/api/domains')).json;
  const vm = rows.find((r) => r.uuid === dom.uuid)!;
  assert.deepEqual([vm.name, vm.state, vm.checkpoints, vm.lastPoint, vm.job], ['web-vm', 'running', 0, null, null]);
  assert.equal(rows.find((r) => r.uuid === evil.uuid)?.name, EVIL_NAME);
  const evilDetail = await admin.get<{ name: string; description: string }>(`/api/domains/${evil.uuid}`);
  assert.match(String(evilDetail.headers['content-type']), /^application\/json/);
  assert.deepEqual([evilDetail.json.name, evilDetail.json.description], [EVIL_NAME, EVIL_DESCRIPTION]);
  assert.equal(evilDetail.headers['x-content-type-options'], 'nosniff', 'never sniffed into HTML');

  // backup: full, then (after more writes) incremental
  const full = await runTask(admin, `/api/domains/${dom.uuid}/backup`, { repo: '0', level: 'auto', quiesce: false });
  assert.equal(full.result?.level, 'full');
  assert.ok(full.total >= 32 * MiB && full.processed === full.total, `progress ${full.processed}/${full.total}`);
  const atFull = model.snapshot();
  await write(20 * MiB, 2 * MiB, 0x77);
  const inc = await runTask(admin, `/api/domains/${dom.uuid}/backup`, { repo: 'repo', level: 'auto' });
  assert.equal(inc.result?.level, 'inc');
  const atInc = model.snapshot();

  type Detail = Row & { checkpointTree: { name: string }[]; points: { id: string; level: string; verified: string | null; sizeBytes: number }[]; jobs: { id: number; result: string; kind: string }[] };
  let detail = (await admin.get<Detail>(`/api/domains/${dom.uuid}`)).json;
  assert.deepEqual(detail.points.map((p) => p.level), ['inc', 'full']);
  assert.deepEqual(detail.points.map((p) => p.id), [inc.result!.pointId, full.result!.pointId]);
  assert.equal(detail.points[0]!.sizeBytes, 32 * MiB);
  assert.equal(detail.lastPoint?.level, 'inc');
  assert.equal(detail.checkpoints, 1, 'the repository keeps one checkpoint on the domain');
  assert.equal(detail.checkpointTree.length, 1);

  // verify: both points ok, recorded in the points
  await runTask(admin, '/api/repos/0/verify', { domain: 'web-vm' });
  detail = (await admin.get<Detail>(`/api/domains/${dom.uuid}`)).json;
  assert.deepEqual(detail.points.map((p) => p.verified), ['ok', 'ok']);

  // restore: preview, then each point into a new folder equals the disk at its instant; an existing file is refused
  for (const [point, expected] of [[inc.result!.pointId!, atInc], [full.result!.pointId!, atFull]] as const) {
    const dest = path.join(env.dir, `restore-${point.replace(/[:.]/g, '')}`);
    const pv = await admin.get<{ disks: { target: string; dest: string; exists: boolean; size: number }[] }>(`/api/repos/0/points/web-vm/${encodeURIComponent(point)}/restore-preview?dest=${encodeURIComponent(dest)}`);
    assert.deepEqual(pv.json.disks, [{ target: 'sda', size: 32 * MiB, dest: path.join(dest, 'web-vm-sda.raw'), exists: false, willOverwrite: false }]);
    await runTask(admin, `/api/repos/0/points/web-vm/${encodeURIComponent(point)}/restore`, { destDir: dest, format: 'raw' });
    assert.equal(sha(fs.readFileSync(path.join(dest, 'web-vm-sda.raw'))), sha(expected), `point ${point}: restored content differs from the disk at the backup instant`);
    const again = await admin.post(`/api/repos/0/points/web-vm/${encodeURIComponent(point)}/restore`, { destDir: dest, format: 'raw' });
    assert.equal(again.status, 409, again.text);
  }

  // a raw pull job, shown running with its kind, then ended with ABORT
  const sock = path.join(env.dir, 'pull.sock');
  const raw = await admin.post<{ jobId: number }>(`/api/domains/${dom.uuid}/jobs`, {
    backupXml: `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda' type='file'><scratch file='${path.join(env.dir, 'scratch.qcow2')}'/></disk></disks></domainbackup>`,
  });
  assert.equal(raw.status, 200, raw.text);
  rows = (await admin.get<Row[]>('/api/domains')).json;
  assert.deepEqual(rows.find((r) => r.uuid === dom.uuid)?.job, { ...rows.find((r) => r.uuid === dom.uuid)!.job!, id: raw.json.jobId, kind: 'pull' });
  const abort = await admin.post(`/api/domains/${dom.uuid}/jobs/${raw.json.jobId}/abort`);
  assert.equal(abort.status, 200, abort.text);
  await waitFor(() => stream.events.some((e) => e.event === 'domain' && (e.data as { type: string; detail: { jobId?: number } }).type === 'job-completed' && (e.data as { detail: { jobId?: number } }).detail.jobId === raw.json.jobId), 'the aborted job-completed event');
  assert.deepEqual(await dom.listJobIds(), []);
  detail = (await admin.get<Detail>(`/api/domains/${dom.uuid}`)).json;
  const hist = detail.jobs.find((j) => j.id === raw.json.jobId);
  // as in libvirt, a pull job ended by its client is complete (its data was whole while it ran)
  assert.deepEqual([hist?.kind, hist?.result, (abort.json as { complete: boolean }).complete], ['pull', 'completed', true]);

  // a raw push job (slowed by --backup-speed-limit), seen copying, aborted: cancelled
  const push = await admin.post<{ jobId: number }>(`/api/domains/${dom.uuid}/jobs`, {
    backupXml: `<domainbackup mode='push'><disks><disk name='sda' type='file'><target file='${path.join(env.dir, 'push.qcow2')}'/><driver type='qcow2'/></disk></disks></domainbackup>`,
  });
  assert.equal(push.status, 200, push.text);
  const copying = await waitFor(async () => {
    const j = (await admin.get<Row[]>('/api/domains')).json.find((r) => r.uuid === dom.uuid)?.job as { kind: string; processed: number; total: number } | null;
    return j && j.processed > 0 ? j : null;
  }, 'the push job copying');
  assert.deepEqual([copying.kind, copying.total], ['push', 32 * MiB]);
  const pushAbort = await admin.post<{ complete: boolean }>(`/api/domains/${dom.uuid}/jobs/${push.json.jobId}/abort`);
  assert.equal(pushAbort.status, 200, pushAbort.text);
  assert.equal(pushAbort.json.complete, false);
  await waitFor(() => stream.events.some((e) => e.event === 'domain' && (e.data as { type: string; detail: { jobId?: number } }).type === 'job-completed' && (e.data as { detail: { jobId?: number } }).detail.jobId === push.json.jobId), 'the push job-completed event');
  detail = (await admin.get<Detail>(`/api/domains/${dom.uuid}`)).json;
  const pushHist = detail.jobs.find((j) => j.id === push.json.jobId);
  assert.deepEqual([pushHist?.kind, pushHist?.result], ['push', 'aborted']);

  // the stream: job-completed of the backup runs' jobs, and task progress with a final completed state
  const domainEvents = stream.events.filter((e) => e.event === 'domain').map((e) => e.data as { type: string; domain: { uuid: string } });
  assert.ok(domainEvents.filter((e) => e.type === 'job-completed' && e.domain.uuid === dom.uuid).length >= 4, 'job-completed of both backups and the raw jobs');
  const fullEvents = stream.events.filter((e) => e.event === 'task' && (e.data as Task).task === full.task).map((e) => e.data as Task);
  assert.equal(fullEvents.at(-1)?.state, 'completed');
  assert.ok(fullEvents.some((e) => e.state === 'running' && e.processed > 0), 'progress while running');

  // read-only: every action refused, nothing changed (points, checkpoints, jobs, files)
  const before = { points: (await repo.listPoints()).map((p) => p.id), checkpoints: (await dom.listAllCheckpoints()).map((c) => c.name), files: fs.readdirSync(env.dir).sort() };
  const ro = cd.client();
  assert.equal((await ro.login(cd.readonlyToken)).status, 200);
  const real: Array<[string, unknown]> = [
    [`/api/domains/${dom.uuid}/backup`, { repo: '0', level: 'full' }],
    [`/api/domains/${dom.uuid}/jobs`, { backupXml: `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/></domainbackup>` }],
    [`/api/domains/${dom.uuid}/jobs/1/abort`, {}],
    ['/api/repos/0/verify', {}],
    [`/api/repos/0/points/web-vm/${encodeURIComponent(full.result!.pointId!)}/restore`, { destDir: path.join(env.dir, 'ro-restore') }],
    [`/api/repos/0/points/web-vm/${encodeURIComponent(full.result!.pointId!)}/instant-restore`, { name: 'ro-copy' }],
    [`/api/tasks/${full.task}/stop`, {}],
    ...MUTATING_ROUTES,
  ];
  for (const [route, payload] of real) {
    const r = await ro.post(route, payload);
    assert.equal(r.status, 403, `${route}: ${r.text}`);
  }
  assert.equal((await ro.get('/api/domains')).status, 200, 'a read-only session sees');
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual({ points: (await repo.listPoints()).map((p) => p.id), checkpoints: (await dom.listAllCheckpoints()).map((c) => c.name), files: fs.readdirSync(env.dir).sort() }, before);
  assert.deepEqual(await dom.listJobIds(), []);
  assert.ok((await ro.get<Task[]>('/api/tasks')).json.every((x) => x.state !== 'running'));

  // prune preview: shows, removes nothing
  const prune = await admin.get<{ keep: { id: string }[]; remove: { id: string }[] }>('/api/repos/0/prune-preview?domain=web-vm&keepLast=1');
  assert.deepEqual([prune.json.keep.map((k) => k.id), prune.json.remove.map((k) => k.id)], [[inc.result!.pointId], [full.result!.pointId]]);
  assert.equal((await repo.listPoints()).length, 2);

  // instant restore: a new domain runs on the served point; stopping is refused while it runs, then ends the serving
  const ir = await admin.post<{ task: string; nbdUri: string }>(`/api/repos/0/points/web-vm/${encodeURIComponent(inc.result!.pointId!)}/instant-restore`, { name: 'web-vm-ir' });
  assert.equal(ir.status, 202, ir.text);
  assert.match(ir.json.nbdUri, /^nbd\+unix:\/\/\/sda\?socket=/);
  const irRow = (await admin.get<Row[]>('/api/domains')).json.find((r) => r.name === 'web-vm-ir');
  assert.equal(irRow?.state, 'running');
  assert.equal((await admin.get<Task>(`/api/tasks/${ir.json.task}`)).json.state, 'running', 'the task lasts while it serves');
  assert.equal((await admin.post(`/api/tasks/${ir.json.task}/stop`)).status, 409, 'refused while the domain runs on the served point');
  const copy = await conn.lookupByName('web-vm-ir');
  await copy.destroy();
  const stopped = await admin.post<Task>(`/api/tasks/${ir.json.task}/stop`);
  assert.equal(stopped.status, 200, stopped.text);
  assert.equal(stopped.json.state, 'completed');
  const socket = decodeURIComponent(/socket=(.*)$/.exec(ir.json.nbdUri)![1]!);
  assert.equal(fs.existsSync(socket), false, 'the serve process is gone');
  await copy.undefine();

  stream.close();
  await dom.destroy();
});
