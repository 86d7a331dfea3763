// A guest whose disk's filesystem on the host is full: its write fails with
// ENOSPC, QEMU's default error policy stops the VM, and the domain is
// reported as libvirt does — paused with reason I/O error, a 'suspended'
// event with detail 'ioerror' — not as an unexplained pause. Once there is
// room again, resume retries the write and the guest goes on. (This is what
// a push backup whose target fills up can do to a guest: see
// docs/troubleshooting.md.)

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import { DomainState, PausedReason, RunningReason } from '../../src/flags.js';
import { makeTestDomain, makeTestEnv, waitFor, type TestEnv } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';

const run = promisify(execFile);
const root = process.getuid?.() === 0;

test('a guest write that meets a full host filesystem: paused (I/O error) with its event; resumed once there is room', { skip: root ? false : 'mounting a tmpfs needs root', timeout: 300_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const small = path.join(env.dir, 'small');
  await mkdir(small);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'vbt-ioerror', small]);
  try {
    await pausedAndResumed(env, small);
  } finally {
    // before the test env's own cleanup removes its folder (after hooks run in order)
    await run('umount', ['-l', small]).catch(() => undefined);
  }
});

async function pausedAndResumed(env: TestEnv, small: string): Promise<void> {
  const guest = await tinyGuest();
  // the guest formats its blank disk at boot (mkfs.ext4 writes a few MiB): the disk's
  // qcow2 lives on the tmpfs, and a filler leaves it less than that
  const dom = await makeTestDomain(small, { disks: 1, sizeMiB: 64, bus: 'virtio', agent: true, osXml: tinyGuestOsXml(guest), domainXml: '  <on_reboot>destroy</on_reboot>\n' });
  const fs = await statfs(small);
  const filler = path.join(small, 'filler');
  await writeFile(filler, Buffer.alloc(fs.bavail * fs.bsize - 256 * 1024, 1));
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);

  await waitFor(async () => (await driver.domainGetInfo(dom.uuid)).state === DomainState.PAUSED, 'the guest stopped by its failed write', 120_000);
  const paused = await driver.domainGetInfo(dom.uuid);
  assert.equal(paused.reason, PausedReason.IOERROR, 'paused for an I/O error, as libvirt reports it');
  const ours = env.events.filter((e) => e.type === 'lifecycle' && e.domain.uuid === dom.uuid && e.event === 'suspended');
  assert.deepEqual(ours.map((e) => e.type === 'lifecycle' && e.detail), ['ioerror'], 'one suspended event, detail ioerror');

  // room again: resume retries the failed write and the guest finishes booting
  await rm(filler);
  await driver.domainResume(dom.uuid);
  const resumed = await driver.domainGetInfo(dom.uuid);
  assert.deepEqual([resumed.state, resumed.reason], [DomainState.RUNNING, RunningReason.UNPAUSED]);
  await waitForAgent(driver, dom.uuid);
  assert.equal((await driver.domainGetInfo(dom.uuid)).state, DomainState.RUNNING, 'no further I/O error once there is room');
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
}
