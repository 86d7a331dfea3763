// The pull backup client against real qemu-nbd exports: a full pull (qcow2 and
// raw), then an incremental pull from a dirty bitmap into a qcow2 overlay on the
// full one, restored and compared with the source image.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { pullBackup, restoreBackup, verifyBackup, writeManifest } from '../../src/repository/index.js';
import { MiB, dataBytesIn, fingerprint, img, map, qemuIo, rawContent, serve, sha, type Server } from './repository-helpers.js';

const SIZE = 64 * MiB;

async function stop(s: Server | undefined): Promise<void> {
  if (s && s.proc.exitCode === null && s.proc.signalCode === null) {
    s.proc.kill('SIGTERM');
    await s.exited;
  }
}

describe('pull backup client against qemu-nbd', { timeout: 90_000 }, () => {
  let dir = '';
  let src = '';
  let ref0: Buffer;
  let ref1: Buffer;
  const servers: Server[] = [];

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-pull-'));
    src = path.join(dir, 'disk.qcow2');
    await img('create', '-q', '-f', 'qcow2', src, String(SIZE));
    await qemuIo('qcow2', src, 'write -P 0xab 1M 64k', 'write -P 0xcd 10M 2M', 'write -P 0x01 50M 1M');
    ref0 = await rawContent(src, dir);
  });

  after(async () => {
    for (const s of servers) await stop(s);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('full pull to qcow2 and raw: exact, sparse', async () => {
    const s = await serve(dir, src, 'full');
    servers.push(s);
    const progress: number[] = [];
    const q = await pullBackup({ nbd: { socketPath: s.socket }, exportName: '', output: path.join(dir, 'full.qcow2'), format: 'qcow2', onProgress: (p) => progress.push(p.bytesDone) });
    assert.equal(q.size, SIZE);
    assert.equal(q.bytesRead, 64 * 1024 + 2 * MiB + MiB);
    assert.equal(progress.at(-1), q.bytesRead);
    const r = await pullBackup({ nbd: { socketPath: s.socket }, exportName: '', output: path.join(dir, 'full.raw'), format: 'raw' });
    assert.equal(r.bytesRead, q.bytesRead);
    await stop(s);
    assert.equal(sha(await fs.readFile(path.join(dir, 'full.raw'))), sha(ref0));
    assert.equal(sha(await rawContent(path.join(dir, 'full.qcow2'), dir)), sha(ref0));
    for (const [f, fmt] of [['full.qcow2', 'qcow2'], ['full.raw', 'raw']] as const) {
      const m = await map(path.join(dir, f), fmt);
      assert.equal(dataBytesIn(m, 0, SIZE), 64 * 1024 + 3 * MiB, `${f}: only the data is allocated`);
    }
    await writeManifest({ domain: { name: 'vm', uuid: 'u-1' }, disk: 'vda', target: path.join(dir, 'full.qcow2'), format: 'qcow2', checkpoint: 'c1', incrementalFrom: null, parentBackup: null, time: 1, virtualSize: SIZE, jobId: 1, mode: 'pull' });
    // A raw full backup is a chain of one: manifest, verify and restore work on it too.
    const raw = path.join(dir, 'full.raw');
    await writeManifest({ domain: { name: 'vm', uuid: 'u-1' }, disk: 'vda', target: raw, format: 'raw', checkpoint: 'c1', incrementalFrom: null, parentBackup: null, time: 1, virtualSize: SIZE, jobId: 1, mode: 'pull' });
    assert.equal((await verifyBackup({ target: raw })).ok, true);
    await restoreBackup({ target: raw, output: path.join(dir, 'full-restored.qcow2'), format: 'qcow2' });
    assert.equal(sha(await rawContent(path.join(dir, 'full-restored.qcow2'), dir)), sha(ref0));
  });

  test('incremental pull writes exactly the dirty ranges, zeroes included, over the parent', async () => {
    // Changes after the bitmap: overwrite, a zeroed range that had data in the parent, new data.
    await img('bitmap', '--add', '--enable', src, 'b1');
    await qemuIo('qcow2', src, 'write -P 0xef 1M 4k', 'write -z 10M 1M', 'write -P 0x11 40M 128k', 'write -P 0 50M 64k');
    ref1 = await rawContent(src, dir);
    const parent = path.join(dir, 'full.qcow2');
    const before0 = await fingerprint([parent]);
    const s = await serve(dir, src, 'inc', 'b1');
    servers.push(s);
    const inc = path.join(dir, 'inc.qcow2');
    const res = await pullBackup({ nbd: { socketPath: s.socket }, exportName: '', bitmap: 'b1', output: inc, format: 'qcow2', parentBackup: parent, concurrency: 3 });
    await stop(s);
    const dirty = res.ranges.map((r) => [r.offset, r.length, r.zero]);
    assert.deepEqual(dirty, [[MiB, 64 * 1024, false], [10 * MiB, MiB, true], [40 * MiB, 128 * 1024, false], [50 * MiB, 64 * 1024, false]]);
    // 50M was written with zero bytes (allocated data): read, found zero, written as zeroes.
    assert.equal(res.bytesRead, 64 * 1024 + 128 * 1024 + 64 * 1024);

    const info = JSON.parse(await img('info', '--output=json', inc)) as Record<string, unknown>;
    assert.equal(info['backing-filename'], 'full.qcow2', 'relative backing name in the same folder');
    // The overlay itself holds exactly the dirty ranges (depth 0 = in inc.qcow2).
    const own = (await map(inc)).filter((e) => e.depth === 0).map((e) => [e.start, e.length]);
    assert.deepEqual(own, [[MiB, 64 * 1024], [10 * MiB, MiB], [40 * MiB, 128 * 1024], [50 * MiB, 64 * 1024]]);
    assert.equal(sha(await rawContent(inc, dir)), sha(ref1));
    assert.deepEqual(await fingerprint([parent]), before0, 'the parent backup is untouched');

    await writeManifest({ domain: { name: 'vm', uuid: 'u-1' }, disk: 'vda', target: inc, format: 'qcow2', checkpoint: 'c2', incrementalFrom: 'c1', parentBackup: parent, time: 2, virtualSize: SIZE, jobId: 2, mode: 'pull' });
    const v = await verifyBackup({ target: inc });
    assert.equal(v.ok, true);
    const out = path.join(dir, 'restored.raw');
    await restoreBackup({ target: inc, output: out, format: 'raw' });
    await img('compare', '-f', 'raw', '-F', 'qcow2', out, src);
    assert.equal(sha(await fs.readFile(out)), sha(ref1));
  });

  test('argument errors name the problem and create nothing', async () => {
    const rejects = (re: RegExp) => (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG && re.test(e.message);
    const nbd = { socketPath: path.join(dir, 'none.sock') };
    await assert.rejects(pullBackup({ nbd, exportName: '', bitmap: 'b1', output: path.join(dir, 'x.qcow2'), format: 'qcow2' }), rejects(/needs parentBackup/));
    await assert.rejects(pullBackup({ nbd, exportName: '', bitmap: 'b1', parentBackup: 'p', output: path.join(dir, 'x.raw'), format: 'raw' }), rejects(/must be qcow2/));
    await assert.rejects(pullBackup({ nbd, exportName: '', output: path.join(dir, 'full.qcow2'), format: 'qcow2' }), rejects(/already exists/));
    await assert.rejects(fs.stat(path.join(dir, 'x.qcow2')));
  });
});
