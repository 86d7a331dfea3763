// The driver's files: directory defaults, atomic writes, and what a new
// driver rebuilds from them (a running transient domain included).

import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { DomainState, ListDomainsFlags } from '../../src/flags.js';
import { resolveDirs, writeFileAtomic } from '../../src/qemu/state.js';
import { isVirError } from '../../src/errors.js';
import { makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';

test('resolveDirs: options, then env, then per-user defaults', () => {
  const root = process.getuid?.() === 0;
  assert.deepEqual(resolveDirs({ stateDir: '/a', runDir: '/b' }, { VIRTBACK_STATE_DIR: '/x', VIRTBACK_RUN_DIR: '/y' }),
    { stateDir: '/a', runDir: '/b' });
  assert.deepEqual(resolveDirs({}, { VIRTBACK_STATE_DIR: '/x', VIRTBACK_RUN_DIR: '/y' }), { stateDir: '/x', runDir: '/y' });
  const d = resolveDirs({}, { XDG_STATE_HOME: '/home/u/.st', XDG_RUNTIME_DIR: '/run/user/1000' });
  if (root) {
    assert.deepEqual(d, { stateDir: '/var/lib/virtback', runDir: '/run/virtback' });
  } else {
    assert.deepEqual(d, { stateDir: '/home/u/.st/virtback', runDir: '/run/user/1000/virtback' });
  }
  assert.equal(path.isAbsolute(resolveDirs({ stateDir: 'rel' }).stateDir), true);
});

test('writeFileAtomic replaces the content and leaves no temp file; failure is SYSTEM_ERROR', async (t) => {
  const env = await makeTestEnv(t);
  const f = path.join(env.dir, 'x.json');
  await writeFileAtomic(f, 'one');
  await writeFileAtomic(f, 'two');
  assert.equal(await readFile(f, 'utf8'), 'two');
  assert.deepEqual(await readdir(env.dir), ['x.json']);
  await assert.rejects(writeFileAtomic(path.join(env.dir, 'missing', 'y'), 'z'), (e) => isVirError(e, 'SYSTEM_ERROR'));
});

test('a running domain undefined (transient) is found again by a new driver, and goes away when stopped', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const first = await env.openDriver();
  await first.domainDefineXML(dom.xml, 0);
  await first.domainCreate(dom.uuid, 0);
  await first.domainUndefine(dom.uuid, 0);
  await first.close();

  const second = await env.openDriver();
  const [info] = await second.listAllDomains(ListDomainsFlags.TRANSIENT);
  assert.equal(info?.uuid, dom.uuid);
  assert.equal(info?.state, DomainState.RUNNING);
  // defining it again makes it persistent again, also across drivers
  await second.domainDefineXML(dom.xml, 0);
  await second.close();
  const third = await env.openDriver();
  assert.equal((await third.domainGetInfo(dom.uuid)).persistent, true);
  await third.domainUndefine(dom.uuid, 0);
  await third.domainDestroy(dom.uuid, 0);
  assert.deepEqual(await third.listAllDomains(0), []);
  await env.assertClean();
  assert.deepEqual(await readdir(path.join(env.stateDir, 'domains')), []);
});
