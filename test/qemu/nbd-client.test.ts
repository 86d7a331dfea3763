// The NBD client against real qemu-nbd (QEMU 7.2), checked against libnbd's
// nbdinfo/nbdcopy and qemu-img convert.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ErrorCode, ErrorDomain } from '../../src/errors.js';
import { NbdClient, type Extent, type NbdTarget } from '../../src/nbd/client.js';
import { copyToFile } from '../../src/nbd/copy.js';
import { NbdError } from '../../src/nbd/errors.js';
import { extents, mergeExtents } from '../../src/nbd/extents.js';
import { CONTEXT_BASE_ALLOCATION } from '../../src/nbd/protocol.js';
import { freePort } from '../helpers/net.js';

const run = promisify(execFile);
const MiB = 1 << 20;
const SIZE = 64 * MiB;
const DIRTY = 'qemu:dirty-bitmap:b1';
const CONTEXTS = [CONTEXT_BASE_ALLOCATION, DIRTY];

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Server {
  proc: ChildProcess;
  exited: Promise<void>;
}

const servers: Server[] = [];

function startQemuNbd(dir: string, image: string, listen: string[]): Server {
  const proc = spawn(
    'qemu-nbd',
    ['--read-only', '--persistent', '--shared=8', '--format=qcow2', '--bitmap=b1', ...listen, image],
    { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.once('exit', (code, signal) => {
    if (code) console.error(`qemu-nbd exited with ${code} (${signal}): ${stderr}`);
  });
  const s = { proc, exited };
  servers.push(s);
  return s;
}

async function stopServer(s: Server): Promise<void> {
  if (s.proc.exitCode === null && s.proc.signalCode === null) {
    s.proc.kill('SIGKILL');
    await s.exited;
  }
}

/** Wait until the server accepts connections (qemu-nbd has no readiness signal on a pipe). */
async function waitListening(target: NbdTarget, s: Server): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (s.proc.exitCode !== null) throw new Error('qemu-nbd exited during start-up');
    const ok = await new Promise<boolean>((resolve) => {
      const c = 'socketPath' in target ? net.createConnection(target.socketPath) : net.createConnection(target.port, target.host);
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('qemu-nbd did not start listening');
}

/** `nbdinfo --map[=context]` output as extents. */
async function nbdinfoMap(uri: string, context?: string): Promise<Extent[]> {
  const { stdout } = await run('nbdinfo', [context ? `--map=${context}` : '--map', uri]);
  return mergeExtents(
    stdout
      .trim()
      .split('\n')
      .map((line) => {
        const [offset, length, flags] = line.trim().split(/\s+/).map(Number);
        return { offset: offset!, length: length!, flags: flags! };
      }),
  );
}

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

function assertNbdError(e: unknown, code: number, re: RegExp, usable?: boolean): true {
  assert.ok(e instanceof NbdError, `expected NbdError, got ${String(e)}`);
  assert.equal(e.code, code);
  assert.equal(e.domain, ErrorDomain.NBD);
  assert.match(e.message, re);
  if (usable !== undefined) assert.equal(e.usable, usable);
  return true;
}

describe('NBD client against qemu-nbd', { timeout: 120_000 }, () => {
  let dir = '';
  let image = '';
  let ref: Buffer;
  let sock = '';
  let uri = '';
  let client: NbdClient;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-nbd-'));
    image = path.join(dir, 'img.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(SIZE)]);
    // Before the bitmap: data at 1M and 10M.
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 64k', '-c', 'write -P 0xcd 10M 1M', image]);
    await run('qemu-img', ['bitmap', '--add', '--enable', image, 'b1']);
    // After: these are dirty in b1. 10M+64k is zeroed, so dirty but reading as zeroes.
    await run('qemu-io', [
      '-f', 'qcow2',
      '-c', 'write -P 0xef 1M 4k',
      '-c', 'write -P 0x11 40M 128k',
      '-c', 'write -z 10M 64k',
      '-c', 'write -P 0x5a 63M 1M',
      image,
    ]);
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, path.join(dir, 'ref.raw')]);
    ref = await fs.readFile(path.join(dir, 'ref.raw'));
    sock = path.join(dir, 'nbd.sock');
    uri = `nbd+unix:///?socket=${sock}`;
    const s = startQemuNbd(dir, image, [`--socket=${sock}`]);
    await waitListening({ socketPath: sock }, s);
    client = await NbdClient.connect({ socketPath: sock }, { exportName: '', metaContexts: CONTEXTS });
  });

  after(async () => {
    client?.destroy();
    for (const s of servers) await stopServer(s);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('handshake: size, flags, contexts, block sizes', () => {
    assert.equal(client.size, SIZE);
    assert.equal(client.readOnly, true);
    assert.equal(client.structuredReplies, true);
    assert.deepEqual([...client.metaContexts.keys()].sort(), [...CONTEXTS].sort());
    assert.deepEqual(client.blockSizes, { minimum: 1, preferred: 4096, maximum: 32 * MiB, advertised: true });
    assert.equal(client.uri, uri);
  });

  test('reads match qemu-img convert and nbdcopy bytes', async () => {
    const ranges: Array<[number, number]> = [
      [MiB, 64 * 1024], // data, partly rewritten
      [MiB - 512, 8192], // hole then data
      [10 * MiB - 4096, 2 * MiB], // hole, zeroed, data, hole
      [40 * MiB + 100, 1000], // unaligned inside data
      [63 * MiB, MiB], // last MiB
      [20 * MiB, 4 * MiB], // pure hole
      [0, SIZE], // more than one 32 MiB request, pipelined
    ];
    const got = await Promise.all(ranges.map(([o, n]) => client.read(o, n)));
    for (const [i, [o, n]] of ranges.entries()) {
      assert.equal(got[i]!.length, n);
      assert.equal(sha(got[i]!), sha(ref.subarray(o, o + n)), `read ${n}@${o}`);
    }
    const copy = path.join(dir, 'nbdcopy.raw');
    await run('nbdcopy', [uri, copy]);
    assert.equal(sha(await fs.readFile(copy)), sha(got[got.length - 1]!));
    await fs.rm(copy);
  });

  test('many concurrent reads, more than the in-flight bound', async () => {
    const offsets = Array.from({ length: 100 }, (_v, i) => (i * 7919 * 4096) % (SIZE - 65536));
    const got = await Promise.all(offsets.map((o) => client.read(o, 65536)));
    offsets.forEach((o, i) => assert.ok(got[i]!.equals(ref.subarray(o, o + 65536)), `read at ${o}`));
  });

  test('block status matches nbdinfo --map for base:allocation and the dirty bitmap', async () => {
    const alloc = await nbdinfoMap(uri);
    const dirty = await nbdinfoMap(uri, DIRTY);
    // Sanity of the oracle itself: data where we wrote, dirty where we wrote after the bitmap.
    assert.ok(alloc.some((e) => e.offset === MiB && e.flags === 0));
    assert.deepEqual(
      dirty.filter((e) => e.flags === 1).map((e) => [e.offset, e.length]),
      [[MiB, 65536], [10 * MiB, 65536], [40 * MiB, 131072], [63 * MiB, MiB]],
    );
    assert.deepEqual(await collect(extents(client, CONTEXT_BASE_ALLOCATION)), alloc);
    assert.deepEqual(await collect(extents(client, DIRTY)), dirty);
    // Small windows: same merged answer, never more than asked per request.
    assert.deepEqual(await collect(extents(client, CONTEXT_BASE_ALLOCATION, { chunk: 3 * MiB + 512 })), alloc);
    assert.deepEqual(await collect(extents(client, DIRTY, { offset: 5 * MiB, length: 36 * MiB, chunk: MiB })), clip(dirty, 5 * MiB, 41 * MiB));
    const one = await client.blockStatus(MiB + 4096, 8192, CONTEXT_BASE_ALLOCATION);
    assert.deepEqual(one, [{ offset: MiB + 4096, length: 8192, flags: 0 }]);
  });

  test('copyToFile full: same bytes as the export, sparse', async () => {
    const out = path.join(dir, 'full.raw');
    const progress: number[] = [];
    const res = await copyToFile(client, out, { concurrency: 3, chunkSize: 256 * 1024, onProgress: (p) => progress.push(p.bytesDone) });
    const bytes = await fs.readFile(out);
    assert.equal(bytes.length, SIZE);
    assert.equal(sha(bytes), sha(ref));
    const alloc = await nbdinfoMap(uri);
    const data = alloc.filter((e) => (e.flags & 2) === 0).reduce((n, e) => n + e.length, 0);
    assert.equal(res.bytesRead, data);
    assert.equal(res.ranges.reduce((n, r) => n + r.length, 0), SIZE);
    assert.equal(progress[progress.length - 1], data);
    const st = await fs.stat(out);
    assert.ok(st.blocks * 512 <= 4 * MiB, `full copy should be sparse, uses ${st.blocks * 512} bytes`);
  });

  test('copyToFile onlyDirty: only dirty ranges, dirty zeroes reported', async () => {
    const out = path.join(dir, 'inc.raw');
    const res = await copyToFile(client, out, { onlyDirty: DIRTY, concurrency: 2 });
    const expected = Buffer.alloc(SIZE);
    for (const e of await nbdinfoMap(uri, DIRTY)) if (e.flags & 1) ref.copy(expected, e.offset, e.offset, e.offset + e.length);
    const bytes = await fs.readFile(out);
    assert.equal(bytes.length, SIZE);
    assert.equal(sha(bytes), sha(expected));
    assert.deepEqual(res.ranges, [
      { offset: MiB, length: 65536, zero: false },
      { offset: 10 * MiB, length: 65536, zero: true },
      { offset: 40 * MiB, length: 131072, zero: false },
      { offset: 63 * MiB, length: MiB, zero: false },
    ]);
    assert.equal(res.bytesRead, 65536 + 131072 + MiB);
  });

  test('copyToFile into an impossible path is a SYSTEM_ERROR naming it', async () => {
    const bad = path.join(dir, 'no', 'such', 'dir', 'x.raw');
    await assert.rejects(copyToFile(client, bad), (e: NbdError) => {
      assert.equal(e.code, ErrorCode.SYSTEM_ERROR);
      assert.equal(e.domain, ErrorDomain.NBD);
      assert.ok(e.message.includes(bad));
      return true;
    });
  });

  test('argument errors leave the connection usable', async () => {
    await assert.rejects(client.read(SIZE - 10, 20), (e) => assertNbdError(e, ErrorCode.INVALID_ARG, /beyond the end of export '' \(67108864 bytes\)/, true));
    await assert.rejects(client.blockStatus(0, 4096, 'qemu:dirty-bitmap:nope'), (e) => assertNbdError(e, ErrorCode.INVALID_ARG, /'qemu:dirty-bitmap:nope' was not negotiated/));
    assert.ok((await client.read(MiB, 16)).equals(Buffer.alloc(16, 0xef)));
    assert.equal(client.usable, true);
  });

  test('connect errors name the export and the missing context', async () => {
    await assert.rejects(
      NbdClient.connect({ socketPath: sock }, { exportName: '', metaContexts: ['qemu:dirty-bitmap:nope'] }),
      (e) => assertNbdError(e, ErrorCode.INTERNAL_ERROR, /does not offer metadata context 'qemu:dirty-bitmap:nope'/, false),
    );
    await assert.rejects(
      NbdClient.connect({ socketPath: sock }, { exportName: 'nope' }),
      (e) => assertNbdError(e, ErrorCode.INTERNAL_ERROR, /export 'nope' not found/, false),
    );
    await assert.rejects(
      NbdClient.connect({ socketPath: path.join(dir, 'absent.sock') }, { exportName: '' }),
      (e) => assertNbdError(e, ErrorCode.INTERNAL_ERROR, /cannot connect to NBD server/, false),
    );
    // TLS asked of a server without it: refused, never a silent fall back to clear text.
    await assert.rejects(
      NbdClient.connect({ socketPath: sock }, { exportName: '', tls: {} }),
      (e) => assertNbdError(e, ErrorCode.INTERNAL_ERROR, /refused TLS \(NBD_REP_ERR_POLICY.*to NBD_OPT_STARTTLS\)/, false),
    );
    await assert.rejects(
      NbdClient.connect({ socketPath: sock }, { exportName: '', tls: { psk: { identity: 'a', key: Buffer.alloc(16) } } }),
      (e: { code: number }) => e.code === ErrorCode.CONFIG_UNSUPPORTED,
    );
  });

  test('disconnect sends NBD_CMD_DISC, later requests fail', async () => {
    const c = await NbdClient.connect({ socketPath: sock }, { exportName: '' });
    const pending = c.read(0, MiB);
    const closing = c.disconnect();
    assert.equal((await pending).length, MiB, 'in-flight read finishes before the disconnect');
    await closing;
    assert.equal(c.usable, false);
    await assert.rejects(c.read(0, 16), (e) => assertNbdError(e, ErrorCode.INTERNAL_ERROR, /is closed|being closed/, false));
  });

  test('TCP on 127.0.0.1', async () => {
    const port = await freePort();
    const s = startQemuNbd(dir, image, ['--bind=127.0.0.1', `--port=${port}`]);
    const target = { host: '127.0.0.1', port };
    await waitListening(target, s);
    const c = await NbdClient.connect(target, { exportName: '', metaContexts: [DIRTY] });
    try {
      assert.equal(c.uri, `nbd://127.0.0.1:${port}/`);
      const b = await c.read(40 * MiB, 256 * 1024);
      assert.equal(sha(b), sha(ref.subarray(40 * MiB, 40 * MiB + 256 * 1024)));
      assert.deepEqual(await collect(extents(c, DIRTY)), await nbdinfoMap(`nbd://127.0.0.1:${port}/`, DIRTY));
      await c.disconnect();
    } finally {
      c.destroy();
      await stopServer(s);
    }
  });

  test('server killed mid-read rejects every pending read', async () => {
    const s2 = path.join(dir, 'kill.sock');
    const s = startQemuNbd(dir, image, [`--socket=${s2}`]);
    await waitListening({ socketPath: s2 }, s);
    const c = await NbdClient.connect({ socketPath: s2 }, { exportName: '', maxInFlight: 4 });
    try {
      // Stopped, the server cannot answer: all reads are surely pending when it dies.
      s.proc.kill('SIGSTOP');
      const reads = Array.from({ length: 8 }, (_v, i) => c.read(i * MiB, MiB));
      const settled = Promise.allSettled(reads);
      await new Promise((r) => setTimeout(r, 100));
      s.proc.kill('SIGKILL');
      const results = await settled;
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        assertNbdError((r as PromiseRejectedResult).reason, ErrorCode.INTERNAL_ERROR, /(closed unexpectedly|failed \(read ECONNRESET\)) with 4 requests in flight/, false);
      }
      assert.equal(c.usable, false);
      await assert.rejects(c.read(0, 16), (e) => assertNbdError(e, ErrorCode.INTERNAL_ERROR, /with 4 requests in flight/, false));
    } finally {
      c.destroy();
      await stopServer(s);
    }
  });
});

function clip(list: Extent[], start: number, end: number): Extent[] {
  return list
    .filter((e) => e.offset + e.length > start && e.offset < end)
    .map((e) => {
      const s = Math.max(start, e.offset);
      return { offset: s, length: Math.min(end, e.offset + e.length) - s, flags: e.flags };
    });
}
