// Block devices for the tests: loop devices on sparse files and an LVM volume
// group built on them, with a unique name, always taken down again (logical
// volumes, the group, the loop devices) by the test's after hook. Root only:
// blockDevicesUsable() says whether the test can run.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Why block-device tests cannot run here, or null when they can. */
export async function blockDevicesUnusable(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'loop devices and LVM need root';
  try {
    await run('losetup', ['--version']);
    await run('lvm', ['version']);
  } catch {
    return 'losetup or lvm is not installed (scripts/ensure-deps.sh installs lvm2)';
  }
  return null;
}

/** A loop device over a new sparse file of `bytes` in `dir`; detached by the after hook. */
export async function makeLoopDevice(t: TestContext, dir: string, bytes: number): Promise<string> {
  const file = path.join(dir, `loop-${randomBytes(4).toString('hex')}.img`);
  const fh = await open(file, 'wx', 0o600);
  await fh.truncate(bytes);
  await fh.close();
  const { stdout } = await run('losetup', ['-f', '--show', file]);
  const dev = stdout.trim();
  t.after(async () => {
    await run('losetup', ['-d', dev]).catch(() => undefined);
    await rm(file, { force: true });
  });
  return dev;
}

export interface VolumeGroup {
  name: string;
  /** create a logical volume of `mib` MiB (a multiple of the 4 MiB extent); its /dev/VG/LV path */
  lv(name: string, mib: number): Promise<string>;
}

/** A volume group on a loop device of `mib` MiB; removed (with its volumes) by the after hook. */
export async function makeVolumeGroup(t: TestContext, dir: string, mib: number): Promise<VolumeGroup> {
  const name = `vbtest${randomBytes(4).toString('hex')}`;
  // registered before the loop device's hook: after hooks run in order, the group goes first
  let made = false;
  t.after(async () => {
    if (made) await run('vgremove', ['-f', name]).catch(() => undefined);
  });
  const dev = await makeLoopDevice(t, dir, mib * 1024 * 1024);
  // --devices: the host's lvm.conf may filter loop devices or use a devices file
  await run('pvcreate', ['-q', '--devices', dev, dev]);
  await run('vgcreate', ['-q', '--devices', dev, name, dev]);
  made = true;
  return {
    name,
    async lv(lv: string, size: number) {
      await run('lvcreate', ['-q', '--devices', dev, '-y', '-Wy', '-Zy', '-n', lv, '-L', `${size}M`, name]);
      return `/dev/${name}/${lv}`;
    },
  };
}

/** LVM can activate volumes only with the kernel's device-mapper (not in every container). */
export async function deviceMapperPresent(): Promise<boolean> {
  const misc = await readFile('/proc/misc', 'utf8').catch(() => '');
  return /\bdevice-mapper\b/.test(misc);
}

/** Where the test's block devices come from: LVs of a fresh volume group, or plain loop devices without device-mapper. */
export interface BlockDevices {
  kind: 'lvm' | 'loop';
  /** a new block device of exactly `mib` MiB (a multiple of 4) */
  make(name: string, mib: number): Promise<string>;
}

/** LVM on a loop device of `poolMiB` when device-mapper is there, else one loop device per request. */
export async function makeBlockDevices(t: TestContext, dir: string, poolMiB: number): Promise<BlockDevices> {
  if (await deviceMapperPresent()) {
    const vg = await makeVolumeGroup(t, dir, poolMiB);
    return { kind: 'lvm', make: (name, mib) => vg.lv(name, mib) };
  }
  return { kind: 'loop', make: (_name, mib) => makeLoopDevice(t, dir, mib * 1024 * 1024) };
}
