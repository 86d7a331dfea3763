// The wire protocol's limits hold at the point of entry, through virtbackd
// serving the real QEMU driver: an over-long domain name or a checkpoint
// description too big for a reply is refused with XML_ERROR, nothing is
// stored, and listing, dumpxml and undefine keep working for every client.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { connect } from '../../src/sdk/connect.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { startCliDaemon } from '../helpers/cli.js';
import { makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(path.relative(dir, path.join(e.parentPath, e.name)));
  return out.filter((f) => !/\.(lock|pid|log)$/.test(f)).sort();
}

async function cliOnQemu(t: TestContext) {
  const env = await makeTestEnv();
  const cli = await startCliDaemon<QemuDriver>(t, {
    dir: env.dir,
    openDriver: async (dirs) => (await import('../../src/qemu/driver.js')).QemuDriver.open(dirs),
  });
  t.after(async () => {
    await cli.daemon.stop();
    await env.cleanup();
  });
  return { env, cli };
}

const refused = (domain: number, re: RegExp) => (e: unknown) => {
  assert.ok(e instanceof VirError, String(e));
  assert.equal(e.code, ErrorCode.XML_ERROR, e.message);
  assert.equal(e.domain, domain);
  assert.match(e.message, re);
  return true;
};

test('over-long definitions are refused at define and checkpoint-create; nothing is stored; listing works', { timeout: 90_000 }, async (t) => {
  const { env, cli } = await cliOnQemu(t);
  const dom = await makeTestDomain(env.dir, { name: 'lim-vm' });
  const conn = await connect(cli.uri);
  const ro = await connect(`${cli.uri}&readonly`);
  t.after(async () => {
    await conn.close();
    await ro.close();
  });
  const stored = await filesUnder(env.stateDir);

  const long = dom.xml.replace('<name>lim-vm</name>', `<name>${'x'.repeat(300)}</name>`);
  assert.notEqual(long, dom.xml);
  await assert.rejects(conn.defineXML(long), refused(20, /^domain name 'x{40}\.\.\.' is too long: 300 characters, at most 256$/));
  const file = path.join(env.dir, 'long.xml');
  await writeFile(file, long);
  const r = await cli.run('define', file);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^error: domain name 'x{40}\.\.\.' is too long: 300 characters, at most 256\n$/);
  assert.deepEqual(await filesUnder(env.stateDir), stored, 'nothing stored');
  assert.deepEqual(await conn.listAllDomains(), []);
  assert.deepEqual(await ro.listAllDomains(), []);
  assert.equal((await cli.run('list', '--all')).code, 0);

  // a checkpoint whose description would not fit in a reply together with its domain
  const vm = await conn.defineXML(dom.xml);
  await vm.create();
  const before = await filesUnder(env.stateDir);
  const big = `<domaincheckpoint><name>big</name><description>${'d'.repeat(900 * 1024)}</description></domaincheckpoint>`;
  await assert.rejects(vm.checkpointCreateXML(big), refused(69, /^checkpoint 'big' \(its name, description and disks\) is too long: \d+ characters of XML, at most 458752$/));
  await assert.rejects(vm.checkpointCreateXML(`<domaincheckpoint><name>${'c'.repeat(257)}</name></domaincheckpoint>`), refused(69, /checkpoint name 'c{40}\.\.\.' is too long/));
  assert.deepEqual(await filesUnder(env.stateDir), before, 'no checkpoint stored');
  assert.deepEqual(await vm.listAllCheckpoints(), []);

  // the largest accepted description: dumpxml with the domain works, and it can be deleted
  await vm.checkpointCreateXML(`<domaincheckpoint><name>ok</name><description>${'d'.repeat(400 * 1024)}</description></domaincheckpoint>`);
  const dump = await cli.runRO('checkpoint-dumpxml', 'lim-vm', 'ok');
  assert.equal(dump.code, 0, dump.stderr);
  assert.match(dump.stdout, /<domain type='(kvm|qemu)'>/);
  assert.equal((await cli.run('checkpoint-list', 'lim-vm', '--name')).stdout, 'ok\n');
  assert.equal((await cli.run('checkpoint-delete', 'lim-vm', 'ok')).code, 0);
  assert.equal((await cli.run('destroy', 'lim-vm')).code, 0);
  assert.equal((await cli.run('undefine', 'lim-vm')).code, 0);
  assert.deepEqual(await conn.listAllDomains(), []);
});
