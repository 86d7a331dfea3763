// A daemon SIGKILLed inside backupBegin on real QEMU (a child process that
// kills itself at a named step of the backup module, see
// backup-kill-child.ts), then a new driver opens: QEMU is left with no backup
// job, node, temporary bitmap, export or NBD server of the interrupted begin,
// no target or scratch file or socket remains, and the next backup works
// (before the write-ahead log, a kill after the transaction left a job that
// refused every later backup: "Job ID 'backup-sda-…' already in use").

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { readFile, rm } from 'node:fs/promises';
import { JobStatsFlags, JobType } from '../../src/flags.js';
import { readManifest } from '../../src/repository/manifest.js';
import { hmpWrite, makeTestDomain, makeTestEnv, waitFor, type TestEnv } from '../helpers/qemu-env.js';
import { qemuState, waitJobCompleted } from './backup-util.js';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'backup-kill-child.ts');

/** Run the child; resolves with how it ended. */
function runChild(args: object): Promise<{ signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', child, JSON.stringify(args)], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ signal: (err as { signal?: string } | null)?.signal ?? null, stdout, stderr });
    });
  });
}

async function files(env: TestEnv): Promise<string[]> {
  return (await readdir(env.dir)).filter((f) => f !== 'state' && f !== 'run').sort();
}

interface KillPoint { at: string; when: 'before' | 'after'; what: string }

/**
 * The status saves of a begin (backup-kill-child.ts names them): the record
 * with the intent of every step (files, nodes, create jobs, pull's NBD server,
 * the transaction's bitmaps and jobs, pull's exports), then 'running' — the
 * steps' done marks ride with it.
 */
function saveNames(): string[] {
  return ['record', 'running'];
}

/** Kill points of a begin on two qcow2 disks: between every step (QMP commands, the file creation, the checkpoint commit) and the next save. */
function killPoints(pull: boolean): KillPoint[] {
  return [
    { at: 'record', when: 'after', what: 'every intent saved, nothing created yet' },
    { at: 'qmp:blockdev-add#1', when: 'before', what: 'the first target file created (and its temp name), nothing in QEMU' },
    { at: 'qmp:blockdev-create#1', when: 'before', what: 'a storage node added' },
    { at: 'qmp:blockdev-create#1', when: 'after', what: 'the first blockdev-create job ran, not dismissed' },
    { at: 'qmp:blockdev-add#4', when: 'before', what: "the second disk's create job dismissed" },
    ...(pull ? [{ at: 'qmp:nbd-server-start#1', when: 'after' as const, what: 'the NBD server started' }] : []),
    { at: 'qmp:transaction#1', when: 'after', what: 'the transaction ran (jobs, bitmaps), the checkpoint not committed' },
    { at: 'checkpoint-commit', when: 'after', what: 'the checkpoint committed, its bitmaps not yet dropped from the log' },
    ...(pull ? [{ at: 'qmp:block-export-add#1', when: 'after' as const, what: 'the first export added' }] : []),
    { at: 'running', when: 'before', what: "everything created, 'running' not saved" },
  ];
}

for (const mode of ['push', 'pull'] as const) {
  test(`${mode}: a daemon killed inside backupBegin leaves nothing behind after the next start; the next backup works`, async (t) => {
    const env = await makeTestEnv(t);
    const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
    let driver: QemuDriver = await env.openDriver();
    const { uuid } = await driver.domainDefineXML(dom.xml, 0);
    await driver.domainCreate(uuid, 0);
    const baseline = await qemuState(driver, uuid);
    const baseFiles = await files(env);
    const sock = path.join(env.dir, 'nbd.sock');
    const backupXml = mode === 'push'
      ? '<domainbackup/>'
      : `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/></domainbackup>`;

    for (const [i, p] of killPoints(mode === 'pull').entries()) {
      const at = `${mode}: kill ${p.when} ${p.at} (${p.what})`;
      await driver.close();
      const cp = `k${i}`;
      const r = await runChild({
        stateDir: env.stateDir, runDir: env.runDir, uuid, at: p.at, when: p.when, backupXml,
        checkpointXml: `<domaincheckpoint><name>${cp}</name></domaincheckpoint>`,
      });
      assert.equal(r.signal, 'SIGKILL', `${at}: the child was killed (${r.stdout}${r.stderr})`);
      driver = await env.openDriver();
      assert.deepEqual(await driver.listJobIds(uuid), [], at);
      const state = await qemuState(driver, uuid);
      const kept = (await driver.listAllCheckpoints(uuid, 0)).includes(cp);
      const cpBitmaps = kept ? driver.diskNodes(uuid).map((d) => `${d.formatNode}/${cp}`) : [];
      assert.deepEqual(state, { ...baseline, bitmaps: [...baseline.bitmaps, ...cpBitmaps].sort() }, at);
      assert.deepEqual(await files(env), baseFiles, `${at}: no target, scratch file or socket left`);
      if (kept) await driver.checkpointDelete(uuid, cp, 0);
    }
    // the saves are those named (one per step), and a child killed after the last has a running job to pick up
    await driver.close();
    const last = await runChild({ stateDir: env.stateDir, runDir: env.runDir, uuid, at: 'running', when: 'after', backupXml,
      checkpointXml: '<domaincheckpoint><name>last</name></domaincheckpoint>' });
    assert.equal(last.signal, 'SIGKILL');
    assert.deepEqual([...last.stdout.matchAll(/^save (.+)$/gm)].map((m) => m[1]), saveNames());
    driver = await env.openDriver();
    const [running] = await driver.listJobIds(uuid);
    assert.ok(running !== undefined, 'the started job is recovered');
    await driver.abortJob(uuid, 0);
    const lastBitmaps = driver.diskNodes(uuid).map((d) => `${d.formatNode}/last`);
    assert.deepEqual(await qemuState(driver, uuid), { ...baseline, bitmaps: [...baseline.bitmaps, ...lastBitmaps].sort() }, 'its checkpoint stays');
    assert.deepEqual(await files(env), baseFiles);
    await driver.checkpointDelete(uuid, 'last', 0);

    // and the next backup works
    const id = await driver.backupBegin(uuid, backupXml, null, 0);
    if (mode === 'push') await waitJobCompleted(env.events, uuid, id);
    assert.equal(await driver.backupEnd(uuid, id, 0), 1);
    await driver.domainDestroy(uuid, 0);
    await env.assertClean();
  });
}

// The soak found a push that restored right but had no manifest and no finished
// record: meta.json and the 'done' status are written at the same time, and the
// kill landed after the status, before meta.json. Killed before the 'done' save the
// job is ended again; after it, with meta.json gone (as if it had not landed), its
// end is recorded again: either way exactly once. Killed right after the
// target was closed (blockdev-del), before 'done': the job ends again with
// its target (the node is gone: undo's "not found" counts as closed).
const endKills = [
  { at: 'done', when: 'before', what: "before the status says done (after job-completed)" },
  { at: 'done', when: 'after', what: 'after the status says done (after job-completed)' },
  { at: 'qmp:blockdev-del#1', when: 'after', what: "once the target was closed, before the status says done" },
] as const;
for (const { at, when, what } of endKills) test(`push: a daemon killed ${what}: target recorded once, manifest written, the next incremental finds it`, async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { sizeMiB: 16 });
  let driver: QemuDriver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  await hmpWrite(driver, uuid, 'sda', 0x3c, 0, 1 << 20);
  await driver.close();
  const full = path.join(env.dir, 'full.qcow2');
  const r = await runChild({
    stateDir: env.stateDir, runDir: env.runDir, uuid, at, when, waitEnd: true,
    backupXml: `<domainbackup><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${full}'/></disk></disks></domainbackup>`,
    checkpointXml: '<domaincheckpoint><name>c1</name></domaincheckpoint>',
  });
  assert.equal(r.signal, 'SIGKILL', `killed at ${at} (${r.stdout}${r.stderr})`);
  const saves = [...r.stdout.matchAll(/^save (.+)$/gm)].map((m) => m[1]);
  if (at === 'done') assert.deepEqual(saves.slice(-3), when === 'before' ? ['record', 'running', 'running'] : ['running', 'running', 'done'], 'begun, the outcome saved (still running), then killed at the done save');
  else assert.ok(!saves.includes('done'), `killed before the job's end was saved (${saves.join(' ')})`);

  const metaFile = path.join(env.stateDir, 'backups', uuid, 'meta.json');
  if (at === 'done' && when === 'after') await rm(metaFile);
  driver = await env.openDriver();
  const [id] = await driver.listJobIds(uuid);
  assert.ok(id !== undefined, 'the job is known again');
  if (at !== 'done' || when === 'before') assert.deepEqual(await driver.listJobIds(uuid), [id], 'and ends again');
  await waitFor(async () => ((await driver.getJobStats(uuid, JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED)).type === JobType.COMPLETED ? true : null), 'the job completed again');
  await waitFor(async () => (await readManifest(full)) ?? null, 'the push manifest');
  const meta = JSON.parse(await readFile(metaFile, 'utf8')) as { finished: { jobId: number; path: string }[]; pendingAfterPush: unknown[] };
  assert.deepEqual(meta.finished.map((f) => [f.jobId, f.path]), [[id, full]], 'recorded once');
  assert.equal(await driver.backupEnd(uuid, id!, 0), 1);

  await hmpWrite(driver, uuid, 'sda', 0x3d, 4 << 20, 65536);
  const inc = path.join(env.dir, 'inc.qcow2');
  const incId = await driver.backupBegin(uuid, `<domainbackup><incremental>c1</incremental><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${inc}'/></disk></disks></domainbackup>`, null, 0);
  await waitJobCompleted(env.events, uuid, incId);
  await driver.backupEnd(uuid, incId, 0);
  assert.equal((await readManifest(inc))?.parentBackup, full, 'the incremental continues from the recovered full');
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});
