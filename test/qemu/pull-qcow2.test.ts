// backup-pull's own qcow2 writer against real qemu-nbd exports, judged by
// qemu-img: a full pull of a disk with data, holes and zero runs checks clean
// and compares equal; an incremental one from a 4 KiB-granularity bitmap
// (dirty extents not on cluster boundaries, dirty zero ranges over the
// parent's data) makes a chain that checks clean and compares equal; a 1 TiB
// sparse disk gives a small file and a writer holding few tables; a pull
// whose server dies leaves no file, and a pull killed before the header was
// written leaves a file no qcow2 reader accepts.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { VirError } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/client.js';
import { copyToSink } from '../../src/nbd/copy.js';
import { CONTEXT_BASE_ALLOCATION } from '../../src/nbd/protocol.js';
import { Qcow2Writer } from '../../src/qcow2/writer.js';
import { pullBackup } from '../../src/repository/index.js';
import { MiB, img, map, qemuIo, run, serve, type Server } from './repository-helpers.js';

const SIZE = 64 * MiB;
const K64 = 64 * 1024;

async function stop(s: Server): Promise<void> {
  if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGTERM');
  await s.exited;
}

/** `qemu-img check`: exits non-zero on leaks (3) or corruptions (2); the JSON counts them too. */
async function checkClean(file: string): Promise<void> {
  const r = JSON.parse(await img('check', '--output=json', file)) as Record<string, unknown>;
  assert.equal(r['check-errors'], 0, file);
  assert.equal(r.leaks ?? 0, 0, `${file}: no leaked clusters`);
  assert.equal(r.corruptions ?? 0, 0, `${file}: no corruptions`);
}

const info = async (file: string, ...args: string[]) => JSON.parse(await img('info', '--output=json', ...args, file)) as Record<string, unknown>;

describe('backup-pull writes qcow2 itself', { timeout: 120_000 }, () => {
  let dir = '';
  let src = '';
  const servers: Server[] = [];
  const start = async (image: string, name: string, bitmap?: string) => {
    const s = await serve(dir, image, name, bitmap);
    servers.push(s);
    return s;
  };

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-pullq2-'));
    src = path.join(dir, 'disk.qcow2');
    // Random data in extents on and off cluster boundaries, holes, a zero run inside data, written zeroes.
    const raw = Buffer.alloc(SIZE);
    for (const [o, n] of [[0, 3 * MiB], [5 * MiB + 4096, 300 * 1024], [17 * MiB, K64], [30 * MiB - 8192, 2 * MiB], [SIZE - MiB, MiB]] as const) randomBytes(n).copy(raw, o);
    raw.fill(0, 2 * MiB, 2 * MiB + 3 * K64);
    const rawFile = path.join(dir, 'disk.raw');
    await fs.writeFile(rawFile, raw);
    await img('convert', '-q', '-f', 'raw', '-O', 'qcow2', rawFile, src);
    await fs.rm(rawFile);
    await qemuIo('qcow2', src, 'write -z 1M 512k', 'write -P 0 40M 256k');
  });

  after(async () => {
    for (const s of servers) await stop(s);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('an empty 1 GiB image: qemu-img reads the same header fields as for its own; checks clean', async () => {
    const ours = path.join(dir, 'empty.qcow2');
    const w = await Qcow2Writer.create(ours, { size: 1 << 30 });
    await w.finish();
    await w.close();
    const theirs = path.join(dir, 'empty-ref.qcow2');
    await img('create', '-q', '-f', 'qcow2', theirs, '1G');
    const strip = (i: Record<string, unknown>) => ({ ...i, filename: undefined, 'actual-size': undefined });
    assert.deepEqual(strip(await info(ours)), strip(await info(theirs)));
    await checkClean(ours);
  });

  test('full pull: checks clean, compares equal, only data clusters allocated', async () => {
    const s = await start(src, 'full');
    const output = path.join(dir, 'full.qcow2');
    const r = await pullBackup({ nbd: { socketPath: s.socket }, exportName: '', output, format: 'qcow2', connections: 2 });
    await checkClean(output);
    await img('compare', '-q', '-f', 'qcow2', '-F', 'qcow2', output, src);
    const i = await info(output);
    assert.equal(i['virtual-size'], SIZE);
    assert.equal(i['cluster-size'], K64);
    assert.deepEqual((i['format-specific'] as { data: unknown }).data, { compat: '1.1', 'compression-type': 'zlib', 'lazy-refcounts': false, 'refcount-bits': 16, corrupt: false, 'extended-l2': false });
    assert.equal(i['backing-filename'], undefined);
    // The data clusters (zero runs and holes left out) plus 5 metadata clusters: header, 1 L2, L1, refcount table and block.
    const data = (await map(output)).filter((e) => e.data).reduce((n, e) => n + e.length, 0);
    assert.equal(data % K64, 0);
    assert.equal((await fs.stat(output)).size, data + 5 * K64);
    assert.ok(r.bytesRead < 10 * MiB, `holes and zeroes not read: ${r.bytesRead}`);
    assert.equal((await fs.stat(output)).mode & 0o777, 0o600);
    await stop(s);
  });

  test('incremental from a 4 KiB bitmap: dirty extents widened to clusters; the chain checks clean and compares equal', async () => {
    const work = path.join(dir, 'work.qcow2');
    await fs.copyFile(src, work);
    await img('bitmap', '--add', '--enable', '-g', '4096', work, 'b1');
    await qemuIo(
      'qcow2',
      work,
      'write -P 0xa1 132k 4k', // off-boundary, inside the parent's data: the rest of its cluster comes from the export
      'write -z 5132k 4k', // a zeroed 4 KiB inside data: the cluster keeps its other data
      'write -z 30M 1M', // whole clusters zeroed over the parent's data: the zero flag
      'write -P 0xa2 2046k 4k', // across a cluster boundary
      'write -P 0xa3 50M 8k', // new data in a hole
      'write -z 60M 4k', // a dirty zero range over a hole
    );
    const s = await start(work, 'inc', 'b1');
    const inc = path.join(dir, 'inc.qcow2');
    const r = await pullBackup({ nbd: { socketPath: s.socket }, exportName: '', bitmap: 'b1', parentBackup: path.join(dir, 'full.qcow2'), output: inc, format: 'qcow2', concurrency: 4 });
    await stop(s);
    for (const x of r.ranges) assert.ok(x.offset % K64 === 0 && (x.offset + x.length) % K64 === 0, `range ${x.offset}+${x.length} on cluster boundaries`);
    const dirty = [128 * 1024, 5 * MiB, 30 * MiB, 2 * MiB - K64, 50 * MiB, 60 * MiB];
    const covered = (o: number) => r.ranges.some((x) => x.offset <= o && o < x.offset + x.length);
    for (const o of dirty) assert.ok(covered(o), `dirty cluster at ${o} copied`);
    assert.equal(r.ranges.reduce((n, x) => n + x.length, 0), 6 * K64 + MiB, 'just the widened dirty clusters');
    await checkClean(inc);
    await img('compare', '-q', '-f', 'qcow2', '-F', 'qcow2', inc, work);
    const i = await info(inc);
    assert.equal(i['backing-filename'], 'full.qcow2', 'relative: side by side');
    assert.equal(i['backing-filename-format'], 'qcow2');
    // The overlay holds exactly the widened clusters (depth 0), zeroed ones as the zero flag (no data); map
    // splits a cluster where the file has a hole (its unwritten zeroes), so adjacent entries are joined.
    const entries = (await map(inc)).filter((e) => e.depth === 0);
    const own: number[][] = [];
    for (const e of entries) {
      const last = own[own.length - 1];
      if (last && last[0]! + last[1]! === e.start) last[1]! += e.length;
      else own.push([e.start, e.length]);
    }
    assert.deepEqual(own, [[2 * K64, K64], [2 * MiB - K64, 2 * K64], [5 * MiB, K64], [30 * MiB, MiB], [50 * MiB, K64], [60 * MiB, K64]]);
    assert.deepEqual(entries.filter((e) => !e.data).map((e) => [e.start, e.length]), [[30 * MiB, MiB], [60 * MiB, K64]]);
  });

  test('a 1 TiB sparse disk with scattered writes: small file, few tables in memory', async () => {
    const big = path.join(dir, 'big.qcow2');
    await img('create', '-q', '-f', 'qcow2', big, '1T');
    const offsets = Array.from({ length: 24 }, (_v, k) => k * 43 * 1024 * MiB + k * 3 * K64);
    await qemuIo('qcow2', big, ...offsets.map((o, k) => `write -P ${k + 1} ${o} 64k`));
    const s = await start(big, 'big');
    const output = path.join(dir, 'big-full.qcow2');
    const rss0 = process.memoryUsage().rss;
    const source = await NbdClient.connect({ socketPath: s.socket }, { exportName: '', metaContexts: [CONTEXT_BASE_ALLOCATION] });
    const w = await Qcow2Writer.create(output, { size: source.size });
    try {
      await copyToSink(source, w);
    } finally {
      await w.close();
      await source.disconnect();
    }
    assert.equal(w.l2Tables, 24, 'one L2 table per 512 MiB touched, not 2048');
    assert.ok(process.memoryUsage().rss - rss0 < 64 * MiB, 'memory does not follow the virtual size');
    // header + 24 data + 24 L2 + 1 L1 (16 KiB) + refcount table + block
    assert.equal((await fs.stat(output)).size, (1 + 24 + 24 + 1 + 1 + 1) * K64);
    await checkClean(output);
    await img('compare', '-q', '-f', 'qcow2', '-F', 'qcow2', output, big);
    await stop(s);
  });

  test('the server dies mid-copy: the pull fails and leaves no file', async () => {
    const s = await start(src, 'dying');
    const output = path.join(dir, 'dying.qcow2');
    let killed = false;
    const onProgress = (p: { bytesDone: number }) => {
      if (p.bytesDone > 0 && !killed) {
        killed = true;
        s.proc.kill('SIGKILL');
      }
    };
    await assert.rejects(pullBackup({ nbd: { socketPath: s.socket }, exportName: '', output, format: 'qcow2', concurrency: 2, onProgress }), (e: unknown) => e instanceof VirError);
    assert.equal(killed, true);
    await assert.rejects(fs.stat(output), 'removed');
  });

  test('a pull killed before its header was written leaves a file qemu-img does not take for a qcow2', async () => {
    const s = await start(src, 'killed');
    const output = path.join(dir, 'killed.qcow2');
    // The child stalls its main thread for good once data is on disk, then is SIGKILLed: no finish(), no cleanup.
    const script = path.join(dir, 'pull-child.mts');
    const pull = pathToFileURL(path.resolve('src/repository/pull.ts')).href;
    await fs.writeFile(
      script,
      `import { pullBackup } from '${pull}';
const stall = new Int32Array(new SharedArrayBuffer(4));
await pullBackup({ nbd: { socketPath: ${JSON.stringify(s.socket)} }, exportName: '', output: ${JSON.stringify(output)}, format: 'qcow2', concurrency: 1,
  onProgress: (p) => { if (p.bytesDone >= 2 * ${MiB}) { process.stdout.write('stalled\\n'); Atomics.wait(stall, 0, 0); } } });
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => child.once('exit', r));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (b: Buffer) => b.toString().includes('stalled') && resolve());
      child.once('exit', () => reject(new Error('the pull child exited before stalling')));
    });
    child.kill('SIGKILL');
    await exited;
    assert.ok((await fs.stat(output)).size >= 2 * MiB, 'data was written');
    await assert.rejects(run('qemu-img', ['info', '-f', 'qcow2', output]), /not in qcow2 format|Image is not in qcow2 format/);
    assert.equal((await info(output))['format'], 'raw', 'probing finds no qcow2 header');
    await stop(s);
  });
});
