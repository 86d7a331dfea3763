// What a domain leaves on disk when things go wrong: a QEMU whose status file
// was deleted is never orphaned by a start, and a transient domain (undefined
// while running) takes its checkpoint and backup metadata with it when it stops.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { VirError } from '../../src/errors.js';
import { DomainState } from '../../src/flags.js';
import { processAlive } from '../../src/qemu/process.js';
import { exists, killQemuFor, makeTestDomain, makeTestEnv, recordingLogger } from '../helpers/qemu-env.js';
import { waitJobCompleted } from './backup-util.js';

test('status file deleted while QEMU runs: start refuses (logged) and leaves that QEMU and its run dir alone', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const first = await env.openDriver();
  await first.domainDefineXML(dom.xml, 0);
  await first.domainCreate(dom.uuid, 0);
  const pid = (await first.domainGetInfo(dom.uuid)).id;
  await first.close();
  await rm(path.join(env.stateDir, 'status', `${dom.uuid}.json`));

  const { log, entries } = recordingLogger();
  const second = await env.openDriver({ log });
  assert.equal((await second.domainGetInfo(dom.uuid)).state, DomainState.SHUTOFF, 'no status: not known to run');
  const atOpen = entries.find((e) => e.level === 'error' && /running without a status file/.test(e.msg));
  assert.ok(atOpen, `open() logged the unmanaged QEMU: ${JSON.stringify(entries)}`);
  assert.deepEqual([atOpen.fields.uuid, atOpen.fields.pid], [dom.uuid, pid]);
  await assert.rejects(second.domainCreate(dom.uuid, 0), (e: unknown) => {
    assert.ok(e instanceof VirError, String(e));
    assert.equal(e.codeName, 'OPERATION_INVALID', e.message);
    assert.match(e.message, new RegExp(`domain '${dom.name}' already has a running QEMU \\(pid ${pid}\\) that has no status file`));
    return true;
  });
  assert.equal(await processAlive(pid), true, 'the running QEMU was not touched');
  const runDir = path.join(env.runDir, dom.uuid);
  assert.equal(await exists(path.join(runDir, 'qmp.sock')), true, 'its monitor socket is still there');
  assert.equal(await exists(path.join(runDir, 'qemu.pid')), true, 'its pid file is still there');
  const refused = entries.find((e) => e.level === 'error' && /refusing to start/.test(e.msg));
  assert.ok(refused, `an error was logged: ${JSON.stringify(entries)}`);
  assert.deepEqual([refused.fields.domain, refused.fields.uuid, refused.fields.pid], [dom.name, dom.uuid, pid]);

  // once that QEMU is gone, the domain starts normally over its stale run dir
  assert.deepEqual(await killQemuFor(env.dir), [pid]);
  await second.domainCreate(dom.uuid, 0);
  assert.equal((await second.domainGetInfo(dom.uuid)).state, DomainState.RUNNING);
  await second.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});

test('undefine while running, then destroy: the checkpoint and backup metadata go with the domain', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const { log, entries } = recordingLogger();
  const driver = await env.openDriver({ log });
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  await driver.checkpointCreateXML(dom.uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  const target = path.join(env.dir, 'full.qcow2');
  const id = await driver.backupBegin(dom.uuid,
    `<domainbackup><disks><disk name='sda' type='file'><target file='${target}'/></disk></disks></domainbackup>`, null, 0);
  await waitJobCompleted(env.events, dom.uuid, id);
  assert.equal(await driver.backupEnd(dom.uuid, id, 0), 1);
  const checkpointDir = path.join(env.stateDir, 'checkpoints', dom.uuid);
  const backupDir = path.join(env.stateDir, 'backups', dom.uuid);
  assert.equal(await exists(path.join(checkpointDir, 'c1.xml')), true);
  assert.equal(await exists(path.join(backupDir, 'meta.json')), true);

  await driver.domainUndefine(dom.uuid, 0);
  assert.equal(await exists(path.join(checkpointDir, 'c1.xml')), true, 'a running transient domain keeps its checkpoints');
  assert.deepEqual(await driver.listAllCheckpoints(dom.uuid, 0), ['c1']);
  await driver.domainDestroy(dom.uuid, 0);
  await assert.rejects(driver.domainLookupByUUID(dom.uuid), /Domain not found/);
  assert.equal(await exists(checkpointDir), false, 'checkpoints/<uuid>/ removed');
  assert.equal(await exists(backupDir), false, 'backups/<uuid>/ removed');
  assert.equal(await exists(target), true, 'the backup itself is the user\'s');
  const said = entries.filter((e) => e.fields.uuid === dom.uuid).map((e) => e.msg);
  for (const m of ['domain defined', 'domain started', 'domain undefined', 'domain stopped']) assert.ok(said.includes(m), `logged '${m}': ${said.join(', ')}`);
  await env.assertClean();
});
