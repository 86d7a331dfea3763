// The libvirt client driver's scenario, run against a real libvirtd
// (test/qemu/libvirt-driver.test.ts) and virtbackd's libvirt socket
// (test/qemu/libvirt-driver-virtbackd.test.ts): the virtback CLI (`-c qemu+unix:///…`)
// and the SDK drive VMs that libvirt runs — define, start, list, dumpxml,
// checkpoints, push backups full and incremental with client-side job ids and
// their job-completed events, manifests written on completion so that
// backup-restore and backup-verify work, a pull backup read by backup-pull,
// abort, and libvirtd's errors with their codes. `libvirtClientScenario` takes
// the URI so the same scenario runs against virtbackd's libvirt socket.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { JobCompletedEvent } from '../../src/api/driver.js';
import type { CheckedDriver } from '../../src/api/checked-driver.js';
import type { Connect, Domain } from '../../src/api/public.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { DomainState, JobType } from '../../src/flags.js';
import { LibvirtDriver } from '../../src/libvirt/driver.js';
import { connectUnixStream } from '../../src/libvirt/transport.js';
import { connect } from '../../src/sdk/connect.js';
import { runMain } from './cli.js';
import { throttleCpu } from './cpu-throttle.js';
import { refused } from './errors.js';
import { smallDomainXml } from './private-libvirtd.js';
import { qemuProcessesFor, waitFor } from './qemu-env.js';

const run = promisify(execFile);

/** A pattern written at an offset: the guest's writes, replayed onto the expected images. */
type Write = [pattern: number, offset: string, len: string];

const pushXml = (target: string, incremental?: string) => `<domainbackup mode='push'>
  ${incremental ? `<incremental>${incremental}</incremental>` : ''}
  <disks><disk name='vda' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks>
</domainbackup>
`;

/** An image holding exactly `writes` (the disk as the guest left it at some instant), made without the VM. */
async function expectedImage(file: string, size: string, writes: readonly Write[]): Promise<string> {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, size]);
  const cmds = writes.flatMap(([p, off, len]) => ['-c', `write -P 0x${p.toString(16)} ${off} ${len}`]);
  if (cmds.length > 0) await run('qemu-io', ['-f', 'qcow2', ...cmds, file]);
  return file;
}

async function identical(a: string, b: string): Promise<void> {
  const r = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b]);
  assert.match(r.stdout, /Images are identical/);
}

export interface ScenarioTarget {
  /** qemu+unix:///system?socket=… */
  uri: string;
  /** the daemon's read-only socket (the -ro sibling of socket=) */
  roSocket: string;
  /** a scratch folder both we and the daemon's QEMU can use */
  dir: string;
  /** the domain to define (default: libvirt's TCG domain with one virtio qcow2 disk 'vda') */
  domainXml?: (name: string, disk: string) => string;
  /** the QOM path HMP `qemu-io -d` writes through (default: libvirt's virtio-disk0 backend) */
  diskQomPath?: string;
}

/** The whole scenario; each step asserts what libvirt and the files show. */
export async function libvirtClientScenario(target: ScenarioTarget): Promise<void> {
  const { uri, dir } = target;
  const cli = async (...args: string[]) => {
    const r = await runMain(['-c', uri, ...args]);
    assert.equal(r.code, 0, `virtback ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const name = 'lvc1';
  const disk = path.join(dir, `${name}.qcow2`);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '256M']);
  await writeFile(path.join(dir, 'dom.xml'), (target.domainXml ?? smallDomainXml)(name, disk));
  const qom = target.diskQomPath ?? '/machine/peripheral/virtio-disk0/virtio-backend';

  // ---- the CLI, as a user would: define, start, list, dumpxml
  assert.match(await cli('define', path.join(dir, 'dom.xml')), new RegExp(`Domain '${name}' defined`));
  assert.match(await cli('start', name), new RegExp(`Domain '${name}' started`));
  assert.match(await cli('list', '--all'), new RegExp(`\\d+\\s+${name}\\s+running`));
  assert.ok((await cli('dumpxml', name)).includes(`<source file='${disk}'`), 'dumpxml is libvirt\'s live XML');

  const writes: Write[] = [];
  const guestWrite = async (...w: Write) => {
    const cmd = `qemu-io -d ${qom} "write -P 0x${w[0].toString(16)} ${w[1]} ${w[2]}"`;
    assert.equal((await cli('qemu-monitor-command', name, '--hmp', cmd)).trim(), '', 'qemu-io wrote');
    writes.push(w);
  };

  // ---- checkpoints through the CLI
  assert.match(await cli('checkpoint-create-as', name, '--name', 'cpx'), /Domain checkpoint cpx created/);
  assert.match(await cli('checkpoint-list', name, '--name'), /^cpx$/m);
  assert.match(await cli('checkpoint-dumpxml', name, 'cpx'), /<name>cpx<\/name>/);
  assert.match(await cli('checkpoint-delete', name, 'cpx'), /Domain checkpoint cpx deleted/);
  assert.equal((await cli('checkpoint-list', name, '--name')).trim(), '');

  // ---- the SDK: push full then incremental on one connection (job ids 1, 2)
  const conn = await connect(uri);
  try {
    const dom = await conn.lookupByName(name);
    await domainExtras(dom, cli);
    const completed: JobCompletedEvent[] = [];
    conn.on('job-completed', (ev) => completed.push(ev));
    await guestWrite(0xab, '0', '1M');
    await guestWrite(0xcd, '4M', '64k');
    const t1 = path.join(dir, 'full.qcow2');
    assert.equal(await dom.backupBegin(pushXml(t1), '<domaincheckpoint><name>c1</name></domaincheckpoint>'), 1);
    const at1 = [...writes];
    await guestWrite(0x99, '0', '64k'); // after the instant: not in the full backup
    const ev1 = await waitFor(() => completed.find((e) => e.jobId === 1), 'job-completed of job 1', 60_000);
    assert.equal(ev1.stats.type, JobType.COMPLETED);
    assert.equal(ev1.stats.success, true);
    assert.equal(ev1.domain.uuid, dom.uuid);
    assert.equal(await dom.backupEnd(1), 1, 'a completed push ends complete');

    await guestWrite(0x12, '8M', '1M');
    const t2 = path.join(dir, 'inc.qcow2');
    assert.equal(await dom.backupBegin(pushXml(t2, 'c1'), '<domaincheckpoint><name>c2</name></domaincheckpoint>'), 2);
    const at2 = [...writes];
    await guestWrite(0x34, '16M', '64k');
    const ev2 = await waitFor(() => completed.find((e) => e.jobId === 2), 'job-completed of job 2', 60_000);
    assert.equal(ev2.stats.success, true);
    assert.deepEqual(await dom.listJobIds(), [2], 'a finished push stays visible until it is ended');
    assert.match(await dom.backupGetXMLDesc(2), new RegExp(`<target file='${t2}'/>`), 'its XML too');
    assert.equal(await dom.backupEnd(2), 1);
    assert.deepEqual(await dom.listJobIds(), []);

    // libvirt's completed-job stats, through the CLI
    assert.match(await cli('domjobinfo', name, '--completed', '--keep-completed'), /Job type:\s+Completed/);

    // manifests: what restore and verify stand on
    const m1 = JSON.parse(await readFile(`${t1}.manifest.json`, 'utf8')) as Record<string, unknown>;
    const m2 = JSON.parse(await readFile(`${t2}.manifest.json`, 'utf8')) as Record<string, unknown>;
    assert.deepEqual([m1.jobId, m1.checkpoint, m1.incrementalFrom, m1.parentBackup], [1, 'c1', null, null]);
    assert.deepEqual([m2.jobId, m2.checkpoint, m2.incrementalFrom, m2.parentBackup], [2, 'c2', 'c1', t1]);
    assert.deepEqual((await conn.lookupByName(name)).getUUIDString(), (m2.domain as { uuid: string }).uuid);

    await identical(await expectedImage(path.join(dir, 'exp1.qcow2'), '256M', at1), t1);
    const restored = path.join(dir, 'restored.qcow2');
    assert.match(await cli('backup-restore', t2, restored, '--quiet'), /\(2 images\) restored to/);
    await identical(await expectedImage(path.join(dir, 'exp2.qcow2'), '256M', at2), restored);
    assert.match(await cli('backup-verify', t2, '--quiet'), /verified: 2 images match their manifests/);

    // ---- a pull backup begun by the CLI (another connection), read by backup-pull
    const pullDir = path.join(dir, 'pulled');
    await mkdir(pullDir);
    const nbdSock = path.join(dir, 'nbd.sock');
    await writeFile(path.join(dir, 'pull.xml'), `<domainbackup mode='pull'><server transport='unix' socket='${nbdSock}'/>
  <disks><disk name='vda' type='file'><scratch file='${path.join(dir, 'scratch.qcow2')}'/><driver type='qcow2'/></disk></disks></domainbackup>\n`);
    assert.match(await cli('backup-begin', name, path.join(dir, 'pull.xml')), /Backup started, job id 1/);
    const at3 = [...writes];
    await guestWrite(0x56, '0', '64k'); // after the pull's instant
    assert.match(await cli('backup-pull', name, '--output', pullDir, '--quiet'), /pulled: 1 disk/);
    const pulled = (await run('sh', ['-c', `ls ${pullDir}/*.qcow2`])).stdout.trim();
    await identical(await expectedImage(path.join(dir, 'exp3.qcow2'), '256M', at3), pulled);
    assert.match(await cli('backup-dumpxml', name), /<domainbackup mode='pull'[ >]/);
    assert.match(await cli('backup-end', name), /ended, backup complete/);
    assert.equal((await dom.getJobStats()).type, JobType.NONE, 'libvirt ended the pull');

    // ---- the CLI's push with --wait: its one connection writes the manifest before it exits, and continues the chain
    const t4 = path.join(dir, 'inc2.qcow2');
    await writeFile(path.join(dir, 'push4.xml'), pushXml(t4, 'c2'));
    await writeFile(path.join(dir, 'cp3.xml'), '<domaincheckpoint><name>c3</name></domaincheckpoint>\n');
    const begun = await cli('backup-begin', name, path.join(dir, 'push4.xml'), path.join(dir, 'cp3.xml'), '--wait', '--quiet');
    assert.match(begun, /Backup started, job id 1\n[^]*Backup job 1 completed/);
    const at4 = [...writes];
    const m4 = JSON.parse(await readFile(`${t4}.manifest.json`, 'utf8')) as Record<string, unknown>;
    assert.deepEqual([m4.checkpoint, m4.incrementalFrom, m4.parentBackup], ['c3', 'c2', t2]);
    assert.match(await cli('backup-verify', t4, '--quiet'), /verified: 3 images match their manifests/);
    const restored4 = path.join(dir, 'restored4.qcow2');
    await cli('backup-restore', t4, restored4, '--quiet');
    await identical(await expectedImage(path.join(dir, 'exp4.qcow2'), '256M', at4), restored4);

    // ---- abort of a push: backupEnd with ABORT is libvirt's abortJob
    await guestWrite(0x77, '32M', '192M');
    // the pull, begun by another connection, was seen ending here: it took id 3 on this connection
    const pullEnd = await waitFor(() => completed.find((e) => e.jobId === 3), 'job-completed of the pull', 60_000);
    assert.equal(pullEnd.stats.success, true, 'an ended pull counts as success');
    // the CLI's push was another connection's job too: id 4 here
    await waitFor(() => completed.find((e) => e.jobId === 4 && e.stats.success === true), 'job-completed of the CLI push', 60_000);
    const { id: id3, target: t3 } = await abortedPush(dom, dir, disk, completed);
    const ev3 = await waitFor(() => completed.find((e) => e.jobId === id3), 'job-completed of the aborted job', 60_000);
    assert.equal(ev3.stats.type, JobType.CANCELLED);
    assert.ok(!existsSync(`${t3}.manifest.json`), 'no manifest for an aborted push');

    await libvirtErrors(conn, dom);
    await readOnly(target, dom);

    // lifecycle events of what another client does
    const lifecycle: string[] = [];
    conn.on('lifecycle', (ev) => lifecycle.push(`${ev.domain.name} ${ev.event} ${ev.detail}`));
    // libvirt's registrations are made in the background: wait for them, or the destroy may come first
    await ((conn.rawDriver as CheckedDriver).inner as LibvirtDriver).whenRegistered();
    assert.match(await cli('destroy', name), /destroyed/);
    await waitFor(() => lifecycle.includes(`${name} stopped destroyed`), 'the stopped/destroyed lifecycle event', 30_000);
  } finally {
    await conn.close();
  }

  // START_AUTODESTROY and START_PAUSED: the daemon kills the domain when the connection that started it ends
  const starter = await connect(uri);
  try {
    await (await starter.lookupByName(name)).create({ paused: true, autodestroy: true });
    assert.match(await cli('domstate', name), /paused/);
  } finally {
    await starter.close();
  }
  // asked while libvirtd tears the domain down, domstate may be refused ("domain is not running"): ask again
  await waitFor(async () => /shut off/.test((await runMain(['-c', uri, 'domstate', name])).stdout) || null, 'the autodestroy domain to die with its connection', 30_000);
  const noJob = await runMain(['-c', uri, 'backup-end', name]);
  assert.deepEqual([noJob.code, noJob.stderr.trim()], [1, 'error: no domain backup job present']);
  assert.match(await cli('undefine', name, '--checkpoints-metadata'), /undefined/);
  assert.equal((await cli('list', '--all', '--name')).trim(), '');
}

/**
 * A push ended with ABORT while it copies: backupEnd without ABORT is refused
 * first, with ABORT it ends incomplete (0). Both come right after the begin,
 * with the domain's QEMU held to a tenth of a CPU where a cgroup can do that
 * (a real libvirtd sets no copy speed, and 192 MiB can copy within one round
 * trip through it); a copy that wins the race anyway ends complete, really
 * finished, and another push is tried.
 */
async function abortedPush(dom: Domain, dir: string, disk: string, completed: readonly JobCompletedEvent[]): Promise<{ id: number; target: string }> {
  const qemu = (await qemuProcessesFor(disk))[0]?.pid;
  const throttle = qemu === undefined ? 'the domain\'s QEMU was not found' : await throttleCpu(qemu, 10);
  try {
    return await abortedPushAttempts(dom, dir, completed);
  } catch (e) {
    if (typeof throttle === 'string') (e as Error).message += ` (unthrottled: ${throttle})`;
    throw e;
  } finally {
    if (typeof throttle !== 'string') await throttle.release();
  }
}

async function abortedPushAttempts(dom: Domain, dir: string, completed: readonly JobCompletedEvent[]): Promise<{ id: number; target: string }> {
  for (let attempt = 1; attempt <= 5; attempt++) {
    const target = path.join(dir, `aborted-${attempt}.qcow2`);
    const id = await dom.backupBegin(pushXml(target));
    assert.ok(id >= 5);
    const early = await dom.backupEnd(id).then((r) => r, (e: unknown) => e);
    if (early !== 1) {
      assert.ok(early instanceof VirError && early.code === ErrorCode.OPERATION_INVALID, String(early));
      assert.match(early.message, new RegExp(`backup job ${id} is still copying: wait for job-completed or end it with ABORT`));
      const stats = await dom.getJobStats();
      if (stats.type === JobType.UNBOUNDED) assert.equal(stats.id, id, "job stats carry the connection's id");
      const end = await dom.backupEnd(id, { abort: true });
      if (end === 0) return { id, target };
      assert.equal(end, 1, 'a push that finished before the abort ends complete');
    }
    const ev = await waitFor(() => completed.find((e) => e.jobId === id), `job-completed of push ${id}`, 60_000);
    assert.equal(ev.stats.success, true, 'ended complete: the copy had really finished');
  }
  throw new Error('every push finished before it could be aborted');
}

/** virDomainGetInfo's fields, suspend/resume, autostart, block job info: libvirt's answers. */
async function domainExtras(dom: Domain, cli: (...args: string[]) => Promise<string>): Promise<void> {
  const info = await dom.getInfo();
  assert.deepEqual([info.state, info.maxMem, info.memory, info.nrVirtCpu, info.persistent], [DomainState.RUNNING, 96 * 1024, 96 * 1024, 1, true]);
  assert.ok((info.cpuTime ?? 0) > 0, 'a running QEMU has used CPU time');
  await dom.suspend();
  assert.equal((await dom.getInfo()).state, DomainState.PAUSED);
  assert.match(await cli('domstate', dom.getName(), '--reason'), /paused \(user\)/);
  await dom.resume();
  assert.equal((await dom.getInfo()).state, DomainState.RUNNING);
  assert.equal(await dom.getAutostart(), false);
  await dom.setAutostart(true);
  assert.equal(await dom.getAutostart(), true);
  await dom.setAutostart(false);
  assert.deepEqual(await dom.getBlockJobInfo('vda'), { found: false, type: 0, bandwidth: 0, cur: 0, end: 0 });
  assert.match(await cli('blockjob', dom.getName(), 'vda'), /No current block job for vda/);
}

/** libvirtd's errors come through with their codes; what cannot be emulated is refused, not faked. */
async function libvirtErrors(conn: Connect, dom: Domain): Promise<void> {
  await refused(conn.lookupByName('no-such-domain'), ErrorCode.NO_DOMAIN, /no domain with matching name 'no-such-domain'/);
  await refused(dom.checkpointLookupByName('no-such-cp'), ErrorCode.NO_DOMAIN_CHECKPOINT, /no-such-cp/);
  await refused(dom.backupBegin(null, '<domaincheckpoint><name>nm</name></domaincheckpoint>', { noMetadata: true }), ErrorCode.NO_SUPPORT, /NO_METADATA/);
  await refused(dom.listUnknownBitmaps(), ErrorCode.NO_SUPPORT, /not supported/);
  await refused(dom.backupEnd(0), ErrorCode.NO_DOMAIN_BACKUP, /no domain backup job present/);
  // QUIESCE is fsFreeze before the job: libvirtd refuses it without a guest agent, and no job begins
  await refused(dom.backupBegin(null, null, { quiesce: true }), 74, /QEMU guest agent is not configured/);
  assert.deepEqual(await dom.listJobIds(), []);
  assert.ok((await dom.listAllCheckpoints()).every((c) => c.getName() !== 'nm'), 'the refused begin created nothing');
}

/** Read-only: connect() takes the -ro socket and says RO; the -ro socket itself refuses mutations (the daemon's check). */
async function readOnly(target: ScenarioTarget, dom: Domain): Promise<void> {
  const ro = await connect(target.uri, { readOnly: true });
  try {
    assert.equal(ro.isReadOnly(), true);
    assert.ok((await ro.listAllDomainSummaries()).some((s) => s.uuid === dom.uuid), 'a read-only connection lists');
  } finally {
    await ro.close();
  }
  const driver = await LibvirtDriver.open(await connectUnixStream(target.roSocket), { uri: target.uri, openName: 'qemu:///system' });
  try {
    await refused(driver.checkpointCreateXML(dom.uuid, '<domaincheckpoint/>', 0), ErrorCode.OPERATION_DENIED,
      /read only access prevents virDomainCheckpointCreateXML/);
    assert.deepEqual((await driver.listAllCheckpoints(dom.uuid, 0)).sort(), ['c1', 'c2', 'c3'], 'reads still work there');
  } finally {
    await driver.close();
  }
}

