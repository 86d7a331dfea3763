// Quiesced backups of a guest writing over a real file system, restored AND
// booted: the tiny guest formats its disk, holds a marker file and appends to
// a log every 0.2 s; a push and a pull backup are taken with QUIESCE (the
// agent freezes the file system for the instant), each is restored with
// restoreBackup into a new image, the images pass e2fsck on the host, and a
// new domain booted from both restored disks mounts them and reads the
// marker and a log whose lines are whole and consecutive.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import { BackupBeginFlags } from '../../src/flags.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { pullBackup } from '../../src/repository/pull.js';
import { restoreBackup } from '../../src/repository/restore.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';
import { waitJobCompleted } from './backup-util.js';

const run = promisify(execFile);

async function guestRead(driver: QemuDriver, uuid: string, file: string): Promise<string> {
  return driver.withAgent(uuid, async (a) => {
    const h = (await a.execute('guest-file-open', { path: file, mode: 'r' })) as number;
    try {
      let out = '';
      for (;;) {
        const r = (await a.execute('guest-file-read', { handle: h, count: 65536 })) as { 'buf-b64': string; eof: boolean };
        out += Buffer.from(r['buf-b64'], 'base64').toString('utf8');
        if (r.eof) return out;
      }
    } finally {
      await a.execute('guest-file-close', { handle: h });
    }
  });
}

async function guestWrite(driver: QemuDriver, uuid: string, file: string, text: string): Promise<void> {
  await driver.withAgent(uuid, async (a) => {
    const h = (await a.execute('guest-file-open', { path: file, mode: 'w' })) as number;
    try {
      await a.execute('guest-file-write', { handle: h, 'buf-b64': Buffer.from(text).toString('base64') });
    } finally {
      await a.execute('guest-file-close', { handle: h });
    }
  });
}

/** The writer's log: "<n> <epoch> <uptime>" lines numbered 1, 2, 3, … with none torn; returns how many. */
function wholeLog(log: string, what: string): number {
  const lines = log.split('\n');
  assert.equal(lines.pop(), '', `${what}: the last line is complete`);
  lines.forEach((l, i) => assert.match(l, new RegExp(`^${i + 1} \\d+ [\\d.]+$`), `${what}: line ${i + 1}`));
  return lines.length;
}

/** e2fsck of a qcow2 image's file system, read-only, on a raw copy. */
async function fsck(image: string, dir: string): Promise<void> {
  const raw = path.join(dir, `${path.basename(image)}.raw`);
  await run('qemu-img', ['convert', '-O', 'raw', image, raw]);
  // -f: check even when marked clean; -n: change nothing. Exit 0: no errors (the frozen journal is empty)
  const { stdout } = await run('e2fsck', ['-fn', raw]);
  assert.match(stdout, /\d+\/\d+ files .* \d+\/\d+ blocks/, `e2fsck of ${image}: ${stdout}`);
}

test('push and pull backups with QUIESCE of a writing guest: restored, e2fsck clean, booted, marker and log read back', { timeout: 600_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  const src = await makeTestDomain(env.dir, {
    disks: 1,
    sizeMiB: 64,
    bus: 'virtio',
    agent: true,
    osXml: tinyGuestOsXml(guest, 'tg.writer=/mnt/vda tg.writer_interval=0.2'),
    domainXml: '  <on_reboot>destroy</on_reboot>\n',
  });
  const driver = await env.openDriver();
  await driver.domainDefineXML(src.xml, 0);
  await driver.domainCreate(src.uuid, 0);
  await waitForAgent(driver, src.uuid);
  const token = randomBytes(16).toString('hex');
  await guestWrite(driver, src.uuid, '/mnt/vda/marker.txt', token);
  await waitFor(async () => wholeLog(await guestRead(driver, src.uuid, '/mnt/vda/writer.log'), 'live') > 3, 'the guest writing', 60_000);

  // push: QEMU writes the target; the frozen file system is what it copies
  const push = path.join(env.dir, 'push-vda.qcow2');
  const pushXml = `<domainbackup><disks><disk name='vda' type='file'><target file='${push}'/><driver type='qcow2'/></disk></disks></domainbackup>`;
  const id1 = await driver.backupBegin(src.uuid, pushXml, null, BackupBeginFlags.QUIESCE);
  assert.equal((await waitJobCompleted(env.events, src.uuid, id1)).stats.success, true);
  await driver.backupEnd(src.uuid, id1, 0);
  const atPush = wholeLog(await guestRead(driver, src.uuid, '/mnt/vda/writer.log'), 'live after the push');

  // pull: the export is read while the guest goes on writing
  await waitFor(async () => wholeLog(await guestRead(driver, src.uuid, '/mnt/vda/writer.log'), 'live') > atPush + 3, 'more writes', 60_000);
  const sock = path.join(env.runDir, 'pull.sock');
  const pullXml = `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/>` +
    `<disks><disk name='vda' type='file'><scratch file='${path.join(env.dir, 'scratch-vda.qcow2')}'/></disk></disks></domainbackup>`;
  const id2 = await driver.backupBegin(src.uuid, pullXml, null, BackupBeginFlags.QUIESCE);
  const pulled = path.join(env.dir, 'pull-vda.qcow2');
  await pullBackup({ nbd: { socketPath: sock }, exportName: 'vda', output: pulled, format: 'qcow2' });
  await driver.backupEnd(src.uuid, id2, 0);
  await driver.domainDestroy(src.uuid, 0);

  // restored into new images, each a sound ext4 file system
  const restored: string[] = [];
  for (const [name, target] of [['r-push', push], ['r-pull', pulled]] as const) {
    const output = path.join(env.dir, `${name}.qcow2`);
    await restoreBackup({ target, output, format: 'qcow2' });
    await fsck(output, env.dir);
    restored.push(output);
  }

  // a new domain boots from both: /mnt/vda is the push backup, /mnt/vdb the pull backup
  const disk = (file: string, dev: string): string =>
    `    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${file}'/><target dev='${dev}' bus='virtio'/></disk>\n`;
  const copy = await makeTestDomain(env.dir, {
    disks: 0,
    agent: true,
    osXml: tinyGuestOsXml(guest, 'tg.mkfs=never'),
    devicesXml: disk(restored[0]!, 'vda') + disk(restored[1]!, 'vdb'),
    domainXml: '  <on_reboot>destroy</on_reboot>\n',
  });
  await driver.domainDefineXML(copy.xml, 0);
  await driver.domainCreate(copy.uuid, 0);
  await waitForAgent(driver, copy.uuid);
  for (const [mnt, what] of [['/mnt/vda', 'push'], ['/mnt/vdb', 'pull']] as const) {
    assert.equal(await guestRead(driver, copy.uuid, `${mnt}/marker.txt`), token, `the ${what} backup's marker`);
    const lines = wholeLog(await guestRead(driver, copy.uuid, `${mnt}/writer.log`), `the ${what} backup's log`);
    assert.ok(lines > 3, `the ${what} backup holds the writes before it (${lines} lines)`);
    if (what === 'push') assert.ok(lines <= atPush, `no line written after the push backup (${lines} <= ${atPush})`);
    else assert.ok(lines > atPush, `the pull backup is later than the push (${lines} > ${atPush})`);
  }
  await driver.domainDestroy(copy.uuid, 0);
  await env.assertClean();
});
