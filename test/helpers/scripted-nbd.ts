// A scripted in-process NBD server (fixed newstyle, one export 'disk' on a
// unix socket) for unit tests of the client's framing and failure paths: the
// test answers each request itself, with the reply helpers of `Conn`.

import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { NbdClient } from '../../src/nbd/client.js';
import * as P from '../../src/nbd/protocol.js';

export interface Req {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  /** a write's data */
  payload?: Buffer;
}

export interface ScriptedNbdOptions {
  /** false: the server refuses structured replies */
  structured?: boolean;
  /** meta contexts the server knows, by name, with the id it gives each */
  contexts?: Record<string, number>;
  /** export size (default 1 MiB) */
  size?: number;
  /** transmission flags besides HAS_FLAGS (default READ_ONLY) */
  exportFlags?: number;
  /** every request but NBD_CMD_DISC */
  onRequest?: (req: Req, conn: Conn) => void;
}

/** Server side of one connection: the requests seen, and framing helpers for replies. */
export class Conn {
  readonly requests: Req[] = [];
  disconnected = false;
  constructor(readonly socket: net.Socket) {}

  private chunk(flags: number, type: number, cookie: bigint, payload: Buffer): void {
    const h = Buffer.alloc(20);
    h.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeUInt32BE(payload.length, 16);
    this.socket.write(Buffer.concat([h, payload]));
  }
  data(cookie: bigint, offset: number, data: Buffer, done = true): void {
    const p = Buffer.alloc(8);
    p.writeBigUInt64BE(BigInt(offset));
    this.chunk(done ? 1 : 0, P.NBD_REPLY_TYPE_OFFSET_DATA, cookie, Buffer.concat([p, data]));
  }
  hole(cookie: bigint, offset: number, length: number, done = true): void {
    const p = Buffer.alloc(12);
    p.writeBigUInt64BE(BigInt(offset));
    p.writeUInt32BE(length, 8);
    this.chunk(done ? 1 : 0, P.NBD_REPLY_TYPE_OFFSET_HOLE, cookie, p);
  }
  status(cookie: bigint, contextId: number, descriptors: Array<[number, number]>, done = true): void {
    const p = Buffer.alloc(4 + 8 * descriptors.length);
    p.writeUInt32BE(contextId);
    descriptors.forEach(([l, f], i) => {
      p.writeUInt32BE(l, 4 + 8 * i);
      p.writeUInt32BE(f, 8 + 8 * i);
    });
    this.chunk(done ? 1 : 0, P.NBD_REPLY_TYPE_BLOCK_STATUS, cookie, p);
  }
  error(cookie: bigint, error: number, message: string, done = true): void {
    const m = Buffer.from(message);
    const p = Buffer.alloc(6);
    p.writeUInt32BE(error);
    p.writeUInt16BE(m.length, 4);
    this.chunk(done ? 1 : 0, P.NBD_REPLY_TYPE_ERROR, cookie, Buffer.concat([p, m]));
  }
  none(cookie: bigint): void {
    this.chunk(1, P.NBD_REPLY_TYPE_NONE, cookie, Buffer.alloc(0));
  }
  simple(cookie: bigint, error: number, data = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC);
    h.writeUInt32BE(error, 4);
    h.writeBigUInt64BE(cookie, 8);
    this.socket.write(Buffer.concat([h, data]));
  }
}

function optReply(option: number, reply: number, data = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(P.NBD_REP_MAGIC);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(reply >>> 0, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}

/** NBD_OPT_SET_META_CONTEXT: a reply for each query the server knows, then ACK. */
function metaContextReplies(option: number, data: Buffer, contexts: Record<string, number> | undefined): Buffer[] {
  const out: Buffer[] = [];
  let p = 4 + data.readUInt32BE(0);
  const n = data.readUInt32BE(p);
  p += 4;
  for (let i = 0; i < n; i++) {
    const l = data.readUInt32BE(p);
    const q = data.subarray(p + 4, p + 4 + l).toString();
    p += 4 + l;
    const id = contexts?.[q];
    if (id === undefined) continue;
    const r = Buffer.alloc(4);
    r.writeUInt32BE(id);
    out.push(optReply(option, P.NBD_REP_META_CONTEXT, Buffer.concat([r, Buffer.from(q)])));
  }
  return [...out, optReply(option, P.NBD_REP_ACK)];
}

/** NBD_OPT_GO for 'disk': its size and flags, block sizes 512 / 4096 / 64 KiB. */
function goReplies(option: number, size: number, flags: number): Buffer[] {
  const e = Buffer.alloc(12);
  e.writeUInt16BE(P.NBD_INFO_EXPORT);
  e.writeBigUInt64BE(BigInt(size), 2);
  e.writeUInt16BE(P.NBD_FLAG_HAS_FLAGS | flags, 10);
  const b = Buffer.alloc(14);
  b.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE);
  b.writeUInt32BE(512, 2);
  b.writeUInt32BE(4096, 6);
  b.writeUInt32BE(64 * 1024, 10);
  return [optReply(option, P.NBD_REP_INFO, e), optReply(option, P.NBD_REP_INFO, b), optReply(option, P.NBD_REP_ACK)];
}

/** One connection's state machine: greeting, client flags, options, then requests. */
function serveConnection(socket: net.Socket, conn: Conn, opts: ScriptedNbdOptions): void {
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  const g = Buffer.alloc(18);
  g.writeBigUInt64BE(P.NBD_MAGIC);
  g.writeBigUInt64BE(P.NBD_NEW_VERSION, 8);
  g.writeUInt16BE(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES, 16);
  socket.write(g);
  socket.on('error', () => undefined);
  const option = (): boolean => {
    if (buf.length < 16) return false;
    const opt = buf.readUInt32BE(8);
    const len = buf.readUInt32BE(12);
    if (buf.length < 16 + len) return false;
    const data = buf.subarray(16, 16 + len);
    buf = buf.subarray(16 + len);
    if (opt === P.NBD_OPT_STRUCTURED_REPLY) socket.write(optReply(opt, opts.structured === false ? P.NBD_REP_ERR_UNSUP : P.NBD_REP_ACK));
    else if (opt === P.NBD_OPT_SET_META_CONTEXT) socket.write(Buffer.concat(metaContextReplies(opt, data, opts.contexts)));
    else if (opt === P.NBD_OPT_GO) {
      const name = data.subarray(4, 4 + data.readUInt32BE(0)).toString();
      if (name !== 'disk') socket.write(optReply(opt, P.NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${name}'`)));
      else {
        socket.write(Buffer.concat(goReplies(opt, opts.size ?? 1 << 20, opts.exportFlags ?? P.NBD_FLAG_READ_ONLY)));
        phase = 'transmission';
      }
    } else socket.write(optReply(opt, P.NBD_REP_ERR_UNSUP));
    return true;
  };
  const request = (): boolean => {
    if (buf.length < 28) return false;
    assert.equal(buf.readUInt32BE(0), P.NBD_REQUEST_MAGIC);
    const req: Req = { flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), cookie: buf.readBigUInt64BE(8), offset: Number(buf.readBigUInt64BE(16)), length: buf.readUInt32BE(24) };
    const body = req.type === P.NBD_CMD_WRITE ? req.length : 0;
    if (buf.length < 28 + body) return false;
    if (body > 0) req.payload = Buffer.from(buf.subarray(28, 28 + body));
    buf = buf.subarray(28 + body);
    conn.requests.push(req);
    if (req.type === P.NBD_CMD_DISC) {
      conn.disconnected = true;
      socket.end();
      return false;
    }
    opts.onRequest?.(req, conn);
    return true;
  };
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (phase === 'flags') {
        if (buf.length < 4) return;
        buf = buf.subarray(4);
        phase = 'options';
      } else if (!(phase === 'options' ? option() : request())) return;
    }
  });
}

/** Start the server; it and its folder go when the test ends. */
export async function scriptedNbdServer(t: TestContext, opts: ScriptedNbdOptions) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-nbdfake-'));
  const sock = path.join(dir, 's.sock');
  const conns: Conn[] = [];
  const server = net.createServer((socket) => {
    const conn = new Conn(socket);
    conns.push(conn);
    serveConnection(socket, conn, opts);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.after(async () => {
    for (const c of conns) c.socket.destroy();
    await new Promise((r) => server.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  });
  return {
    sock,
    conns,
    /** every request of every connection but NBD_CMD_DISC, in arrival order per connection */
    requests: () => conns.flatMap((c) => c.requests.filter((r) => r.type !== P.NBD_CMD_DISC)),
    connect: (o: { exportName?: string; metaContexts?: string[]; maxInFlight?: number } = {}) => NbdClient.connect({ socketPath: sock }, { exportName: 'disk', ...o }),
  };
}
