// The fast pull path against real qemu-nbd exports over unix, TCP and TLS
// (x509 with a client certificate, verify-peer=on), with one and several
// connections (qemu-nbd advertises multi-conn on read-only exports): full
// pulls to raw and qcow2 equal the image, the checksum streamed during the pull
// equals the one read back (backup-verify), and an incremental pull over TLS
// restores to the image after the bitmap.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { loadTlsDir, type NbdTlsOptions } from '../../src/nbd/tls.js';
import type { NbdTarget } from '../../src/nbd/target.js';
import { pullBackup, restoreBackup, verifyBackup, writeManifest } from '../../src/repository/index.js';
import { hashBlocks } from '../../src/repository/hash-pool.js';
import { MiB, img, qemuIo, rawContent, referenceChecksum, sha } from './repository-helpers.js';
import { freePort } from '../helpers/net.js';
import { makeCerts } from '../helpers/tls-certs.js';

const SIZE = 48 * MiB;

interface Server {
  proc: ChildProcess;
  exited: Promise<unknown>;
}

async function serve(args: string[], probe: NbdTarget): Promise<Server> {
  const proc = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=8', '--format=qcow2', ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise((r) => proc.once('exit', r));
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error('qemu-nbd exited');
    const ok = await new Promise<boolean>((resolve) => {
      const c = 'socketPath' in probe ? net.createConnection(probe.socketPath) : net.createConnection(probe.port, probe.host);
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) return { proc, exited };
    if (i > 200) throw new Error('qemu-nbd did not listen');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('fast pull over unix, TCP and TLS, one and several connections', { timeout: 240_000 }, () => {
  let dir = '';
  let src = '';
  let ref0: Buffer;
  let tls: NbdTlsOptions;
  let certs: Awaited<ReturnType<typeof makeCerts>>;
  const servers: Server[] = [];
  const targets: Record<'unix' | 'tcp' | 'tls', NbdTarget> = {} as never;

  const startAll = async (bitmap?: string) => {
    const extra = bitmap ? [`--bitmap=${bitmap}`] : [];
    const sock = path.join(dir, `s-${bitmap ?? 'full'}.sock`);
    const tcp = await freePort();
    const tlsPort = await freePort();
    servers.push(await serve([`--socket=${sock}`, ...extra, src], { socketPath: sock }));
    servers.push(await serve(['-b', '127.0.0.1', '-p', String(tcp), ...extra, src], { host: '127.0.0.1', port: tcp }));
    servers.push(
      await serve(
        ['--object', `tls-creds-x509,id=tls0,dir=${certs.server},endpoint=server,verify-peer=on`, '--tls-creds=tls0', '-b', '127.0.0.1', '-p', String(tlsPort), ...extra, src],
        { host: '127.0.0.1', port: tlsPort },
      ),
    );
    targets.unix = { socketPath: sock };
    targets.tcp = { host: '127.0.0.1', port: tcp };
    targets.tls = { host: 'localhost', port: tlsPort };
  };
  const stopAll = async () => {
    for (const s of servers.splice(0)) {
      if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGTERM');
      await s.exited;
    }
  };

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-pullfast-'));
    certs = await makeCerts(path.join(dir, 'pki'));
    tls = await loadTlsDir(certs.client);
    src = path.join(dir, 'disk.qcow2');
    // Random data in scattered extents (some not MiB-aligned), a zeroed range, and holes.
    const raw = Buffer.alloc(SIZE);
    for (const [o, n] of [[0, 3 * MiB], [5 * MiB + 4096, 300 * 1024], [17 * MiB, 64 * 1024], [30 * MiB - 8192, 2 * MiB], [SIZE - MiB, MiB]] as const) randomBytes(n).copy(raw, o);
    const rawFile = path.join(dir, 'disk.raw');
    await fs.writeFile(rawFile, raw);
    await img('convert', '-q', '-f', 'raw', '-O', 'qcow2', rawFile, src);
    await fs.rm(rawFile);
    await qemuIo('qcow2', src, 'write -z 1M 512k');
    ref0 = await rawContent(src, dir);
    await startAll();
  });

  after(async () => {
    await stopAll();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  for (const transport of ['unix', 'tcp', 'tls'] as const) {
    for (const connections of [1, 3]) {
      test(`full pull over ${transport}, ${connections} connection(s): raw and qcow2 equal the image; streamed checksum = read back`, async () => {
        for (const format of ['raw', 'qcow2'] as const) {
          const output = path.join(dir, `full-${transport}-${connections}.${format}`);
          // the default hashes on this thread on 2 cores or fewer, else on the pool: both run here whatever the machine
          const hashPool = connections > 1 ? { hashPool: { blockDigests: hashBlocks } } : {};
          const r = await pullBackup({ nbd: targets[transport], ...(transport === 'tls' ? { tls } : {}), exportName: '', output, format, connections, ...hashPool });
          assert.equal(r.connections, connections, 'qemu-nbd allows multi-conn on a read-only export');
          const got = format === 'raw' ? await fs.readFile(output) : await rawContent(output, dir);
          assert.equal(sha(got), sha(ref0), `${format} content`);
          assert.equal(r.digests!.toChecksum().sha256, referenceChecksum(ref0), 'streamed checksum follows the manifest definition');
          await writeManifest(
            { domain: { name: 'vm', uuid: 'u-1' }, disk: 'vda', target: output, format, checkpoint: 'c1', incrementalFrom: null, parentBackup: null, time: 1, virtualSize: SIZE, jobId: 1, mode: 'pull' },
            { digests: r.digests! },
          );
          const v = await verifyBackup({ target: output });
          assert.equal(v.ok, true, `backup-verify re-reads ${format} and agrees with the streamed checksum`);
        }
      });
    }
  }

  test('TLS refusals: a client without a certificate, and clear text to a TLS server, create no file', async () => {
    const output = path.join(dir, 'refused.raw');
    await assert.rejects(pullBackup({ nbd: targets.tls, tls: await loadTlsDir(certs.caOnly), exportName: '', output, format: 'raw' }), (e: unknown) => e instanceof VirError);
    await assert.rejects(pullBackup({ nbd: targets.tls, exportName: '', output, format: 'raw' }), (e: unknown) => e instanceof VirError && /TLS/.test(e.message));
    await assert.rejects(fs.stat(output));
    await assert.rejects(loadTlsDir(path.join(dir, 'nope')), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG);
  });

  test('incremental pull over TLS with 2 connections: overlay restores to the image after the bitmap', async () => {
    const parent = path.join(dir, 'full-tls-1.qcow2');
    await stopAll();
    await img('bitmap', '--add', '--enable', src, 'b1');
    await qemuIo('qcow2', src, 'write -P 0xef 1M 4k', 'write -z 5M 1M', 'write -P 0x11 40M 192k');
    const ref1 = await rawContent(src, dir);
    await startAll('b1');
    const inc = path.join(dir, 'inc.qcow2');
    const r = await pullBackup({ nbd: targets.tls, tls, exportName: '', bitmap: 'b1', parentBackup: parent, output: inc, format: 'qcow2', connections: 2 });
    assert.equal(r.connections, 2);
    // Cost follows the dirty data: the 64 KiB granule around 1M and the 192 KiB at 40M; the zeroed MiB is not read.
    assert.equal(r.bytesRead, 64 * 1024 + 192 * 1024);
    assert.deepEqual(r.ranges.filter((x) => x.zero).map((x) => [x.offset, x.length]), [[5 * MiB, MiB]]);
    assert.equal(sha(await rawContent(inc, dir)), sha(ref1));
    const out = path.join(dir, 'inc-restored.raw');
    await restoreBackup({ target: inc, output: out, format: 'raw' });
    assert.equal(sha(await fs.readFile(out)), sha(ref1));
  });
});
