// The libvirt client connection against a scripted peer, for what a real
// libvirtd will not do on demand: EOF in the middle of a call, a PING, an
// error reply, a reply with a serial nobody waits for, a reply for another
// procedure, an impossible length. (The real daemon is in
// test/qemu/libvirt-driver.test.ts.)

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { ErrorCode, VirError } from '../../src/errors.js';
import { LibvirtClient } from '../../src/libvirt/client.js';
import { KeepaliveProc, MessageStatus, MessageType, PacketDecoder, Program, encodePacket, type Packet } from '../../src/libvirt/packet.js';
import { remoteError, remoteProcedures } from '../../src/libvirt/procedures.js';
import { connectSshStream, connectUnixStream } from '../../src/libvirt/transport.js';
import { decode, encode } from '../../src/libvirt/xdr.js';
import { refused } from '../helpers/errors.js';

interface Peer {
  /** every packet the client sent, in order */
  received: Packet[];
  /** the server side of the one connection */
  conn: () => net.Socket;
  /** resolves with the next packet the client sends */
  next: () => Promise<Packet>;
  client: LibvirtClient;
}

/** A unix-socket peer that records packets and answers only what the test writes. */
async function scriptedPeer(t: TestContext, opts: ConstructorParameters<typeof LibvirtClient>[1] = {}): Promise<Peer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lvc-'));
  const sock = path.join(dir, 's');
  const received: Packet[] = [];
  const unread: Packet[] = [];
  const waiting: ((p: Packet) => void)[] = [];
  let server!: net.Socket;
  const listener = net.createServer((s) => {
    server = s;
    const decoder = new PacketDecoder();
    s.on('data', (chunk: Buffer) => {
      for (const p of decoder.push(chunk)) {
        received.push(p);
        // CONNECT_CLOSE is answered here: every test ends with it
        if (p.header.prog === Program.REMOTE && p.header.proc === 2) s.write(reply(p, Buffer.alloc(0)));
        else if (waiting.length > 0) waiting.shift()!(p);
        else unread.push(p);
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => listener.listen(sock, r));
  const { stream, endpoint } = await connectUnixStream(sock);
  const client = new LibvirtClient(stream, { endpoint, ...opts });
  t.after(async () => {
    await client.close().catch(() => {});
    listener.close();
    await rm(dir, { recursive: true, force: true });
  });
  await new Promise<void>((r) => (server ? r() : listener.once('connection', () => setImmediate(r))));
  const next = () => new Promise<Packet>((r) => (unread.length > 0 ? r(unread.shift()!) : waiting.push(r)));
  return { received, conn: () => server, next, client };
}

function reply(to: Packet, payload: Buffer, status: number = MessageStatus.OK, over: Partial<Packet['header']> = {}): Buffer {
  return encodePacket({ ...to.header, type: MessageType.REPLY, status, ...over }, payload);
}

test('a call: arguments encoded by the table, the reply decoded; a string past the first 256 bytes survives', async (t) => {
  const peer = await scriptedPeer(t);
  const name = 'x'.repeat(300);
  const call = peer.client.call('domainLookupByName', { name });
  const p = await peer.next();
  assert.deepEqual([p.header.prog, p.header.proc, p.header.type, p.header.serial], [Program.REMOTE, 23, MessageType.CALL, 0]);
  assert.deepEqual(decode(remoteProcedures.domainLookupByName.args, p.payload), { name });
  const dom = { name, uuid: Buffer.alloc(16, 7), id: 3 };
  peer.conn().write(reply(p, encode(remoteProcedures.domainLookupByName.ret, { dom })));
  assert.deepEqual(await call, { dom });
});

test('the handshake: auth list, keepalive probe, CONNECT_OPEN with the name and RO, event-callback probe', async (t) => {
  const peer = await scriptedPeer(t);
  const opened = peer.client.open('qemu:///system', true);
  const answers: [number, Buffer][] = [
    [66, encode(remoteProcedures.authList.ret, { types: [0] })],
    [60, encode(remoteProcedures.connectSupportsFeature.ret, { supported: 1 })],
    [1, Buffer.alloc(0)],
    [60, encode(remoteProcedures.connectSupportsFeature.ret, { supported: 1 })],
  ];
  for (const [proc, payload] of answers) {
    const p = await peer.next();
    assert.equal(p.header.proc, proc);
    if (proc === 1) assert.deepEqual(decode(remoteProcedures.connectOpen.args, p.payload), { name: 'qemu:///system', flags: 1 });
    peer.conn().write(reply(p, payload));
  }
  await opened;
  const features = peer.received.filter((p) => p.header.proc === 60).map((p) => decode(remoteProcedures.connectSupportsFeature.args, p.payload).feature);
  assert.deepEqual(features, [10, 14]);
  assert.deepEqual(peer.received.map((p) => p.header.serial), [0, 1, 2, 3]);
});

test('a server that asks for authentication is refused', async (t) => {
  const peer = await scriptedPeer(t);
  const opened = peer.client.open('qemu:///system', false);
  const p = await peer.next();
  peer.conn().write(reply(p, encode(remoteProcedures.authList.ret, { types: [1] })));
  await refused(opened, ErrorCode.NO_SUPPORT, /asks for authentication \(1\)/);
});

test("an error reply becomes libvirt's error: code, domain and message as sent", async (t) => {
  const peer = await scriptedPeer(t);
  const call = peer.client.call('domainLookupByName', { name: 'nope' });
  const p = await peer.next();
  const err = {
    code: 42, domain: 10, message: "Domain not found: no domain with matching name 'nope'", level: 2, dom: null,
    str1: 'Domain not found: %s', str2: "no domain with matching name 'nope'", str3: null, int1: -1, int2: -1, net: null,
  };
  peer.conn().write(reply(p, encode(remoteError, err), MessageStatus.ERROR));
  await assert.rejects(call, (e: unknown) => {
    assert.ok(e instanceof VirError);
    assert.deepEqual([e.code, e.domain, e.message], [42, 10, err.message]);
    return true;
  });
  // the connection stays usable
  const again = peer.client.call('connectGetType', undefined);
  const q = await peer.next();
  peer.conn().write(reply(q, encode(remoteProcedures.connectGetType.ret, { type: 'QEMU' })));
  assert.deepEqual(await again, { type: 'QEMU' });
});

test('a reply with a serial nobody waits for is ignored; one for another procedure fails only its call', async (t) => {
  const peer = await scriptedPeer(t);
  const a = peer.client.call('connectGetType', undefined);
  const pa = await peer.next();
  const stray = reply(pa, encode(remoteProcedures.connectGetType.ret, { type: 'STRAY' }), MessageStatus.OK, { serial: 77 });
  peer.conn().write(stray);
  peer.conn().write(reply(pa, encode(remoteProcedures.connectGetType.ret, { type: 'QEMU' })));
  assert.deepEqual(await a, { type: 'QEMU' }, 'the stray reply did not settle the call');

  const b = peer.client.call('connectGetType', undefined);
  const pb = await peer.next();
  peer.conn().write(reply(pb, encode(remoteProcedures.connectGetHostname.ret, { hostname: 'h' }), MessageStatus.OK, { proc: 59 }));
  await refused(b, ErrorCode.RPC, /is for program \d+ procedure 59, not virConnectGetType/);
  const c = peer.client.call('connectGetType', undefined);
  const pc = await peer.next();
  peer.conn().write(reply(pc, Buffer.from([0, 0, 0, 9, 1])));
  await refused(c, ErrorCode.RPC, /Unable to decode message payload of the reply to virConnectGetType/);
  assert.equal(peer.client.isOpen, true);
});

test('EOF in the middle of calls fails every pending call with a clear error, and later calls at once', async (t) => {
  const peer = await scriptedPeer(t);
  const a = peer.client.call('connectGetType', undefined);
  const b = peer.client.call('connectGetHostname', undefined);
  await peer.next();
  await peer.next();
  peer.conn().end();
  await refused(a, ErrorCode.RPC, /End of file while reading data from .*: the connection was closed/);
  await refused(b, ErrorCode.RPC, /End of file/);
  await refused(peer.client.call('connectGetType', undefined), ErrorCode.RPC, /End of file/);
  assert.equal(peer.client.isOpen, false);
});

test('an oversized frame from the server is refused: the connection is dropped, calls fail', async (t) => {
  const peer = await scriptedPeer(t, { maxMessage: 4096 });
  const a = peer.client.call('connectGetType', undefined);
  await peer.next();
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(4097, 0);
  peer.conn().write(huge);
  await refused(a, ErrorCode.RPC, /malformed message from .*packet length 4097 is outside 28\.\.4096/);
  assert.equal(peer.client.isOpen, false);
});

test("keepalive: the peer's PING is answered with PONG at once, also while a call is pending", async (t) => {
  const peer = await scriptedPeer(t);
  const pending = peer.client.call('connectGetType', undefined);
  const call = await peer.next();
  peer.conn().write(encodePacket({ prog: Program.KEEPALIVE, vers: 1, proc: KeepaliveProc.PING, type: MessageType.MESSAGE, serial: 0, status: 0 }, Buffer.alloc(0)));
  const pong = await peer.next();
  assert.deepEqual(
    [pong.header.prog, pong.header.proc, pong.header.type, pong.header.serial, pong.payload.length],
    [Program.KEEPALIVE, KeepaliveProc.PONG, MessageType.MESSAGE, 0, 0],
  );
  peer.conn().write(reply(call, encode(remoteProcedures.connectGetType.ret, { type: 'QEMU' })));
  assert.deepEqual(await pending, { type: 'QEMU' });
});

test('keepalive: an idle peer that granted it is PINGed, and declared dead when it never answers', async (t) => {
  const peer = await scriptedPeer(t, { keepaliveIntervalMs: 50, keepaliveCount: 2 });
  const opened = peer.client.open('qemu:///system', false);
  for (const payload of [
    encode(remoteProcedures.authList.ret, { types: [0] }),
    encode(remoteProcedures.connectSupportsFeature.ret, { supported: 1 }),
    Buffer.alloc(0),
    encode(remoteProcedures.connectSupportsFeature.ret, { supported: 1 }),
  ]) peer.conn().write(reply(await peer.next(), payload));
  await opened;
  const ping = await peer.next();
  assert.deepEqual([ping.header.prog, ping.header.proc, ping.header.type], [Program.KEEPALIVE, KeepaliveProc.PING, MessageType.MESSAGE]);
  const pending = peer.client.call('connectGetType', undefined);
  await refused(pending, ErrorCode.RPC, /no keepalive response in 0\.15 s/);
  assert.equal(peer.received.filter((p) => p.header.prog === Program.KEEPALIVE).length, 2, 'count PINGs, then given up');
});

test('the ssh transport: the remote command bridges to the socket (a local stand-in for ssh runs it); ssh failing is the error', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lvc-ssh-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // stands in for ssh: drops the options and the host, and, as sshd does, joins the rest for a shell here
  const fakeSsh = path.join(dir, 'ssh');
  await writeFile(fakeSsh, '#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done\nshift 2\nexec sh -c "$*"\n', { mode: 0o755 });
  const sock = path.join(dir, "it's.sock");
  const conns: net.Socket[] = [];
  const listener = net.createServer((s) => {
    conns.push(s);
    const decoder = new PacketDecoder();
    s.on('data', (chunk: Buffer) => {
      for (const p of decoder.push(chunk)) s.write(reply(p, encode(remoteProcedures.connectGetHostname.ret, { hostname: 'far' })));
    });
  });
  await new Promise<void>((r) => listener.listen(sock, r));
  t.after(() => {
    // the stand-in's shell may leave nc behind when killed (ssh itself would not): our end closes it
    for (const c of conns) c.destroy();
    listener.close();
  });
  const target = { host: 'h', port: null, user: null, socket: sock, remoteUri: 'qemu:///system', defaultSocket: '/nonexistent', command: fakeSsh };
  const { stream, endpoint } = await connectSshStream(target);
  const client = new LibvirtClient(stream, { endpoint });
  assert.deepEqual(await client.call('connectGetHostname', undefined), { hostname: 'far' });
  stream.destroy();

  const broken = await connectSshStream({ ...target, socket: path.join(dir, 'absent.sock') });
  const lost = new LibvirtClient(broken.stream, { endpoint: broken.endpoint });
  await refused(lost.call('connectGetHostname', undefined), ErrorCode.NO_CONNECT, /ssh h exited with status 1/);
});
