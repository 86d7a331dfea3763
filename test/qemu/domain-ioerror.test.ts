// A guest whose disk's filesystem on the host is full: its write fails with
// ENOSPC, QEMU's default error policy stops the VM, and the domain is
// reported as libvirt does — paused with reason I/O error, a 'suspended'
// event with detail 'ioerror' after libvirt's io-error and io-error-reason
// events (srcPath, alias, action pause, reason enospc), and the disk's error
// in virDomainGetDiskErrors (`virsh domblkerror`: "vda: no space", also
// for a daemon restarted meanwhile) — not as an unexplained pause. Once there
// is room again, resume retries the write, the guest goes on and the disk has
// no error any more. Seen by unmodified
// virsh over virtbackd's libvirt socket, by the SDK over its own socket and
// by the CLI. (This is what a push backup whose target fills up can do to a
// guest: see docs/troubleshooting.md.)

import assert from 'node:assert/strict';
import { open, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import type { DriverEvent, IoErrorEvent } from '../../src/api/driver.js';
import type { Connect } from '../../src/api/public.js';
import { DiskErrorCode, DomainState, IoErrorAction, PausedReason, RunningReason } from '../../src/flags.js';
import { runMain } from '../helpers/cli.js';
import { libvirtUri, parseEvents, virshBackground, virshMissing, virshOk, waitOutput } from '../helpers/libvirt-clients.js';
import { canMountTmpfs, makeTestDomain, waitFor, withSmallTmpfs } from '../helpers/qemu-env.js';
import { guestBoots, tinyGuest, tinyGuestOsXml } from '../helpers/tiny-guest.js';
import { makeDaemonEnv, stopVirtbackd, type DaemonEnv } from './daemon-util.js';

const whyNot = !canMountTmpfs ? 'mounting a tmpfs needs root' : virshMissing();

/** A daemon (`extra`: its options) and a tmpfs of `sizeMiB` at `<dir>/small` while `fn` runs. */
async function onSmallTmpfs(t: TestContext, extra: string[], fn: (env: DaemonEnv, small: string) => Promise<void>): Promise<void> {
  const env = await makeDaemonEnv(t);
  await env.start(extra);
  await withSmallTmpfs(env.dir, 24, (small) => fn(env, small));
}

/**
 * Fills the filesystem of `dir` but for `leave` bytes; returns the filler. A
 * running job may take room meanwhile (a push copies blocks out while the
 * guest writes), so meeting ENOSPC first is a full filesystem too.
 */
async function fill(dir: string, leave: number): Promise<string> {
  const fs = await statfs(dir);
  const filler = path.join(dir, 'filler');
  const file = await open(filler, 'w');
  try {
    const bytes = Buffer.alloc(fs.bavail * fs.bsize - leave, 1);
    for (let done = 0; done < bytes.length;) done += (await file.write(bytes, done)).bytesWritten;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    await file.close();
  }
  return filler;
}

test('a guest write that meets a full host filesystem: paused (I/O error), io-error events and domblkerror; resumed once there is room, no error left', { skip: whyNot ?? false, timeout: 300_000 }, async (t) => {
  await onSmallTmpfs(t, [], pausedAndResumed);
});

/** The domain's events as the SDK sees them over virtbackd's socket. */
function recordEvents(conn: Connect, uuid: string): DriverEvent[] {
  const events: DriverEvent[] = [];
  for (const type of ['io-error', 'lifecycle'] as const) conn.on(type, (ev) => ev.domain.uuid === uuid && events.push(ev));
  return events;
}

async function pausedAndResumed(env: DaemonEnv, small: string): Promise<void> {
  const uri = libvirtUri(env.runDir);
  const guest = await tinyGuest();
  // the guest formats its blank disk at boot (mkfs.ext4 writes a few MiB): the disk's
  // qcow2 lives on the tmpfs, and a filler leaves it less than that
  const dom = await makeTestDomain(small, { disks: 1, sizeMiB: 64, bus: 'virtio', agent: true, osXml: tinyGuestOsXml(guest), domainXml: '  <on_reboot>destroy</on_reboot>\n' });
  const disk = dom.disks[0]!;
  const xmlFile = path.join(env.dir, 'dom.xml');
  await writeFile(xmlFile, dom.xml);
  await virshOk(uri, 'define', xmlFile);
  const conn = await env.connect();
  const events = recordEvents(conn, dom.uuid);
  const watchers = ['io-error', 'io-error-reason'].map((e) => virshBackground(uri, ['event', dom.name, '--event', e, '--loop']));
  try {
    const filler = await fill(small, 256 * 1024);
    await virshOk(uri, 'start', dom.name);

    await waitFor(async () => (await virshOk(uri, 'domstate', dom.name, '--reason')).trim() === 'paused (I/O error)' || undefined,
      'the guest stopped by its failed write (virsh domstate --reason)', 120_000);
    const sdkDom = await conn.lookupByUUID(dom.uuid);
    assert.equal((await sdkDom.getInfo()).reason, PausedReason.IOERROR, 'paused for an I/O error, as libvirt reports it');

    // libvirt's two events, as unmodified virsh prints them: the disk's path and alias, pause, enospc
    const seen = `${disk.path} (virtio-disk0) pause`;
    const [io, reason] = await Promise.all(watchers.map((w, i) => waitOutput(w, (o) => parseEvents(o).length > 0, `virsh's ${['io-error', 'io-error-reason'][i]} event`)));
    assert.deepEqual(parseEvents(io!).map((e) => [e.event, e.domain, e.detail]), parseEvents(io!).map(() => ['io-error', dom.name, seen]));
    assert.deepEqual(parseEvents(reason!).map((e) => [e.event, e.domain, e.detail]), parseEvents(reason!).map(() => ['io-error-reason', dom.name, `${seen} due to enospc`]));

    // the SDK: the same error (one per failed request), before the one 'suspended' 'ioerror' it caused
    await waitFor(() => events.some((e) => e.type === 'lifecycle' && e.event === 'suspended') || undefined, "the SDK's suspended event", 10_000);
    const ioErrors = events.filter((e): e is IoErrorEvent => e.type === 'io-error');
    assert.ok(ioErrors.length >= 1);
    for (const e of ioErrors) {
      assert.deepEqual({ ...e, domain: e.domain.name }, {
        type: 'io-error', domain: dom.name, disk: disk.target, srcPath: disk.path, devAlias: 'virtio-disk0', action: IoErrorAction.PAUSE, reason: 'enospc',
      });
    }
    const suspended = events.filter((e) => e.type === 'lifecycle' && e.event === 'suspended');
    assert.deepEqual(suspended.map((e) => e.type === 'lifecycle' && e.detail), ['ioerror'], 'one suspended event, detail ioerror');
    assert.ok(events.indexOf(ioErrors[0]!) < events.indexOf(suspended[0]!), 'the io-error comes first, as libvirt queues it');
    assert.equal(parseEvents(reason!).length, ioErrors.length, 'virsh saw every error the SDK saw');

    // the disk's error while paused: virsh, the SDK and the CLI
    // (virsh ends its output with an empty line)
    assert.equal((await virshOk(uri, 'domblkerror', dom.name)).trimEnd(), `${disk.target}: no space`);
    assert.deepEqual(await sdkDom.getDiskErrors(), [{ disk: disk.target, error: DiskErrorCode.NO_SPACE }]);
    const cli = await runMain(['-c', env.uri, 'domblkerror', dom.name]);
    assert.deepEqual([cli.code, cli.stdout], [0, `${disk.target}: no space\n`], cli.stderr);

    // a restarted daemon finds the guest paused by the error, and the disk's error with it (QEMU's io-status)
    await stopVirtbackd(env.daemons[0]!);
    await env.start();
    const conn2 = await env.connect();
    const later = recordEvents(conn2, dom.uuid);
    const sdkDom2 = await conn2.lookupByUUID(dom.uuid);
    assert.equal((await sdkDom2.getInfo()).reason, PausedReason.IOERROR, 'still paused (I/O error)');
    assert.equal((await virshOk(uri, 'domblkerror', dom.name)).trimEnd(), `${disk.target}: no space`, 'the error known after the restart');

    // room again: resume retries the failed write, the guest finishes booting, and the error is gone
    await rm(filler);
    await virshOk(uri, 'resume', dom.name);
    const resumed = await sdkDom2.getInfo();
    assert.deepEqual([resumed.state, resumed.reason], [DomainState.RUNNING, RunningReason.UNPAUSED]);
    assert.equal((await virshOk(uri, 'domblkerror', dom.name)).trimEnd(), 'No errors found');
    assert.deepEqual(await sdkDom2.getDiskErrors(), []);
    await waitFor(async () => (await guestBoots(env.runDir, dom.uuid)) === 1 || undefined, 'the guest finishing its boot', 120_000);
    assert.equal((await sdkDom2.getInfo()).state, DomainState.RUNNING, 'no further I/O error once there is room');
    assert.deepEqual(later.map((e) => e.type === 'lifecycle' && `${e.event} ${e.detail}`), ['resumed unpaused'], 'no io-error event after the resume');
    assert.equal((await runMain(['-c', env.uri, 'domblkerror', dom.name])).stdout, 'No errors found\n');
    await virshOk(uri, 'destroy', dom.name);
  } finally {
    await Promise.all(watchers.map((w) => w.stop()));
  }
}

// The troubleshooting case: the guest's disk has room, but a push backup's
// target fills up. QEMU's backup filter copies a block's old data out before
// a guest write changes it; that copy fails with ENOSPC, the guest's write
// with it, and the guest pauses. BLOCK_IO_ERROR then names the filter's node,
// not the disk's: the driver finds the disk through query-block.
test('a push target that fills up pauses a writing guest: the io-error under the backup filter names its disk', { skip: whyNot ?? false, timeout: 300_000 }, async (t) => {
  // one 64 KiB chunk a minute: the job itself takes the first chunk, then the guest's writes are first to need room
  await onSmallTmpfs(t, ['--backup-speed-limit', '1024'], async (env, small) => {
    const guest = await tinyGuest();
    const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 64, bus: 'virtio', osXml: tinyGuestOsXml(guest, 'tg.writer=/mnt/vda tg.writer_interval=0.2') });
    const disk = dom.disks[0]!;
    const conn = await env.connect();
    const events = recordEvents(conn, dom.uuid);
    const sdkDom = await conn.defineXML(dom.xml);
    await sdkDom.create();
    await waitFor(async () => (await guestBoots(env.runDir, dom.uuid)) === 1 || undefined, 'the guest writing', 120_000);

    const target = path.join(small, 'push-vda.qcow2');
    await sdkDom.backupBegin(`<domainbackup><disks><disk name='vda' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks></domainbackup>`);
    await fill(small, 16 * 1024);
    await waitFor(async () => (await sdkDom.getInfo()).reason === PausedReason.IOERROR || undefined, 'the guest paused by its failed write', 120_000);
    await waitFor(() => events.some((e) => e.type === 'lifecycle' && e.event === 'suspended') || undefined, "the SDK's suspended event", 10_000);
    const ioErrors = events.filter((e): e is IoErrorEvent => e.type === 'io-error');
    assert.ok(ioErrors.length >= 1);
    assert.deepEqual({ ...ioErrors[0]!, domain: ioErrors[0]!.domain.name }, {
      type: 'io-error', domain: dom.name, disk: 'vda', srcPath: disk.path, devAlias: 'virtio-disk0', action: IoErrorAction.PAUSE, reason: 'enospc',
    }, 'the disk under the filter, found by query-block');
    assert.ok(events.indexOf(ioErrors[0]!) < events.findIndex((e) => e.type === 'lifecycle' && e.event === 'suspended'), 'still before the suspended event');
    assert.deepEqual(await sdkDom.getDiskErrors(), [{ disk: 'vda', error: DiskErrorCode.NO_SPACE }]);
    await sdkDom.destroy();
  });
});
