// NbdClient against a scripted in-process NBD server: pipelining, ordering,
// server errors vs protocol violations, and what each does to the connection.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { ErrorCode, VirError } from '../../src/errors.js';
import { pullBackup } from '../../src/repository/pull.js';
import { HashPool } from '../../src/repository/hash-pool.js';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdError } from '../../src/nbd/errors.js';
import { extents } from '../../src/nbd/extents.js';
import * as P from '../../src/nbd/protocol.js';
import { scriptedNbdServer, type Conn, type Req } from '../helpers/scripted-nbd.js';

/** Byte i of the fake disk. */
const pattern = (offset: number, length: number) => Buffer.from(Array.from({ length }, (_v, i) => (offset + i) % 251));

function isNbdError(re: RegExp, usable: boolean, code: number = ErrorCode.INTERNAL_ERROR) {
  return (e: unknown) => {
    assert.ok(e instanceof NbdError, `expected NbdError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.usable, usable);
    assert.match(e.message, re);
    return true;
  };
}

test('handshake exposes size, flags and block sizes; reads honour the maximum payload', async (t) => {
  const srv = await scriptedNbdServer(t, {
    size: 1 << 20,
    onRequest: (r, c) => c.data(r.cookie, r.offset, pattern(r.offset, r.length)),
  });
  const c = await srv.connect();
  t.after(() => c.destroy());
  assert.equal(c.size, 1 << 20);
  assert.equal(c.readOnly, true);
  assert.deepEqual(c.blockSizes, { minimum: 512, preferred: 4096, maximum: 65536, advertised: true });
  const b = await c.read(4096, 200 * 1024);
  assert.ok(b.equals(pattern(4096, 200 * 1024)));
  // 200 KiB with a 64 KiB maximum: four requests, none longer than the maximum.
  assert.deepEqual(srv.conns[0]!.requests.map((r) => r.length), [65536, 65536, 65536, 8192]);
  await assert.rejects(c.read(100, 512), isNbdError(/not aligned to the export's minimum block size 512/, true, ErrorCode.INVALID_ARG));
  await c.disconnect();
  assert.equal(srv.conns[0]!.disconnected, true);
});

test('replies out of order and split into chunks are matched by cookie', async (t) => {
  let held: Req[] = [];
  const srv = await scriptedNbdServer(t, {
    onRequest: (r, c) => {
      held.push(r);
      if (held.length < 4) return;
      for (const q of held.reverse()) {
        // hole for the first half, data for the second, sent second half first
        const half = q.length / 2;
        c.data(q.cookie, q.offset + half, pattern(q.offset + half, half), false);
        c.hole(q.cookie, q.offset, half, true);
      }
      held = [];
    },
  });
  const c = await srv.connect();
  t.after(() => c.destroy());
  const offs = [0, 8192, 65536, 4096];
  const got = await Promise.all(offs.map((o) => c.read(o, 4096)));
  offs.forEach((o, i) => {
    assert.ok(got[i]!.subarray(0, 2048).equals(Buffer.alloc(2048)), `hole half of ${o}`);
    assert.ok(got[i]!.subarray(2048).equals(pattern(o + 2048, 2048)), `data half of ${o}`);
  });
});

test('never more than maxInFlight requests outstanding', async (t) => {
  let outstanding = 0;
  let peak = 0;
  const srv = await scriptedNbdServer(t, {
    onRequest: (r, c) => {
      outstanding++;
      peak = Math.max(peak, outstanding);
      setTimeout(() => {
        outstanding--;
        c.data(r.cookie, r.offset, pattern(r.offset, r.length));
      }, 5);
    },
  });
  const c = await srv.connect({ maxInFlight: 3 });
  t.after(() => c.destroy());
  const got = await Promise.all(Array.from({ length: 20 }, (_v, i) => c.read(i * 512, 512)));
  got.forEach((b, i) => assert.ok(b.equals(pattern(i * 512, 512))));
  assert.equal(peak, 3);
});

test('a server error fails one request and the connection stays usable', async (t) => {
  const srv = await scriptedNbdServer(t, {
    onRequest: (r, c) => (r.offset === 0 ? c.error(r.cookie, P.NBD_EIO, 'medium error') : c.data(r.cookie, r.offset, pattern(r.offset, r.length))),
  });
  const c = await srv.connect();
  t.after(() => c.destroy());
  const [bad, good] = await Promise.allSettled([c.read(0, 512), c.read(512, 512)]);
  assert.equal(bad.status, 'rejected');
  isNbdError(/NBD server failed the read of 512 bytes at offset 0 .*: EIO: medium error \(NBD connection is still usable\)/, true)((bad as PromiseRejectedResult).reason);
  assert.ok(good.status === 'fulfilled' && good.value.equals(pattern(512, 512)));
  assert.ok((await c.read(1024, 512)).equals(pattern(1024, 512)));
  assert.equal(c.usable, true);
});

test('protocol violations kill the connection and fail every pending request', async (t) => {
  const cases: Array<[string, (r: Req, c: Conn) => void, RegExp]> = [
    ['data outside the request', (r, c) => c.data(r.cookie, r.offset + 512, pattern(0, 512)), /data chunk 1536\+512 lies outside the read/],
    ['unknown cookie', (r, c) => c.data(r.cookie + 1000n, r.offset, pattern(0, 512)), /cookie \d+, which is not in flight/],
    ['gap', (r, c) => (c.hole(r.cookie, r.offset, 256, false), c.none(r.cookie)), /leaves a gap|ends at offset/],
    ['overlap', (r, c) => (c.hole(r.cookie, r.offset, 512, false), c.data(r.cookie, r.offset, pattern(0, 512))), /overlaps itself/],
    ['simple reply to a structured read', (r, c) => c.simple(r.cookie, 0), /simple reply with data to the read/],
    ['block status chunk to a read', (r, c) => c.status(r.cookie, 1, [[512, 0]]), /NBD_REPLY_TYPE_BLOCK_STATUS chunk in reply to the read/],
  ];
  for (const [name, reply, re] of cases) {
    let first = true;
    const srv = await scriptedNbdServer(t, {
      onRequest: (r, c) => {
        if (first) {
          first = false;
          return; // leave the first read pending
        }
        reply(r, c);
      },
    });
    const c = await srv.connect();
    const [pendingRead, badRead] = await Promise.allSettled([c.read(0, 512), c.read(1024, 512)]);
    assert.ok(badRead.status === 'rejected' && isNbdError(re, false)(badRead.reason), name);
    assert.ok(pendingRead.status === 'rejected' && isNbdError(re, false)(pendingRead.reason), `${name}: the other pending read`);
    await assert.rejects(c.read(0, 512), isNbdError(re, false), `${name}: later reads`);
    assert.equal(c.usable, false);
    c.destroy();
  }
});

test('block status: per-context chunks, clipping, windows, and errors', async (t) => {
  const srv = await scriptedNbdServer(t, {
    contexts: { 'base:allocation': 7, 'qemu:dirty-bitmap:b': 9 },
    onRequest: (r, c) => {
      assert.equal(r.type, P.NBD_CMD_BLOCK_STATUS);
      if (r.offset === 4096) return c.error(r.cookie, P.NBD_EINVAL, 'nope');
      // At most two 1024-byte extents per reply, the last running past the request.
      c.status(r.cookie, 9, [[r.length + 4096, 1]], false);
      c.status(r.cookie, 7, [[1024, r.offset % 2048 ? 0 : 3], [r.length + 8192, 0]], true);
    },
  });
  const c = await srv.connect({ metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b'] });
  t.after(() => c.destroy());
  assert.deepEqual(Object.fromEntries(c.metaContexts), { 'base:allocation': 7, 'qemu:dirty-bitmap:b': 9 });
  assert.deepEqual(await c.blockStatus(0, 2048, 'base:allocation'), [
    { offset: 0, length: 1024, flags: 3 },
    { offset: 1024, length: 1024, flags: 0 },
  ]);
  assert.deepEqual(await c.blockStatus(0, 2048, 'qemu:dirty-bitmap:b'), [{ offset: 0, length: 2048, flags: 1 }]);
  await assert.rejects(c.blockStatus(4096, 512, 'base:allocation'), isNbdError(/failed the block status of 512 bytes at offset 4096 .*EINVAL: nope/, true));
  // extents() walks windows and merges across them.
  assert.deepEqual(
    await (async () => {
      const out = [];
      for await (const e of extents(c, 'qemu:dirty-bitmap:b', { offset: 8192, length: 8192, chunk: 2048 })) out.push(e);
      return out;
    })(),
    [{ offset: 8192, length: 8192, flags: 1 }],
  );
  assert.equal(srv.conns[0]!.requests.filter((r) => r.offset >= 8192).length, 4);
});

test('connect failures: unknown export, missing context, no structured replies', async (t) => {
  const srv = await scriptedNbdServer(t, { contexts: { 'base:allocation': 1 } });
  await assert.rejects(srv.connect({ exportName: 'other' }), isNbdError(/export 'other' not found \(NBD_REP_ERR_UNKNOWN: no export 'other' to NBD_OPT_GO\)/, false));
  await assert.rejects(
    srv.connect({ metaContexts: ['base:allocation', 'qemu:dirty-bitmap:x'] }),
    isNbdError(/does not offer metadata context 'qemu:dirty-bitmap:x'/, false),
  );
  await assert.rejects(srv.connect({ metaContexts: ['qemu:dirty-bitmap:'] }), (e: NbdError) => e.code === ErrorCode.INVALID_ARG);
  const plain = await scriptedNbdServer(t, { structured: false, onRequest: (r, c) => c.simple(r.cookie, r.offset === 0 ? P.NBD_EPERM : 0, r.offset === 0 ? undefined : pattern(r.offset, r.length)) });
  await assert.rejects(plain.connect({ metaContexts: ['base:allocation'] }), isNbdError(/refused structured replies/, false));
  const c = await plain.connect();
  t.after(() => c.destroy());
  assert.equal(c.structuredReplies, false);
  assert.ok((await c.read(1024, 1536)).equals(pattern(1024, 1536)));
  await assert.rejects(c.read(0, 512), isNbdError(/EPERM \(NBD connection is still usable\)/, true));
});

test('NBD_ESHUTDOWN makes the client disconnect softly', async (t) => {
  const srv = await scriptedNbdServer(t, { onRequest: (r, c) => c.error(r.cookie, P.NBD_ESHUTDOWN, 'going away') });
  const c = await srv.connect();
  await assert.rejects(c.read(0, 512), isNbdError(/ESHUTDOWN: going away; the server is shutting down/, false));
  for (let i = 0; i < 100 && !srv.conns[0]!.disconnected; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(srv.conns[0]!.disconnected, true);
  assert.equal(c.usable, false);
  t.after(() => c.destroy());
});

test('handshake timeout: a server that never greets', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-nbdfake-'));
  const sock = path.join(dir, 'mute.sock');
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => void sockets.push(s));
  await new Promise<void>((r) => server.listen(sock, r));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  });
  await assert.rejects(
    NbdClient.connect({ socketPath: sock }, { exportName: 'disk', handshakeTimeoutMs: 100 }),
    isNbdError(/NBD handshake with nbd\+unix:\/\/\/disk\?socket=.* timed out after 100 ms/, false),
  );
});

// ---------------------------------------------------------------- the pull client against a failing server

/** A 4 MiB export with data everywhere; `fault` may answer a read instead (return true when it did). */
async function pullServer(t: TestContext, fault?: (r: Req, c: Conn, reads: number) => boolean) {
  let reads = 0;
  return scriptedNbdServer(t, {
    size: 4 << 20,
    contexts: { [P.CONTEXT_BASE_ALLOCATION]: 7 },
    onRequest: (r, c) => {
      if (r.type === P.NBD_CMD_BLOCK_STATUS) return c.status(r.cookie, 7, [[r.length, 0]]);
      if (fault?.(r, c, ++reads)) return;
      c.data(r.cookie, r.offset, pattern(r.offset, r.length));
    },
  });
}

async function pullInto(t: TestContext, sock: string) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-pullfault-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const output = path.join(dir, 'full.raw');
  return { dir, output, pull: () => pullBackup({ nbd: { socketPath: sock }, exportName: 'disk', output, format: 'raw' }) };
}

test('pull with a 64 KiB maximum request size: every read within it, content and streamed checksum exact', async (t) => {
  const srv = await pullServer(t);
  const p = await pullInto(t, srv.sock);
  const r = await p.pull();
  const want = pattern(0, 4 << 20);
  assert.ok((await fs.readFile(p.output)).equals(want));
  const reads = srv.conns.flatMap((c) => c.requests).filter((q) => q.type === P.NBD_CMD_READ);
  assert.equal(reads.reduce((n, q) => n + q.length, 0), 4 << 20);
  assert.ok(reads.every((q) => q.length <= 65536), 'no read beyond the advertised maximum');
  const top = createHash('sha256');
  for (let o = 0; o < want.length; o += 1 << 20) top.update(createHash('sha256').update(want.subarray(o, o + (1 << 20))).digest());
  assert.equal(r.digests!.toChecksum().sha256, top.digest('hex'));
});

test('pull: a server that disconnects mid-copy or fails one read leaves no file behind', async (t) => {
  for (const [name, fault] of [
    ['disconnect', (_r: Req, c: Conn, n: number) => n === 20 && (c.socket.destroy(), true)],
    ['error', (r: Req, c: Conn, n: number) => n === 20 && (c.error(r.cookie, P.NBD_EIO, 'medium error'), true)],
  ] as const) {
    const srv = await pullServer(t, fault);
    const p = await pullInto(t, srv.sock);
    await assert.rejects(p.pull(), (e: unknown) => {
      assert.ok(e instanceof VirError, String(e));
      assert.match(e.message, name === 'error' ? /failed the read of 65536 bytes at offset \d+ .*: EIO: medium error/ : /closed unexpectedly|connection/);
      return true;
    });
    assert.deepEqual(await fs.readdir(p.dir), [], `${name}: the partial output is removed`);
  }
});

test('pull: a checksum thread that dies fails the pull and leaves no file behind', async (t) => {
  const srv = await pullServer(t);
  const p = await pullInto(t, srv.sock);
  const crashing = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/hash-pool/crashing-worker.mjs');
  const pool = HashPool.start({ threads: 1, workerFile: crashing });
  t.after(() => pool.close());
  await assert.rejects(pullBackup({ nbd: { socketPath: srv.sock }, exportName: 'disk', output: p.output, format: 'raw', hashPool: pool }), (e: unknown) => {
    assert.ok(e instanceof VirError, String(e));
    assert.match(e.message, /checksum thread exited with code 7/);
    return true;
  });
  assert.deepEqual(await fs.readdir(p.dir), [], 'the partial output is removed');
});
