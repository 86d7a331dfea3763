// Slow one process down by a CPU quota (a cgroup of its own), so that a test
// can act while a QEMU block job is still copying: without a throttle, a
// fast machine copies a few hundred MiB within one round trip through
// libvirtd, and "abort while it copies" becomes a race the copy wins.
// cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us); root only. Where neither can
// be set up, `throttleCpu` says why and the caller goes on unthrottled.

import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

const ROOT = '/sys/fs/cgroup';
const PERIOD_US = 100_000;

export interface Throttle {
  /** back to the process's own cgroup; the throttle's cgroup removed. Idempotent. */
  release(): Promise<void>;
}

async function exists(p: string): Promise<boolean> {
  return readFile(p).then(() => true, () => false);
}

/** A cgroup limited to `percent` of one CPU, as [its folder, the folder to move back to]. */
async function makeGroup(pid: number, percent: number): Promise<{ dir: string; home: string }> {
  const quota = Math.max(1000, Math.round((PERIOD_US * percent) / 100));
  const name = `virtback-test-throttle-${process.pid}-${pid}`;
  if (await exists(path.join(ROOT, 'cgroup.controllers'))) {
    // v2: a child of the root, whose subtree must have the cpu controller
    await writeFile(path.join(ROOT, 'cgroup.subtree_control'), '+cpu');
    const dir = path.join(ROOT, name);
    await mkdir(dir);
    await writeFile(path.join(dir, 'cpu.max'), `${quota} ${PERIOD_US}`);
    const own = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n').find((l) => l.startsWith('0::'));
    return { dir, home: path.join(ROOT, own?.slice(3) ?? '/') };
  }
  const v1 = path.join(ROOT, 'cpu');
  if (!(await exists(path.join(v1, 'cpu.cfs_quota_us')))) throw new Error('no cpu cgroup controller (v1 or v2) here');
  const own = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n').find((l) => /^\d+:([^:]*,)?cpu(,[^:]*)?:/.test(l));
  const dir = path.join(v1, name);
  await mkdir(dir);
  await writeFile(path.join(dir, 'cpu.cfs_period_us'), String(PERIOD_US));
  await writeFile(path.join(dir, 'cpu.cfs_quota_us'), String(quota));
  return { dir, home: path.join(v1, own?.split(':')[2] ?? '/') };
}

/** Limits process `pid` (all its threads) to `percent` of one CPU; a reason string when that cannot be done here. */
export async function throttleCpu(pid: number, percent: number): Promise<Throttle | string> {
  if (process.getuid?.() !== 0) return 'not root: no cgroup of our own';
  let group: { dir: string; home: string };
  try {
    group = await makeGroup(pid, percent);
  } catch (e) {
    return `no CPU throttle: ${(e as Error).message}`;
  }
  try {
    await writeFile(path.join(group.dir, 'cgroup.procs'), String(pid));
  } catch (e) {
    await rmdir(group.dir).catch(() => undefined);
    return `no CPU throttle: cannot move ${pid}: ${(e as Error).message}`;
  }
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      // every thread back home (a process that exited has none), then the empty group goes
      await writeFile(path.join(group.home, 'cgroup.procs'), String(pid)).catch(() => undefined);
      await rmdir(group.dir).catch(() => undefined);
    },
  };
}
