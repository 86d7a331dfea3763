// The NBD server against real clients: libnbd's nbdinfo (--list, --map) and
// nbdcopy, and QEMU's qemu-img convert/compare, over a unix socket and TCP.
// First a file-backed source; then `virtback backup-serve` serving a point
// written into a chunk repository.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { openFileBlockSource } from '../../src/nbd/block-source.js';
import { NbdServer } from '../../src/nbd/server.js';
import { nbdUri } from '../../src/vmbackup/serve.js';
import { writeTestPoint } from './serve-helpers.js';
import { programArgs } from '../helpers/entry.js';

const run = promisify(execFile);
const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** 40 MiB (not a multiple of the 4 MiB chunk plus a tail): data at 1 MiB, 9..12 MiB, and the last 100 KiB + 3 bytes. */
function makeImage(file: string): Buffer {
  const size = 40 * MiB + 12345;
  const b = Buffer.alloc(size);
  randomBytes(64 * 1024).copy(b, 1 * MiB);
  randomBytes(3 * MiB).copy(b, 9 * MiB);
  randomBytes(100 * 1024 + 3).copy(b, size - 100 * 1024 - 3);
  fs.writeFileSync(file, b);
  return b;
}

/** nbdinfo --map output as [offset, length, type] rows. */
async function nbdMap(uri: string): Promise<Array<[number, number, number]>> {
  const { stdout } = await run('nbdinfo', ['--map', uri]);
  return stdout.trim().split('\n').map((l) => {
    const [o, n, t] = l.trim().split(/\s+/);
    return [Number(o), Number(n), Number(t)];
  });
}

/** Zero runs of the image at 64 KiB granularity, as nbdinfo --map prints them (3 = hole,zero; 0 = data). */
function expectedMap(b: Buffer, block: number): Array<[number, number, number]> {
  const rows: Array<[number, number, number]> = [];
  for (let at = 0; at < b.length; at += block) {
    const part = b.subarray(at, Math.min(b.length, at + block));
    const t = part.every((x) => x === 0) ? 3 : 0;
    const last = rows[rows.length - 1];
    if (last && last[2] === t) last[1] += part.length;
    else rows.push([at, part.length, t]);
  }
  return rows;
}

describe('NBD server with real clients', () => {
  let dir: string;
  let image: Buffer;
  let file: string;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-srv-'));
    file = path.join(dir, 'src.raw');
    image = makeImage(file);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('file source over a unix socket: nbdinfo --list/--map, nbdcopy and qemu-img convert equal the source', async () => {
    const server = new NbdServer(new Map([['vda', { source: await openFileBlockSource(file) }], ['sdb', { source: await openFileBlockSource(file) }]]));
    const at = await server.listen({ socket: path.join(dir, 'file.sock') });
    try {
      const uri = nbdUri(at, 'vda');
      const { stdout: list } = await run('nbdinfo', ['--list', '--json', nbdUri(at, '')]);
      const exports = (JSON.parse(list) as { exports: Array<{ 'export-name': string; 'export-size': number; is_read_only: boolean; can_multi_conn: boolean }> }).exports;
      assert.deepEqual(exports.map((e) => [e['export-name'], e['export-size'], e.is_read_only, e.can_multi_conn]), [
        ['vda', image.length, true, true],
        ['sdb', image.length, true, true],
      ]);
      assert.deepEqual(await nbdMap(uri), expectedMap(image, 64 * 1024));
      const copy = path.join(dir, 'copy.raw');
      await run('nbdcopy', [uri, copy]);
      assert.equal(sha(fs.readFileSync(copy)), sha(image));
      const q = path.join(dir, 'copy.qcow2');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, q]);
      const { stdout } = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', q, file]);
      assert.match(stdout, /Images are identical/);
      // holes stay holes: the converted image allocates only the data runs (plus metadata)
      const { stdout: info } = await run('qemu-img', ['info', '--output=json', q]);
      assert.ok((JSON.parse(info) as { 'actual-size': number })['actual-size'] < 8 * MiB);
      await assert.rejects(run('qemu-io', ['-f', 'raw', '-c', 'write 0 4096', uri]), /read-only|Permission|denied|EPERM/i);
    } finally {
      await server.close();
    }
  });

  test('TCP on loopback; a chunk-store point through `virtback backup-serve` equals the disk byte for byte', async () => {
    const { repoDir, point } = await writeTestPoint(dir, 'guest', [{ target: 'vda', file }]);
    const pidfile = path.join(dir, 'serve.pid');
    const child = spawn(process.execPath, [...programArgs('cli/virtback'), 'backup-serve', '--repo', repoDir, 'guest', '--point', point.id, '--listen', '127.0.0.1:0', '--pidfile', pidfile, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 60_000;
      while (!fs.existsSync(pidfile)) {
        assert.ok(Date.now() < deadline && child.exitCode === null, `backup-serve did not start: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const served = JSON.parse(stdout) as { point: string; disks: Array<{ target: string; size: number; uri: string }> };
      assert.equal(served.point, point.id);
      const uri = served.disks[0]!.uri;
      assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/vda$/);
      // zero chunks are holes: the map follows the 4 MiB chunks
      assert.deepEqual(await nbdMap(uri), expectedMap(image, 4 * MiB));
      const copy = path.join(dir, 'point.raw');
      await run('nbdcopy', [uri, copy]);
      assert.equal(sha(fs.readFileSync(copy)), sha(image));
      const { stdout: cmp } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, file]);
      assert.match(cmp, /Images are identical/);
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, `backup-serve exits cleanly on SIGTERM: ${stderr}`);
    }
    assert.equal(fs.existsSync(pidfile), false, 'pidfile removed at exit');
  });

  test('an encrypted repository is served with --encrypt-key and refused without it', async () => {
    const key = randomBytes(32);
    const keyFile = path.join(dir, 'repo.key');
    fs.writeFileSync(keyFile, key, { mode: 0o600 });
    const { repoDir, point } = await writeTestPoint(dir, 'secret', [{ target: 'sdb', file }], { repoDir: path.join(dir, 'enc-repo'), encryptKey: key });
    const cli = [...programArgs('cli/virtback'), 'backup-serve', '--repo', repoDir, 'secret', '--point', point.id];
    const refused = await run(process.execPath, [...cli, '--socket', path.join(dir, 'no.sock')]).then(
      () => assert.fail('served an encrypted repository without its key'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /key/i);
    const sock = path.join(dir, 'enc.sock');
    const pidfile = path.join(dir, 'enc.pid');
    const child = spawn(process.execPath, [...cli, '--socket', sock, '--pidfile', pidfile, '--encrypt-key', keyFile], { stdio: 'ignore' });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 60_000;
      while (!fs.existsSync(pidfile)) {
        assert.ok(Date.now() < deadline && child.exitCode === null, 'backup-serve did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
      const copy = path.join(dir, 'enc.raw');
      await run('nbdcopy', [nbdUri({ socket: sock }, 'sdb'), copy]);
      assert.equal(sha(fs.readFileSync(copy)), sha(image));
    } finally {
      child.kill('SIGINT');
      assert.equal(await exited, 0);
    }
  });
});
