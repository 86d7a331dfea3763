// Smallest reproduction of the soak's "lost" finding (seed 99, cycle 19):
// QEMU SIGKILLed just after a push full backup began. backupEnd returns 1
// (complete and consistent), backup-verify agrees (the manifest is read back
// from the same target), yet the target differs from the disk at the instant:
// the target's qcow2 metadata was never flushed (blockdev-del did not run).
//
//   node --import tsx bench/soak-repro.ts [tries=10]
//
// Prints, per delay between backupBegin returning and the SIGKILL, what
// backupEnd said and whether the target equals the disk at the instant.
// Exit 1 when a target reported good differs.

import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { sleep } from '../test/helpers/qemu-env.js';
import { compareImages } from './soak-checks.js';
import { Rng, WriteLog } from './soak-model.js';
import { World } from './soak-world.js';

const tries = Number(process.argv[2] ?? 10);
const w = await World.create(16);
const log = new WriteLog(16 << 20);
const rng = new Rng(1);
let lost = 0;
try {
  await w.startDaemon();
  await w.startDomain();
  for (let i = 0; i < tries; i++) {
    for (let k = 0; k < 30; k++) {
      const x = log.randomWrite(rng);
      await w.write(x.offset, x.length, x.pattern);
      log.push({ kind: 'write', ...x });
    }
    const instant = log.instant;
    const file = path.join(w.dirs.push, `full${i}.qcow2`);
    const pid = await w.qemuPid();
    const id = await w.domain.backupBegin(`<domainbackup><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${file}'/></disk></disks></domainbackup>`);
    const ms = i * 15;
    await sleep(ms);
    await w.killQemu(pid);
    const end = await w.domain.backupEnd(id).then(String, (e: Error) => `error: ${e.message}`);
    let verdict = '';
    if (end === '1') {
      const expected = path.join(w.dirs.work, 'expected.raw');
      await writeFile(expected, log.contentAt(instant));
      const diff = await compareImages(expected, file, 'qcow2');
      if (diff !== null) lost++;
      verdict = diff === null ? '; target equals the disk at the instant' : `; LOST: target differs: ${diff}`;
    }
    process.stdout.write(`QEMU SIGKILL ${ms} ms after backupBegin: backupEnd ${end}${verdict}\n`);
    log.resync(await w.readDisk());
    await w.startDomain();
  }
} finally {
  await w.dispose(false);
}
process.stdout.write(`${lost} of ${tries} backups reported complete were not\n`);
process.exitCode = lost > 0 ? 1 : 0;
