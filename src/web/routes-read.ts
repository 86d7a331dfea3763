// The console's read routes: daemon, domains, a domain, its XML, tasks,
// restore and prune previews. Allowed to every session (read-only included).

import fs from 'node:fs';
import path from 'node:path';
import type { Hono } from 'hono';
import { planPrune, PRUNE_RULES, type KeepPolicy } from '../chunkstore/index.js';
import { virErr } from '../errors.js';
import { connOf, type Env, type WebState } from './context.js';
import { domainDetail, listDomains } from './views.js';

/** The files a restore of `point` into `destDir` writes (restoreDomain's names). */
export function restoreTargets(domain: string, disks: Array<{ target: string; size: number }>, destDir: string, format: 'raw' | 'qcow2') {
  const dir = path.resolve(destDir);
  return disks.map((d) => {
    const dest = path.join(dir, `${domain}-${d.target}.${format}`);
    const exists = fs.existsSync(dest);
    // a restore never overwrites: an existing file makes it refuse
    return { target: d.target, size: d.size, dest, exists, willOverwrite: false };
  });
}

function keepPolicy(q: Record<string, string>): KeepPolicy {
  const policy: KeepPolicy = {};
  for (const rule of PRUNE_RULES) {
    const v = q[`keep${rule[0]!.toUpperCase()}${rule.slice(1)}`];
    if (v === undefined) continue;
    if (!/^\d{1,6}$/.test(v)) throw virErr('INVALID_ARG', 'NONE', `keep${rule}: not a count: '${v}'`);
    policy[rule] = Number(v);
  }
  if (!Object.values(policy).some((n) => n! > 0)) throw virErr('INVALID_ARG', 'NONE', 'a prune preview needs at least one keep rule above 0 (keepLast=, keepDaily=, …)');
  return policy;
}

export function registerReads(app: Hono<Env>, st: WebState): void {
  const ctx = (c: Parameters<typeof connOf>[1]) => ({ conn: connOf(st, c), repos: st.repos, jobs: st.jobs });

  app.get('/api/daemon', async (c) => {
    const mem = process.memoryUsage();
    const domains = (await connOf(st, c).listAllDomainSummaries()).length;
    return c.json({
      version: st.version,
      uptimeSec: Math.round((Date.now() - st.startedAt) / 1000),
      rssBytes: mem.rss,
      heapUsedBytes: mem.heapUsed,
      domains,
      clients: st.clients(),
      eventStreams: st.hub.size,
      repos: st.repos.list(),
    });
  });
  app.get('/api/domains', async (c) => c.json(await listDomains(ctx(c))));
  app.get('/api/domains/:uuid', async (c) => c.json(await domainDetail(ctx(c), c.req.param('uuid'))));
  app.get('/api/domains/:uuid/xml', async (c) => {
    const dom = await connOf(st, c).lookupByUUID(c.req.param('uuid'));
    return c.json({ xml: await dom.getXMLDesc() });
  });
  app.get('/api/tasks', (c) => c.json(st.tasks.list()));
  app.get('/api/tasks/:task', (c) => c.json(st.tasks.get(c.req.param('task'))));
  app.get('/api/repos', (c) => c.json(st.repos.list()));
  app.get('/api/repos/:repo/points', async (c) => {
    const domain = c.req.query('domain');
    const points = await st.repos.points(c.req.param('repo'));
    return c.json(points.filter((p) => domain === undefined || p.domain.name === domain).map((p) => ({
      domain: p.domain.name, id: p.id, time: p.time, level: p.level, base: p.base, reason: p.reason,
      sizeBytes: p.disks.reduce((n, d) => n + d.size, 0), newBytes: p.disks.reduce((n, d) => n + d.bytesNew, 0), verify: p.verify ?? null,
    })));
  });
  app.get('/api/repos/:repo/points/:domain/:point/restore-preview', async (c) => {
    const repo = await st.repos.open(c.req.param('repo'));
    const p = await repo.readPoint(c.req.param('domain'), c.req.param('point'));
    const dest = c.req.query('dest');
    if (dest === undefined || dest === '') throw virErr('INVALID_ARG', 'NONE', 'restore-preview needs dest= (the destination folder)');
    const only = c.req.queries('disk');
    const format = c.req.query('format') === 'qcow2' ? 'qcow2' : 'raw';
    const disks = p.disks.filter((d) => only === undefined || only.includes(d.target));
    return c.json({ format, disks: restoreTargets(p.domain.name, disks, dest, format) });
  });
  app.get('/api/repos/:repo/prune-preview', async (c) => {
    const domain = c.req.query('domain');
    if (!domain) throw virErr('INVALID_ARG', 'NONE', 'prune-preview needs domain=');
    const plan = planPrune((await st.repos.points(c.req.param('repo'))).filter((p) => p.domain.name === domain), keepPolicy(c.req.query()));
    return c.json({
      domain,
      keep: plan.keep.map((k) => ({ id: k.point.id, time: k.point.time, level: k.point.level, rule: k.rule })),
      remove: plan.remove.map((p) => ({ id: p.id, time: p.time, level: p.level })),
    });
  });
}
