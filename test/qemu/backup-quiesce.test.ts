// QUIESCE: the guest's file systems are frozen through the agent for the
// transaction and always thawed; the backup of the mounted file system is
// taken and completes.

import assert from 'node:assert/strict';
import test from 'node:test';
import { BackupBeginFlags } from '../../src/flags.js';
import { makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';
import { run, waitJobCompleted } from './backup-util.js';

test('backupBegin with QUIESCE freezes and thaws the guest around the transaction', { timeout: 300_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 64, agent: true, osXml: tinyGuestOsXml(guest), domainXml: '  <on_reboot>destroy</on_reboot>\n' });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await waitForAgent(driver, dom.uuid);
  // record the agent's commands: freeze must come before thaw, both once
  const seen: string[] = [];
  const orig = driver.withAgent.bind(driver);
  driver.withAgent = (uuid, fn, opts) => orig(uuid, (a) => {
    const exec = a.fsfreezeFreeze.bind(a);
    const thaw = a.fsfreezeThaw.bind(a);
    a.fsfreezeFreeze = async (...args) => { seen.push('freeze'); return exec(...args); };
    a.fsfreezeThaw = async () => { seen.push('thaw'); return thaw(); };
    return fn(a);
  }, opts);
  const id = await driver.backupBegin(dom.uuid, null, '<domaincheckpoint><name>q1</name></domaincheckpoint>', BackupBeginFlags.QUIESCE);
  assert.deepEqual(seen, ['freeze', 'thaw']);
  assert.equal(await orig(dom.uuid, (a) => a.fsfreezeStatus()), 'thawed');
  assert.equal((await waitJobCompleted(env.events, dom.uuid, id)).stats.success, true);
  assert.equal(await driver.backupEnd(dom.uuid, id, 0), 1);
  await driver.domainDestroy(dom.uuid, 0);
  // the target is a sound qcow2 image
  const { stdout } = await run('qemu-img', ['check', `${dom.disks[0]!.path}.q1`]);
  assert.match(stdout, /No errors were found/);
  await env.assertClean();
});
