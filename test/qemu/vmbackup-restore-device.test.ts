// `virtback restore … --target-dev DISK=DEVICE` onto loop devices (root only):
// devices full of old data get the point byte-exact up to the disk's size
// (the rest of a larger device untouched), zero chunks are zeroed by the
// device (the loop's backing file loses them: holes, not written zeros), the
// definition points at the devices, and a device smaller than its disk is
// refused before anything is written.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ErrorCode, VirError } from '../../src/errors.js';
import { restoreDomain } from '../../src/vmbackup/index.js';
import { blockDevicesUnusable, makeLoopDevice } from '../helpers/block-devices.js';
import { runMain } from '../helpers/cli.js';
import { MiB, backup, initRepo, sha, startVm } from './vmbackup-helpers.js';

const run = promisify(execFile);
const K64 = 64 * 1024;
const skip = await blockDevicesUnusable();

/** A loop device of `mib` MiB filled with random bytes (old content a restore must replace). */
async function dirtyDevice(t: Parameters<typeof makeLoopDevice>[0], dir: string, mib: number): Promise<{ dev: string; backing: string }> {
  const dev = await makeLoopDevice(t, dir, mib * MiB);
  const fh = await fs.open(dev, 'r+');
  for (let i = 0; i < mib; i++) await fh.write(randomBytes(MiB), 0, MiB, i * MiB);
  await fh.datasync();
  await fh.close();
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE', dev]);
  return { dev, backing: stdout.trim() };
}

async function readDevice(dev: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fs.open(dev, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    assert.equal(bytesRead, length);
    return buf;
  } finally {
    await fh.close();
  }
}

test('restore onto block devices: byte-exact over old data, zeros left to the device, too small refused first', { skip: skip ?? false, timeout: 180_000 }, async (t) => {
  const vm = await startVm(t, { sizesMiB: [64, 72] });
  const r = await initRepo(path.join(vm.env.dir, 'repo'));
  await vm.write('sda', 0, MiB, 0x11);
  await vm.write('sda', 33 * MiB + 4096, K64, 0x22);
  await vm.write('sdb', 71 * MiB, K64, 0x33);
  await backup(vm, r);
  await vm.write('sda', 50 * MiB, K64, 0x44);
  const snap = vm.snapshot();
  const p2 = await backup(vm, r);
  assert.equal(p2.level, 'inc');
  await vm.dom.destroy();

  const sda = await dirtyDevice(t, vm.env.dir, 64);
  const sdb = await dirtyDevice(t, vm.env.dir, 80); // larger than the disk: its tail stays as it was
  const small = await dirtyDevice(t, vm.env.dir, 64);
  const sdbTail = await readDevice(sdb.dev, 72 * MiB, 8 * MiB);

  // a device smaller than its disk: refused before any device is written, nothing left behind
  const before = sha(await readDevice(sda.dev, 0, 64 * MiB));
  const out0 = path.join(vm.env.dir, 'out0');
  await assert.rejects(
    restoreDomain(r.repo, null, { domain: vm.dom.name, outputDir: out0, format: 'raw', devices: new Map([['sda', sda.dev], ['sdb', small.dev]]) }),
    (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG && e.message.includes(`device '${small.dev}' holds ${64 * MiB} bytes, disk 'sdb' needs ${72 * MiB}`),
  );
  assert.equal(sha(await readDevice(sda.dev, 0, 64 * MiB)), before, 'the fitting device was not touched either');
  assert.deepEqual(await fs.readdir(out0).catch(() => []), []);

  // through the CLI: both disks onto devices
  const out = path.join(vm.env.dir, 'out');
  const res = await runMain(['restore', '--repo', r.dir, vm.dom.name, '--output-dir', out, '--target-dev', `sda=${sda.dev}`, '--target-dev', `sdb=${sdb.dev}`, '--json', '--quiet']);
  assert.equal(res.code, 0, res.stderr);
  const got = JSON.parse(res.stdout) as { pointId: string; disks: { target: string; path: string; block: boolean; format: string }[]; xmlPath: string };
  assert.equal(got.pointId, p2.pointId);
  assert.deepEqual(got.disks.map((d) => [d.target, d.path, d.block, d.format]), [['sda', sda.dev, true, 'raw'], ['sdb', sdb.dev, true, 'raw']]);
  assert.equal(sha(await readDevice(sda.dev, 0, 64 * MiB)), sha(snap.get('sda')!), 'sda: the point, byte-exact');
  assert.equal(sha(await readDevice(sdb.dev, 0, 72 * MiB)), sha(snap.get('sdb')!), 'sdb: the point, byte-exact');
  assert.ok((await readDevice(sdb.dev, 72 * MiB, 8 * MiB)).equals(sdbTail), "sdb: the device's tail beyond the disk is untouched");

  // sda has 3 data chunks of 16: the loop device punched the rest out of its backing file rather than storing zeros
  const allocated = (await fs.stat(sda.backing)).blocks * 512;
  assert.ok(allocated <= 3 * 4 * MiB + MiB, `sda's backing file holds ${allocated} bytes: zero chunks were written as data`);

  const xml = await fs.readFile(got.xmlPath, 'utf8');
  for (const [target, dev] of [['sda', sda.dev], ['sdb', sdb.dev]] as const) {
    assert.match(xml, new RegExp(`<disk type='block' device='disk'>\\s*<driver name='qemu' type='raw'/>\\s*<source dev='${dev}'/>\\s*<target dev='${target}'`), `${target} in the definition: ${xml}`);
  }

  // usage errors name the problem
  const bad = await runMain(['restore', '--repo', r.dir, vm.dom.name, '--output-dir', out, '--target-dev', 'sdz=/dev/null']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /'\/dev\/null' is not a block device|point .* has no disk 'sdz'/);
});
