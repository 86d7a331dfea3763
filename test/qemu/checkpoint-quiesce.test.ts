// QUIESCE on a real (tiny) Linux guest: the guest's file systems are frozen
// around the bitmap creation and always thawed; no agent -> ARGUMENT_UNSUPPORTED (74, as libvirt's qemuDomainAgentAvailable).

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { VirError } from '../../src/errors.js';
import { CheckpointCreateFlags as Create } from '../../src/flags.js';
import { makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';

test('checkpoint QUIESCE freezes and thaws the guest; without an agent channel it is refused', { timeout: 300_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, {
    disks: 1, sizeMiB: 64, agent: true, osXml: tinyGuestOsXml(guest), domainXml: '  <on_reboot>destroy</on_reboot>\n',
  });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await waitForAgent(driver, dom.uuid);
  const consoleLog = path.join(driver.domainRunDir(dom.uuid), 'console.log');
  const hookLines = async () => (await readFile(consoleLog, 'utf8')).split(/\r?\n/).filter((l) => /fsfreeze-hook \S+ (freeze|thaw)/.test(l));
  assert.deepEqual(await hookLines(), []);

  assert.equal(await driver.checkpointCreateXML(dom.uuid, '<domaincheckpoint><name>q1</name></domaincheckpoint>', Create.QUIESCE), 'q1');
  const lines = await hookLines();
  assert.equal(lines.length, 2, lines.join('\n'));
  assert.match(lines[0]!, /freeze$/);
  assert.match(lines[1]!, /thaw$/);
  assert.equal(await driver.withAgent(dom.uuid, (a) => a.fsfreezeStatus()), 'thawed');

  // A failing transaction inside the freeze still thaws: q1 exists already in QEMU.
  await driver.checkpointDelete(dom.uuid, 'q1', 2 /* METADATA_ONLY */);
  await assert.rejects(driver.checkpointCreateXML(dom.uuid, '<domaincheckpoint><name>q1</name></domaincheckpoint>', Create.QUIESCE),
    (e: unknown) => e instanceof VirError && e.code === 1);
  assert.equal(await driver.withAgent(dom.uuid, (a) => a.fsfreezeStatus()), 'thawed');
  assert.equal((await hookLines()).length, 4);
  await driver.domainDestroy(dom.uuid, 0);

  // no agent channel: refused before anything is created
  const plain = await makeTestDomain(env.dir, { disks: 1 });
  await driver.domainDefineXML(plain.xml, 0);
  await driver.domainCreate(plain.uuid, 0);
  await assert.rejects(driver.checkpointCreateXML(plain.uuid, '<domaincheckpoint><name>q</name></domaincheckpoint>', Create.QUIESCE),
    (e: unknown) => e instanceof VirError && e.code === 74 && /guest agent is not configured/.test(e.message));
  assert.deepEqual(await driver.listAllCheckpoints(plain.uuid, 0), []);
  await driver.domainDestroy(plain.uuid, 0);
  await env.assertClean();
});
