// NbdClient writes against a scripted writable NBD server: payload framing,
// splitting at the advertised maximum, command flags, and server errors.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode } from '../../src/errors.js';
import { NbdError } from '../../src/nbd/errors.js';
import * as P from '../../src/nbd/protocol.js';
import { scriptedNbdServer, type Req } from '../helpers/scripted-nbd.js';

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
  const s = await scriptedNbdServer(t, { exportFlags, size, onRequest: (r, c) => c.socket.write(answer(r)) });
  return { get requests() { return s.requests(); }, connect: () => s.connect() };
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
