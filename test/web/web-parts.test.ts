// The console's bounded parts without a server: sessions (idle expiry, the
// cap evicting the least recently used, end listeners), the login limiter,
// constant-time token matching by role, task progress at most 4 a second
// with every state change passed on, the event hub's cap and its ping timer
// running only while a stream is open, and the job history's results.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JobType } from '../../src/flags.js';
import { LoginLimiter, roleOfToken, Sessions } from '../../src/web/auth.js';
import { EventHub, type SseClient } from '../../src/web/events.js';
import { JobHistory } from '../../src/web/jobs.js';
import { TaskTable, type TaskView } from '../../src/web/tasks.js';
import { silentLogger } from '../../src/log.js';

test('sessions: idle expiry moves with use, the cap evicts the least recently used, ends are announced', () => {
  let now = 1_000;
  const s = new Sessions({ ttlMs: 100, max: 2, now: () => now });
  const ended: string[] = [];
  s.onEnd((id) => ended.push(id));
  const a = s.create('admin');
  const b = s.create('readonly');
  assert.notEqual(a.csrf, b.csrf);
  now += 90;
  assert.equal(s.touch(a.id)?.role, 'admin', 'used: its expiry moves');
  now += 50;
  assert.equal(s.touch(b.id), null, 'idle past the ttl');
  assert.deepEqual(ended, [b.id]);
  const c = s.create('admin');
  const d = s.create('admin');
  assert.equal(s.touch(a.id), null, 'the least recently used went at the cap');
  assert.ok(s.touch(c.id) && s.touch(d.id));
  assert.equal(s.alive(c.id), true);
  now += 101;
  assert.equal(s.alive(c.id), false);
  assert.equal(s.touch(undefined), null);
});

test('tokens: the role of a token, nothing for a prefix or a longer one; the login limiter', () => {
  const tokens = { admin: 'A'.repeat(43), readonly: 'R'.repeat(43) };
  assert.equal(roleOfToken(tokens, tokens.admin), 'admin');
  assert.equal(roleOfToken(tokens, tokens.readonly), 'readonly');
  for (const bad of ['', 'A'.repeat(42), `${tokens.admin}A`, 'R'.repeat(44)]) assert.equal(roleOfToken(tokens, bad), null, bad);
  let now = 0;
  const l = new LoginLimiter(3, 5, 1000, () => now);
  for (let i = 0; i < 3; i++) {
    assert.equal(l.allowed('a'), true);
    l.failed('a');
  }
  assert.equal(l.allowed('a'), false);
  assert.equal(l.allowed('b'), true, 'another address');
  l.failed('b');
  l.failed('c');
  assert.equal(l.allowed('d'), false, 'the global cap');
  now += 1001;
  assert.equal(l.allowed('a'), true, 'the window passed');
});

test('tasks: progress at most 4 a second, every state change at once, failures as libvirt errors', async () => {
  const sent: TaskView[] = [];
  const ended: TaskView[] = [];
  const tasks = new TaskTable((v) => sent.push(v), silentLogger, (v) => ended.push(v));
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const view = tasks.start('backup', 'vm', async (t) => {
    const t0 = Date.now();
    let i = 0;
    while (Date.now() - t0 < 1000) {
      t.progress(++i, 1_000_000);
      await new Promise((r) => setTimeout(r, 2));
    }
    await gate;
    return { level: 'full' };
  });
  assert.equal(view.state, 'running');
  await new Promise((r) => setTimeout(r, 1100));
  const running = sent.filter((v) => v.state === 'running');
  assert.ok(running.length >= 3 && running.length <= 7, `${running.length} updates in ~1 s (the start, then ≤ 4/s)`);
  release();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(sent.at(-1)?.state, 'completed');
  assert.deepEqual(sent.at(-1)?.result, { level: 'full' });
  assert.equal(ended.length, 1);
  assert.equal(tasks.get(view.task).state, 'completed');

  // a task shorter than the interval: its first bytes done are sent at once, not swallowed by its end
  const sentBefore = sent.length;
  const short = tasks.start('backup', 'vm', async (t) => {
    t.progress(0, 100);
    t.progress(40, 100);
    t.progress(100, 100);
    await new Promise((r) => setTimeout(r, 5));
  });
  await new Promise((r) => setTimeout(r, 50));
  const shortViews = sent.slice(sentBefore).filter((v) => v.task === short.task);
  assert.ok(shortViews.some((v) => v.state === 'running' && v.processed > 0), `progress seen before the end: ${JSON.stringify(shortViews.map((v) => [v.state, v.processed]))}`);
  assert.equal(shortViews.at(-1)?.state, 'completed');

  const failing = tasks.start('verify', null, () => Promise.reject(new Error('boom')));
  await new Promise((r) => setTimeout(r, 10));
  const f = tasks.get(failing.task);
  assert.deepEqual([f.state, f.error?.name, f.error?.message], ['failed', 'VIR_ERR_INTERNAL_ERROR', 'boom']);
  await assert.rejects(tasks.stop(failing.task), /cannot be stopped/);
  assert.throws(() => tasks.get('nope'), /no console task/);
  tasks.close();
});

test('event hub: capped, oldest closed first, closed per session, the ping timer only while a stream is open', async () => {
  const hub = new EventHub(2, 20);
  const got: Array<[string, string]> = [];
  const closed: string[] = [];
  const client = (name: string, session: string): SseClient => ({ session, send: (ev) => got.push([name, ev]), close: () => closed.push(name) });
  hub.add(client('a', 's1'));
  hub.add(client('b', 's2'));
  hub.add(client('c', 's2'));
  assert.deepEqual(closed, ['a'], 'the oldest stream went at the cap');
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(got.some(([n, ev]) => n === 'b' && ev === 'ping'));
  hub.closeSession('s2');
  assert.deepEqual(closed, ['a', 'b', 'c']);
  assert.equal(hub.size, 0);
  const before = got.length;
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(got.length, before, 'no stream: no timer');

  // one session opening streams in a loop closes its own oldest, never another session's
  const shared = new EventHub(6, 1000, 2);
  closed.length = 0;
  shared.add(client('other1', 's3'));
  shared.add(client('other2', 's3'));
  for (let i = 0; i < 5; i++) shared.add(client(`loop${i}`, 's4'));
  assert.deepEqual(closed, ['loop0', 'loop1', 'loop2'], 'the looping session churned its own streams');
  assert.equal(shared.size, 4);
  shared.closeAll();
});

test('job history: results from events, backupEnd told first or after, bounded per domain', () => {
  const h = new JobHistory();
  const dom = { uuid: 'u', name: 'vm' };
  h.running('u', 1, 'push', 500);
  h.ended({ type: 'job-completed', domain: dom, jobId: 1, stats: { type: JobType.CANCELLED, success: false, errmsg: 'cancelled', time_elapsed: 700, disk_processed: 10 } });
  h.endedBy('u', 2, false);
  h.ended({ type: 'job-completed', domain: dom, jobId: 2, stats: { type: JobType.COMPLETED, success: true } });
  h.ended({ type: 'job-completed', domain: dom, jobId: 3, stats: { type: JobType.FAILED, success: false, errmsg: 'ENOSPC' } });
  h.endedBy('u', 3, true);
  const [j3, j2, j1] = h.of('u');
  assert.deepEqual([j1!.kind, j1!.result, j1!.durationMs, j1!.bytes], ['push', 'aborted', 700, 10]);
  assert.equal(j2!.result, 'aborted', 'told by backupEnd before the event');
  assert.equal(j3!.result, 'completed', 'told by backupEnd after the event');
  for (let i = 10; i < 100; i++) h.ended({ type: 'job-completed', domain: dom, jobId: i, stats: { type: JobType.COMPLETED, success: true } });
  assert.equal(h.of('u').length, 50);
});
