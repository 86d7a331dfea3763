// Job ids are never reused, even when meta.json (which counts them) is lost
// while no driver runs: the running domain's status file keeps the last id,
// and a shut-off domain whose meta.json vanished continues above the seconds
// since 2020.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';
import { waitJobCompleted } from './backup-util.js';

test('job ids stay unique when meta.json is lost, running or shut off', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { sizeMiB: 16 });
  const meta = path.join(env.stateDir, 'backups', dom.uuid, 'meta.json');
  const push = async (driver: Awaited<ReturnType<typeof env.openDriver>>, name: string): Promise<number> => {
    const xml = `<domainbackup><disks><disk name='sda' type='file'><target file='${path.join(env.dir, name)}'/></disk></disks></domainbackup>`;
    const id = await driver.backupBegin(dom.uuid, xml, null, 0);
    await waitJobCompleted(env.events, dom.uuid, id);
    assert.equal(await driver.backupEnd(dom.uuid, id, 0), 1);
    return id;
  };

  let driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  assert.equal(await push(driver, 'b1.qcow2'), 1);
  assert.equal(await push(driver, 'b2.qcow2'), 2);

  // running: the status file remembers
  await driver.close();
  await rm(meta);
  driver = await env.openDriver();
  assert.equal(await push(driver, 'b3.qcow2'), 3);

  // shut off: only the folder is left to tell that ids were handed out
  await driver.domainDestroy(dom.uuid, 0);
  await driver.close();
  await rm(meta);
  const before = Math.floor((Date.now() - Date.UTC(2020, 0, 1)) / 1000);
  driver = await env.openDriver();
  await driver.domainCreate(dom.uuid, 0);
  const id = await push(driver, 'b4.qcow2');
  assert.ok(id > before && id < 0x7fffffff, `id ${id} is above every id handed out before`);
  assert.equal(await push(driver, 'b5.qcow2'), id + 1, 'and counting goes on from there');
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});
