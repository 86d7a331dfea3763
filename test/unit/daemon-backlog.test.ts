// The daemon's startup backlog: events a driver recovered while it was being
// opened are replayed once to every client that subscribes afterwards,
// within a time and count bound. Pure part (EventBacklog) and the daemon
// end to end over its socket, with the in-memory test driver.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DriverEvent, JobCompletedEvent } from '../../src/api/driver.js';
import { TestDriver } from '../../src/api/test-driver.js';
import { EventBacklog, drainRecoveredEvents } from '../../src/daemon/backlog.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { silentLogger } from '../../src/log.js';
import { RemoteDriver } from '../../src/remote/client.js';

const dom = { name: 'vm', uuid: '11111111-2222-3333-4444-555555555555' };
const done = (jobId: number): JobCompletedEvent => ({ type: 'job-completed', domain: dom, jobId, stats: { type: 3, success: true } });

test('EventBacklog keeps events in order, drops expired ones and the oldest beyond its size', () => {
  let now = 1000;
  const b = new EventBacklog({ ttlMs: 100, maxEvents: 3, now: () => now });
  b.add([done(1), done(2)]);
  now = 1050;
  b.add([done(3), done(4)]);
  assert.deepEqual(b.current().map((e) => (e as JobCompletedEvent).jobId), [2, 3, 4], 'oldest dropped beyond 3');
  now = 1101;
  assert.deepEqual(b.current().map((e) => (e as JobCompletedEvent).jobId), [3, 4], 'events of t=1000 expired');
  now = 1151;
  assert.deepEqual(b.current(), []);
  assert.equal(b.size, 0);
});

test('drainRecoveredEvents drains the driver\'s recoveredEvents capability, and nothing from drivers without it', async () => {
  const list: DriverEvent[] = [done(7)];
  const driver = Object.assign(await TestDriver.open(), { recoveredEvents: () => list.splice(0) });
  assert.deepEqual(drainRecoveredEvents(driver), [done(7)]);
  assert.deepEqual(drainRecoveredEvents(driver), [], 'drained');
  assert.deepEqual(drainRecoveredEvents(await TestDriver.open()), []);
});

function collect(d: RemoteDriver): { events: DriverEvent[]; off: () => void } {
  const events: DriverEvent[] = [];
  const off = d.subscribe((e) => events.push(e));
  return { events, off };
}

const settle = (ms = 100): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('the daemon replays recovered events once to each client subscribing later; live events follow normally', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vb-backlog-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  let driver: TestDriver | null = null;
  const recovered: DriverEvent[] = [done(1), done(2)];
  const daemon = await Daemon.start({
    stateDir: path.join(dir, 'state'),
    runDir: path.join(dir, 'run'),
    logger: silentLogger,
    openDriver: async () => (driver = Object.assign(await TestDriver.open(), { recoveredEvents: () => recovered.splice(0) })),
  });
  t.after(() => daemon.stop());
  assert.equal(daemon.backlog.size, 2);

  const a = await RemoteDriver.connectUnix(daemon.socketPath);
  t.after(() => a.close());
  const ca = collect(a);
  await a.whenSubscribed();
  await settle();
  assert.deepEqual(ca.events, [done(1), done(2)], 'backlog after subscribing');
  driver!.emit(done(3));
  await settle();
  assert.deepEqual(ca.events.map((e) => (e as JobCompletedEvent).jobId), [1, 2, 3], 'live event afterwards');

  // re-subscribing on the same connection does not replay again
  ca.off();
  await a.whenSubscribed();
  const again = collect(a);
  await a.whenSubscribed();
  await settle();
  assert.deepEqual(again.events, []);

  // a second connection gets the backlog too (on the read-only socket as well)
  const b = await RemoteDriver.connectUnix(daemon.roSocketPath);
  t.after(() => b.close());
  const cb = collect(b);
  await b.whenSubscribed();
  await settle();
  assert.deepEqual(cb.events, [done(1), done(2)]);

  // a connection that never subscribes gets nothing
  const c = await RemoteDriver.connectUnix(daemon.socketPath);
  t.after(() => c.close());
  await c.listAllDomains(0);
});

test('the backlog expires', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vb-backlog-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const daemon = await Daemon.start({
    stateDir: path.join(dir, 'state'),
    runDir: path.join(dir, 'run'),
    logger: silentLogger,
    backlog: { ttlMs: 50 },
    openDriver: async () => Object.assign(await TestDriver.open(), { recoveredEvents: () => [done(9)] }),
  });
  t.after(() => daemon.stop());
  await settle(120);
  const a = await RemoteDriver.connectUnix(daemon.socketPath);
  t.after(() => a.close());
  const ca = collect(a);
  await a.whenSubscribed();
  await settle();
  assert.deepEqual(ca.events, []);
});
