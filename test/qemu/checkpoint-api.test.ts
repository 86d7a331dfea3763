// Checkpoints on real QEMU: bitmaps, sizes, the tree, delete flags, errors, persistence.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { VirError } from '../../src/errors.js';
import {
  CheckpointCreateFlags as Create,
  CheckpointDeleteFlags as Del,
  CheckpointListFlags as L,
  CheckpointXMLFlags as X,
  ListDomainsFlags,
  UndefineFlags,
} from '../../src/flags.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { connectLocal } from '../../src/sdk/connect.js';
import { QemuCheckpoints } from '../../src/qemu/checkpoints.js';
import { hmpWrite, makeTestDomain, makeTestEnv, type TestEnv } from '../helpers/qemu-env.js';

const run = promisify(execFile);
const MiB = 1 << 20;

function code(n: number, msg?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof VirError, `expected VirError, got ${String(e)}`);
    assert.equal(e.code, n, `code of: ${e.message}`);
    if (msg) assert.match(e.message, msg);
    return true;
  };
}

/** name -> [recording, persistent, inconsistent] of each bitmap on a disk's format node */
async function bitmapsOf(driver: QemuDriver, uuid: string, target: string): Promise<string[]> {
  const node = driver.diskNodes(uuid).find((d) => d.target === target)!.formatNode!;
  const out = JSON.parse(await driver.qemuMonitorCommand(uuid, JSON.stringify({ execute: 'query-named-block-nodes', arguments: { flat: true } }), 0));
  const n = (out.return as { 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[]).find((x) => x['node-name'] === node)!;
  return (n['dirty-bitmaps'] ?? []).map((b) => b.name).sort();
}

async function imageBitmaps(file: string): Promise<{ name: string; flags: string[] }[]> {
  const { stdout } = await run('qemu-img', ['info', '--output=json', file]);
  return (JSON.parse(stdout)['format-specific']?.data?.bitmaps ?? []) as { name: string; flags: string[] }[];
}

function sizes(xml: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of xml.matchAll(/<disk name='(\w+)' checkpoint='bitmap' bitmap='[^']+' size='(\d+)'\/>/g)) out[m[1]!] = Number(m[2]);
  return out;
}

async function setup(t: import('node:test').TestContext, disks = 2, opts: Parameters<TestEnv['openDriver']>[0] = {}) {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks, sizeMiB: 64 });
  const driver = await env.openDriver(opts);
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  return { env, dom, driver, uuid };
}

test('create c1, write 1 MiB, c2, write 3 MiB: SIZE, bitmaps in QEMU and in the image after a clean stop', async (t) => {
  const { env, dom, driver, uuid } = await setup(t, 2);
  assert.equal(await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0), 'c1');
  await hmpWrite(driver, uuid, 'sda', 0x11, 0, MiB);
  assert.equal(await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c2</name><description>second</description></domaincheckpoint>', 0), 'c2');
  await hmpWrite(driver, uuid, 'sda', 0x22, 16 * MiB, 3 * MiB);

  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), ['c1', 'c2']);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sdb'), ['c1', 'c2']);
  const x1 = await driver.checkpointGetXMLDesc(uuid, 'c1', X.SIZE | X.NO_DOMAIN);
  const x2 = await driver.checkpointGetXMLDesc(uuid, 'c2', X.SIZE | X.NO_DOMAIN);
  assert.deepEqual(sizes(x1), { sda: 4 * MiB, sdb: 0 });
  assert.deepEqual(sizes(x2), { sda: 3 * MiB, sdb: 0 });
  assert.match(x2, /<parent>\s*<name>c1<\/name>\s*<\/parent>/);
  assert.match(x2, /<description>second<\/description>/);
  // the temporary size bitmap is always gone again
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), ['c1', 'c2']);
  // without SIZE: no size attribute; with the domain embedded by default
  const plain = await driver.checkpointGetXMLDesc(uuid, 'c2', 0);
  assert.doesNotMatch(plain, /size=/);
  assert.match(plain, /<domain type='qemu'>/);
  assert.match(plain, /<disk name='sda' checkpoint='bitmap' bitmap='c2'\/>/);

  await driver.domainDestroy(uuid, 0);
  for (const d of dom.disks) {
    const bm = await imageBitmaps(d.path);
    assert.deepEqual(bm.map((b) => b.name).sort(), ['c1', 'c2']);
    for (const b of bm) assert.deepEqual(b.flags, ['auto'], `${d.target}/${b.name} persistent and recording, not in-use`);
  }
  // SIZE needs a running domain
  await assert.rejects(driver.checkpointGetXMLDesc(uuid, 'c1', X.SIZE), code(55, /not running/));
  await env.assertClean();
});

test('tree: chain, branch after a metadata-only delete, parents, children, lookups, domain list filters', async (t) => {
  const { env, driver, uuid } = await setup(t, 1);
  for (const n of ['a', 'b', 'c']) {
    await driver.checkpointCreateXML(uuid, `<domaincheckpoint><name>${n}</name></domaincheckpoint>`, 0);
  }
  assert.deepEqual(await driver.listAllCheckpoints(uuid, L.TOPOLOGICAL), ['a', 'b', 'c']);
  assert.equal(await driver.checkpointGetParent(uuid, 'c', 0), 'b');
  await assert.rejects(driver.checkpointGetParent(uuid, 'a', 0), code(103, /does not have a parent/));
  // metadata-only delete of c: the bitmap stays, b becomes current, d branches off b
  await driver.checkpointDelete(uuid, 'c', Del.METADATA_ONLY);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), ['a', 'b', 'c']);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>d</name></domaincheckpoint>', 0);
  assert.equal(await driver.checkpointGetParent(uuid, 'd', 0), 'b');
  // the orphaned bitmap 'c' is reported, not deleted
  assert.deepEqual(await driver.listUnknownBitmaps(uuid), [{ disk: 'sda', bitmap: 'c' }]);
  // ... and adopted again with REDEFINE as a branch under b
  const now = Math.floor(Date.now() / 1000) + 100; // newer than d
  await driver.checkpointCreateXML(uuid,
    `<domaincheckpoint><name>c</name><parent><name>b</name></parent><creationTime>${now}</creationTime></domaincheckpoint>`,
    Create.REDEFINE | Create.REDEFINE_VALIDATE);
  assert.deepEqual(await driver.listUnknownBitmaps(uuid), []);
  assert.deepEqual(await driver.checkpointListAllChildren(uuid, 'b', 0), ['d', 'c']);
  assert.deepEqual(await driver.checkpointListAllChildren(uuid, 'a', L.DESCENDANTS | L.TOPOLOGICAL), ['b', 'd', 'c']);
  assert.deepEqual(await driver.listAllCheckpoints(uuid, L.LEAVES), ['d', 'c']);
  assert.deepEqual(await driver.listAllCheckpoints(uuid, L.ROOTS), ['a']);
  assert.equal(await driver.checkpointLookupByName(uuid, 'd', 0), 'd');
  await assert.rejects(driver.checkpointLookupByName(uuid, 'zz', 0), code(103, /no domain checkpoint with matching name 'zz'/));
  await assert.rejects(driver.listAllCheckpoints(uuid, 0x10), code(8, /unsupported flags \(0x10\)/));

  const withCp = await driver.listAllDomains(ListDomainsFlags.HAS_CHECKPOINT);
  assert.deepEqual(withCp.map((d) => d.uuid), [uuid]);
  assert.deepEqual(await driver.listAllDomains(ListDomainsFlags.NO_CHECKPOINT), []);

  // restart the driver: the same tree, the same current checkpoint
  await driver.close();
  const d2 = await env.openDriver();
  assert.deepEqual(await d2.listAllCheckpoints(uuid, L.TOPOLOGICAL), ['a', 'b', 'd', 'c']);
  assert.equal(await d2.checkpointGetParent(uuid, 'c', 0), 'b');
  await d2.checkpointCreateXML(uuid, '<domaincheckpoint><name>e</name></domaincheckpoint>', 0);
  // redefining c under b (not under the current d) left d current, as in libvirt
  assert.equal(await d2.checkpointGetParent(uuid, 'e', 0), 'd');

  // undefine refuses an inactive domain with checkpoints unless CHECKPOINTS_METADATA
  await d2.domainDestroy(uuid, 0);
  await assert.rejects(d2.domainUndefine(uuid, 0), code(55, /cannot delete inactive domain with 5 checkpoints/));
  await d2.domainUndefine(uuid, UndefineFlags.CHECKPOINTS_METADATA);
  assert.deepEqual(await readdir(path.join(env.stateDir, 'checkpoints')).catch(() => []), []);
  await env.assertClean();
});

test('delete flags leave exactly the expected bitmaps and metadata files', async (t) => {
  const { env, driver, uuid } = await setup(t, 2);
  // a ─ b ─┬─ c
  //        └─ d   (d made after a metadata-only re-parenting trick: create c, then redefine d under b)
  for (const n of ['a', 'b', 'c']) await driver.checkpointCreateXML(uuid, `<domaincheckpoint><name>${n}</name></domaincheckpoint>`, 0);
  const cpDir = path.join(env.stateDir, 'checkpoints', uuid);
  const files = async () => (await readdir(cpDir)).filter((f) => f.endsWith('.xml')).sort();

  // plain delete of b: bitmap b removed from both disks, c re-parented to a
  await driver.checkpointDelete(uuid, 'b', 0);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), ['a', 'c']);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sdb'), ['a', 'c']);
  assert.equal(await driver.checkpointGetParent(uuid, 'c', 0), 'a');
  assert.match(await driver.checkpointGetXMLDesc(uuid, 'c', X.NO_DOMAIN), /<parent>\s*<name>a<\/name>/);
  assert.deepEqual(await files(), ['a.xml', 'c.xml']);

  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>d</name></domaincheckpoint>', 0);
  // CHILDREN_ONLY on a: c and d go, a stays and is current
  await driver.checkpointDelete(uuid, 'a', Del.CHILDREN_ONLY);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), ['a']);
  assert.deepEqual(await files(), ['a.xml']);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>e</name></domaincheckpoint>', 0);
  assert.equal(await driver.checkpointGetParent(uuid, 'e', 0), 'a');
  // CHILDREN on a: everything
  await driver.checkpointDelete(uuid, 'a', Del.CHILDREN);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), []);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sdb'), []);
  assert.deepEqual(await files(), []);
  await assert.rejects(driver.checkpointDelete(uuid, 'a', 0), code(103));
  await assert.rejects(driver.checkpointDelete(uuid, 'a', Del.CHILDREN | Del.CHILDREN_ONLY), code(8));
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('errors: inactive domain, bad XML, wrong bitmap, duplicates, raw disk; a failed create leaves no bitmap', async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, { disks: 1 });
  const rawPath = path.join(env.dir, 'raw.img');
  await run('qemu-img', ['create', '-q', '-f', 'raw', rawPath, '16M']);
  const xml = dom.xml.replace('</devices>',
    `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${rawPath}'/><target dev='sdb' bus='scsi'/></disk></devices>`);
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(xml, 0);
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint/>', 0), code(84, /cannot create checkpoint for inactive domain/));
  await driver.domainCreate(uuid, 0);
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>../x</name></domaincheckpoint>', 0), code(92));
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint><oops/></domaincheckpoint>', 0), code(92));
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint', 0), code(27));
  // the raw disk takes part by default -> unsupported, and nothing was created on sda
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>r</name></domaincheckpoint>', 0),
    code(67, /checkpoint for disk sdb unsupported for storage type raw/));
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), []);
  const onlySda = "<domaincheckpoint><name>c1</name><disks><disk name='sda'/></disks></domaincheckpoint>";
  await assert.rejects(driver.checkpointCreateXML(uuid,
    "<domaincheckpoint><name>c1</name><disks><disk name='sda' bitmap='other'/></disks></domaincheckpoint>", 0),
  code(67, /bitmap for disk 'sda' must match checkpoint name 'c1'/));
  await assert.rejects(driver.checkpointCreateXML(uuid,
    "<domaincheckpoint><disks><disk name='sdz'/></disks></domaincheckpoint>", 0), code(67, /no disk named 'sdz'/));
  assert.equal(await driver.checkpointCreateXML(uuid, onlySda, 0), 'c1');
  await assert.rejects(driver.checkpointCreateXML(uuid, onlySda, 0), code(55, /already exists/));
  // a bitmap QEMU refuses (it exists already, unknown to us) -> transaction fails atomically
  const node = driver.diskNodes(uuid).find((d) => d.target === 'sda')!.formatNode!;
  await driver.qemuMonitorCommand(uuid, JSON.stringify({ execute: 'block-dirty-bitmap-add', arguments: { node, name: 'stray', persistent: true } }), 0);
  await assert.rejects(driver.checkpointCreateXML(uuid, "<domaincheckpoint><name>stray</name><disks><disk name='sda'/></disks></domaincheckpoint>", 0), code(1));
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1']);
  // redefine errors
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint><creationTime>1</creationTime></domaincheckpoint>', Create.REDEFINE), code(27, /must have a name/));
  await assert.rejects(driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>q</name></domaincheckpoint>', Create.REDEFINE), code(1, /missing creationTime/));
  await assert.rejects(driver.checkpointCreateXML(uuid,
    '<domaincheckpoint><name>q</name><parent><name>nope</name></parent><creationTime>5</creationTime></domaincheckpoint>', Create.REDEFINE),
  code(8, /parent nope for checkpoint q not found/));
  await assert.rejects(driver.checkpointCreateXML(uuid,
    "<domaincheckpoint><name>q</name><creationTime>5</creationTime><disks><disk name='sda'/></disks></domaincheckpoint>",
    Create.REDEFINE | Create.REDEFINE_VALIDATE), code(109, /missing or broken bitmap 'q' for disk 'sda'/));
  await assert.rejects(driver.checkpointCreateXML(uuid,
    "<domaincheckpoint><name>q</name><creationTime>5</creationTime><domain type='qemu'><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid></domain></domaincheckpoint>",
    Create.REDEFINE), code(8, /must use uuid/));
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1']);
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('read-only connections may list and look but never create or delete checkpoints', async (t) => {
  const { env, driver, uuid } = await setup(t, 1);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  const ro = connectLocal(driver, { readOnly: true });
  const dom = await ro.lookupByUUID(uuid);
  assert.deepEqual((await dom.listAllCheckpoints()).map((c) => c.getName()), ['c1']);
  const cp = await dom.checkpointLookupByName('c1');
  assert.match(await cp.getXMLDesc(), /<name>c1<\/name>/);
  await assert.rejects(dom.checkpointCreateXML('<domaincheckpoint><name>c2</name></domaincheckpoint>'), code(29));
  await assert.rejects(cp.delete(), code(29));
  await assert.rejects(cp.getXMLDesc(X.SECURE), code(29));
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), ['c1']);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), ['c1']);
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});

test('QEMU killed: old checkpoints become inconsistent, are refused as a base, and can be deleted', async (t) => {
  let cps = null as QemuCheckpoints | null;
  const { env, dom, driver, uuid } = await setup(t, 1, { checkpoints: (host) => (cps = new QemuCheckpoints(host)) });
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  await driver.domainDestroy(uuid, 0); // clean stop: c1 stored in the image
  await driver.domainCreate(uuid, 0);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0);
  await hmpWrite(driver, uuid, 'sda', 0x33, 0, 65536);
  const pid = (await driver.domainGetInfo(uuid)).id;
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 200 && (await driver.domainGetInfo(uuid)).id !== -1; i++) await new Promise((r) => setTimeout(r, 25));
  await driver.domainCreate(uuid, 0);

  // c1 was in the image but not stored cleanly -> in-use/inconsistent; c2 never reached the image -> missing
  const x1 = await driver.checkpointGetXMLDesc(uuid, 'c1', X.NO_DOMAIN);
  const x2 = await driver.checkpointGetXMLDesc(uuid, 'c2', X.NO_DOMAIN);
  assert.match(x1, /<inconsistent reason='disk sda, bitmap c1: bitmap inconsistent \(not stored cleanly/);
  assert.match(x2, /<inconsistent reason='disk sda, bitmap c2: bitmap missing'/);
  assert.ok(cps);
  await assert.rejects(cps.ensureUsable(driver.getDomain(uuid), 'c1', 'sda'), code(109, /missing or broken bitmap 'c1' for disk 'sda'/));
  await assert.rejects(cps.ensureUsable(driver.getDomain(uuid), 'c2', 'sda'), code(109, /missing or broken bitmap 'c2' for disk 'sda'/));
  // SIZE gives no size for broken disks
  assert.deepEqual(sizes(await driver.checkpointGetXMLDesc(uuid, 'c1', X.SIZE)), {});
  // an incremental backup from them is refused with 109 and creates nothing; a full backup still works
  const filesBefore = (await readdir(env.dir)).sort();
  await assert.rejects(driver.backupBegin(uuid, '<domainbackup><incremental>c1</incremental></domainbackup>', null, 0),
    code(109, /missing or broken bitmap 'c1' for disk 'sda'/));
  assert.deepEqual((await readdir(env.dir)).sort(), filesBefore);
  const target = path.join(env.dir, 'full-after-crash.qcow2');
  // (the 0x33 write before the kill was never flushed by a guest: QEMU may have lost its qcow2 metadata)
  await hmpWrite(driver, uuid, 'sda', 0x44, 0, 65536);
  const job = await driver.backupBegin(uuid,
    `<domainbackup><disks><disk name='sda' type='file'><target file='${target}'/></disk></disks></domainbackup>`, null, 0);
  for (let i = 0; i < 400 && (await driver.getJobStats(uuid, 0)).type === 2; i++) await new Promise((r) => setTimeout(r, 25));
  assert.equal(await driver.backupEnd(uuid, job, 0), 1);
  const { stdout: readBack } = await run('qemu-io', ['-r', '-c', 'read -P 0x44 0 65536', target]).catch((e: { stdout: string; stderr: string }) => { throw new Error(e.stdout + e.stderr); });
  assert.doesNotMatch(readBack, /verification failed/);
  // delete cleans the image: the broken c1 bitmap is removed, the missing c2 is tolerated
  await driver.checkpointDelete(uuid, 'c1', Del.CHILDREN);
  assert.deepEqual(await driver.listAllCheckpoints(uuid, 0), []);
  assert.deepEqual(await bitmapsOf(driver, uuid, 'sda'), []);
  // new checkpoints work again
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c3</name></domaincheckpoint>', 0);
  await driver.domainDestroy(uuid, 0);
  assert.deepEqual((await imageBitmaps(dom.disks[0]!.path)).map((b) => [b.name, b.flags]), [['c3', ['auto']]]);
  await env.assertClean();
});

test('inconsistency is detected at driver start for a shut-off domain (qemu-img on the image)', async (t) => {
  const { env, dom, driver, uuid } = await setup(t, 1);
  await driver.checkpointCreateXML(uuid, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  await driver.domainDestroy(uuid, 0);
  await driver.close();
  // someone removes the bitmap behind our back
  await run('qemu-img', ['bitmap', '--remove', dom.disks[0]!.path, 'c1']);
  const d2 = await env.openDriver();
  assert.match(await d2.checkpointGetXMLDesc(uuid, 'c1', X.NO_DOMAIN), /<inconsistent reason='disk sda, bitmap c1: bitmap missing'\/>/);
  // metadata-only delete works on an inactive domain; a bitmap-removing delete does not
  await assert.rejects(d2.checkpointDelete(uuid, 'c1', 0), code(84, /cannot delete checkpoint for inactive domain/));
  await d2.checkpointDelete(uuid, 'c1', Del.METADATA_ONLY);
  assert.deepEqual(await d2.listAllCheckpoints(uuid, 0), []);
  await env.assertClean();
});
