// The remote layer end to end over real unix sockets, against a fake driver:
// every procedure round-trips, errors cross unchanged, the read-only socket
// refuses every mutating procedure whatever the client claims, and bad or
// slow clients cost only themselves.

import { test, type TestContext } from 'node:test';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RemoteServer } from '../../src/remote/server.js';
import { RemoteDriver } from '../../src/remote/client.js';
import { LIMITS, driverProcNames, procedures, type DriverProcName } from '../../src/remote/protocol.js';
import { VirError, virErr } from '../../src/errors.js';
import type { DriverEvent } from '../../src/api/driver.js';
import { RawClient, cannedResults, fakeDriver, sampleArgs, type FakeDriver } from './remote-fixtures.js';

interface Setup {
  driver: FakeDriver;
  server: RemoteServer;
  rw: string;
  ro: string;
}

async function setup(t: TestContext, opts: ConstructorParameters<typeof RemoteServer>[1] = {}): Promise<Setup> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-remote-'));
  const driver = fakeDriver();
  const server = new RemoteServer(driver, opts);
  const rw = path.join(dir, 'rw.sock');
  const ro = path.join(dir, 'ro.sock');
  await server.listenUnix(rw, { readOnly: false, mode: 0o600 });
  await server.listenUnix(ro, { readOnly: true, mode: 0o666 });
  t.after(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { driver, server, rw, ro };
}

async function client(t: TestContext, socket: string): Promise<RemoteDriver> {
  const c = await RemoteDriver.connectUnix(socket);
  t.after(() => c.close());
  return c;
}

async function raw(t: TestContext, socket: string): Promise<RawClient> {
  const c = await RawClient.connect(socket);
  t.after(() => c.close());
  return c;
}

function callDriver(d: RemoteDriver, p: DriverProcName): Promise<unknown> {
  return (d[p] as (...a: unknown[]) => Promise<unknown>).apply(d, sampleArgs[p] as unknown[]);
}

const asError = (m: Record<string, unknown>) => m.error as { code: number; domain: number; message: string };

test('socket files get the requested modes', async (t) => {
  const s = await setup(t);
  assert.equal(fs.statSync(s.rw).mode & 0o777, 0o600);
  assert.equal(fs.statSync(s.ro).mode & 0o777, 0o666);
});

test('hello reports the driver URI and whether the socket is read-only', async (t) => {
  const s = await setup(t);
  const rw = await client(t, s.rw);
  const ro = await client(t, s.ro);
  assert.equal(rw.uri, 'fake:///test');
  assert.equal(rw.readOnly, false);
  assert.equal(ro.readOnly, true);
  const r = await raw(t, s.rw);
  const bad = await r.call(1, 'hello', [{ version: 999 }]);
  assert.equal(asError(bad).code, 39);
  assert.match(asError(bad).message, /protocol version 999 not supported/);
});

test('every driver procedure round-trips its arguments and result', async (t) => {
  const s = await setup(t);
  const c = await client(t, s.rw);
  for (const p of driverProcNames) {
    s.driver.calls.length = 0;
    const result = await callDriver(c, p);
    assert.deepEqual(s.driver.calls, [{ proc: p, args: sampleArgs[p] }], `${p} arguments`);
    assert.deepEqual(result, cannedResults[p], `${p} result`);
  }
  // The table covers the whole Driver interface (the type check proves the shapes).
  assert.equal(driverProcNames.length, Object.keys(sampleArgs).length);
});

test('VirError code, domain and message cross the wire unchanged; other errors become INTERNAL_ERROR', async (t) => {
  const s = await setup(t);
  const c = await client(t, s.rw);
  s.driver.behaviour.checkpointGetParent = async () => {
    throw virErr('NO_DOMAIN_CHECKPOINT', 'DOMAIN_CHECKPOINT', "checkpoint 'c1' does not have a parent");
  };
  await assert.rejects(callDriver(c, 'checkpointGetParent'), (e: unknown) => {
    assert.ok(e instanceof VirError);
    assert.deepEqual(e.toJSON(), { code: 103, domain: 69, message: "checkpoint 'c1' does not have a parent" });
    return true;
  });
  s.driver.behaviour.backupEnd = async () => {
    throw new VirError(12345, 4321, 'a code we do not know');
  };
  await assert.rejects(callDriver(c, 'backupEnd'), (e: unknown) => {
    assert.deepEqual((e as VirError).toJSON(), { code: 12345, domain: 4321, message: 'a code we do not know' });
    return true;
  });
  s.driver.behaviour.listJobIds = async () => {
    throw new TypeError('boom');
  };
  await assert.rejects(callDriver(c, 'listJobIds'), (e: unknown) => e instanceof VirError && e.code === 1 && e.message === 'boom');
});

test('read-only socket: every mutating procedure is refused even when the client skips its own checks; every getter is allowed', async (t) => {
  const s = await setup(t);
  const r = await raw(t, s.ro);
  const mutating = driverProcNames.filter((p) => procedures[p].mutating);
  const getters = driverProcNames.filter((p) => !procedures[p].mutating);
  assert.deepEqual(
    [...mutating].sort(),
    [
      'abortJob',
      'backupBegin',
      'backupEnd',
      'checkpointCreateXML',
      'checkpointDelete',
      'domainCreate',
      'domainDefineXML',
      'domainDestroy',
      'domainFSFreeze',
      'domainFSThaw',
      'domainReboot',
      'domainResume',
      'domainSetAutostart',
      'domainShutdown',
      'domainSuspend',
      'domainUndefine',
      'domainUpdateDevice',
      'qemuMonitorCommand',
    ],
  );
  let serial = 1;
  for (const p of mutating) {
    const m = await r.call(serial++, p, sampleArgs[p] as unknown[]);
    assert.equal(m.type, 'error', p);
    assert.equal(asError(m).code, 29, p);
    assert.equal(asError(m).message, 'operation forbidden for read only access');
  }
  assert.equal(s.driver.calls.length, 0, 'no mutating call reached the driver');
  for (const p of getters) {
    // The secure flag makes a getter mutating-like: use flags without it here.
    const args = [...(sampleArgs[p] as unknown[])];
    const m = await r.call(serial++, p, args);
    assert.equal(m.type, 'reply', `${p}: ${JSON.stringify(m)}`);
    assert.deepEqual(m.result, cannedResults[p], p);
  }
  assert.deepEqual(
    s.driver.calls.map((c) => c.proc),
    getters,
  );
  // The same mutating calls pass on the read-write socket.
  const w = await raw(t, s.rw);
  for (const p of mutating) assert.equal((await w.call(serial++, p, sampleArgs[p] as unknown[])).type, 'reply', p);
});

test('read-only socket: the secure flag of the XML getters is refused', async (t) => {
  const s = await setup(t);
  const r = await raw(t, s.ro);
  const dom = await r.call(1, 'domainGetXMLDesc', [sampleArgs.domainGetXMLDesc[0], 1]);
  assert.deepEqual(asError(dom), { code: 29, domain: 7, message: 'virDomainGetXMLDesc with secure flag' });
  const chk = await r.call(2, 'checkpointGetXMLDesc', [sampleArgs.checkpointGetXMLDesc[0], 'c1', 1]);
  assert.equal(asError(chk).code, 29);
  assert.equal(asError(chk).message, 'virDomainCheckpointGetXMLDesc with secure flag');
  assert.equal(s.driver.calls.length, 0);
});

test('unknown procedures, bad arguments and oversized fields get an error reply; the client stays connected', async (t) => {
  const s = await setup(t);
  const r = await raw(t, s.rw);
  const unknown = await r.call(1, 'domainMigrate', []);
  assert.deepEqual(asError(unknown), { code: 39, domain: 7, message: "unknown procedure 'domainMigrate'" });
  const proto = await r.call(2, '__proto__', []);
  assert.equal(asError(proto).code, 39);
  const wrongType = await r.call(3, 'domainCreate', ['uuid', 'notanumber']);
  assert.equal(asError(wrongType).code, 8);
  assert.match(asError(wrongType).message, /procedure 'domainCreate': args\[1\]/);
  const big = await r.call(4, 'domainDefineXML', ['x'.repeat(LIMITS.xmlChars + 1), 0]);
  assert.equal(asError(big).code, 8);
  assert.match(asError(big).message, /args\[0\]: Too big/);
  const longName = await r.call(5, 'domainLookupByName', ['n'.repeat(LIMITS.nameChars + 1)]);
  assert.equal(asError(longName).code, 8);
  const negFlags = await r.call(6, 'listAllDomains', [-1]);
  assert.equal(asError(negFlags).code, 8);
  const tooMany = await r.call(7, 'domainFSFreeze', ['u', Array(LIMITS.mountpoints + 1).fill('/'), 0]);
  assert.equal(asError(tooMany).code, 8);
  assert.equal(s.driver.calls.length, 0);
  // Still usable.
  assert.equal((await r.call(8, 'listJobIds', ['u'])).type, 'reply');
});

test('malformed messages get an error with serial 0; a broken frame drops only that client', async (t) => {
  const s = await setup(t);
  const other = await client(t, s.rw);
  const r = await raw(t, s.rw);
  r.sendRaw(Buffer.concat([Buffer.from([0, 0, 0, 5]), Buffer.from('{oops')]));
  const notJson = await r.waitFor((m) => m.type === 'error');
  assert.equal(notJson.serial, 0);
  assert.equal(asError(notJson).code, 39);
  r.send({ type: 'call', serial: 'x', proc: 'listJobIds', args: ['u'] });
  const badEnvelope = await r.waitFor((m) => m.type === 'error');
  assert.equal(badEnvelope.serial, 0);
  r.send({ type: 'reply', serial: 9, result: 1 });
  assert.equal((await r.waitFor((m) => m.type === 'error')).serial, 9);
  r.send([1, 2, 3]);
  assert.equal((await r.waitFor((m) => m.type === 'error')).serial, 0);
  assert.equal((await r.call(10, 'listJobIds', ['u'])).type, 'reply', 'still served after garbage JSON');

  // A length prefix over the limit: framing is lost, the client is dropped.
  r.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0xff]));
  await r.waitClosed();
  assert.deepEqual(await other.listJobIds('u'), [7]);
  const again = await raw(t, s.rw);
  assert.equal((await again.call(1, 'listJobIds', ['u'])).type, 'reply');
});

test('hostile frames: deep nesting is refused before parsing; the read-only socket takes only small frames', async (t) => {
  const s = await setup(t);
  const other = await client(t, s.ro);
  const frame = (payload: Buffer): Buffer => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(payload.length);
    return Buffer.concat([head, payload]);
  };
  // 100 000 levels of arrays on the read-write socket: refused unparsed, the client stays served
  const rwDeep = await raw(t, s.rw);
  rwDeep.sendRaw(frame(Buffer.from('['.repeat(100_000) + ']'.repeat(100_000))));
  const tooDeep = await rwDeep.waitFor((m) => m.type === 'error');
  assert.equal(tooDeep.serial, 0);
  assert.match(asError(tooDeep).message, /nested deeper than 32 levels/);
  assert.equal((await rwDeep.call(2, 'listJobIds', ['u'])).type, 'reply', 'still served');
  // 1.5 million tiny values (JSON.parse alone took over a second on them): counted and refused before parsing,
  // without stalling the event loop that every other client shares
  const values = Buffer.from(`{"type":"call","serial":9,"proc":"listJobIds","args":[${'0,'.repeat(1_500_000)}0]}`);
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
  rwDeep.sendRaw(frame(values));
  const tooMany = await rwDeep.waitFor((m) => m.type === 'error' && /values/.test(asError(m).message));
  delay.disable();
  assert.match(asError(tooMany).message, /more than 4096 values/);
  // the scan costs a few ms; parsing took > 1 s (bound with slack for a loaded 2-core CI machine)
  assert.ok(delay.max / 1e6 < 200, `event loop blocked ${(delay.max / 1e6).toFixed(0)} ms`);
  assert.equal((await rwDeep.call(5, 'listJobIds', ['u'])).type, 'reply', 'still served');
  // the same on the read-only socket, small enough for its frame limit
  const roDeep = await raw(t, s.ro);
  roDeep.sendRaw(frame(Buffer.from('{"a":' + '['.repeat(40) + ']'.repeat(40) + '}')));
  assert.match(asError(await roDeep.waitFor((m) => m.type === 'error')).message, /nested deeper/);
  assert.equal((await roDeep.call(3, 'listJobIds', ['u'])).type, 'reply', 'still served');
  // a read-only client's frame over 64 KiB drops it; the same frame on the read-write socket is answered
  const big = { type: 'call', serial: 4, proc: 'listJobIds', args: ['u'], pad: 'x'.repeat(70 * 1024) };
  const ro = await raw(t, s.ro);
  ro.send(big);
  await ro.waitClosed();
  const rw = await raw(t, s.rw);
  rw.send(big);
  assert.equal((await rw.waitFor((m) => m.serial === 4)).serial, 4, 'answered');
  assert.deepEqual(await other.listJobIds('u'), [7], 'others are served meanwhile');
});

test('clients that stop reading cannot add up past the daemon-wide budget; connections are capped', async (t) => {
  const s = await setup(t, { maxTotalBufferedBytes: 1024 * 1024, maxClients: 6 });
  const big = 'x'.repeat(200 * 1024);
  s.driver.behaviour.domainGetXMLDesc = async () => big;
  const good = await client(t, s.rw);
  const stalled = [];
  for (let k = 0; k < 4; k++) {
    const r = await raw(t, s.ro);
    r.socket.pause();
    for (let i = 1; i <= 3; i++) r.send({ type: 'call', serial: i, proc: 'domainGetXMLDesc', args: ['u', 0] });
    stalled.push(r);
  }
  for (let i = 0; i < 5; i++) assert.equal((await good.domainGetXMLDesc('u', 0)).length, big.length);
  // each stalled client is under its own 64 MiB bound; together they would be over 1 MiB: the heaviest go
  const deadline = Date.now() + 5000;
  while (s.server.clientCount > 4 && Date.now() < deadline) await new Promise((x) => setTimeout(x, 20));
  assert.ok(s.server.clientCount <= 4, `a stalled client was dropped (${s.server.clientCount} left)`);
  assert.ok(s.server.bufferedBytes <= 1024 * 1024, `${s.server.bufferedBytes} bytes held, within the budget`);
  assert.deepEqual(await good.listJobIds('u'), [7], 'the reading client is served');
  // the connection cap: beyond maxClients a new connection is closed at once
  const extra = [];
  for (let k = 0; k < 6; k++) extra.push(await raw(t, s.ro));
  await extra[extra.length - 1]!.waitClosed();
  assert.ok(s.server.clientCount <= 6);
});

test('a client that disconnects mid-call is harmless', async (t) => {
  const s = await setup(t);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  s.driver.behaviour.backupBegin = async () => {
    await gate;
    return 11;
  };
  const r = await raw(t, s.rw);
  r.send({ type: 'call', serial: 1, proc: 'backupBegin', args: sampleArgs.backupBegin });
  while (!s.driver.calls.some((c) => c.proc === 'backupBegin')) await new Promise((x) => setTimeout(x, 5));
  r.close();
  await r.waitClosed();
  release();
  await new Promise((x) => setTimeout(x, 50));
  const c = await client(t, s.rw);
  assert.deepEqual(await c.listJobIds('u'), [7]);
  assert.equal(s.server.clientCount, 1);
});

test('pending calls are rejected when the daemon goes away; later calls fail with NO_CONNECT-like errors', async (t) => {
  const s = await setup(t);
  s.driver.behaviour.getJobStats = () => new Promise(() => {});
  const c = await client(t, s.rw);
  const pending = c.getJobStats('u', 0);
  while (!s.driver.calls.some((x) => x.proc === 'getJobStats')) await new Promise((x) => setTimeout(x, 5));
  await s.server.close();
  await assert.rejects(pending, (e: unknown) => e instanceof VirError && e.code === 39 && /closed/.test(e.message));
  await assert.rejects(c.listJobIds('u'), (e: unknown) => e instanceof VirError && e.code === 39);
});

test('a client that stops reading is no longer read and is dropped when it takes no reply for a while; others are served meanwhile', async (t) => {
  const s = await setup(t, { maxQueuedBytes: 256 * 1024, stalledReaderMs: 1000 });
  const big = 'x'.repeat(200 * 1024);
  s.driver.behaviour.domainGetXMLDesc = async () => big;
  const stalled = await raw(t, s.rw);
  stalled.socket.pause();
  const good = await client(t, s.rw);
  for (let i = 1; i <= 40; i++) stalled.send({ type: 'call', serial: i, proc: 'domainGetXMLDesc', args: ['u', 0] });
  // Meanwhile the well-behaved client gets every answer.
  for (let i = 0; i < 20; i++) assert.equal((await good.domainGetXMLDesc('u', 0)).length, big.length);
  const deadline = Date.now() + 5000;
  while (s.server.clientCount > 1 && Date.now() < deadline) await new Promise((x) => setTimeout(x, 20));
  assert.equal(s.server.clientCount, 1, 'the stalled client was dropped');
  assert.deepEqual(await good.listJobIds('u'), [7]);
});

test('events reach subscribed clients only, and the client subscribes on the wire only while someone listens', async (t) => {
  const s = await setup(t);
  const a = await client(t, s.rw);
  const b = await client(t, s.ro);
  const quiet = await client(t, s.rw);
  const gotA: DriverEvent[] = [];
  const gotB: DriverEvent[] = [];
  const gotQuiet: DriverEvent[] = [];
  const offA = a.subscribe((e) => gotA.push(e));
  b.subscribe((e) => gotB.push(e));
  await a.whenSubscribed();
  await b.whenSubscribed();
  const ev: DriverEvent = {
    type: 'job-completed',
    domain: { name: 'vm1', uuid: 'u' },
    jobId: 3,
    stats: { type: 3, operation: 9, id: 3, success: true },
  };
  s.driver.emit(ev);
  const deadline = Date.now() + 2000;
  while ((gotA.length === 0 || gotB.length === 0) && Date.now() < deadline) await new Promise((x) => setTimeout(x, 10));
  assert.deepEqual(gotA, [ev]);
  assert.deepEqual(gotB, [ev]);
  offA();
  await a.whenSubscribed();
  const later: DriverEvent = { type: 'lifecycle', domain: { name: 'vm1', uuid: 'u' }, event: 'stopped', detail: 'destroyed' };
  s.driver.emit(later);
  while (gotB.length < 2 && Date.now() < deadline) await new Promise((x) => setTimeout(x, 10));
  await quiet.listJobIds('u'); // a round trip, so any stray event would have arrived
  assert.deepEqual(gotB, [ev, later]);
  assert.deepEqual(gotA, [ev], 'unsubscribed client got nothing more');
  assert.deepEqual(gotQuiet, []);
  void quiet.subscribe; // never subscribed
});

test('events are not sent to a raw client that never subscribed', async (t) => {
  const s = await setup(t);
  const r = await raw(t, s.rw);
  const sub = await raw(t, s.rw);
  assert.equal((await sub.call(1, 'subscribe', [])).type, 'reply');
  s.driver.emit({ type: 'lifecycle', domain: { name: 'vm1', uuid: 'u' }, event: 'started', detail: 'booted' });
  await sub.waitFor((m) => m.type === 'event');
  assert.equal((await r.call(1, 'listJobIds', ['u'])).type, 'reply');
  assert.equal(r.messages.filter((m) => m.type === 'event').length, 0);
});

test('closing the server disconnects clients and leaves the driver open', async (t) => {
  const s = await setup(t);
  const c = await client(t, s.rw);
  await s.server.close();
  assert.equal(s.driver.closed, false);
  assert.equal(fs.existsSync(s.rw), false);
  await assert.rejects(c.listJobIds('u'), VirError);
});

test('docs/protocol.md lists every procedure with its read-only rule', () => {
  const doc = fs.readFileSync(path.join(import.meta.dirname, '..', '..', 'docs', 'protocol.md'), 'utf8');
  for (const [name, p] of Object.entries(procedures)) {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${name}\` |`));
    assert.ok(row, `${name} documented`);
    const cells = row.split('|').map((c) => c.trim());
    const rule = p.mutating ? 'yes' : 'deniedReadOnly' in p ? 'with SECURE flag' : 'no';
    assert.equal(cells[4], rule, `${name} read-only rule`);
  }
});
