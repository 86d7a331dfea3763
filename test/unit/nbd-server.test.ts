// The NBD server over a real unix socket, driven by the project's NBD client
// and by a raw peer that sends what a hostile client would.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdDecoder, encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest, type NbdMessage } from '../../src/nbd/codec.js';
import * as P from '../../src/nbd/protocol.js';
import { zeroRuns, type BlockSource } from '../../src/nbd/block-source.js';
import { NbdServer, type NbdServerLimits } from '../../src/nbd/server.js';
import { parseListen } from '../../src/cli/commands/serve.js';
import { nbdUri } from '../../src/vmbackup/serve.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-server-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const SIZE = 1 << 20;
/** 1 MiB: zeroes, then 64 KiB of a pattern at 256 KiB, then 4 KiB at the very end. */
const IMAGE = Buffer.alloc(SIZE);
for (let i = 0; i < 65536; i++) IMAGE[262144 + i] = (i * 7 + 1) & 0xff;
IMAGE.fill(0x5a, SIZE - 4096);

function memorySource(data: Buffer, withExtents = true): BlockSource {
  const src: BlockSource = { size: data.length, read: (o, n) => Promise.resolve(Buffer.from(data.subarray(o, o + n))) };
  return withExtents ? { ...src, extents: (o, n) => Promise.resolve(zeroRuns(data.subarray(o, o + n), o)) } : src;
}

let serial = 0;
async function serve(limits: NbdServerLimits = {}): Promise<{ server: NbdServer; socket: string }> {
  const server = new NbdServer(new Map([['vda', { source: memorySource(IMAGE) }], ['plain', { source: memorySource(IMAGE, false) }]]), limits);
  const socket = path.join(dir, `s${serial++}.sock`);
  await server.listen({ socket });
  return { server, socket };
}

/** A raw peer: whatever bytes we choose, and the server's answers decoded with the client codec. */
class RawPeer {
  readonly sock: net.Socket;
  readonly dec = new NbdDecoder();
  readonly got: NbdMessage[] = [];
  closed: Promise<void>;
  private wake: (() => void) | undefined;

  constructor(socketPath: string) {
    this.sock = net.connect(socketPath);
    this.sock.on('data', (b: Buffer) => {
      this.dec.feed(b);
      for (let m = this.dec.next(); m; m = this.dec.next()) this.got.push(m);
      this.wake?.();
    });
    this.closed = new Promise((resolve) => this.sock.on('close', () => resolve()));
    this.sock.on('error', () => {});
  }

  async until(pred: (got: NbdMessage[]) => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!pred(this.got)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${this.got.length} messages`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
  }

  /** Handshake up to transmission on `name`, with structured replies and base:allocation. */
  async open(name = 'vda', structured = true): Promise<void> {
    const parts = [encodeClientFlags(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)];
    if (structured) {
      parts.push(encodeOption(P.NBD_OPT_STRUCTURED_REPLY), encodeMetaContextRequest(P.NBD_OPT_SET_META_CONTEXT, name, [P.CONTEXT_BASE_ALLOCATION]));
    }
    parts.push(encodeInfoRequest(P.NBD_OPT_GO, name, []));
    this.sock.write(Buffer.concat(parts));
    await this.until((g) => g.some((m) => m.kind === 'optionReply' && m.option === P.NBD_OPT_GO && m.reply === P.NBD_REP_ACK), 'GO ack');
    this.dec.startTransmission({ structuredReplies: structured, simpleReplyLength: (c) => this.readLengths.get(c) ?? 0 });
  }

  readonly readLengths = new Map<bigint, number>();

  request(type: number, cookie: bigint, offset: number, length: number, payload?: Buffer, flags = 0): void {
    if (type === P.NBD_CMD_READ) this.readLengths.set(cookie, length);
    this.sock.write(Buffer.concat([encodeRequest({ flags, type, cookie, offset, length }), payload ?? Buffer.alloc(0)]));
  }

  /** Every message for `cookie` once its reply is complete. */
  async reply(cookie: bigint): Promise<NbdMessage[]> {
    const mine = (g: NbdMessage[]) => g.filter((m) => (m.kind === 'chunk' || m.kind === 'simpleReply') && m.cookie === cookie);
    await this.until((g) => mine(g).some((m) => m.kind === 'simpleReply' || (m.kind === 'chunk' && m.done)), `reply ${cookie}`);
    return mine(this.got);
  }
}

function errorOf(msgs: NbdMessage[]): number | undefined {
  for (const m of msgs) {
    if (m.kind === 'simpleReply' && m.error !== 0) return m.error;
    if (m.kind === 'chunk' && m.chunk.type === 'error') return m.chunk.error;
  }
  return undefined;
}

test('the project NBD client reads the export exactly and sees its zero runs', async () => {
  const { server, socket } = await serve();
  try {
    const c = await NbdClient.connect({ socketPath: socket }, { exportName: 'vda', metaContexts: [P.CONTEXT_BASE_ALLOCATION] });
    assert.equal(c.size, SIZE);
    assert.ok(c.readOnly);
    assert.deepEqual(await c.read(0, SIZE), IMAGE);
    assert.deepEqual(await c.read(262144 - 10, 20), IMAGE.subarray(262144 - 10, 262144 + 10), 'hole then data in one read');
    const ext = await c.blockStatus(0, SIZE, P.CONTEXT_BASE_ALLOCATION);
    assert.deepEqual(ext.map((e) => [e.offset, e.length, e.flags]), [
      [0, 262144, 3],
      [262144, 65536, 0],
      [327680, SIZE - 327680 - 65536, 3],
      [SIZE - 65536, 65536, 0],
    ]);
    await assert.rejects(c.write(0, Buffer.alloc(512)), /read-only/, 'the client sees the read-only flag');
    await c.disconnect();
  } finally {
    await server.close();
  }
});

test('hostile requests get errors and the connection carries on: past the end, write, unknown command', async () => {
  const { server, socket } = await serve();
  const p = new RawPeer(socket);
  try {
    await p.open();
    p.request(P.NBD_CMD_READ, 1n, SIZE - 10, 20);
    assert.equal(errorOf(await p.reply(1n)), P.NBD_EINVAL);
    p.request(P.NBD_CMD_WRITE, 2n, 0, 1000, Buffer.alloc(1000, 1));
    assert.equal(errorOf(await p.reply(2n)), P.NBD_EPERM);
    p.request(P.NBD_CMD_WRITE_ZEROES, 3n, 0, 4096);
    assert.equal(errorOf(await p.reply(3n)), P.NBD_EPERM);
    p.request(77, 4n, 0, 0);
    assert.equal(errorOf(await p.reply(4n)), P.NBD_EINVAL);
    p.request(P.NBD_CMD_READ, 5n, 0, (32 << 20) + 1);
    assert.equal(errorOf(await p.reply(5n)), P.NBD_EINVAL, 'read over the maximum block size');
    p.request(P.NBD_CMD_FLUSH, 6n, 0, 0);
    assert.equal(errorOf(await p.reply(6n)), undefined);
    // Still in frame after the skipped WRITE payload: a read answers with the right bytes.
    p.request(P.NBD_CMD_READ, 7n, SIZE - 4096 - 8, 16);
    const r = await p.reply(7n);
    const bytes = Buffer.alloc(16);
    for (const m of r) {
      if (m.kind === 'chunk' && m.chunk.type === 'offsetData') m.chunk.data.copy(bytes, m.chunk.offset - (SIZE - 4096 - 8));
    }
    assert.deepEqual(bytes, IMAGE.subarray(SIZE - 4096 - 8, SIZE - 4088));
    p.request(P.NBD_CMD_DISC, 8n, 0, 0);
    await p.closed;
  } finally {
    p.sock.destroy();
    await server.close();
  }
});

test('simple replies without structured replies; block status then is refused', async () => {
  const { server, socket } = await serve();
  const p = new RawPeer(socket);
  try {
    await p.open('plain', false);
    p.request(P.NBD_CMD_READ, 1n, 262144, 64);
    const [m] = await p.reply(1n);
    assert.ok(m?.kind === 'simpleReply' && m.error === 0);
    assert.deepEqual(m.data, IMAGE.subarray(262144, 262144 + 64));
    p.request(P.NBD_CMD_BLOCK_STATUS, 2n, 0, 4096);
    assert.equal(errorOf(await p.reply(2n)), P.NBD_EINVAL);
  } finally {
    p.sock.destroy();
    await server.close();
  }
});

test('a bad frame closes only its own connection', async () => {
  const { server, socket } = await serve();
  const good = new RawPeer(socket);
  const bad = new RawPeer(socket);
  try {
    await good.open();
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.NBD_NEW_VERSION, 0);
    h.writeUInt32BE(P.NBD_OPT_GO, 8);
    h.writeUInt32BE(100 << 20, 12);
    bad.sock.write(Buffer.concat([encodeClientFlags(P.NBD_FLAG_C_FIXED_NEWSTYLE), h]));
    await bad.closed;
    const garbage = new RawPeer(socket);
    await garbage.open();
    garbage.sock.write(Buffer.alloc(28, 0xee));
    await garbage.closed;
    good.request(P.NBD_CMD_READ, 1n, 0, 512);
    assert.equal(errorOf(await good.reply(1n)), undefined);
    assert.equal(server.connectionCount, 1);
  } finally {
    good.sock.destroy();
    await server.close();
  }
});

test('connection cap, handshake timeout, and the in-flight cap still answers every pipelined request', async () => {
  const { server, socket } = await serve({ maxConnections: 2, handshakeTimeoutMs: 300, maxInFlight: 2 });
  const a = new RawPeer(socket);
  const b = new RawPeer(socket);
  try {
    await a.open();
    await b.until(() => b.dec.buffered > 0 || b.got.length > 0, 'greeting');
    const c = new RawPeer(socket);
    await c.closed; // third connection refused
    await b.closed; // silent in the handshake: dropped after 300 ms
    for (let i = 0; i < 64; i++) a.request(P.NBD_CMD_READ, BigInt(100 + i), i * 16384 + 12288, 4096);
    for (let i = 0; i < 64; i++) assert.equal(errorOf(await a.reply(BigInt(100 + i))), undefined);
    const data = a.got.filter((m) => m.kind === 'chunk' && m.chunk.type === 'offsetData').length;
    const holes = a.got.filter((m) => m.kind === 'chunk' && m.chunk.type === 'offsetHole').length;
    assert.equal(data + holes, 64, 'one chunk per 4 KiB read (each is wholly data or zero)');
    assert.equal(data, 4 + 1, 'four reads in the pattern and one in the tail');
  } finally {
    a.sock.destroy();
    await server.close();
  }
});

test('an idle connection is closed after idleTimeoutMs; a busy one is not', async () => {
  const { server, socket } = await serve({ idleTimeoutMs: 300 });
  const idle = new RawPeer(socket);
  const busy = new RawPeer(socket);
  try {
    await idle.open();
    await busy.open();
    const t0 = Date.now();
    for (let i = 0; i < 8; i++) {
      busy.request(P.NBD_CMD_READ, BigInt(i), 0, 512);
      assert.equal(errorOf(await busy.reply(BigInt(i))), undefined);
      await new Promise((r) => setTimeout(r, 100));
    }
    await idle.closed;
    assert.ok(Date.now() - t0 >= 250, 'not before the timeout');
    busy.request(P.NBD_CMD_READ, 99n, 0, 512);
    assert.equal(errorOf(await busy.reply(99n)), undefined, 'the busy connection lives on');
  } finally {
    busy.sock.destroy();
    await server.close();
  }
});

test('NBD URIs and --listen addresses', () => {
  assert.equal(nbdUri({ socket: '/run/a b/x.sock' }, 'vda'), 'nbd+unix:///vda?socket=/run/a%20b/x.sock');
  assert.equal(nbdUri({ host: '127.0.0.1', port: 10809 }, 'sdb'), 'nbd://127.0.0.1:10809/sdb');
  assert.equal(nbdUri({ host: '::1', port: 1 }, 'vda'), 'nbd://[::1]:1/vda');
  assert.deepEqual(parseListen('0.0.0.0:10809'), { host: '0.0.0.0', port: 10809 });
  assert.deepEqual(parseListen(':0'), { host: '127.0.0.1', port: 0 }, 'loopback unless an address is given');
  assert.deepEqual(parseListen('[::1]:99'), { host: '::1', port: 99 });
  assert.throws(() => parseListen('10809'), /not ADDR:PORT/);
  assert.throws(() => parseListen('h:70000'), /not ADDR:PORT/);
});

test('a unix socket is created 0600 and a non-socket file at the path is refused', async () => {
  const { server, socket } = await serve();
  try {
    assert.equal(fs.statSync(socket).mode & 0o777, 0o600);
  } finally {
    await server.close();
  }
  assert.equal(fs.existsSync(socket), false, 'removed at close');
  const file = path.join(dir, 'plain-file');
  fs.writeFileSync(file, 'x');
  const s2 = new NbdServer(new Map([['vda', { source: memorySource(IMAGE) }]]));
  await assert.rejects(s2.listen({ socket: file }), /exists and is not a socket/);
  assert.equal(fs.readFileSync(file, 'utf8'), 'x');
});
