// The tiny real Linux guest (kernel + initramfs with qemu-ga) that
// scripts/build-tiny-guest.sh builds, once per machine into a cache folder,
// reused by every test that needs a real guest: QUIESCE, fsFreeze/fsThaw,
// data written by a file system. docs/tiny-guest.md describes the guest.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const buildScript = path.join(repoRoot, 'scripts', 'build-tiny-guest.sh');
// keyed by the builder's content: a changed builder (a module, a guest script) builds a new guest
// instead of reusing one that lacks the change
const builderHash = createHash('sha256').update(readFileSync(buildScript)).digest('hex').slice(0, 12);
const cacheDir = process.env.VIRTBACK_TINY_GUEST_DIR ?? `/var/tmp/virtback-tiny-guest-${builderHash}`;

export interface TinyGuest {
  kernel: string;
  initrd: string;
}

let building: Promise<TinyGuest> | undefined;

/** Builds the guest if the cache does not hold it yet (about 15 s, needs root and Debian's archive). */
export function tinyGuest(): Promise<TinyGuest> {
  building ??= (async () => {
    const kernel = path.join(cacheDir, 'vmlinuz');
    const initrd = path.join(cacheDir, 'initramfs.img');
    if (!existsSync(kernel) || !existsSync(initrd)) {
      mkdirSync(path.dirname(cacheDir), { recursive: true });
      const tmp = `${cacheDir}.tmp-${process.pid}`;
      await rm(tmp, { recursive: true, force: true });
      await run('bash', [buildScript, tmp], { maxBuffer: 16 << 20 });
      await rm(cacheDir, { recursive: true, force: true });
      await rename(tmp, cacheDir);
    }
    return { kernel, initrd };
  })();
  return building;
}

/** `<os>` for a domain that boots the tiny guest; `extraArgs` go on the kernel command line (tg.* options). */
export function tinyGuestOsXml(g: TinyGuest, extraArgs = ''): string {
  return `<os><type arch='x86_64' machine='q35'>hvm</type><kernel>${g.kernel}</kernel><initrd>${g.initrd}</initrd>` +
    `<cmdline>console=ttyS0 quiet panic=-1 ${extraArgs}</cmdline></os>`;
}

/** Poll guest-ping until the agent answers (the guest starts it after mounting its disks). */
export async function waitForAgent(
  driver: { withAgent<T>(uuid: string, fn: (a: { ping(): Promise<void> }) => Promise<T>): Promise<T> },
  uuid: string,
  timeoutMs = 120_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      await driver.withAgent(uuid, (a) => a.ping());
      return;
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** How many times the guest has reached READY, from the serial console log a driver keeps in `runDir/UUID/console.log`. */
export async function guestBoots(runDir: string, uuid: string): Promise<number> {
  const log = await readFile(path.join(runDir, uuid, 'console.log'), 'utf8').catch(() => '');
  return log.split('\n').filter((l) => l.includes('tiny-guest: READY')).length;
}
