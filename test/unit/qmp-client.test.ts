import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  QmpTimeoutError,
  qmpErrorToVirError,
  type QmpEvent,
} from '../../src/qemu/qmp/client.js';
import { ErrorCode, ErrorDomain } from '../../src/errors.js';
import { silentLogger, type LogFields } from '../../src/log.js';

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id: string;
}

const GREETING = {
  QMP: { version: { qemu: { micro: 19, minor: 2, major: 7 }, package: 'fake' }, capabilities: ['oob'] },
};

/**
 * A scripted QMP peer on a unix socket: greets, answers qmp_capabilities, and
 * hands every later command to `script` together with the connection.
 */
class FakePeer {
  readonly received: Command[] = [];
  readonly sockets: net.Socket[] = [];
  script: (cmd: Command, peer: FakePeer) => void = () => {};
  greet = true;

  private constructor(
    readonly server: net.Server,
    readonly path: string,
  ) {}

  static async start(t: TestContext): Promise<FakePeer> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-qmp-'));
    const sockPath = path.join(dir, 'qmp.sock');
    const server = net.createServer();
    const peer = new FakePeer(server, sockPath);
    server.on('connection', (s) => peer.accept(s));
    server.listen(sockPath);
    await once(server, 'listening');
    t.after(async () => {
      for (const s of peer.sockets) s.destroy();
      await new Promise((r) => server.close(r));
      await fs.rm(dir, { recursive: true, force: true });
    });
    return peer;
  }

  get sock(): net.Socket {
    const s = this.sockets.at(-1);
    assert.ok(s, 'no client connected');
    return s;
  }

  send(obj: unknown): void {
    this.sock.write(JSON.stringify(obj) + '\r\n');
  }

  reply(cmd: Command, ret: unknown): void {
    this.send({ return: ret, id: cmd.id });
  }

  event(name: string, data?: unknown): void {
    this.send({ timestamp: { seconds: 1, microseconds: 2 }, event: name, ...(data === undefined ? {} : { data }) });
  }

  private accept(s: net.Socket): void {
    this.sockets.push(s);
    s.on('error', () => {});
    if (this.greet) s.write(JSON.stringify(GREETING) + '\r\n');
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('utf8');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        const cmd = JSON.parse(line) as Command;
        this.received.push(cmd);
        if (cmd.execute === 'qmp_capabilities') this.reply(cmd, {});
        else this.script(cmd, this);
      }
    });
  }
}

async function connected(t: TestContext, opts?: Parameters<typeof QmpClient.connect>[1]): Promise<[FakePeer, QmpClient]> {
  const peer = await FakePeer.start(t);
  const client = await QmpClient.connect(peer.path, opts);
  t.after(() => client.close());
  return [peer, client];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('connect reads the greeting and negotiates capabilities first', async (t) => {
  const [peer, client] = await connected(t);
  assert.deepEqual(client.greeting, GREETING);
  assert.equal(peer.received.length, 1);
  assert.equal(peer.received[0]!.execute, 'qmp_capabilities');
  assert.equal(typeof peer.received[0]!.id, 'string');
  assert.equal(client.isClosed, false);
});

test('replies are matched by id even out of order (pipelined calls)', async (t) => {
  const [peer, client] = await connected(t);
  const held: Command[] = [];
  peer.script = (cmd) => {
    held.push(cmd);
    if (held.length === 3) for (const c of [...held].reverse()) peer.reply(c, { echo: c.arguments?.n });
  };
  const results = await Promise.all([1, 2, 3].map((n) => client.executeRaw('echo', { n })));
  assert.deepEqual(results, [{ echo: 1 }, { echo: 2 }, { echo: 3 }]);
  const ids = held.map((c) => c.id);
  assert.equal(new Set(ids).size, 3, 'each call has its own id');
});

test('events sent before the reply reach a listener subscribed before sending, in order', async (t) => {
  const [peer, client] = await connected(t);
  peer.script = async (cmd) => {
    // As QEMU does for blockdev-backup: job events first, the return 25-80 ms later.
    peer.event('JOB_STATUS_CHANGE', { id: 'job0', status: 'created' });
    await sleep(10);
    peer.event('JOB_STATUS_CHANGE', { id: 'job0', status: 'running' });
    peer.event('RESUME');
    await sleep(30);
    peer.reply(cmd, {});
    await sleep(20);
    peer.event('JOB_STATUS_CHANGE', { id: 'job0', status: 'concluded' });
  };
  const seen: string[] = [];
  const all: string[] = [];
  client.on('JOB_STATUS_CHANGE', (ev) => seen.push(ev.data.status));
  client.on('*', (ev) => all.push(ev.event));
  const running = client.waitForEvent((ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data.status === 'running');
  const concluded = client.waitForEvent((ev) => ev.data.status === 'concluded', { timeoutMs: 2000 });
  await client.execute('blockdev-backup', { device: 'disk', target: 'tgt', sync: 'full', 'job-id': 'job0' });
  assert.deepEqual(seen, ['created', 'running'], 'both events arrived before the reply resolved');
  assert.equal((await running.promise).data.status, 'running');
  assert.equal((await concluded.promise).data.id, 'job0');
  assert.deepEqual(seen, ['created', 'running', 'concluded']);
  assert.deepEqual(all, ['JOB_STATUS_CHANGE', 'JOB_STATUS_CHANGE', 'RESUME', 'JOB_STATUS_CHANGE']);
});

test('unsubscribe stops delivery; filters by event name', async (t) => {
  const [peer, client] = await connected(t);
  const stops: QmpEvent[] = [];
  const off = client.on('STOP', (ev) => stops.push(ev));
  const resumes: QmpEvent[] = [];
  client.on('RESUME', (ev) => resumes.push(ev));
  peer.script = (cmd) => {
    peer.event('STOP');
    peer.event('RESUME');
    peer.reply(cmd, {});
  };
  await client.execute('stop');
  off();
  await client.execute('stop');
  assert.equal(stops.length, 1);
  assert.deepEqual(stops[0], { timestamp: { seconds: 1, microseconds: 2 }, event: 'STOP', data: {} });
  assert.equal(resumes.length, 2);
});

test('an error reply keeps class, desc, command and arguments; converts to VirError', async (t) => {
  const [peer, client] = await connected(t);
  peer.script = (cmd) =>
    peer.send({ id: cmd.id, error: { class: 'GenericError', desc: "Failed to find node with node-name='nope'" } });
  const args = { 'node-name': 'nope' };
  const err = await client.execute('blockdev-del', args).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof QmpCommandError);
  assert.equal(err.errorClass, 'GenericError');
  assert.equal(err.desc, "Failed to find node with node-name='nope'");
  assert.equal(err.command, 'blockdev-del');
  assert.deepEqual(err.args, args);
  assert.deepEqual(err.reply, { id: peer.received[1]!.id, error: { class: 'GenericError', desc: "Failed to find node with node-name='nope'" } });
  const v = qmpErrorToVirError(err, 'deleting node');
  assert.equal(v.code, ErrorCode.INTERNAL_ERROR);
  assert.equal(v.domain, ErrorDomain.QEMU);
  assert.equal(v.message, "deleting node: unable to execute QEMU command 'blockdev-del': Failed to find node with node-name='nope'");
  assert.equal(qmpErrorToVirError(err).message, "unable to execute QEMU command 'blockdev-del': Failed to find node with node-name='nope'");
  // The connection is still usable.
  peer.script = (cmd) => peer.reply(cmd, { running: true, singlestep: false, status: 'running' });
  assert.equal((await client.execute('query-status')).status, 'running');
});

test('a call times out; its late reply is ignored and the connection stays usable', async (t) => {
  const [peer, client] = await connected(t);
  let slow: Command | undefined;
  peer.script = (cmd) => {
    if (cmd.execute === 'slow') slow = cmd;
    else {
      // The late reply to the timed-out call comes first: it must not be taken for this one.
      if (slow) peer.reply(slow, 'late');
      peer.reply(cmd, 'fresh');
    }
  };
  const t0 = Date.now();
  const err = await client.executeRaw('slow', undefined, { timeoutMs: 80 }).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(Date.now() - t0 >= 75);
  assert.ok(err instanceof QmpTimeoutError);
  assert.ok(err instanceof QmpConnectionError);
  assert.match(err.message, /timed out after 80 ms waiting for QEMU reply to 'slow'/);
  assert.equal(qmpErrorToVirError(err).code, ErrorCode.OPERATION_TIMEOUT);
  assert.equal(client.isClosed, false);
  assert.equal(await client.executeRaw('fast'), 'fresh');
});

test('the default per-call timeout comes from connect options', async (t) => {
  const [, client] = await connected(t, { timeoutMs: 50 });
  await assert.rejects(client.executeRaw('never-answered'), QmpTimeoutError);
});

test('socket close rejects every pending call and waiter, and fires onClose', async (t) => {
  const [peer, client] = await connected(t);
  let n = 0;
  peer.script = () => {
    if (++n === 3) peer.sock.destroy();
  };
  const closed = new Promise<Error | undefined>((r) => client.onClose(r));
  const waiter = client.waitForEvent(() => true);
  const calls = [client.executeRaw('a'), client.executeRaw('b'), client.executeRaw('c')];
  const results = await Promise.allSettled(calls);
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    assert.ok(r.reason instanceof QmpConnectionError);
    assert.match(r.reason.message, /End of file from qemu monitor/);
  }
  await assert.rejects(waiter.promise, QmpConnectionError);
  const err = await closed;
  assert.ok(err instanceof QmpConnectionError);
  assert.equal(client.isClosed, true);
  await assert.rejects(client.executeRaw('after'), QmpConnectionError);
  // Registered after the close: still told.
  assert.ok((await new Promise<Error | undefined>((r) => client.onClose(r))) instanceof QmpConnectionError);
  assert.equal(qmpErrorToVirError(err).code, ErrorCode.OPERATION_FAILED);
});

test('close() rejects pending calls and calls onClose without an error', async (t) => {
  const [, client] = await connected(t);
  const closed = new Promise<Error | undefined>((r) => client.onClose(r));
  const pending = assert.rejects(client.executeRaw('unanswered'), QmpConnectionError);
  await client.close();
  await pending;
  assert.equal(await closed, undefined);
  assert.equal(client.isClosed, true);
});

test('a throwing listener does not break the pump or other listeners', async (t) => {
  const errors: LogFields[] = [];
  const warn = (fields: LogFields | string, msg?: string): void => {
    if (typeof fields === 'object' && msg === 'QMP event listener threw') errors.push(fields);
  };
  const [peer, client] = await connected(t, { log: { ...silentLogger, warn } });
  const got: string[] = [];
  client.on('STOP', () => {
    throw new Error('listener bug');
  });
  client.on('STOP', (ev) => got.push(`second:${ev.event}`));
  client.on('RESUME', (ev) => got.push(ev.event));
  peer.script = (cmd) => {
    peer.event('STOP');
    peer.event('RESUME');
    peer.reply(cmd, 'ok');
  };
  assert.equal(await client.executeRaw('stop'), 'ok');
  assert.deepEqual(got, ['second:STOP', 'RESUME']);
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.event, 'STOP');
  assert.match((errors[0]!.err as Error).message, /listener bug/);
  assert.equal(await client.executeRaw('again'), 'ok');
});

test('waitForEvent times out and can be cancelled', async (t) => {
  const [peer, client] = await connected(t);
  const w = client.waitForEvent((ev) => ev.event === 'NEVER', { timeoutMs: 40 });
  await assert.rejects(w.promise, QmpTimeoutError);
  const c = client.waitForEvent(() => true);
  c.cancel();
  await assert.rejects(c.promise, /cancelled/);
  // A cancelled waiter no longer consumes events.
  peer.script = (cmd) => {
    peer.event('STOP');
    peer.reply(cmd, {});
  };
  const next = client.waitForEvent((ev) => ev.event === 'STOP', { timeoutMs: 1000 });
  await client.execute('stop');
  assert.equal((await next.promise).event, 'STOP');
});

test('a message over the buffer bound closes the connection', async (t) => {
  const [peer, client] = await connected(t, { maxMessageBytes: 1024 });
  peer.script = (cmd) => {
    peer.event('STOP'); // complete messages before the oversize one are still delivered
    peer.sock.write(`{"return": "${'x'.repeat(600)}`);
    setTimeout(() => peer.sock.write(`${'x'.repeat(600)}", "id": "${cmd.id}"}\r\n`), 20);
  };
  const stops: QmpEvent[] = [];
  client.on('STOP', (ev) => stops.push(ev));
  const closed = new Promise<Error | undefined>((r) => client.onClose(r));
  await assert.rejects(client.executeRaw('big'), (e: unknown) => {
    assert.ok(e instanceof QmpConnectionError);
    assert.match(e.message, /exceeds the limit of 1024 bytes/);
    return true;
  });
  assert.equal(stops.length, 1);
  assert.ok((await closed) instanceof QmpConnectionError);
  assert.equal(client.isClosed, true);
});

test('connect fails cleanly: no socket, and a peer that never greets', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-qmp-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  await assert.rejects(QmpClient.connect(path.join(dir, 'missing.sock')), (e: unknown) => {
    assert.ok(e instanceof QmpConnectionError);
    assert.match(e.message, /failed to connect to monitor socket '.*missing\.sock'/);
    return true;
  });
  const peer = await FakePeer.start(t);
  peer.greet = false;
  await assert.rejects(QmpClient.connect(peer.path, { connectTimeoutMs: 60 }), QmpTimeoutError);
});

test('a peer that closes before greeting rejects connect', async (t) => {
  const peer = await FakePeer.start(t);
  peer.greet = false;
  peer.server.on('connection', (s) => s.destroy());
  await assert.rejects(QmpClient.connect(peer.path), QmpConnectionError);
});
