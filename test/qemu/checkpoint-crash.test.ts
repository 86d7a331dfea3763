// A QEMU crash leaves its bitmaps unsaved: the shut-off domain's checkpoints
// must show as inconsistent from the moment the crash is seen, not only after
// the next start (or driver start) looks at the images again.

import assert from 'node:assert/strict';
import test from 'node:test';
import type { DriverEvent } from '../../src/api/driver.js';
import { CheckpointXMLFlags as X, DomainState, ShutoffReason } from '../../src/flags.js';
import { processAlive } from '../../src/qemu/process.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';

const stoppedCrashed = (events: DriverEvent[], uuid: string) =>
  events.some((e) => e.type === 'lifecycle' && e.domain.uuid === uuid && e.event === 'stopped' && e.detail === 'crashed');

async function twoCheckpointsThenRunning(t: import('node:test').TestContext) {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await driver.checkpointCreateXML(dom.uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  await driver.domainDestroy(dom.uuid, 0); // clean stop: c1 stored in the image
  await driver.domainCreate(dom.uuid, 0);
  await driver.checkpointCreateXML(dom.uuid, '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0);
  for (const name of ['c1', 'c2']) {
    assert.doesNotMatch(await driver.checkpointGetXMLDesc(dom.uuid, name, X.NO_DOMAIN), /<inconsistent/);
  }
  return { env, dom, driver, pid: (await driver.domainGetInfo(dom.uuid)).id };
}

async function assertMarked(driver: Awaited<ReturnType<typeof twoCheckpointsThenRunning>>['driver'], uuid: string) {
  const info = await driver.domainGetInfo(uuid);
  assert.deepEqual([info.state, info.reason], [DomainState.SHUTOFF, ShutoffReason.CRASHED]);
  // c1 was in the image but not stored cleanly; c2 never reached the image
  assert.match(await driver.checkpointGetXMLDesc(uuid, 'c1', X.NO_DOMAIN),
    /<inconsistent reason='disk sda, bitmap c1: bitmap inconsistent \(not stored cleanly/);
  assert.match(await driver.checkpointGetXMLDesc(uuid, 'c2', X.NO_DOMAIN),
    /<inconsistent reason='disk sda, bitmap c2: bitmap missing'/);
}

test('QEMU killed while connected: checkpoints marked inconsistent when the crash is seen', async (t) => {
  const { env, dom, driver, pid } = await twoCheckpointsThenRunning(t);
  process.kill(pid, 'SIGKILL');
  await waitFor(() => stoppedCrashed(env.events, dom.uuid), 'the crashed event');
  await assertMarked(driver, dom.uuid);
  await env.assertClean();
});

test('QEMU killed while no driver ran: the next open() marks the checkpoints at once', async (t) => {
  const { env, dom, driver, pid } = await twoCheckpointsThenRunning(t);
  await driver.close();
  process.kill(pid, 'SIGKILL');
  await waitFor(async () => !(await processAlive(pid)), 'QEMU to die');
  const second = await env.openDriver();
  await assertMarked(second, dom.uuid);
  await env.assertClean();
});
