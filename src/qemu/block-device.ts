// Host block devices as backup targets and pull scratch (<target dev>,
// <scratch dev>): libvirt neither creates nor deletes them, so all we learn
// of one is whether it is there and how large it is. The size comes from
// sysfs (stat() of a device node reports 0), by the device's numbers, so a
// symlink such as /dev/VG/LV works.

import { readFile, stat } from 'node:fs/promises';

/** Major and minor of a Linux dev_t (glibc's gnu_dev_major/minor for the values node reports). */
function deviceNumbers(rdev: number): [number, number] {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & 0xfff00);
  return [major, minor];
}

/**
 * The size in bytes of the block device at `dev`, 'missing' when nothing is
 * there, 'not-block' when it is something else.
 */
export async function blockDeviceSize(dev: string): Promise<number | 'missing' | 'not-block'> {
  const st = await stat(dev).catch(() => null);
  if (st === null) return 'missing';
  if (!st.isBlockDevice()) return 'not-block';
  const [major, minor] = deviceNumbers(st.rdev);
  // /sys/dev/block/M:m/size counts 512-byte sectors whatever the device's block size
  const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}
