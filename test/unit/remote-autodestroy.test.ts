// AutoDestroyTracker on the in-memory test driver: what a connection started
// with START_AUTODESTROY dies with it; nothing else does, not even the same
// domain started again by someone else; a start that completes after its
// connection closed is undone at once.

import assert from 'node:assert/strict';
import test from 'node:test';
import { TestDriver } from '../../src/api/test-driver.js';
import { DomainCreateFlags, DomainState, ShutoffReason } from '../../src/flags.js';
import { AutoDestroyTracker } from '../../src/remote/autodestroy.js';

const xml = (name: string): string => `<domain type='qemu'><name>${name}</name></domain>`;

async function setup(): Promise<{ driver: TestDriver; tracker: AutoDestroyTracker; a: string; b: string }> {
  const driver = await TestDriver.open();
  const a = (await driver.domainDefineXML(xml('a'), 0)).uuid;
  const b = (await driver.domainDefineXML(xml('b'), 0)).uuid;
  return { driver, tracker: new AutoDestroyTracker(driver), a, b };
}

const state = async (d: TestDriver, uuid: string): Promise<[number, number]> => {
  const i = await d.domainGetInfo(uuid);
  return [i.state, i.reason];
};

test('the domains a connection started with AUTODESTROY are destroyed when it closes; others stay', async () => {
  const { driver, tracker, a, b } = await setup();
  const conn = {};
  const other = {};
  await driver.domainCreate(a, DomainCreateFlags.AUTODESTROY);
  await tracker.domainStarted(conn, a, DomainCreateFlags.AUTODESTROY);
  await driver.domainCreate(b, 0);
  await tracker.domainStarted(conn, b, 0);
  await tracker.connectionClosed(other);
  assert.equal((await state(driver, a))[0], DomainState.RUNNING, "another connection's close leaves it");
  await tracker.connectionClosed(conn);
  assert.deepEqual(await state(driver, a), [DomainState.SHUTOFF, ShutoffReason.DESTROYED]);
  assert.equal((await state(driver, b))[0], DomainState.RUNNING, 'started without the flag');
  await tracker.connectionClosed(conn); // twice: nothing more
  assert.equal((await state(driver, b))[0], DomainState.RUNNING);
});

test('a domain stopped and started again by someone else is not destroyed', async () => {
  const { driver, tracker, a } = await setup();
  const conn = {};
  await driver.domainCreate(a, DomainCreateFlags.AUTODESTROY);
  await tracker.domainStarted(conn, a, DomainCreateFlags.AUTODESTROY);
  await driver.domainDestroy(a, 0);
  await driver.domainCreate(a, 0);
  await tracker.connectionClosed(conn);
  assert.equal((await state(driver, a))[0], DomainState.RUNNING);
});

test('a start that completes after its connection closed is destroyed at once; idle() waits for the destroys', async () => {
  const { driver, tracker, a } = await setup();
  const conn = {};
  const closing = tracker.connectionClosed(conn);
  await driver.domainCreate(a, DomainCreateFlags.AUTODESTROY);
  await tracker.domainStarted(conn, a, DomainCreateFlags.AUTODESTROY);
  await closing;
  await tracker.idle();
  assert.deepEqual(await state(driver, a), [DomainState.SHUTOFF, ShutoffReason.DESTROYED]);
});
