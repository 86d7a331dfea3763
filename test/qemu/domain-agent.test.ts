// domainFSFreeze / domainFSThaw through the guest agent of a real (tiny) Linux
// guest that formats and mounts its blank scsi disk, then runs qemu-ga.

import assert from 'node:assert/strict';
import test from 'node:test';
import { DomainState, ShutoffReason } from '../../src/flags.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';

test('fsfreeze and fsthaw through the guest agent', { timeout: 300_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, {
    disks: 1,
    sizeMiB: 64,
    agent: true,
    osXml: tinyGuestOsXml(guest),
    domainXml: '  <on_reboot>destroy</on_reboot>\n',
  });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await waitForAgent(driver, dom.uuid);
  const status = () => driver.withAgent(dom.uuid, (a) => a.fsfreezeStatus());
  try {
    assert.equal(await status(), 'thawed');
    assert.equal(await driver.domainFSFreeze(dom.uuid, [], 0), 1, 'one file system: the data disk at /mnt/sda');
    assert.equal(await status(), 'frozen');
    assert.equal(await driver.domainFSThaw(dom.uuid, [], 0), 1);
    assert.equal(await status(), 'thawed');
    assert.equal(await driver.domainFSFreeze(dom.uuid, ['/mnt/sda'], 0), 1);
    assert.equal(await status(), 'frozen');
  } finally {
    await driver.domainFSThaw(dom.uuid, [], 0).catch(() => {});
  }
  assert.equal(await status(), 'thawed');

  // A guest that powers itself off: QEMU exits, the domain is shut off with reason SHUTDOWN.
  await driver.withAgent(dom.uuid, (a) => a.execute('guest-shutdown', undefined, { timeoutMs: 2000 })).catch(() => {});
  await waitFor(() => env.events.some((e) => e.type === 'lifecycle' && e.event === 'stopped'), 'the stopped event', 30_000);
  const last = env.events.at(-1);
  assert.deepEqual(last?.type === 'lifecycle' && [last.event, last.detail], ['stopped', 'shutdown']);
  const info = await driver.domainGetInfo(dom.uuid);
  assert.equal(info.state, DomainState.SHUTOFF);
  assert.equal(info.reason, ShutoffReason.SHUTDOWN);
  await env.assertClean();
});
