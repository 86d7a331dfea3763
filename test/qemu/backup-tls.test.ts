// Pull backups over TLS on real QEMU (qemu.conf backup_tls_x509_*): the export
// of <server tls='yes'> is read with nbdcopy over nbds:// with a client
// certificate and equals the disk at the backup's instant; plain NBD and a
// client without a certificate are refused; the tls-creds-x509 object is gone
// after the job ends, also after a driver restart; without the directory the
// job is refused as libvirt refuses it, and unusable credentials leave nothing.

import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { exists, makeTestDomain, makeTestEnv } from '../helpers/qemu-env.js';
import { makeCerts } from '../helpers/tls-certs.js';
import { assertSameContent, DiskModel, MiB, qemuState, qmp, run, waitJobCompleted, write } from './backup-util.js';

const SIZE = 64 * MiB;

async function objects(driver: QemuDriver, uuid: string): Promise<string[]> {
  const list = (await qmp(driver, uuid, 'qom-list', { path: '/objects' })) as { name: string }[];
  return list.map((o) => o.name).filter((n) => n.startsWith('virtback-')).sort();
}

const PULL_TLS = "<domainbackup mode='pull'><server name='localhost' tls='yes'/></domainbackup>";

function portOf(xml: string): number {
  const port = Number(/port=.(\d+)./.exec(xml)?.[1]);
  assert.ok(port > 0, xml);
  return port;
}

/** nbdinfo's exit status: does the server let this client in? */
async function connects(uri: string): Promise<boolean> {
  return run('nbdinfo', ['--size', uri]).then(() => true, () => false);
}

test("pull with <server tls='yes'>: nbds:// with a client certificate reads the disk; plain NBD refused; object deleted on end and after a driver restart", async (t) => {
  const env = await makeTestEnv(t);
  const certs = await makeCerts(path.join(env.dir, 'pki'));
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 64 });

  // ---- no directory configured: libvirt's refusal, nothing created
  const plain = await env.openDriver();
  const { uuid } = await plain.domainDefineXML(dom.xml, 0);
  await plain.domainCreate(uuid, 0);
  const disk = dom.disks[0]!;
  const m = new DiskModel(disk.target, SIZE);
  for (let i = 0; i < 6; i++) await write(plain, uuid, m, i * 8 * MiB + 4096, MiB, 0x41 + i);
  const before = await qemuState(plain, uuid);
  const files = async (): Promise<string[]> => (await readdir(path.dirname(disk.path))).sort();
  const filesBefore = await files();
  await assert.rejects(plain.backupBegin(uuid, PULL_TLS, null, 0), { code: 55, message: /backup TLS directory not configured/ });
  assert.deepEqual(await qemuState(plain, uuid), before);
  assert.deepEqual(await files(), filesBefore);
  await plain.close();

  // ---- a directory without credentials: QEMU refuses the object, everything is undone
  const bad = await env.openDriver({ backupTlsX509CertDir: certs.empty });
  await assert.rejects(bad.backupBegin(uuid, PULL_TLS, null, 0), { code: 1, message: /object-add.*ca-cert\.pem/ });
  assert.deepEqual(await qemuState(bad, uuid), before);
  assert.deepEqual(await objects(bad, uuid), []);
  assert.deepEqual(await bad.listJobIds(uuid), []);
  assert.deepEqual(await files(), filesBefore, 'scratch file removed');
  await bad.close();

  // ---- configured: read over TLS with a client certificate
  const driver = await env.openDriver({ backupTlsX509CertDir: certs.server });
  const expected = m.snapshot();
  const id1 = await driver.backupBegin(uuid, PULL_TLS, null, 0);
  const xml1 = await driver.backupGetXMLDesc(uuid, id1, 0);
  assert.match(xml1, /<server transport=.tcp. tls=.yes. name=.localhost. port=.\d+.\/>/);
  const port1 = portOf(xml1);
  assert.deepEqual(await objects(driver, uuid), [`virtback-backup-tls-${id1}`]);
  // written after the backup's instant: must not be in the export
  await write(driver, uuid, m, 4096, MiB, 0xee);
  const out = path.join(env.dir, 'out.raw');
  await run('nbdcopy', [`nbds://localhost:${port1}/sda?tls-certificates=${certs.client}`, out]);
  await assertSameContent(expected, out, path.join(env.dir, 'expected.raw'));
  assert.equal(await connects(`nbd://localhost:${port1}/sda`), false, 'plain NBD client refused');
  assert.equal(await connects(`nbds://localhost:${port1}/sda?tls-certificates=${certs.caOnly}`), false, 'client without certificate refused (verify)');
  assert.equal(await connects(`nbds://127.0.0.1:${port1}/sda?tls-certificates=${certs.client}`), true, 'the same client by IP address');

  assert.equal(await driver.backupEnd(uuid, id1, 0), 1);
  assert.equal((await waitJobCompleted(env.events, uuid, id1)).stats.success, true);
  assert.deepEqual(await objects(driver, uuid), [], 'tls object deleted');
  assert.deepEqual(await qemuState(driver, uuid), before);
  assert.equal(await connects(`nbds://localhost:${port1}/sda?tls-certificates=${certs.client}`), false, 'server stopped');

  // ---- a TLS job survives a driver restart and is cleaned up by the new driver
  const id2 = await driver.backupBegin(uuid, PULL_TLS, null, 0);
  const port2 = portOf(await driver.backupGetXMLDesc(uuid, id2, 0));
  await driver.close();
  const again = await env.openDriver({ backupTlsX509CertDir: certs.server, backupTlsX509Verify: false });
  assert.deepEqual(await again.listJobIds(uuid), [id2]);
  assert.deepEqual(await objects(again, uuid), [`virtback-backup-tls-${id2}`]);
  assert.equal(await connects(`nbds://localhost:${port2}/sda?tls-certificates=${certs.client}`), true);
  assert.equal(await again.backupEnd(uuid, id2, 0), 1);
  assert.deepEqual(await objects(again, uuid), [], 'tls object deleted after the restart');
  assert.deepEqual(await qemuState(again, uuid), before);

  // ---- backupTlsX509Verify false: a client with only the CA gets in; abortJob ends it
  const id3 = await again.backupBegin(uuid, PULL_TLS, null, 0);
  const port3 = portOf(await again.backupGetXMLDesc(uuid, id3, 0));
  assert.equal(await connects(`nbds://localhost:${port3}/sda?tls-certificates=${certs.caOnly}`), true, 'no client certificate needed');
  assert.equal(await connects(`nbd://localhost:${port3}/sda`), false);
  await again.abortJob(uuid, 0);
  assert.deepEqual(await objects(again, uuid), []);
  assert.deepEqual(await qemuState(again, uuid), before);

  // ---- QEMU dies during a TLS job: the job fails and its files go
  const id4 = await again.backupBegin(uuid, PULL_TLS, null, 0);
  const scratch = /<scratch file=.([^'"]+)./.exec(await again.backupGetXMLDesc(uuid, id4, 0))![1]!;
  assert.equal(await exists(scratch), true);
  await again.domainDestroy(uuid, 0);
  assert.equal((await waitJobCompleted(env.events, uuid, id4)).stats.success, false);
  assert.equal(await exists(scratch), false);
  await env.assertClean();
});
