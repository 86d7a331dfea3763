// python3-libvirt drives virtbackd through its libvirt socket (issue 12):
// test/python/virtback_workflow.py runs a backup tool's workflow with an
// event loop and callbacks, and prints JSON lines; this test asserts them and
// compares the backups with the disks at their instants. The script's guest
// writes (HMP qemu-io through libvirt_qemu) are printed in the order they
// happened, so replaying them into DiskModels up to an "instant" line gives
// the disk at that backup's instant.

import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { DomainState } from '../../src/flags.js';
import { LIB_VERSION_NUMBER } from '../../src/libvirt/semantics.js';
import { qdevIdForDisk } from '../../src/qemu/command-line.js';
import { parseDomainXML } from '../../src/xml/domain.js';
import { libvirtPython, libvirtUri, runPythonJson } from '../helpers/libvirt-clients.js';
import { exists, makeTestDomain, qemuProcessesFor, waitFor } from '../helpers/qemu-env.js';
import { assertSameContent, DiskModel, MiB, run } from './backup-util.js';
import { makeDaemonEnv } from './daemon-util.js';

const SIZE = 16 * MiB;
const script = path.resolve(import.meta.dirname, '..', 'python', 'virtback_workflow.py');
const offlineScript = path.resolve(import.meta.dirname, '..', 'python', 'offline_backup.py');
const skip = libvirtPython() === null ? 'python3-libvirt is not installed (Debian package python3-libvirt)' : undefined;

type Line = Record<string, unknown> & { step: string };
/** a typed parameter as the script prints it: [python type name, value] */
type Typed = Record<string, [string, unknown]>;

function one(lines: Line[], step: string, pred: (l: Line) => boolean = () => true): Line {
  const found = lines.filter((l) => l.step === step && pred(l));
  assert.equal(found.length, 1, `one '${step}' line: ${JSON.stringify(found)}`);
  return found[0]!;
}

/** Replays the script's writes; returns each backup's disks at its instant. */
function instants(lines: Line[], targets: string[]): Map<string, Buffer[]> {
  const models = targets.map((t) => new DiskModel(t, SIZE));
  const at = new Map<string, Buffer[]>();
  for (const l of lines) {
    if (l.step === 'write') models.find((m) => m.target === l.disk)!.apply(l.offset as number, l.length as number, l.pattern as number);
    if (l.step === 'instant') at.set(l.backup as string, models.map((m) => m.snapshot()));
  }
  return at;
}

function assertBackupStats(p: Typed, what: string): void {
  assert.deepEqual(p.operation, ['int', 9], `${what}: operation`);
  assert.deepEqual(p.success, ['bool', true], `${what}: success`);
  assert.equal(p.time_elapsed?.[0], 'int', `${what}: time_elapsed`);
}

test('python3-libvirt: events, checkpoints, push full + incremental, pull + abortJob, errors, lifecycle', { skip, timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const td = await makeTestDomain(env.dir, { disks: 2, sizeMiB: SIZE / MiB });
  const xmlFile = path.join(env.dir, 'domain.xml');
  await writeFile(xmlFile, td.xml);
  const def = parseDomainXML(td.xml);
  const targets = td.disks.map((d) => d.target);
  const cfg = {
    xml: xmlFile,
    name: td.name,
    qdevs: Object.fromEntries(targets.map((x) => [x, qdevIdForDisk(def, x)])),
    dir: env.dir,
    nbd: path.join(env.dir, 'nbd.sock'),
  };
  const r = await runPythonJson(script, [libvirtUri(env.runDir), JSON.stringify(cfg)], 80_000);
  const lines = r.lines as Line[];
  const failed = lines.find((l) => l.step === 'failed');
  assert.equal(failed, undefined, `the script failed: ${String(failed?.traceback)}\nstderr: ${r.stderr}`);
  assert.equal(r.code, 0, `exit code; stderr: ${r.stderr}; last line ${JSON.stringify(lines.at(-1))}`);
  assert.equal(lines.at(-1)?.step, 'done');

  // connection probes
  const c = one(lines, 'connection');
  assert.deepEqual([c.libVersion, c.hostname, c.type, c.alive], [LIB_VERSION_NUMBER, os.hostname(), 'QEMU', 1]);
  const errors = new Map(lines.filter((l) => l.step === 'error').map((l) => [l.what as string, l]));
  assert.deepEqual([errors.get('unknown domain')?.code, errors.get('unknown domain')?.message],
    [42, "Domain not found: no domain with matching name 'no-such-domain'"]);
  assert.equal(errors.get('unknown checkpoint')?.code, 103);
  assert.match(String(errors.get('unknown checkpoint')?.message), /^Domain checkpoint not found: .*'nope'/);
  assert.equal(errors.get('parent of the root')?.code, 103);
  assert.deepEqual([errors.get('fsFreeze without an agent')?.code, errors.get('fsFreeze without an agent')?.message],
    [74, 'argument unsupported: QEMU guest agent is not configured']);
  assert.deepEqual([errors.get('abort without a job')?.code, errors.get('abort without a job')?.message],
    [55, 'Requested operation is not valid: no job is active on the domain']);

  // the domain as the bindings see it
  const d = one(lines, 'domain');
  assert.deepEqual([d.name, d.uuid, d.state, d.active], [td.name, td.uuid, [1, 1], 1]);
  assert.ok((d.id as number) > 0, `a running domain has an id: ${d.id}`);
  const lists = lines.filter((l) => l.step === 'domains');
  assert.deepEqual(lists[0]!.list, [[td.name, 1]]);
  assert.deepEqual(lists[1]!.list, [], 'undefined at the end');

  // push full (c1) and incremental since c1 (c2): backupBegin returns 0, the job-completed callback has typed params
  for (const backup of ['full', 'inc']) {
    assert.equal(one(lines, 'instant', (l) => l.backup === backup).ret, 0);
    const ev = one(lines, 'job-completed', (l) => l.backup === backup);
    assert.equal(ev.domain, td.name);
    const p = ev.params as Typed;
    assertBackupStats(p, `${backup} event`);
    assert.equal(p.disk_total?.[0], 'int');
    assert.ok((p.disk_total![1] as number) > 0, `${backup}: disk_total ${p.disk_total![1]}`);
    assert.deepEqual(p.disk_remaining, ['int', 0]);
    const s = one(lines, 'job-stats-completed', (l) => l.backup === backup).params as Typed;
    assert.deepEqual(s.type, ['int', 3], 'VIR_DOMAIN_JOB_COMPLETED');
    assertBackupStats(s, `${backup} jobStats(COMPLETED)`);
  }
  const at = instants(lines, targets);
  for (const [i, x] of targets.entries()) {
    const full = path.join(env.dir, `full-${x}.qcow2`);
    await assertSameContent(at.get('full')![i]!, full, path.join(env.dir, 'expected.raw'));
    const inc = path.join(env.dir, `inc-${x}.qcow2`);
    await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', full, inc]);
    await assertSameContent(at.get('inc')![i]!, inc, path.join(env.dir, 'expected.raw'));
  }

  // checkpoints
  const cp = one(lines, 'checkpoint');
  assert.deepEqual([cp.name, cp.parent], ['c3', 'c2']);
  assert.match(cp.xml as string, /<description>from python<\/description>/);
  assert.doesNotMatch(cp.xml as string, /<domain[ >]/, 'NO_DOMAIN');
  assert.deepEqual(one(lines, 'checkpoints').names, ['c1', 'c2', 'c3']);

  // pull, ended by abortJob
  const pull = one(lines, 'pull');
  assert.match(pull.xml as string, /<domainbackup mode=.pull./);
  assert.ok((pull.xml as string).includes(cfg.nbd), `the NBD socket in ${String(pull.xml)}`);
  const ps = pull.stats as Typed;
  assert.deepEqual(ps.type, ['int', 2], 'VIR_DOMAIN_JOB_UNBOUNDED');
  assert.deepEqual(ps.operation, ['int', 9]);
  assert.equal(ps.disk_temp_total?.[0], 'int');
  assert.equal(one(lines, 'abort').ret, 0);
  assertBackupStats(one(lines, 'job-completed', (l) => l.backup === 'pull').params as Typed, 'pull event');
  assert.equal(await exists(cfg.nbd), false, 'the NBD socket is gone with the job');

  // lifecycle events on destroy/start, in libvirt's numbers (the script waited for this subsequence)
  const lc = one(lines, 'lifecycle').events as [number, number][];
  assert.ok(lc.some(([e, det]) => e === 5 && det === 1), `stopped/destroyed in ${JSON.stringify(lc)}`);

  // undefined with its checkpoint metadata; nothing of the domain is left running
  assert.equal(one(lines, 'undefine').ret, 0);
  assert.equal(await exists(path.join(env.stateDir, 'domains', `${td.uuid}.xml`)), false);
  assert.deepEqual(await readdir(path.join(env.stateDir, 'checkpoints', td.uuid)).catch(() => []), []);
  assert.deepEqual(await qemuProcessesFor(env.dir), []);
});

test('python3-libvirt: a shut-off domain started paused with START_AUTODESTROY, backed up, gone with the connection', { skip, timeout: 60_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const td = await makeTestDomain(env.dir, { disks: 1, sizeMiB: SIZE / MiB });
  const disk = td.disks[0]!;
  // the guest's data, written while the domain is shut off
  const m = new DiskModel(disk.target, SIZE);
  for (let k = 0; k < 5; k++) {
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(0x70 + k).toString(16)} ${k * 3 * MiB} ${MiB / 2}`, disk.path]);
    m.apply(k * 3 * MiB, MiB / 2, 0x70 + k);
  }
  const conn = await env.connect();
  await conn.defineXML(td.xml);

  const r = await runPythonJson(offlineScript, [libvirtUri(env.runDir), td.name, env.dir], 50_000);
  const lines = r.lines as Line[];
  assert.equal(r.code, 0, `exit code; stderr: ${r.stderr}; lines ${JSON.stringify(lines)}`);
  assert.deepEqual(one(lines, 'before'), { step: 'before', state: [5, 0], autostart: 0, lookup_id: -1 });
  assert.equal(one(lines, 'autostart').on, 1);
  const started = one(lines, 'started');
  // paused (3) by the user (VIR_DOMAIN_PAUSED_USER 1); 128 MiB, 1 vCPU; no block job
  assert.deepEqual([started.state, started.info, started.active, started.blockjob], [[3, 1], [3, 131072, 131072, 1], 1, {}]);
  assert.equal(one(lines, 'begin').ret, 0);
  assert.deepEqual([one(lines, 'completed').success, one(lines, 'completed').operation], [true, 9]);
  assert.equal(lines.at(-1)?.step, 'exit');

  // the connection that started it is gone: so is the domain (still defined, shut off)
  const dom = await conn.lookupByName(td.name);
  await waitFor(async () => (await dom.getInfo()).state === DomainState.SHUTOFF, 'the autodestroy domain shut off');
  assert.equal((await dom.getInfo()).persistent, true);
  await waitFor(async () => (await qemuProcessesFor(env.dir)).length === 0, 'its QEMU gone');
  await assertSameContent(m.snapshot(), path.join(env.dir, 'offline-sda.qcow2'), path.join(env.dir, 'expected.raw'));
});
