// A pull job left by a `virtback backup` run that died is ended by the next
// run; a job of a live run, of another host, or not made by a run is left
// alone. The domain is a scripted stand-in for the three calls used (the real
// path, with SIGKILLed clients and virtbackd, is in test/qemu/vmbackup-cli.test.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Domain } from '../../src/api/public.js';
import { silentLogger } from '../../src/log.js';
import { endStaleJobs, markRunDir, RUN_DIR_PREFIX } from '../../src/vmbackup/stale-jobs.js';

const pullXml = (socket: string, id: number) =>
  `<domainbackup mode='pull' id='${id}'><server transport='unix' socket='${socket}'/><disks><disk name='sda' backup='yes' type='file'><scratch file='${path.dirname(socket)}/sda.scratch'/></disk></disks></domainbackup>`;

function scriptedDomain(jobs: Map<number, string>): { dom: Domain; ended: number[] } {
  const ended: number[] = [];
  const dom = {
    listJobIds: async () => [...jobs.keys()],
    backupGetXMLDesc: async (id: number) => jobs.get(id)!,
    backupEnd: async (id: number) => {
      ended.push(id);
      jobs.delete(id);
      return 1;
    },
  } as unknown as Domain;
  return { dom, ended };
}

test("ends only the jobs of dead runs of this host (or of runs whose folder is gone), and removes their folders", async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'vbk-stale-test-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  const mk = async (name: string, owner: object | null) => {
    const dir = path.join(root, `${RUN_DIR_PREFIX}${name}`);
    await fs.mkdir(dir);
    if (owner !== null) await fs.writeFile(path.join(dir, 'owner.json'), JSON.stringify(owner));
    return path.join(dir, 'nbd.sock');
  };
  const deadPid = spawnSync(process.execPath, ['-e', '0']).pid!;
  const dead = await mk('dead', { host: os.hostname(), pid: deadPid });
  const live = await mk('live', null);
  await markRunDir(path.dirname(live)); // this process: alive
  const foreign = await mk('foreign', { host: `not-${os.hostname()}`, pid: deadPid });
  const unowned = await mk('unowned', null);
  const other = path.join(root, 'someone-elses', 'nbd.sock');
  // its run is over (the folder removed) but the job was not ended: the daemon died under the run
  const gone = path.join(root, `${RUN_DIR_PREFIX}gone`, 'nbd.sock');
  const jobs = new Map([
    [1, pullXml(dead, 1)],
    [2, pullXml(live, 2)],
    [3, pullXml(foreign, 3)],
    [4, pullXml(unowned, 4)],
    [5, pullXml(other, 5)],
    [6, pullXml(gone, 6)],
  ]);
  const { dom, ended } = scriptedDomain(jobs);
  assert.deepEqual(await endStaleJobs(dom, silentLogger), [1, 6]);
  assert.deepEqual(ended, [1, 6]);
  await assert.rejects(fs.stat(path.dirname(dead)), { code: 'ENOENT' });
  for (const s of [live, foreign, unowned]) await fs.stat(path.dirname(s));
  assert.deepEqual(JSON.parse(await fs.readFile(path.join(path.dirname(live), 'owner.json'), 'utf8')), { host: os.hostname(), pid: process.pid });
});
