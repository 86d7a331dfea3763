// The Quick-start scripts as a normal user with a Debian package missing:
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

test('non-root with qemu-utils and libnbd-bin missing: the apt-get line, exit 1, nothing installed', async (t) => {
  const bin = await mkdtemp(path.join(os.tmpdir(), 'vb-deps-'));
  t.after(() => rm(bin, { recursive: true, force: true }));
  await chmod(bin, 0o755);
  // a dpkg-query that reports two packages as not installed and every other one as installed
  await writeFile(path.join(bin, 'dpkg-query'),
    '#!/bin/sh\nfor p; do :; done\ncase "$p" in qemu-utils|libnbd-bin) exit 1;; esac\nprintf "install ok installed"\n', { mode: 0o755 });
  const cmd = ['env', `PATH=${bin}:${process.env.PATH ?? ''}`, 'bash', path.join(repo, 'scripts', 'ensure-deps.sh')];
  const argv = isRoot ? ['runuser', '-u', 'nobody', '--', ...cmd] : cmd;
  const r = await run(argv[0]!, argv.slice(1), { cwd: os.tmpdir() }).then(
    (ok) => ({ code: 0, ...ok }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr,
    'virtback needs these Debian packages, which are not installed: qemu-utils libnbd-bin\n' +
    'Install them as root, then run this command again:\n' +
    '  sudo apt-get update && sudo apt-get install -y qemu-utils libnbd-bin\n');
});
