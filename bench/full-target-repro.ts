// Reproduction of the soak's drift (round 2, session 9, seed 1801 cycle 405):
// a push backup whose target filesystem fills up makes the GUEST's writes
// fail. QEMU 7.2's backup job copies old data out before each guest write
// (its internal copy-before-write filter, whose on-cbw-error default is
// break-guest-write); when that copy meets ENOSPC, the guest write fails.
// A real guest's disk (werror=enospc by default) would pause the VM. HMP
// qemu-io says nothing either way, so the soak only sees it on the live disk.
// virtbackd now refuses such a push up front (backup-space.ts); this runs it
// with --backup-space-check no to show what QEMU itself does.
//
//   node --import tsx bench/full-target-repro.ts      (root: mounts a tmpfs)
//
// Prints the guest writes that did not reach the disk; exit 1 when any.

import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { connect } from '../src/index.js';
import { BackupEndFlags } from '../src/flags.js';
import { startVirtbackd } from '../test/qemu/daemon-util.js';
import { checkLive } from './soak-checks.js';
import { Tally, WriteLog } from './soak-model.js';
import { World } from './soak-world.js';

const MiB = 1 << 20;
const w = await World.create(32);
const log = new WriteLog(32 * MiB);
const t = new Tally();
try {
  const why = await w.mountSmall(1024);
  if (why !== null) throw new Error(why);
  // a slow job, so that guest writes meet blocks it has not copied yet
  w.daemon = await startVirtbackd({ stateDir: w.env.stateDir, runDir: w.env.runDir }, ['--log-level', 'warn', '--backup-speed-limit', '65536', '--backup-space-check', 'no']);
  w.conn = await connect(w.uri);
  w.dom = await w.conn.defineXML(w.domainXml());
  await w.startDomain();
  for (let i = 0; i < 32; i++) {
    await w.write(i * MiB, MiB, 0x11 + i);
    log.push({ kind: 'write', offset: i * MiB, length: MiB, pattern: 0x11 + i });
  }
  // ~700 KiB left on the target's filesystem
  await writeFile(path.join(w.dirs.small, 'filler'), Buffer.alloc(300 * 1024, 1));
  const file = path.join(w.dirs.small, 'full.qcow2');
  const id = await w.domain.backupBegin(`<domainbackup><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${file}'/></disk></disks></domainbackup>`);
  const from = log.instant;
  for (let i = 0; i < 6; i++) {
    const offset = (i * 5 + 1) * MiB;
    await w.write(offset, 176 * 1024, 0xec);
    log.push({ kind: 'write', offset, length: 176 * 1024, pattern: 0xec });
  }
  await w.domain.backupEnd(id, BackupEndFlags.ABORT);
  await checkLive(w, log, t, 1, 'after the push onto a full filesystem', { from, to: log.instant });
  process.stdout.write(`${t.refusedBytes} bytes of ${6 * 176 * 1024} written during the job did not reach the disk\n`);
  process.exitCode = t.refusedBytes > 0 ? 1 : 0;
} finally {
  await w.dispose(false);
}
