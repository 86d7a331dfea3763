// The Quick-start scripts as a normal user with Debian packages missing:
// they print the exact apt-get line to run as root and stop with status 1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const isRoot = process.getuid?.() === 0;

/** Every package scripts/ensure-deps.sh installs, in its order. */
const ALL = 'qemu-system-x86 qemu-utils libnbd-bin libxml2-utils libvirt0 openssl procps';

/** ensure-deps.sh as a normal user, with a dpkg-query that reports `missing` as not installed and every other package as installed. */
async function ensureDepsWithMissing(t: { after(fn: () => Promise<void>): void }, missing: string[]) {
  const bin = await mkdtemp(path.join(os.tmpdir(), 'vb-deps-'));
  t.after(() => rm(bin, { recursive: true, force: true }));
  await chmod(bin, 0o755);
  await writeFile(path.join(bin, 'dpkg-query'),
    `#!/bin/sh\nfor p; do :; done\ncase "$p" in ${missing.join('|')}) exit 1;; esac\nprintf "install ok installed"\n`, { mode: 0o755 });
  const cmd = ['env', `PATH=${bin}:${process.env.PATH ?? ''}`, 'bash', path.join(repo, 'scripts', 'ensure-deps.sh')];
  const argv = isRoot ? ['runuser', '-u', 'nobody', '--', ...cmd] : cmd;
  return run(argv[0]!, argv.slice(1), { cwd: os.tmpdir() }).then(
    (ok) => ({ code: 0, ...ok }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );
}

function expectedStderr(missing: string): string {
  return `virtback needs these Debian packages, which are not installed: ${missing}\n` +
    'Install them as root, then run this command again:\n' +
    `  sudo apt-get update && sudo apt-get install -y ${missing}\n`;
}

test('non-root with qemu-utils, libnbd-bin and libvirt0 missing: the apt-get line, exit 1, nothing installed', async (t) => {
  const r = await ensureDepsWithMissing(t, ['libvirt0', 'qemu-utils', 'libnbd-bin']);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  // in the script's order, not the order they were found missing in
  assert.equal(r.stderr, expectedStderr('qemu-utils libnbd-bin libvirt0'));
});

test('non-root on a bare machine: the apt-get line names every package the scripts need', async (t) => {
  const r = await ensureDepsWithMissing(t, ALL.split(' '));
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, expectedStderr(ALL));
});
