// The pure parts of the backup-file commands: reading a pull job's XML, and
// per-item progress onto the plain-line view.

import assert from 'node:assert/strict';
import test from 'node:test';
import type { Domain } from '../../src/api/public.js';
import { ItemProgress, jobCheckpoint, parsePullJob } from '../../src/cli/commands/repository.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { LineProgress } from '../../src/cli/progress.js';
import { loadXml } from '../../src/cli/xml-parser.js';

// the commands load libxml2 when they connect; these call their XML helpers directly
await loadXml();

const code = (c: number) => (e: unknown) => e instanceof VirError && e.code === c;

test('parsePullJob: unix socket, full and incremental disks, backup=no left out', () => {
  const xml = `<domainbackup mode='pull' id='4'>
  <incremental>c1</incremental>
  <server transport='unix' socket='/run/x/nbd.sock'/>
  <disks>
    <disk name='sda' backup='yes' type='file' backupmode='incremental' incremental='c1' exportname='sda' exportbitmap='backup-sda'/>
    <disk name='sdb' backup='yes' type='file' backupmode='full' exportname='sdb-export'/>
    <disk name='sdc' backup='no'/>
  </disks>
</domainbackup>`;
  assert.deepEqual(parsePullJob(xml, 4), {
    nbd: { socketPath: '/run/x/nbd.sock' },
    tls: false,
    disks: [
      { disk: 'sda', exportName: 'sda', bitmap: 'backup-sda', incremental: 'c1' },
      { disk: 'sdb', exportName: 'sdb-export', bitmap: null, incremental: null },
    ],
  });
});

test('parsePullJob: TCP with the resolved port; tcp is the default transport', () => {
  const xml = "<domainbackup mode='pull' id='2'><server name='127.0.0.1' port='10809'/><disks><disk name='vda' backup='yes' exportname='vda'/></disks></domainbackup>";
  assert.deepEqual(parsePullJob(xml, 2).nbd, { host: '127.0.0.1', port: 10809 });
  // TLS exports are read now (backup-pull --tls-certs): the job says so instead of being refused
  const tls = parsePullJob("<domainbackup mode='pull'><server transport='tcp' tls='yes' name='h' port='1'/><disks><disk name='a'/></disks></domainbackup>", 1);
  assert.deepEqual([tls.nbd, tls.tls], [{ host: 'h', port: 1 }, true]);
});

test('parsePullJob refuses a push job, fd transport, a missing bitmap and no disks, naming the job', () => {
  assert.throws(() => parsePullJob("<domainbackup mode='push' id='3'/>", 3), (e) => code(ErrorCode.OPERATION_INVALID)(e) && /backup job 3 is not a pull backup/.test((e as Error).message));
  assert.throws(() => parsePullJob("<domainbackup id='3'/>", 3), code(ErrorCode.OPERATION_INVALID));
  assert.throws(() => parsePullJob("<domainbackup mode='pull'><server transport='fd' fdgroup='g'/><disks><disk name='a'/></disks></domainbackup>", 1), /transport 'fd'/);
  assert.throws(
    () => parsePullJob("<domainbackup mode='pull'><incremental>c1</incremental><server transport='unix' socket='/s'/><disks><disk name='a' exportname='a'/></disks></domainbackup>", 1),
    /incremental disk 'a' exports no bitmap/,
  );
  assert.throws(() => parsePullJob("<domainbackup mode='pull'><server transport='unix' socket='/s'/><disks><disk name='a' backup='no'/></disks></domainbackup>", 7), /backup job 7 exports no disk/);
});

test('ItemProgress: lines per whole percent, the previous item completed when the next begins, the last one at stop', () => {
  const lines: string[] = [];
  const p = new ItemProgress(new LineProgress((s) => lines.push(s.trimEnd())));
  const MiB = 1 << 20;
  p.update('full.qcow2', 0, 2 * MiB);
  p.update('full.qcow2', MiB, 2 * MiB);
  p.update('full.qcow2', MiB, 2 * MiB); // unchanged: no line
  p.update('inc.qcow2', 0, MiB);
  p.stop('failed');
  assert.deepEqual(lines, [
    'full.qcow2: 0% (0.0/2.0 MiB)',
    'full.qcow2: 50% (1.0/2.0 MiB)',
    'full.qcow2: completed',
    'inc.qcow2: 0% (0.0/1.0 MiB)',
    'inc.qcow2: failed',
  ]);
});

test("backup-pull's job checkpoint: the newest since the job began; within one second, the child over its parent", async () => {
  const cp = (name: string, time: number, parent?: string) => ({
    name,
    getXMLDesc: async () =>
      `<domaincheckpoint><name>${name}</name>${parent ? `<parent><name>${parent}</name></parent>` : ''}<creationTime>${time}</creationTime></domaincheckpoint>`,
  });
  const dom = (list: ReturnType<typeof cp>[]) => ({ listAllCheckpoints: async () => list }) as unknown as Domain;
  const c0 = cp('c0', 90);
  const c1 = cp('c1', 100, 'c0');
  const c2 = cp('c2', 100, 'c1');
  // a full then an incremental within one second: c1 and c2 share their creation time
  assert.equal(await jobCheckpoint(dom([c0, c1, c2]), 100), 'c2');
  assert.equal(await jobCheckpoint(dom([c2, c1, c0]), 100), 'c2');
  assert.equal(await jobCheckpoint(dom([c0, c1, cp('c2', 101, 'c1')]), 101), 'c2');
  assert.equal(await jobCheckpoint(dom([c0]), 100), null, 'nothing created since the job began');
  assert.equal(await jobCheckpoint(dom([]), 100), null);
});
