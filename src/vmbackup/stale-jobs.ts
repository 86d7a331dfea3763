// A `virtback backup` killed mid-run leaves its pull job running (a pull job
// lasts until someone ends it) and would block every later run of the domain.
// Each run marks its temporary folder (the job's NBD socket and scratch files
// live there) with its host and pid; a later run ends a job whose folder names
// a process of this host that is gone, or whose folder is gone (the run ended
// without ending its job: the daemon was killed under it), and removes the folder.

import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Domain } from '../api/public.js';
import { errField, type Logger } from '../log.js';
import { parseBackupXML } from '../xml/backup.js';
import { pidAlive } from './pid.js';

const OWNER = 'owner.json';
export const RUN_DIR_PREFIX = 'vbk-';

/** Mark `dir` as this run's. */
export async function markRunDir(dir: string): Promise<void> {
  await fs.writeFile(path.join(dir, OWNER), JSON.stringify({ host: os.hostname(), pid: process.pid }), { mode: 0o600 });
}

/** The dead run that owns job `xml`'s folder, or null when the job is not a dead run's. */
async function deadRunDir(xml: string): Promise<string | null> {
  const socket = parseBackupXML(xml, { internal: true }).server?.socket ?? null;
  if (socket === null) return null;
  const dir = path.dirname(socket);
  if (!path.basename(dir).startsWith(RUN_DIR_PREFIX)) return null;
  // a run removes its folder only when it is over: a job whose folder is gone
  // outlived its run, which could not end it (the daemon was killed meanwhile)
  if (!(await fs.stat(dir).then(() => true, () => false))) return dir;
  const owner = await fs.readFile(path.join(dir, OWNER), 'utf8').then(
    (s) => JSON.parse(s) as { host?: unknown; pid?: unknown },
    () => null,
  );
  if (owner === null || owner.host !== os.hostname() || typeof owner.pid !== 'number') return null;
  return pidAlive(owner.pid) ? null : dir;
}

/** End the pull jobs of dead runs on `dom`; returns their ids. */
export async function endStaleJobs(dom: Domain, log: Logger): Promise<number[]> {
  const ended: number[] = [];
  for (const id of await dom.listJobIds().catch(() => [] as number[])) {
    try {
      const dir = await deadRunDir(await dom.backupGetXMLDesc(id));
      if (dir === null) continue;
      await dom.backupEnd(id);
      await fs.rm(dir, { recursive: true, force: true });
      ended.push(id);
      log.warn({ jobId: id }, 'ended the pull job of a backup run that died');
    } catch (e) {
      log.warn({ ...errField(e), jobId: id }, 'could not end the pull job of a dead backup run');
    }
  }
  return ended;
}
