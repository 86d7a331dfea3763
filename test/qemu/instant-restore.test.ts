// `virtback instant-restore` of the tiny guest through virtbackd on real QEMU:
// the point's disk is an ext4 image holding a marker file, written into a
// chunk repository with the chunk store's API. The guest mounts it from the
// qcow2 overlay backed by backup-serve, its agent reads the marker and its
// writer appends to the disk; the repository is byte-identical before and
// after. With --stream the data moves into the overlay, serving stops, and
// the guest keeps running with the repository folder moved away.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { DomainState } from '../../src/flags.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { readPidfile } from '../../src/vmbackup/instant-process.js';
import { readInstantState } from '../../src/vmbackup/instant.js';
import { startCliDaemon } from '../helpers/cli.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';
import { hashTree, writeTestPoint } from './serve-helpers.js';

const run = promisify(execFile);

async function cliOnQemu(t: TestContext) {
  const env = await makeTestEnv();
  let qemu: QemuDriver | null = null;
  const cli = await startCliDaemon<QemuDriver>(t, {
    dir: env.dir,
    openDriver: async (dirs) => {
      const { QemuDriver: Q } = await import('../../src/qemu/driver.js');
      return (qemu = await Q.open(dirs));
    },
  });
  const pidfiles: string[] = [];
  t.after(async () => {
    // a serve process left by a failed test is ours to end
    for (const f of pidfiles) {
      const pid = readPidfile(f);
      if (pid !== undefined) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    await cli.daemon.stop();
    await env.cleanup();
  });
  return { env, cli, qemu: () => qemu!, pidfiles };
}

/** A file in the guest, read through its agent. */
async function guestRead(driver: QemuDriver, uuid: string, file: string): Promise<string> {
  return driver.withAgent(uuid, async (a) => {
    const h = (await a.execute('guest-file-open', { path: file, mode: 'r' })) as number;
    try {
      const r = (await a.execute('guest-file-read', { handle: h, count: 65536 })) as { 'buf-b64': string };
      return Buffer.from(r['buf-b64'], 'base64').toString('utf8');
    } finally {
      await a.execute('guest-file-close', { handle: h });
    }
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('instant-restore runs the tiny guest from a point; --stream frees it from the repository', { timeout: 600_000 }, async (t) => {
  const guest = await tinyGuest();
  const { env, cli, qemu, pidfiles } = await cliOnQemu(t);
  const token = randomBytes(16).toString('hex');
  const content = path.join(env.dir, 'content');
  fs.mkdirSync(content);
  fs.writeFileSync(path.join(content, 'marker.txt'), token);
  const image = path.join(env.dir, 'vda.raw');
  await run('mkfs.ext4', ['-q', '-F', '-d', content, image, '64M']);
  const src = await makeTestDomain(env.dir, {
    name: 'origin',
    bus: 'virtio',
    agent: true,
    osXml: tinyGuestOsXml(guest, 'tg.writer=/mnt/vda tg.writer_interval=0.2'),
    domainXml: '  <on_reboot>destroy</on_reboot>\n',
  });
  const { repoDir, point } = await writeTestPoint(env.dir, 'origin', [{ target: 'vda', file: image }], { domainXml: src.xml, uuid: src.uuid });
  const before = hashTree(repoDir);

  // 1. Served: the guest runs on the repository's data.
  const d1 = path.join(env.dir, 'i1');
  pidfiles.push(path.join(d1, 'serve.pid'));
  const started = Date.now();
  let r = await cli.run('instant-restore', '--repo', repoDir, 'origin', '--point', point.id, '--define', 'inst1', '--overlay-dir', d1);
  assert.equal(r.code, 0, r.stderr);
  t.diagnostic(`instant-restore command: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  assert.match(r.stdout, /runs from point .* instant-restore-stop/s);
  const s1 = readInstantState(d1);
  assert.notEqual(s1.uuid, src.uuid, 'a new UUID');
  await waitForAgent(qemu(), s1.uuid, 120_000);
  t.diagnostic(`instant-restore to agent answering: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  assert.equal(await guestRead(qemu(), s1.uuid, '/mnt/vda/marker.txt'), token, 'the guest reads the backed-up file');
  await waitFor(async () => (await guestRead(qemu(), s1.uuid, '/mnt/vda/writer.log')).split('\n').length > 3, 'the guest writing', 30_000);
  const { stdout: info } = await run('qemu-img', ['info', '-U', '--output=json', s1.disks[0]!.overlay]);
  assert.equal((JSON.parse(info) as { 'backing-filename': string })['backing-filename'], s1.disks[0]!.backing);
  const xml = (await cli.run('dumpxml', 'inst1')).stdout;
  assert.ok(xml.includes(s1.disks[0]!.overlay) && !xml.includes(image), 'the disk is the overlay');
  const macs = (x: string) => [...x.matchAll(/<mac address='([^']+)'/g)].map((m) => m[1]);
  assert.deepEqual(macs(xml).filter((m) => macs(src.xml).includes(m)), [], 'no MAC of the original');

  const servePid = readPidfile(s1.pidfile)!;
  r = await cli.run('instant-restore-stop', d1);
  assert.equal(r.code, 1, 'refused while the domain runs on it');
  assert.match(r.stderr, /running on the served point/);
  assert.ok(alive(servePid), 'still serving');
  assert.deepEqual(hashTree(repoDir), before, 'the repository is unchanged while the guest runs and writes');
  assert.equal((await cli.run('destroy', 'inst1')).code, 0);
  r = await cli.run('instant-restore-stop', d1);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(alive(servePid), false, 'serve process ended');
  assert.equal(fs.existsSync(s1.socket), false, 'socket removed');

  // 2. Streamed: the overlay becomes standalone and the repository can go.
  const d2 = path.join(env.dir, 'i2');
  pidfiles.push(path.join(d2, 'serve.pid'));
  r = await cli.run('instant-restore', '--repo', repoDir, 'origin', '--point', point.id, '--define', 'inst2', '--overlay-dir', d2, '--stream');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^vda: completed$/m, 'stream progress per disk');
  const s2 = readInstantState(d2);
  assert.equal(s2.streamed, true);
  assert.equal(fs.existsSync(s2.pidfile), false, 'serving stopped after the stream');
  const { stdout: info2 } = await run('qemu-img', ['info', '-U', '--output=json', s2.disks[0]!.overlay]);
  assert.equal((JSON.parse(info2) as { 'backing-filename'?: string })['backing-filename'], undefined, 'no backing file left');
  assert.deepEqual(hashTree(repoDir), before, 'the repository is unchanged');
  fs.renameSync(repoDir, `${repoDir}.away`);
  await waitForAgent(qemu(), s2.uuid, 120_000);
  const lines = async () => (await guestRead(qemu(), s2.uuid, '/mnt/vda/writer.log')).split('\n').length;
  const n = await lines();
  await waitFor(async () => (await lines()) > n + 3, 'the guest still writing with the repository gone', 30_000);
  assert.equal(await guestRead(qemu(), s2.uuid, '/mnt/vda/marker.txt'), token);
  // A clean power-off flushes QEMU's qcow2 metadata; the overlay alone then holds the backed-up data.
  await qemu().withAgent(s2.uuid, (a) => a.execute('guest-shutdown', undefined, { timeoutMs: 2000 })).catch(() => {});
  await waitFor(async () => (await qemu().domainGetInfo(s2.uuid)).state === DomainState.SHUTOFF, 'inst2 powered off', 60_000);
  await run('qemu-img', ['check', s2.disks[0]!.overlay]);
  const raw = path.join(env.dir, 'overlay.raw');
  await run('qemu-img', ['convert', '-O', 'raw', s2.disks[0]!.overlay, raw]);
  assert.ok(fs.readFileSync(raw).includes(Buffer.from(token)), 'the backed-up data is in the overlay itself');
  fs.rmSync(raw);
  // and it boots again without the repository
  assert.equal((await cli.run('start', 'inst2')).code, 0);
  await waitForAgent(qemu(), s2.uuid, 120_000);
  assert.equal(await guestRead(qemu(), s2.uuid, '/mnt/vda/marker.txt'), token);
  assert.equal((await cli.run('destroy', 'inst2')).code, 0);
  r = await cli.run('instant-restore-stop', d2);
  assert.equal(r.code, 0, 'nothing left to stop is fine');
});
