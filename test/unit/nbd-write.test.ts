// NbdClient writes against a scripted writable NBD server: payload framing,
// splitting at the advertised maximum, command flags, and server errors.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdError } from '../../src/nbd/errors.js';
import * as P from '../../src/nbd/protocol.js';

interface Req {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload?: Buffer;
}

function optReply(option: number, reply: number, data = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(P.NBD_REP_MAGIC);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(reply >>> 0, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}

function simple(cookie: bigint, error: number): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC);
  h.writeUInt32BE(error, 4);
  h.writeBigUInt64BE(cookie, 8);
  return h;
}

function errorChunk(cookie: bigint, error: number, message: string): Buffer {
  const m = Buffer.from(message);
  const h = Buffer.alloc(20 + 6);
  h.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC);
  h.writeUInt16BE(P.NBD_REPLY_FLAG_DONE, 4);
  h.writeUInt16BE(P.NBD_REPLY_TYPE_ERROR, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(6 + m.length, 16);
  h.writeUInt32BE(error, 20);
  h.writeUInt16BE(m.length, 24);
  return Buffer.concat([h, m]);
}

/** Writable export 'disk' of `size` bytes, 64 KiB maximum payload; every request answered by `answer`. */
async function writableServer(t: TestContext, exportFlags: number, answer: (r: Req) => Buffer, size = 1 << 20) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-nbdw-'));
  const sock = path.join(dir, 's.sock');
  const requests: Req[] = [];
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const g = Buffer.alloc(18);
    g.writeBigUInt64BE(P.NBD_MAGIC);
    g.writeBigUInt64BE(P.NBD_NEW_VERSION, 8);
    g.writeUInt16BE(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES, 16);
    socket.write(g);
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const option = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          buf = buf.subarray(16 + len);
          if (option === P.NBD_OPT_STRUCTURED_REPLY) socket.write(optReply(option, P.NBD_REP_ACK));
          else if (option === P.NBD_OPT_GO) {
            const e = Buffer.alloc(12);
            e.writeUInt16BE(P.NBD_INFO_EXPORT);
            e.writeBigUInt64BE(BigInt(size), 2);
            e.writeUInt16BE(P.NBD_FLAG_HAS_FLAGS | exportFlags, 10);
            const b = Buffer.alloc(14);
            b.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE);
            b.writeUInt32BE(512, 2);
            b.writeUInt32BE(4096, 6);
            b.writeUInt32BE(64 * 1024, 10);
            socket.write(Buffer.concat([optReply(option, P.NBD_REP_INFO, e), optReply(option, P.NBD_REP_INFO, b), optReply(option, P.NBD_REP_ACK)]));
            phase = 'transmission';
          } else socket.write(optReply(option, P.NBD_REP_ERR_UNSUP));
        } else {
          if (buf.length < 28) return;
          const req: Req = { flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), cookie: buf.readBigUInt64BE(8), offset: Number(buf.readBigUInt64BE(16)), length: buf.readUInt32BE(24) };
          const body = req.type === P.NBD_CMD_WRITE ? req.length : 0;
          if (buf.length < 28 + body) return;
          if (body) req.payload = Buffer.from(buf.subarray(28, 28 + body));
          buf = buf.subarray(28 + body);
          if (req.type === P.NBD_CMD_DISC) {
            socket.end();
            return;
          }
          requests.push(req);
          socket.write(answer(req));
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  });
  return { requests, connect: () => NbdClient.connect({ socketPath: sock }, { exportName: 'disk' }) };
}

const ALL = P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FUA;

test('a long write is split at the maximum payload and every byte arrives once, in place', async (t) => {
  const s = await writableServer(t, ALL, (r) => simple(r.cookie, 0));
  const c = await s.connect();
  const data = Buffer.from(Array.from({ length: 200 * 1024 }, (_v, i) => i % 253));
  await c.write(4096, data, { fua: true });
  assert.deepEqual(s.requests.map((r) => [r.type, r.offset, r.length, r.flags]), [
    [P.NBD_CMD_WRITE, 4096, 65536, P.NBD_CMD_FLAG_FUA],
    [P.NBD_CMD_WRITE, 4096 + 65536, 65536, P.NBD_CMD_FLAG_FUA],
    [P.NBD_CMD_WRITE, 4096 + 131072, 65536, P.NBD_CMD_FLAG_FUA],
    [P.NBD_CMD_WRITE, 4096 + 196608, 8192, P.NBD_CMD_FLAG_FUA],
  ]);
  assert.ok(Buffer.concat(s.requests.map((r) => r.payload!)).equals(data));
  await c.disconnect();
});

test('write zeroes and flush send no payload and the asked flags', async (t) => {
  const s = await writableServer(t, ALL, (r) => simple(r.cookie, 0));
  const c = await s.connect();
  await c.writeZeroes(0, 1 << 20, { noHole: true });
  await c.writeZeroes(512, 512);
  await c.flush();
  assert.deepEqual(s.requests.map((r) => [r.type, r.offset, r.length, r.flags, r.payload]), [
    [P.NBD_CMD_WRITE_ZEROES, 0, 1 << 20, P.NBD_CMD_FLAG_NO_HOLE, undefined],
    [P.NBD_CMD_WRITE_ZEROES, 512, 512, 0, undefined],
    [P.NBD_CMD_FLUSH, 0, 0, 0, undefined],
  ]);
  await c.disconnect();
});

test('a server error fails that write only; the connection carries on', async (t) => {
  const s = await writableServer(t, ALL, (r) => (r.offset === 8192 ? errorChunk(r.cookie, P.NBD_ENOSPC, 'disk full') : r.offset === 0 ? simple(r.cookie, P.NBD_EIO) : simple(r.cookie, 0)));
  const c = await s.connect();
  await assert.rejects(c.write(8192, Buffer.alloc(512)), (e) => e instanceof NbdError && e.usable && /write of 512 bytes at offset 8192 .*ENOSPC: disk full/.test(e.message));
  await assert.rejects(c.writeZeroes(0, 512), (e) => e instanceof NbdError && e.usable && /write zeroes of 512 bytes at offset 0 .*EIO/.test(e.message));
  await c.write(4096, Buffer.alloc(512, 1));
  await c.disconnect();
});

test('commands the export does not advertise are refused before sending', async (t) => {
  const s = await writableServer(t, 0, (r) => simple(r.cookie, 0));
  const c = await s.connect();
  const refused = (re: RegExp) => (e: unknown) => e instanceof NbdError && e.code === ErrorCode.INVALID_ARG && e.usable && re.test(e.message);
  await assert.rejects(c.flush(), refused(/does not advertise NBD_FLAG_SEND_FLUSH/));
  await assert.rejects(c.writeZeroes(0, 512), refused(/does not advertise NBD_FLAG_SEND_WRITE_ZEROES/));
  await assert.rejects(c.write(0, Buffer.alloc(512), { fua: true }), refused(/does not advertise NBD_FLAG_SEND_FUA/));
  await assert.rejects(c.write(100, Buffer.alloc(512)), refused(/not aligned to the export's minimum block size 512/));
  assert.equal(s.requests.length, 0);
  await c.write(0, Buffer.alloc(512));
  assert.equal(s.requests.length, 1);
  await c.disconnect();
});
