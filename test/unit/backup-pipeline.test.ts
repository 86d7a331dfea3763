// backupBegin's pipeline against the scripted QMP peer (no QEMU): a failure
// injected at every QMP step, and a driver killed at every status save and
// every QMP command (before it lands and right after) followed by recovery — with QEMU alive and
// with QEMU dead meanwhile — leave nothing behind: no node, bitmap, job,
// export, NBD server, QOM object, target or scratch file, socket, job record.

import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { ShutoffReason } from '../../src/flags.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import { FakeCheckpoints, FakeHost, ScriptedQemu, type FakeDisk, type KillPoint } from '../helpers/scripted-qmp.js';

const MiB = 1024 * 1024;

interface World {
  dir: string;
  qemu: ScriptedQemu;
  disks: FakeDisk[];
  dirs: { stateDir: string; runDir: string };
  /** checkpoint metadata on disk (shared by every driver instance of the world) */
  committed: Set<string>;
  hosts: FakeHost[];
}

async function world(): Promise<World> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-pipeline-'));
  const disks: FakeDisk[] = [
    { target: 'sda', node: 'libvirt-2-format', file: path.join(dir, 'a.qcow2'), size: 64 * MiB },
    { target: 'sdb', node: 'libvirt-1-format', file: path.join(dir, 'b.qcow2'), size: 32 * MiB },
  ];
  for (const d of disks) await writeFile(d.file, 'disk');
  // the push backup taken with c1, which an incremental push target is backed by (kept apart from what files() lists)
  await mkdir(path.join(dir, 'previous'));
  await writeFile(path.join(dir, 'previous', 'sda.qcow2.c1'), 'previous backup');
  const dirs = { stateDir: path.join(dir, 'state'), runDir: path.join(dir, 'run') };
  await mkdir(dirs.runDir, { recursive: true });
  const qemu = await ScriptedQemu.start(path.join(dir, 'qmp.sock'), disks.map((d) => ({ node: d.node, file: d.file, size: d.size, bitmaps: ['c1'], device: `/machine/peripheral/${d.target}` })));
  return { dir, qemu, disks, dirs, committed: new Set(['c1']), hosts: [] };
}

async function closeWorld(w: World): Promise<void> {
  for (const h of w.hosts) await h.close();
  await w.qemu.close();
  await rm(w.dir, { recursive: true, force: true });
}

/** One driver process: a host (whose status file starts as `status`) and its backup module. */
function driver(w: World, status?: string): { host: FakeHost; backups: QemuBackups } {
  const host = new FakeHost(w.qemu, w.dirs, w.disks, status);
  w.hosts.push(host);
  const backups = new QemuBackups(host, new FakeCheckpoints(w.committed), {
    tlsX509CertDir: w.dir,
    locatePreviousBackup: async () => ({ path: path.join(w.dir, 'previous', 'sda.qcow2.c1'), format: 'qcow2' }),
  });
  return { host, backups };
}

/** Files next to the disks (the state and run directories, the monitor socket and the previous backup aside). */
async function files(w: World): Promise<string[]> {
  return (await readdir(w.dir)).filter((f) => !['state', 'run', 'qmp.sock', 'previous'].includes(f)).sort();
}

interface Scenario {
  name: string;
  backupXml: (dir: string) => string;
  checkpointXml: string;
}

const scenarios: Scenario[] = [
  {
    name: 'push (incremental qcow2 + full raw, with a checkpoint)',
    backupXml: (dir) => "<domainbackup><disks><disk name='sda' backupmode='incremental' incremental='c1'/>" +
      `<disk name='sdb' type='file'><driver type='raw'/><target file='${dir}/b.raw'/></disk></disks></domainbackup>`,
    checkpointXml: '<domaincheckpoint><name>c2</name></domaincheckpoint>',
  },
  {
    name: 'pull (incremental, unix socket, TLS, with a checkpoint)',
    backupXml: (dir) => `<domainbackup mode='pull'><incremental>c1</incremental><server transport='unix' socket='${dir}/nbd.sock' tls='yes'/></domainbackup>`,
    checkpointXml: '<domaincheckpoint><name>c2</name></domaincheckpoint>',
  },
];

/** The checkpoint created with the backup stays once its metadata was committed (libvirt), and only then. */
function expectedLeft(w: World): string[] {
  return w.committed.has('c2') ? w.disks.map((d) => `bitmap ${d.node}/c2`).sort() : [];
}

/** A begin that runs to the end: how many status saves and mutating QMP commands it takes. */
async function measure(s: Scenario): Promise<{ saves: number; commands: number }> {
  const w = await world();
  try {
    const { host, backups } = driver(w);
    await host.start();
    w.qemu.resetCounters();
    const id = await backups.backupBegin(host.dom.uuid, s.backupXml(w.dir), s.checkpointXml, 0);
    const out = { saves: host.saves, commands: w.qemu.mutatingCount };
    // begin's intents are saved at once: the record with every intent, then 'running'
    assert.ok(out.commands >= 6 && out.saves === 2, JSON.stringify(out));
    assert.deepEqual(await backups.listJobIds(host.dom.uuid), [id]);
    await backups.abortJob(host.dom.uuid, 0);
    assert.deepEqual(w.qemu.leftovers().sort(), expectedLeft(w));
    assert.deepEqual(await files(w), ['a.qcow2', 'b.qcow2']);
    return out;
  } finally {
    await closeWorld(w);
  }
}

for (const s of scenarios) {
  test(`${s.name}: a failure injected at every QMP step leaves nothing behind`, async () => {
    const { commands } = await measure(s);
    for (let n = 1; n <= commands; n++) {
      const w = await world();
      try {
        const { host, backups } = driver(w);
        await host.start();
        w.qemu.resetCounters();
        w.qemu.failAt = n;
        await assert.rejects(backups.backupBegin(host.dom.uuid, s.backupXml(w.dir), s.checkpointXml, 0),
          (e: Error) => /injected failure/.test(e.message), `step ${n}`);
        const failed = w.qemu.received.filter((c) => c.cmd !== 'qmp_capabilities' && !c.cmd.startsWith('query')).at(n - 1);
        assert.deepEqual(w.qemu.leftovers().sort(), expectedLeft(w), `failure at step ${n} (${failed?.cmd})`);
        assert.deepEqual(await files(w), ['a.qcow2', 'b.qcow2'], `files after a failure at step ${n}`);
        assert.equal(host.savedJob, undefined, 'no job record left');
        assert.deepEqual(await backups.listJobIds(host.dom.uuid), []);
        assert.ok(host.log.lines.some((l) => l.level === 'error' && l.msg === 'backup job failed to start' && /injected/.test(String(l.fields.error))));
        // and the next backup works
        w.qemu.failAt = 0;
        for (const b of w.qemu.leftovers()) w.qemu.nodes.get(b.slice(7).split('/')[0]!)?.bitmaps.delete('c2');
        w.committed.delete('c2');
        await backups.backupBegin(host.dom.uuid, s.backupXml(w.dir), s.checkpointXml, 0);
        await backups.abortJob(host.dom.uuid, 0);
      } finally {
        await closeWorld(w);
      }
    }
  });

  for (const qemuAlive of [true, false]) {
    test(`${s.name}: a kill at every step boundary, then recovery ${qemuAlive ? '(QEMU alive), twice' : 'after QEMU died'}, leaves nothing behind`, async () => {
      const { saves, commands } = await measure(s);
      const points = [
        ...Array.from({ length: saves }, (_, i) => ({ save: i + 1 })),
        ...Array.from({ length: commands }, (_, i) => ({ command: i + 1 })),
      ];
      for (const p of points) {
        for (const when of ['before', 'after'] as const) {
          const at = 'save' in p ? `kill ${when} save ${p.save}/${saves}` : `kill ${when} command ${p.command}/${commands}`;
          const n = 'save' in p ? p.save : 0;
          const w = await world();
          try {
            const first = driver(w);
            await first.host.start();
            first.host.kill = ('save' in p ? { save: first.host.saves + p.save, when } : { command: first.host.commands + p.command, when }) satisfies KillPoint;
            const begun = first.backups.backupBegin(first.host.dom.uuid, s.backupXml(w.dir), s.checkpointXml, 0);
            begun.catch(() => {});
            await Promise.race([first.host.killed, begun]);
            assert.ok(await Promise.race([first.host.killed.then(() => true), begun.then(() => false, () => false)]), `${at}: killed`);
            w.qemu.dropClients();
            const running = when === 'after' && n === saves;
            if (qemuAlive) {
              for (let round = 0; round < 2; round++) {
                // the same status file twice: the second recovery must be harmless (idempotent)
                const next = driver(w, first.host.saved);
                await next.host.open();
                if (running) {
                  assert.deepEqual(await next.backups.listJobIds(next.host.dom.uuid), [1], `${at}: a started job is picked up`);
                  await next.backups.abortJob(next.host.dom.uuid, 0);
                } else {
                  assert.deepEqual(await next.backups.listJobIds(next.host.dom.uuid), [], at);
                  const logged = next.host.log.lines.some((l) => l.msg === 'backup job recovered');
                  assert.equal(logged, first.host.savedJob !== undefined, `${at}: recovery logged when a record was saved`);
                }
                assert.deepEqual(w.qemu.leftovers().sort(), expectedLeft(w), `${at}, recovery ${round + 1}`);
                assert.deepEqual(await files(w), ['a.qcow2', 'b.qcow2'], `${at}: files`);
                assert.equal(next.host.savedJob === undefined || running, true, `${at}: job record dropped`);
                if (running) break;
              }
            } else {
              const next = driver(w, first.host.saved);
              await next.host.openDead(ShutoffReason.CRASHED);
              assert.deepEqual(await files(w), ['a.qcow2', 'b.qcow2'], `${at}: files of a dead QEMU`);
              if (!running) assert.equal(next.host.savedJob, undefined, `${at}: job record dropped`);
              else assert.ok(next.host.events.some((e) => e.type === 'job-completed'), `${at}: the started job failed`);
            }
          } finally {
            await closeWorld(w);
          }
        }
      }
    });
  }
}

test('job logs: begin, QEMU job status changes (with QEMU time), completion; errors name the job ids', async () => {
  const w = await world();
  try {
    const { host, backups } = driver(w);
    await host.start();
    const uuid = host.dom.uuid;
    const id = await backups.backupBegin(uuid, "<domainbackup><disks><disk name='sda'/><disk name='sdb' backup='no'/></disks></domainbackup>", null, 0);
    await assert.rejects(backups.backupBegin(uuid, null, null, 0),
      { code: ErrorCode.OPERATION_INVALID, message: `another backup job is already running (job ${id})` });
    await assert.rejects(backups.backupGetXMLDesc(uuid, id + 5, 0),
      { code: ErrorCode.NO_DOMAIN_BACKUP, message: `no domain backup job with id ${id + 5} present (the domain's backup job is ${id})` });
    const started = host.log.lines.find((l) => l.msg === 'backup job started');
    assert.deepEqual(started?.fields.domain, { name: 'fake', uuid });
    assert.equal(started?.fields.jobId, id);
    assert.equal(started?.fields.mode, 'push');
    assert.deepEqual(started?.fields.disks, ['sda']);
    assert.equal(typeof started?.fields.durationMs, 'number');
    // the job's XML shows every default
    assert.match(await backups.backupGetXMLDesc(uuid, id, 0), /<disk name='sda' backup='yes' type='file' backupmode='full'>\s*<driver type='qcow2'\/>/);

    w.qemu.concludeJobs();
    const deadline = Date.now() + 5000;
    while (!host.events.some((e) => e.type === 'job-completed') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const tap = host.log.lines.filter((l) => l.msg === 'qmp JOB_STATUS_CHANGE');
    assert.deepEqual(tap.map((l) => l.fields.status), ['created', 'running', 'waiting', 'pending', 'concluded', 'null']);
    for (const l of tap) {
      assert.equal(l.level, 'debug');
      assert.equal(l.fields.domain, uuid);
      assert.equal(l.fields.job, 'backup-sda-libvirt-2-format');
      assert.ok(typeof l.fields.qemuTime === 'number' && Math.abs((l.fields.qemuTime as number) - Date.now()) < 60_000);
    }
    const done = host.log.lines.find((l) => l.msg === 'backup job completed');
    assert.equal(done?.fields.jobId, id);
    assert.equal(done?.fields.bytes, 100);
    assert.equal(typeof done?.fields.durationMs, 'number');
    assert.equal(await backups.backupEnd(uuid, id, 0), 1);
    const kept = await files(w);
    assert.equal(kept.length, 3, 'the finished target is kept');
    assert.match(kept[1]!, /^a\.qcow2\.\d+$/);
    assert.deepEqual(w.qemu.leftovers(), []);

    // an aborted push: cancel logged with its reason, the target is gone
    const id2 = await backups.backupBegin(uuid, `<domainbackup><disks><disk name='sdb' type='file'><target file='${w.dir}/x.qcow2'/></disk><disk name='sda' backup='no'/></disks></domainbackup>`, null, 0);
    await backups.abortJob(uuid, 0);
    const cancelled = host.log.lines.find((l) => l.msg === 'backup job cancelled');
    assert.equal(cancelled?.fields.jobId, id2);
    assert.equal(cancelled?.fields.reason, 'aborted');
    assert.ok(!(await files(w)).includes('x.qcow2'));
    assert.deepEqual(w.qemu.leftovers(), []);
  } finally {
    await closeWorld(w);
  }
});

test('an undo that fails keeps its log; the next begin undoes it first', async () => {
  const w = await world();
  try {
    const { host, backups } = driver(w);
    await host.start();
    const uuid = host.dom.uuid;
    const xml = "<domainbackup><disks><disk name='sda'/><disk name='sdb' backup='no'/></disks></domainbackup>";
    w.qemu.resetCounters();
    // sda: blockdev-add storage (1), blockdev-create (2), job-dismiss (3), blockdev-add format (4), transaction (5)
    w.qemu.failAt = 5;
    w.qemu.alsoFail.add(6); // the undo's first command: blockdev-del of the format node
    await assert.rejects(backups.backupBegin(uuid, xml, null, 0), /injected failure of 'transaction'/);
    assert.deepEqual(w.qemu.received.filter((c) => !c.cmd.startsWith('query')).map((c) => c.cmd),
      ['blockdev-add', 'blockdev-create', 'job-dismiss', 'blockdev-add', 'transaction', 'blockdev-del', 'blockdev-del']);
    assert.deepEqual(w.qemu.leftovers().sort(), ['node libvirt-100-format', 'node libvirt-100-storage'],
      'the format node could not be deleted, nor the storage node under it');
    assert.deepEqual(await files(w), ['a.qcow2', 'b.qcow2'], 'the target file is gone all the same');
    const saved = host.savedJob as { phase: string; steps: { kind: string; name?: string }[] };
    assert.equal(saved.phase, 'starting');
    assert.deepEqual(saved.steps.map((s) => `${s.kind} ${s.name}`), ['node libvirt-100-storage', 'node libvirt-100-format']);
    assert.ok(host.log.lines.some((l) => l.level === 'warn' && l.msg === 'cannot undo a backup step'));

    w.qemu.failAt = 0;
    w.qemu.alsoFail.clear();
    const id = await backups.backupBegin(uuid, xml, null, 0);
    assert.ok(host.log.lines.some((l) => l.msg === 'backup job recovered' && l.fields.reason === 'interrupted start rolled back'));
    await backups.abortJob(uuid, 0);
    assert.deepEqual(w.qemu.leftovers(), []);
    assert.deepEqual(await files(w), ['a.qcow2', 'b.qcow2']);
    assert.equal(id, 2);
  } finally {
    await closeWorld(w);
  }
});
