// The private libvirtd harness (test/helpers/private-libvirtd.ts) gives a real
// libvirtd that really runs VMs here, driven by unmodified virsh: define, start,
// a guest-like write, a checkpoint, a push backup whose target holds the disk
// as it was when the backup began, destroy, undefine — and it leaves nothing on
// the host: no file under the real /run/libvirt, /var/lib/libvirt, ...; no
// process once stopped, even with a domain still running, nor when the test
// process dies without stopping it.
//
// What had to be configured, and why (details in the helper's header):
// - libvirtd runs under `unshare --mount --pid --fork --mount-proc`, behind a
//   shell as PID 1 that reaps: libvirtd does not reap the QEMU it double-forks
//   (its capability probes included), and their zombies stalled its start for
//   40 s per probe.
// - /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt,
//   /etc/libvirt are the scratch dir's folders (an overlay over the parent when
//   the folder does not exist on the host, so no mount point is left behind).
// - /etc/passwd and /etc/group get `libvirt-qemu` (private copies): the QEMU
//   driver resolves that built-in user before it reads qemu.conf.
// - qemu.conf: user/group root, dynamic_ownership 0, security_driver "none",
//   namespaces [], cgroup_controllers [] (no systemd here), stdio_handler
//   "file" (no virtlogd).
// - The domain: type 'qemu' (TCG, no /dev/kvm here), virtio disk; HMP
//   `qemu-io -d` takes the QOM path of the virtio-blk backend
//   (/machine/peripheral/virtio-disk0/virtio-backend): libvirt's -blockdev
//   disks have no legacy drive name, and the qdev id alone is refused.
// - `domjobinfo --completed` forgets the completed job once read, hence
//   --keep-completed while polling.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { privateLibvirtdSkipReason, smallDomainXml, startPrivateLibvirtd, type PrivateLibvirtd } from '../helpers/private-libvirtd.js';
import { processesMentioning, sleep } from '../helpers/qemu-env.js';

const run = promisify(execFile);
const skip = await privateLibvirtdSkipReason();

const HOST_LIBVIRT_DIRS = ['/run/libvirt', '/var/lib/libvirt', '/var/cache/libvirt', '/var/log/libvirt', '/etc/libvirt'];

/** Every path under the host's libvirt folders (as this process sees them), or "<dir> absent". */
async function hostLibvirtFiles(): Promise<string[]> {
  const all: string[] = [];
  for (const dir of HOST_LIBVIRT_DIRS) {
    if (!existsSync(dir)) {
      all.push(`${dir} absent`);
      continue;
    }
    for (const e of await readdir(dir, { recursive: true })) all.push(path.join(dir, e));
  }
  return all.sort();
}

/** Defines and starts a 32 MiB-disk domain in `lv`; returns its disk path. */
async function startDomain(lv: PrivateLibvirtd, name: string): Promise<string> {
  const disk = path.join(lv.dir, `${name}.qcow2`);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '32M']);
  const xml = path.join(lv.dir, `${name}.xml`);
  await writeFile(xml, smallDomainXml(name, disk));
  assert.match(await lv.virsh('define', xml), new RegExp(`Domain '${name}' defined from ${xml}`));
  assert.match(await lv.virsh('start', name), new RegExp(`Domain '${name}' started`));
  return disk;
}

async function guestWrite(lv: PrivateLibvirtd, name: string, pattern: number, offset: string, len: string): Promise<void> {
  const out = await lv.virsh('qemu-monitor-command', name, '--hmp',
    `qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0x${pattern.toString(16)} ${offset} ${len}"`);
  // HMP qemu-io prints nothing on success, the error text otherwise
  assert.equal(out.trim(), '', `qemu-io write: ${out}`);
}

const qemuOf = async (disk: string) =>
  (await processesMentioning(disk)).filter((p) => path.basename(p.argv[0] ?? '').startsWith('qemu-system-'));

async function waitCompletedJob(lv: PrivateLibvirtd, name: string): Promise<string> {
  const end = Date.now() + 60_000;
  for (;;) {
    const info = await lv.virsh('domjobinfo', name, '--completed', '--keep-completed');
    if (/Job type:\s+Completed/.test(info)) return info;
    if (/Job type:\s+Failed/.test(info) || Date.now() > end) throw new Error(`backup job did not complete: ${info}`);
    await sleep(100);
  }
}

test('private libvirtd: virsh runs a domain, checkpoint and push backup; nothing is left on the host', { skip, timeout: 180_000 }, async (t) => {
  const hostBefore = await hostLibvirtFiles();
  const lv = await startPrivateLibvirtd();
  t.after(() => lv.stop());
  assert.match(await lv.virsh('version'), /Running hypervisor: QEMU \d+\.\d+/);

  const name = 'lvd-push';
  const disk = await startDomain(lv, name);
  assert.equal((await lv.virsh('domstate', name)).trim(), 'running');
  assert.equal((await qemuOf(disk)).length, 1, 'one QEMU runs the disk');
  assert.ok(existsSync(path.join(lv.dir, 'log', 'qemu', `${name}.log`)), 'QEMU logs into the private /var/log/libvirt');

  await guestWrite(lv, name, 0xab, '0', '1M');
  await guestWrite(lv, name, 0xcd, '4M', '64k');
  assert.match(await lv.virsh('checkpoint-create-as', name, 'cp1'), /Domain checkpoint cp1 created/);
  assert.equal((await lv.virsh('checkpoint-list', name, '--name')).trim(), 'cp1');
  assert.ok(existsSync(path.join(lv.dir, 'lib', 'qemu', 'checkpoint', name, 'cp1.xml')),
    'the checkpoint metadata is in the private /var/lib/libvirt');

  const target = path.join(lv.dir, 'target.qcow2');
  const backupXml = path.join(lv.dir, 'backup.xml');
  await writeFile(backupXml, `<domainbackup mode='push'>
  <disks><disk name='vda' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks>
</domainbackup>
`);
  assert.match(await lv.virsh('backup-begin', name, '--backupxml', backupXml), /Backup started/);
  // after the backup began: must not reach the target
  await guestWrite(lv, name, 0xef, '0', '64k');
  const info = await waitCompletedJob(lv, name);
  assert.match(info, /Operation:\s+Backup/);
  assert.doesNotMatch(info, /Error message/);

  // the disk as it was when the backup began, made independently
  const expected = path.join(lv.dir, 'expected.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', expected, '32M']);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 4M 64k', expected]);
  const same = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', expected, target]);
  assert.match(same.stdout, /Images are identical/);

  assert.match(await lv.virsh('destroy', name), new RegExp(`Domain '${name}' destroyed`));
  assert.equal((await qemuOf(disk)).length, 0, 'destroy stopped the QEMU');
  await assert.rejects(run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', expected, disk]),
    (e: { code?: number }) => e.code === 1, 'the disk went on (0xef written after the backup began)');
  assert.equal((await lv.virsh('checkpoint-list', name, '--name')).trim(), 'cp1', 'checkpoints outlive destroy');
  assert.match(await lv.virsh('undefine', name, '--checkpoints-metadata'), new RegExp(`Domain '${name}' has been undefined`));
  assert.equal((await lv.virsh('list', '--all', '--name')).trim(), '');
  assert.ok(!existsSync(path.join(lv.dir, 'lib', 'qemu', 'checkpoint', name, 'cp1.xml')), 'checkpoint metadata removed');

  await lv.stop();
  assert.equal(existsSync(lv.dir), false, 'stop removed the scratch dir');
  assert.deepEqual(await processesMentioning(lv.dir), [], 'no process of the private libvirtd is left');
  assert.deepEqual(await hostLibvirtFiles(), hostBefore, 'nothing new under the host libvirt folders');
});

test('private libvirtd: stop() kills a domain left running and libvirtd, and removes the scratch dir', { skip, timeout: 120_000 }, async (t) => {
  const lv = await startPrivateLibvirtd();
  t.after(() => lv.stop());
  const disk = await startDomain(lv, 'lvd-left');
  const [qemu] = await qemuOf(disk);
  assert.ok(qemu, 'the domain runs');
  const ro = ['-r', '-c', `qemu+unix:///system?socket=${lv.roSocket}`];
  assert.match((await run('virsh', [...ro, 'list', '--name'])).stdout, /lvd-left/, 'the read-only socket reads');
  await assert.rejects(run('virsh', [...ro, 'destroy', 'lvd-left']), (e: { stderr?: string }) =>
    /read only access prevents virDomainDestroy/.test(e.stderr ?? ''), 'and refuses changes');
  const started = Date.now();
  await lv.stop();
  assert.ok(Date.now() - started < 10_000, `stop took ${Date.now() - started} ms`);
  assert.deepEqual(await qemuOf(disk), [], 'the QEMU died with the namespace');
  assert.deepEqual(await processesMentioning(lv.dir), [], 'no libvirtd left');
  assert.equal(existsSync(lv.dir), false);
  await assert.rejects(run('virsh', ['-c', lv.uri, 'version']), 'the socket is gone');
});

// A test process that dies without stop(): the namespace ends itself (its PID 1
// sees EOF on the stdin pipe from that process), the running QEMU with it.
const CRASHING_TEST = (helper: string, out: string) => `
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { startPrivateLibvirtd } from ${JSON.stringify(helper)};
const lv = await startPrivateLibvirtd();
const disk = lv.dir + '/crash.qcow2';
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '16M']);
writeFileSync(lv.dir + '/crash.xml', ${JSON.stringify(smallDomainXml('lvd-crash', '__DISK__'))}.replace('__DISK__', disk));
await lv.virsh('define', lv.dir + '/crash.xml');
await lv.virsh('start', 'lvd-crash');
writeFileSync(${JSON.stringify(out)}, lv.dir);
process.kill(process.pid, 'SIGKILL');
`;

test('private libvirtd: when the test process dies without stop(), libvirtd and its QEMU go too', { skip, timeout: 120_000 }, async (t) => {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'vblv-crash-'));
  t.after(() => rm(tmp, { recursive: true, force: true }));
  const helper = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'private-libvirtd.ts');
  const script = path.join(tmp, 'crash.mts');
  const out = path.join(tmp, 'dir');
  await writeFile(script, CRASHING_TEST(helper, out));
  await assert.rejects(run(process.execPath, ['--import', 'tsx', script], { timeout: 90_000 }),
    (e: { signal?: string }) => e.signal === 'SIGKILL', 'the test process killed itself');
  const dir = (await readFile(out, 'utf8')).trim();
  t.after(() => rm(dir, { recursive: true, force: true }));
  const end = Date.now() + 15_000;
  while ((await processesMentioning(dir)).length > 0 && Date.now() < end) await sleep(100);
  assert.deepEqual(await processesMentioning(dir), [], 'libvirtd, its QEMU and unshare are gone');
});
