// The console's actions, admin sessions only (app.ts refuses every other
// non-GET of a read-only session before it gets here; the read-only
// connection would refuse the driver calls too). The backup command's flows
// run as console tasks, through the same public API and vmbackup functions
// the CLI calls; raw jobs go straight to backupBegin/backupEnd.

import fs from 'node:fs';
import path from 'node:path';
import type { Hono } from 'hono';
import { z } from 'zod';
import { ChunkRepository, verifyRepository } from '../chunkstore/index.js';
import { openObjectStore } from '../chunkstore/store-url.js';
import { virErr } from '../errors.js';
import { backupDomain, repositoryId, restoreDomain } from '../vmbackup/index.js';
import { instantRestore, stopInstantServe } from '../vmbackup/instant.js';
import { attr, parseXml } from '../xml/tree.js';
import type { Env, WebState } from './context.js';
import { body } from './http.js';
import { restoreTargets } from './routes-read.js';
import type { TaskContext } from './tasks.js';

const MAX_XML = 256 * 1024;

/** Progress summed over disks (each flow reports per disk). */
function diskSums(t: TaskContext): (disk: string, p: { bytesDone: number; bytesTotal: number }) => void {
  const disks = new Map<string, { bytesDone: number; bytesTotal: number }>();
  return (disk, p) => {
    disks.set(disk, { bytesDone: p.bytesDone, bytesTotal: p.bytesTotal });
    let done = 0;
    let total = 0;
    for (const d of disks.values()) {
      done += d.bytesDone;
      total += d.bytesTotal;
    }
    t.progress(done, total);
  };
}

/** A repository object of its own per run (a backup batches its chunk syncs on it). */
async function openRun(st: WebState, ref: string): Promise<ChunkRepository> {
  return ChunkRepository.open(await openObjectStore(st.repos.find(ref).dir));
}

function registerBackup(app: Hono<Env>, st: WebState): void {
  const schema = z.object({ repo: z.union([z.string(), z.number()]).transform(String), level: z.enum(['auto', 'full', 'inc']).default('auto'), quiesce: z.boolean().default(false) });
  app.post('/api/domains/:uuid/backup', async (c) => {
    const o = await body(c, schema);
    const dom = await st.rw.lookupByUUID(c.req.param('uuid'));
    st.repos.find(o.repo); // an unknown repository is refused now, not in the task
    const view = st.tasks.start('backup', dom.name, async (t) => {
      const repo = await openRun(st, o.repo);
      return backupDomain(dom, repo, repositoryId(repo.config), { level: o.level, quiesce: o.quiesce, log: st.log.child({ task: 'backup', domain: dom.name }), onProgress: diskSums(t) });
    });
    return c.json({ task: view.task }, 202);
  });
}

function registerJobs(app: Hono<Env>, st: WebState): void {
  const schema = z.object({ backupXml: z.string().min(1).max(MAX_XML), checkpointXml: z.string().max(MAX_XML).nullish() });
  app.post('/api/domains/:uuid/jobs', async (c) => {
    const o = await body(c, schema);
    const dom = await st.rw.lookupByUUID(c.req.param('uuid'));
    const jobId = await dom.backupBegin(o.backupXml, o.checkpointXml ?? null);
    st.jobs.running(dom.uuid, jobId, attr(parseXml(o.backupXml), 'mode') === 'pull' ? 'pull' : 'push', 0);
    return c.json({ jobId });
  });
  app.post('/api/domains/:uuid/jobs/:id/abort', async (c) => {
    const id = c.req.param('id');
    if (!/^\d{1,9}$/.test(id)) throw virErr('INVALID_ARG', 'NONE', `job id '${id}' is not a number`);
    const dom = await st.rw.lookupByUUID(c.req.param('uuid'));
    const complete = await dom.backupEnd(Number(id), { abort: true });
    st.jobs.endedBy(dom.uuid, Number(id), complete === 1);
    st.repos.invalidate();
    return c.json({ jobId: Number(id), complete: complete === 1 });
  });
}

function registerVerify(app: Hono<Env>, st: WebState): void {
  const schema = z.object({ domain: z.string().max(1024).optional(), point: z.string().max(256).optional() });
  app.post('/api/repos/:repo/verify', async (c) => {
    const o = await body(c, schema);
    if (o.point !== undefined && o.domain === undefined) throw virErr('INVALID_ARG', 'NONE', 'verify of a point needs its domain');
    const ref = c.req.param('repo');
    st.repos.find(ref);
    const view = st.tasks.start('verify', o.domain ?? null, async () => {
      const r = await verifyRepository(await openRun(st, ref), { ...o, log: st.log.child({ task: 'verify' }) });
      if (!r.ok) throw virErr('OPERATION_FAILED', 'STORAGE', `verify failed: ${r.badChunks.length} bad chunks affect ${r.points.filter((v) => !v.ok).map((v) => `${v.domain}/${v.id}`).join(', ')}`);
      return r;
    });
    return c.json({ task: view.task }, 202);
  });
}

function registerRestore(app: Hono<Env>, st: WebState): void {
  const schema = z.object({ destDir: z.string().min(1).max(4096), disks: z.array(z.string()).optional(), format: z.enum(['raw', 'qcow2']).default('raw') });
  app.post('/api/repos/:repo/points/:domain/:point/restore', async (c) => {
    const o = await body(c, schema);
    const ref = c.req.param('repo');
    const repo = await openRun(st, ref);
    const p = await repo.readPoint(c.req.param('domain'), c.req.param('point'));
    const all = p.disks.map((d) => d.target);
    if (o.disks !== undefined && [...o.disks].sort().join() !== [...all].sort().join()) {
      throw virErr('ARGUMENT_UNSUPPORTED', 'STORAGE', `a restore writes every disk of the point (${all.join(', ')})`);
    }
    if (!path.isAbsolute(o.destDir)) throw virErr('INVALID_ARG', 'STORAGE', 'destDir must be an absolute path');
    const targets = restoreTargets(p.domain.name, p.disks, o.destDir, o.format);
    const xmlPath = path.join(path.resolve(o.destDir), `${p.domain.name}.xml`);
    const taken = [...targets.filter((d) => d.exists).map((d) => d.dest), ...(fs.existsSync(xmlPath) ? [xmlPath] : [])];
    if (taken.length > 0) throw virErr('OPERATION_INVALID', 'STORAGE', `restore refused: ${taken.join(', ')} already exist`);
    const view = st.tasks.start('restore', p.domain.name, async (t) => {
      const r = await restoreDomain(repo, null, { domain: p.domain.name, point: p.id, outputDir: o.destDir, format: o.format, onProgress: diskSums(t) });
      return { pointId: r.pointId, disks: r.disks, xmlPath: r.xmlPath };
    });
    return c.json({ task: view.task }, 202);
  });
}

function registerInstant(app: Hono<Env>, st: WebState): void {
  const schema = z.object({ name: z.string().min(1).max(200), overlayDir: z.string().max(4096).optional() });
  app.post('/api/repos/:repo/points/:domain/:point/instant-restore', async (c) => {
    const o = await body(c, schema);
    const info = st.repos.find(c.req.param('repo'));
    const repo = await openRun(st, info.id);
    const domain = c.req.param('domain');
    const point = c.req.param('point');
    let started!: (uri: string) => void;
    let failed!: (e: unknown) => void;
    const ready = new Promise<string>((res, rej) => ((started = res), (failed = rej)));
    const view = st.tasks.start('instant-restore', domain, async (t) => {
      try {
        const overlayDir = o.overlayDir ?? path.join(st.webDir, 'instant', o.name.replace(/[^A-Za-z0-9._-]/g, '_'));
        const s = await instantRestore(repo, st.rw, { repoDir: info.dir, domain, point, define: o.name, overlayDir, virtbackCommand: st.virtbackCommand });
        t.keepRunning(() => stopInstantServe(st.rw, path.dirname(s.pidfile)));
        started(s.disks[0]?.backing ?? '');
        return { name: s.name, uuid: s.uuid, pointId: s.pointId, overlayDir: path.dirname(s.pidfile), disks: s.disks };
      } catch (e) {
        failed(e);
        throw e;
      }
    });
    return c.json({ task: view.task, nbdUri: await ready }, 202);
  });
  app.post('/api/tasks/:task/stop', async (c) => c.json(await st.tasks.stop(c.req.param('task'))));
}

export function registerActions(app: Hono<Env>, st: WebState): void {
  registerBackup(app, st);
  registerJobs(app, st);
  registerVerify(app, st);
  registerRestore(app, st);
  registerInstant(app, st);
}
