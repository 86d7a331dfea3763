// Restore checks what it writes: every block of the chain's content is
// compared with the target manifest's entry before it is written. A damaged
// backup fails naming the first bad range, leaves no output (a new one is
// written under a temporary name) and never writes the damaged bytes (seen in
// place). Restored images and manifests are private (0600).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { manifestPath, restoreBackup, writeManifest } from '../../src/repository/index.js';
import { runMain } from '../helpers/cli.js';
import { MiB, copyChain, img, manifestInput, qemuIo, rawContent, sha } from './repository-helpers.js';

const SIZE = 32 * MiB;

function damaged(re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof VirError, `expected VirError, got ${String(e)}`);
    assert.equal(e.code, ErrorCode.OPERATION_FAILED, e.message);
    assert.match(e.message, re);
    return true;
  };
}

describe('restore checks every block against the manifest while writing', { timeout: 120_000 }, () => {
  let dir = '';
  let ref: Buffer;

  /** A copy of the chain full <- inc with `cmds` written into `file` of the copy (the manifests stay as they were). */
  const damagedCopy = async (name: string, file: 'full.qcow2' | 'inc.qcow2', ...cmds: string[]): Promise<string> => {
    const d = await copyChain(dir, name, /^(full|inc)\.qcow2/);
    await qemuIo('qcow2', path.join(d, file), ...cmds);
    return d;
  };

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-restore-check-'));
    const live = path.join(dir, 'live.qcow2');
    const full = path.join(dir, 'full.qcow2');
    const inc = path.join(dir, 'inc.qcow2');
    await img('create', '-q', '-f', 'qcow2', live, String(SIZE));
    await qemuIo('qcow2', live, 'write -P 0x11 0 4M', 'write -P 0x22 20M 1M');
    await img('convert', '-O', 'qcow2', live, full);
    const t1 = ['write -P 0x33 2M 1M', 'write -P 0x44 24M 64k'];
    await qemuIo('qcow2', live, ...t1);
    await img('create', '-q', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', inc);
    await qemuIo('qcow2', inc, ...t1);
    ref = await rawContent(live, dir);
    await writeManifest(manifestInput(full, SIZE, { checkpoint: 'c1' }));
    await writeManifest(manifestInput(inc, SIZE, { checkpoint: 'c2', incrementalFrom: 'c1', parentBackup: full, jobId: 2 }));
  });

  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('an intact chain restores; the output and the manifests are 0600', async () => {
    for (const format of ['qcow2', 'raw'] as const) {
      const out = path.join(dir, `ok.${format}`);
      const r = await restoreBackup({ target: path.join(dir, 'inc.qcow2'), output: out, format });
      assert.equal(r.checkedAgainst, manifestPath(path.join(dir, 'inc.qcow2')));
      assert.equal(sha(await rawContent(out, dir)), sha(ref));
      assert.equal((await fs.stat(out)).mode & 0o777, 0o600, `${out} mode`);
    }
    for (const f of ['full.qcow2', 'inc.qcow2']) assert.equal((await fs.stat(manifestPath(path.join(dir, f)))).mode & 0o777, 0o600, `${f} manifest mode`);
  });

  test('damaged data in the full backup: refused with the first bad range, no output, no temporary file', async () => {
    // 0x99 over 21M+4k (a data block of nothing) and 20M+4k (block 20): block 20 is first, 21 follows it
    const d = await damagedCopy('bad-full', 'full.qcow2', 'write -P 0x99 21M 4k', 'write -P 0x99 20M 4k');
    for (const format of ['qcow2', 'raw'] as const) {
      const out = path.join(d, `restored.${format}`);
      await assert.rejects(
        restoreBackup({ target: path.join(d, 'inc.qcow2'), output: out, format }),
        damaged(
          new RegExp(
            `^backup '${d}/inc\\.qcow2' does not match its manifest '${d}/inc\\.qcow2\\.manifest\\.json': first bad range offset ${20 * MiB} length ${2 * MiB}; ` +
              `nothing was restored to '${out}' \\(backup-verify names the damaged image\\)$`,
          ),
        ),
      );
      await assert.rejects(fs.stat(out), /ENOENT/);
    }
    assert.deepEqual((await fs.readdir(d)).sort(), ['full.qcow2', 'full.qcow2.manifest.json', 'inc.qcow2', 'inc.qcow2.manifest.json']);
  });

  test('data where the manifest says zeroes (in the incremental) is refused too', async () => {
    const d = await damagedCopy('bad-zero', 'inc.qcow2', 'write -P 0x5a 30M 512');
    await assert.rejects(restoreBackup({ target: path.join(d, 'inc.qcow2'), output: path.join(d, 'x.raw'), format: 'raw' }), damaged(new RegExp(`first bad range offset ${30 * MiB} length ${MiB};`)));
  });

  test('in place: fails, says the target was partly overwritten, and the bad block was never written', async () => {
    const d = await damagedCopy('bad-inplace', 'full.qcow2', 'write -P 0x99 20M 4k');
    const target = path.join(d, 'disk.raw');
    await img('create', '-q', '-f', 'raw', target, String(SIZE));
    await qemuIo('raw', target, `write -P 0x77 0 ${SIZE}`);
    await assert.rejects(
      restoreBackup({ target: path.join(d, 'inc.qcow2'), output: target, format: 'raw', inPlace: true }),
      damaged(new RegExp(`first bad range offset ${20 * MiB} length ${MiB}; '${target}' was partly overwritten and does not hold the backup`)),
    );
    const now = await fs.readFile(target);
    assert.ok(now.subarray(20 * MiB, 21 * MiB).every((b) => b === 0x77), 'the damaged block was not written');
    assert.ok(!now.subarray(20 * MiB, 21 * MiB).includes(0x99));
  });

  test('backup-restore exits 1 with the error and leaves no output; a chain without manifests restores unchecked', async () => {
    const d = await damagedCopy('bad-cli', 'full.qcow2', 'write -P 0x99 0 4k');
    const out = path.join(d, 'out.qcow2');
    const r = await runMain(['backup-restore', path.join(d, 'inc.qcow2'), out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^error: backup '.*/inc\\.qcow2' does not match its manifest '.*/inc\\.qcow2\\.manifest\\.json': first bad range offset 0 length ${MiB}; nothing was restored`));
    assert.doesNotMatch(r.stdout, /restored to/);
    await assert.rejects(fs.stat(out), /ENOENT/);

    await assert.rejects(
      restoreBackup({ target: path.join(dir, 'inc.qcow2'), output: path.join(dir, 'no-such-dir', 'out.raw'), format: 'raw' }),
      (e: unknown) => e instanceof VirError && e.code === ErrorCode.SYSTEM_ERROR && /cannot create restore output '.*no-such-dir\/\.out\.raw\.restore-\d+-[0-9a-f]{8}\.tmp': ENOENT/.test(e.message),
    );

    const bare = await copyChain(dir, 'bare', /^(full|inc)\.qcow2$/);
    const res = await restoreBackup({ target: path.join(bare, 'inc.qcow2'), output: path.join(bare, 'out.raw'), format: 'raw' });
    assert.equal(res.checkedAgainst, null);
    assert.equal(sha(await fs.readFile(path.join(bare, 'out.raw'))), sha(ref));
  });

  test('backup-restore --json prints JSON lines only; --quiet prints the summary alone', async () => {
    const inc = path.join(dir, 'inc.qcow2');
    const out = path.join(dir, 'json.qcow2');
    let r = await runMain(['backup-restore', inc, out, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(lines.at(-1), {
      type: 'restored',
      target: inc,
      output: out,
      format: 'qcow2',
      virtualSize: SIZE,
      chain: [inc, path.join(dir, 'full.qcow2')],
      checkedAgainst: manifestPath(inc),
      inPlace: false,
    });
    const progress = lines.slice(0, -1);
    assert.ok(progress.length >= 2 && progress.length <= 12 && progress.every((l) => l.type === 'progress'), r.stdout);
    assert.equal(progress.at(-1)!.state, 'completed');
    r = await runMain(['backup-restore', inc, path.join(dir, 'quiet.raw'), '--format', 'raw', '--quiet']);
    assert.deepEqual(r, { code: 0, stdout: `Backup '${inc}' (2 images) restored to '${path.join(dir, 'quiet.raw')}' (raw, 32.0 MiB)\n`, stderr: '' });
  });
});
