import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { GuestAgentClient } from '../../src/qemu/qmp/agent.js';
import { ErrorCode, ErrorDomain, VirError } from '../../src/errors.js';

interface Request {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

/**
 * A scripted qemu-ga: no greeting; a 0xFF byte draws the parse error real
 * qemu-ga sends; guest-sync-delimited answers 0xFF + {"return": id}.
 */
class FakeAgent {
  readonly received: Request[] = [];
  sockets: net.Socket[] = [];
  /** Answer guest-sync-delimited (a booting guest does not). */
  answerSync: (n: number) => boolean = () => true;
  /** Put the request id into replies, as qemu-ga's QMP dispatcher does. */
  echoIds = true;
  script: (req: Request, agent: FakeAgent) => void = () => {};
  /** Hold input, as QEMU does until the booting guest opens the port. */
  hold = false;
  private held: (() => void)[] = [];
  private syncs = 0;

  private constructor(readonly path: string) {}

  static async start(t: TestContext): Promise<FakeAgent> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-qga-'));
    const agent = new FakeAgent(path.join(dir, 'qga.sock'));
    const server = net.createServer((s) => agent.accept(s));
    server.listen(agent.path);
    await once(server, 'listening');
    t.after(async () => {
      for (const s of agent.sockets) s.destroy();
      await new Promise((r) => server.close(r));
      await fs.rm(dir, { recursive: true, force: true });
    });
    return agent;
  }

  get sock(): net.Socket {
    return this.sockets.at(-1)!;
  }

  reply(req: Request, ret: unknown): void {
    this.sock.write(JSON.stringify(this.echoIds && req.id !== undefined ? { return: ret, id: req.id } : { return: ret }) + '\n');
  }

  error(req: Request, cls: string, desc: string): void {
    const body = { error: { class: cls, desc } };
    this.sock.write(JSON.stringify(this.echoIds && req.id !== undefined ? { ...body, id: req.id } : body) + '\n');
  }

  /** Process held input a piece at a time, so the answers reach the client in separate reads. */
  release(): void {
    this.hold = false;
    this.held.splice(0).forEach((f, i) => setTimeout(f, 50 * i));
  }

  private accept(s: net.Socket): void {
    this.sockets.push(s);
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      if (this.hold) {
        this.held.push(() => s.emit('data', d));
        return;
      }
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const ff = buf.indexOf(0xff);
        const nl = buf.indexOf(0x0a);
        if (ff >= 0 && (nl < 0 || ff < nl)) {
          buf = buf.subarray(ff + 1);
          s.write('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\ufffd\'"}}\n');
          continue;
        }
        if (nl < 0) break;
        const line = buf.subarray(0, nl).toString().trim();
        buf = buf.subarray(nl + 1);
        if (!line) continue;
        const req = JSON.parse(line) as Request;
        this.received.push(req);
        if (req.execute === 'guest-sync-delimited') {
          if (this.answerSync(++this.syncs)) {
            s.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: req.arguments!.id }) + '\n')]));
          }
        } else {
          this.script(req, this);
        }
      }
    });
  }
}

function isVir(code: number, pattern: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof VirError, `not a VirError: ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.domain, ErrorDomain.QEMU);
    assert.match(e.message, pattern);
    return true;
  };
}

test('connect synchronises first; freeze/thaw/status/ping send the right commands', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.script = (req, a) => {
    switch (req.execute) {
      case 'guest-ping':
        return a.reply(req, {});
      case 'guest-fsfreeze-freeze':
        return a.reply(req, 2);
      case 'guest-fsfreeze-freeze-list':
        return a.reply(req, (req.arguments!.mountpoints as string[]).length);
      case 'guest-fsfreeze-thaw':
        return a.reply(req, 2);
      case 'guest-fsfreeze-status':
        return a.reply(req, 'frozen');
    }
  };
  const ga = await GuestAgentClient.connect(agent.path, { syncTimeoutMs: 2000 });
  t.after(() => ga.close());
  assert.equal(agent.received[0]!.execute, 'guest-sync-delimited');
  assert.equal(typeof agent.received[0]!.arguments!.id, 'number');

  await ga.ping();
  assert.equal(await ga.fsfreezeFreeze(), 2);
  assert.equal(await ga.fsfreezeFreeze(['/mnt/data']), 1);
  assert.equal(await ga.fsfreezeStatus(), 'frozen');
  assert.equal(await ga.fsfreezeThaw(), 2);
  assert.deepEqual(
    agent.received.map((r) => r.execute),
    ['guest-sync-delimited', 'guest-ping', 'guest-fsfreeze-freeze', 'guest-fsfreeze-freeze-list', 'guest-fsfreeze-status', 'guest-fsfreeze-thaw'],
  );
  assert.deepEqual(agent.received[3]!.arguments, { mountpoints: ['/mnt/data'] });
});

test('stale replies before the sync answer are ignored', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.echoIds = false;
  agent.answerSync = () => {
    // Old answers still in the channel, then ours.
    agent.sock.write('{"return": 7}\n{"return": {}}\n');
    return true;
  };
  agent.script = (req, a) => a.reply(req, req.execute === 'guest-fsfreeze-thaw' ? 0 : {});
  const ga = await GuestAgentClient.connect(agent.path);
  t.after(() => ga.close());
  assert.equal(await ga.fsfreezeThaw(), 0);
});

test('a guest that is still booting: sync is resent until it answers', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.answerSync = (n) => n >= 2;
  const t0 = Date.now();
  const ga = await GuestAgentClient.connect(agent.path, { syncTimeoutMs: 5000 });
  t.after(() => ga.close());
  assert.ok(Date.now() - t0 >= 900, 'waited for the first attempt to lapse');
  assert.equal(agent.received.filter((r) => r.execute === 'guest-sync-delimited').length, 2);
});

test('a booting guest that delivers several sync attempts at once: their answers are all swallowed', async (t) => {
  for (const echoIds of [false, true]) {
    const agent = await FakeAgent.start(t);
    agent.echoIds = echoIds;
    agent.hold = true;
    setTimeout(() => agent.release(), 1300); // after the second attempt went out
    agent.script = (req, a) => a.reply(req, req.execute === 'guest-fsfreeze-status' ? 'thawed' : {});
    const ga = await GuestAgentClient.connect(agent.path, { syncTimeoutMs: 5000 });
    t.after(() => ga.close());
    await ga.ping();
    assert.equal(await ga.fsfreezeStatus(), 'thawed');
    assert.deepEqual(
      agent.received.map((r) => r.execute),
      ['guest-sync-delimited', 'guest-sync-delimited', 'guest-ping', 'guest-fsfreeze-status'],
    );
  }
});

test('an agent that never answers -> AGENT_UNRESPONSIVE', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.answerSync = () => false;
  await assert.rejects(
    GuestAgentClient.connect(agent.path, { syncTimeoutMs: 300 }),
    isVir(ErrorCode.AGENT_UNRESPONSIVE, /^Guest agent is not responding: /),
  );
});

test('no agent socket -> AGENT_UNRESPONSIVE "not connected"', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-qga-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  await assert.rejects(
    GuestAgentClient.connect(path.join(dir, 'none.sock')),
    isVir(ErrorCode.AGENT_UNRESPONSIVE, /^Guest agent is not responding: QEMU guest agent is not connected$/),
  );
});

test('a command timeout -> AGENT_UNRESPONSIVE; the late reply is dropped by a resync', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.echoIds = false; // the hard case: replies cannot be told apart by id
  let late: Request | undefined;
  // The late reply reaches the client just as the next request is waiting.
  const flushLate = (): void => {
    if (late) agent.reply(late, 3);
    late = undefined;
  };
  agent.answerSync = () => {
    flushLate();
    return true;
  };
  agent.script = (req, a) => {
    if (req.execute === 'guest-fsfreeze-freeze') late = req;
    else {
      flushLate();
      a.reply(req, 'thawed');
    }
  };
  const ga = await GuestAgentClient.connect(agent.path);
  t.after(() => ga.close());
  await assert.rejects(ga.fsfreezeFreeze(undefined, { timeoutMs: 50 }), isVir(ErrorCode.AGENT_UNRESPONSIVE, /not available/));
  assert.equal(await ga.fsfreezeStatus(), 'thawed');
  assert.deepEqual(
    agent.received.map((r) => r.execute),
    ['guest-sync-delimited', 'guest-fsfreeze-freeze', 'guest-sync-delimited', 'guest-fsfreeze-status'],
  );
});

test('an error reply -> INTERNAL_ERROR with the agent description', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.script = (req, a) => a.error(req, 'CommandNotFound', `Command ${req.execute} has been disabled: the agent is in frozen state`);
  const ga = await GuestAgentClient.connect(agent.path);
  t.after(() => ga.close());
  await assert.rejects(
    ga.execute('guest-exec', { path: '/bin/true' }),
    isVir(
      ErrorCode.INTERNAL_ERROR,
      /^unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled: the agent is in frozen state$/,
    ),
  );
  // Commands are serialised: two at once both get their own answers.
  agent.script = (req, a) => setTimeout(() => a.reply(req, req.execute === 'guest-fsfreeze-thaw' ? 1 : 'thawed'), 20);
  const [n, st] = await Promise.all([ga.fsfreezeThaw(), ga.fsfreezeStatus()]);
  assert.equal(n, 1);
  assert.equal(st, 'thawed');
});

test('the agent going away mid-command -> AGENT_UNRESPONSIVE', async (t) => {
  const agent = await FakeAgent.start(t);
  agent.script = (_req, a) => a.sock.destroy();
  const ga = await GuestAgentClient.connect(agent.path);
  t.after(() => ga.close());
  await assert.rejects(ga.ping(), isVir(ErrorCode.AGENT_UNRESPONSIVE, /disappeared/));
  assert.equal(ga.isClosed, true);
  await assert.rejects(ga.ping(), isVir(ErrorCode.AGENT_UNRESPONSIVE, /Guest agent is not responding/));
});
