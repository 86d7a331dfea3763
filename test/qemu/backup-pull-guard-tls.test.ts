// The end-of-pull probe over TLS (<server tls='yes'>): a pull whose frozen
// view broke (its scratch on a small tmpfs filled up) ends FAILED as it does
// over plain NBD, with the client pair from the server's own folder, or with
// the CA alone when the server verifies no peer; a healthy TLS pull still
// ends with success, and was probed (no warning). Real QEMU, a real tmpfs.

import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { DomainState } from '../../src/flags.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { canMountTmpfs, makeTestDomain, makeTestEnv, recordingLogger, withSmallTmpfs } from '../helpers/qemu-env.js';
import { makeCerts } from '../helpers/tls-certs.js';
import { assertSameContent, DiskModel, MiB, qemuState, run, waitJobCompleted, write } from './backup-util.js';

const SIZE = 64 * MiB;

const pullTls = (scratch?: string): string => "<domainbackup mode='pull'><server name='localhost' tls='yes'/><disks><disk name='sda'>" +
  `${scratch ? `<scratch file='${scratch}'/>` : ''}</disk></disks></domainbackup>`;

test("pull over TLS: a broken frozen view ends the job failed (client pair, or CA only without verify-peer); a healthy one succeeds", { skip: canMountTmpfs ? false : 'mounting a tmpfs needs root', timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const certs = await makeCerts(path.join(env.dir, 'pki'));
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 64 });
  const { log, entries } = recordingLogger();
  const unchecked = () => entries.filter((e) => e.level === 'warn' && /frozen view/.test(e.msg)).map((e) => e.msg);
  // the server's folder holds the client pair too (libvirt's /etc/pki/qemu); the server verifies peers
  let driver = await env.openDriver({ backupTlsX509CertDir: certs.both, log });
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(uuid, 0);
  const m = new DiskModel('sda', SIZE);
  for (let i = 0; i < 16; i++) await write(driver, uuid, m, i * MiB, MiB, 0x20 + i);
  const before = await qemuState(driver, uuid);

  // healthy: read over TLS by a real client, ended with success, and probed (no warning that it could not be)
  const instant = m.snapshot();
  const id1 = await driver.backupBegin(uuid, pullTls(), null, 0);
  const port = Number(/port=.(\d+)./.exec(await driver.backupGetXMLDesc(uuid, id1, 0))![1]);
  await write(driver, uuid, m, 0, MiB, 0xee);
  const out = path.join(env.dir, 'sda.raw');
  await run('nbdcopy', [`nbds://localhost:${port}/sda?tls-certificates=${certs.client}`, out]);
  await assertSameContent(instant, out, path.join(env.dir, 'expected.raw'));
  assert.equal(await driver.backupEnd(uuid, id1, 0), 1);
  assert.equal((await waitJobCompleted(env.events, uuid, id1)).stats.success, true);
  assert.deepEqual(unchecked(), []);

  await withSmallTmpfs(env.dir, 4, async (small) => {
    const broken = async (d: QemuDriver): Promise<void> => {
      const id = await d.backupBegin(uuid, pullTls(path.join(small, 'sda.scratch')), null, 0);
      // the guest rewrites all 16 MiB: their old data does not fit in the 4 MiB scratch
      for (let i = 0; i < 16; i++) await write(d, uuid, m, i * MiB, MiB, 0x80 + i);
      assert.equal((await d.domainGetInfo(uuid)).state, DomainState.RUNNING, 'the guest runs on');
      await assert.rejects(d.backupEnd(uuid, id, 0), (e: { code: number; message: string }) => {
        assert.equal(e.code, ErrorCode.OPERATION_FAILED, e.message);
        assert.match(e.message, new RegExp(`^backup job ${id} failed: the backup's view of disk 'sda' broke while the job ran: its scratch '${small}/sda.scratch' could not keep`));
        return true;
      });
      assert.equal((await waitJobCompleted(env.events, uuid, id)).stats.success, false);
      assert.deepEqual(await readdir(small), [], 'scratch removed');
      assert.deepEqual(await qemuState(d, uuid), before, 'filters, snapshot nodes, exports gone');
    };
    await broken(driver);
    // a server that verifies no peer: the probe needs (and has) only the CA
    await driver.close();
    driver = await env.openDriver({ backupTlsX509CertDir: certs.server, backupTlsX509Verify: false, log });
    await broken(driver);
  });
  assert.deepEqual(unchecked(), []);
  // every guest write is on the disk
  await driver.domainDestroy(uuid, 0);
  await assertSameContent(m.snapshot(), dom.disks[0]!.path, path.join(env.dir, 'expected.raw'));
  await env.assertClean();
});
