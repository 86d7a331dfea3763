// What the console's pages show of a domain, read through the public API
// (the same Connect/Domain handles the CLI uses): state, checkpoints (tree,
// inconsistency marks, unknown bitmaps as warnings), the running backup job
// with its progress, and the backup points of the configured repositories.
// Values are returned as data: the browser escapes, the server builds no HTML.

import type { DomainSummary } from '../api/driver.js';
import type { Connect, Domain } from '../api/public.js';
import type { PointRecord } from '../chunkstore/index.js';
import { DomainState } from '../flags.js';
import { attr, childElements, childText, firstChild, parseXml } from '../xml/tree.js';
import type { JobHistory, JobKind, JobRecord } from './jobs.js';
import type { RepoSet } from './repos.js';

const STATE_NAMES: Record<number, string> = {
  [DomainState.NOSTATE]: 'nostate',
  [DomainState.RUNNING]: 'running',
  [DomainState.BLOCKED]: 'blocked',
  [DomainState.PAUSED]: 'paused',
  [DomainState.SHUTDOWN]: 'shutdown',
  [DomainState.SHUTOFF]: 'shutoff',
  [DomainState.CRASHED]: 'crashed',
};

export interface CheckpointNode {
  name: string;
  parent: string | null;
  creationTime: number;
  disks: string[];
  inconsistent: string | null;
}

export interface PointSummary {
  repo: string;
  id: string;
  time: string;
  level: 'full' | 'inc';
}

export interface PointView extends PointSummary {
  sizeBytes: number;
  newBytes: number;
  verified: 'ok' | 'bad' | null;
  verifiedAt: string | null;
}

export interface RunningJob {
  id: number;
  kind: JobKind;
  processed: number;
  total: number;
  startedAt: string;
}

export interface DomainRow {
  uuid: string;
  name: string;
  state: string;
  stateReason: number;
  checkpoints: number;
  currentCheckpoint: string | null;
  lastPoint: PointSummary | null;
  /** the newest point in each configured repository (additive to the contract) */
  lastPoints: PointSummary[];
  job: RunningJob | null;
  warnings: string[];
}

export interface DomainDetail extends DomainRow {
  description: string | null;
  checkpointTree: CheckpointNode[];
  jobs: JobRecord[];
  points: PointView[];
}

export interface ViewContext {
  conn: Connect;
  repos: RepoSet;
  jobs: JobHistory;
}

export function checkpointNode(xml: string): CheckpointNode {
  const root = parseXml(xml);
  const parent = firstChild(root, 'parent');
  const disks = firstChild(root, 'disks');
  const mark = firstChild(root, 'inconsistent');
  return {
    name: childText(root, 'name') ?? '',
    parent: parent ? childText(parent, 'name') : null,
    creationTime: Number(childText(root, 'creationTime') ?? 0),
    disks: disks ? childElements(disks, 'disk').filter((d) => attr(d, 'checkpoint') !== 'no').map((d) => attr(d, 'name') ?? '') : [],
    inconsistent: mark === null ? null : (attr(mark, 'reason') ?? 'marked inconsistent'),
  };
}

async function checkpointTree(dom: Domain): Promise<CheckpointNode[]> {
  const nodes: CheckpointNode[] = [];
  for (const cp of await dom.listAllCheckpoints()) {
    // one may be deleted between the list and the read: skip it
    const xml = await cp.getXMLDesc({ noDomain: true }).catch(() => null);
    if (xml !== null) nodes.push(checkpointNode(xml));
  }
  return nodes.sort((a, b) => a.creationTime - b.creationTime || (a.name < b.name ? -1 : 1));
}

/** The running backup job and its progress, or null. */
async function runningJob(dom: Domain, jobs: JobHistory): Promise<RunningJob | null> {
  const ids = await dom.listJobIds().catch(() => [] as number[]);
  const id = ids.at(-1);
  if (id === undefined) return null;
  const stats = await dom.getJobStats().catch(() => null);
  const xml = await dom.backupGetXMLDesc(id).catch(() => null);
  const mode = xml === null ? null : attr(parseXml(xml), 'mode');
  const kind: JobKind = mode === 'pull' ? 'pull' : mode === 'push' || mode === null ? (xml === null ? 'backup' : 'push') : 'backup';
  const elapsed = stats?.time_elapsed ?? 0;
  jobs.running(dom.uuid, id, kind, elapsed);
  return { id, kind, processed: stats?.disk_processed ?? 0, total: stats?.disk_total ?? 0, startedAt: new Date(Date.now() - elapsed).toISOString() };
}

/** Points of one domain in every repository; a repository that cannot be read is a warning, not a failure. */
async function domainPoints(ctx: ViewContext, name: string, warnings: string[]): Promise<Array<{ repo: string; p: PointRecord }>> {
  const out: Array<{ repo: string; p: PointRecord }> = [];
  for (const r of ctx.repos.list()) {
    try {
      for (const p of await ctx.repos.points(r.id)) if (p.domain.name === name) out.push({ repo: r.id, p });
    } catch (e) {
      warnings.push(`repository ${r.name} cannot be read: ${(e as Error).message}`);
    }
  }
  return out.sort((a, b) => (a.p.time < b.p.time ? -1 : a.p.time > b.p.time ? 1 : 0));
}

const summary = (repo: string, p: PointRecord): PointSummary => ({ repo, id: p.id, time: p.time, level: p.level });

async function row(ctx: ViewContext, s: DomainSummary): Promise<{ row: DomainRow; tree: CheckpointNode[]; points: Array<{ repo: string; p: PointRecord }> }> {
  const dom = ctx.conn.domain({ name: s.name, uuid: s.uuid });
  const warnings: string[] = [];
  const tree = await checkpointTree(dom).catch(() => [] as CheckpointNode[]);
  for (const cp of tree) if (cp.inconsistent !== null) warnings.push(`checkpoint ${cp.name} is inconsistent: ${cp.inconsistent}`);
  if (s.state === DomainState.RUNNING || s.state === DomainState.PAUSED || s.state === DomainState.BLOCKED) {
    for (const b of await dom.listUnknownBitmaps().catch(() => [])) warnings.push(`disk ${b.disk} has bitmap ${b.bitmap} that no checkpoint knows`);
  }
  const points = await domainPoints(ctx, s.name, warnings);
  const lastPoints = ctx.repos.list().flatMap((r) => {
    const last = points.filter((x) => x.repo === r.id).at(-1);
    return last ? [summary(last.repo, last.p)] : [];
  });
  const newest = points.at(-1);
  return {
    tree,
    points,
    row: {
      uuid: s.uuid,
      name: s.name,
      state: STATE_NAMES[s.state] ?? 'nostate',
      stateReason: s.reason,
      checkpoints: s.checkpoints,
      currentCheckpoint: tree.at(-1)?.name ?? null,
      lastPoint: newest ? summary(newest.repo, newest.p) : null,
      lastPoints,
      job: s.hasBackupJob ? await runningJob(dom, ctx.jobs) : null,
      warnings,
    },
  };
}

export async function listDomains(ctx: ViewContext): Promise<DomainRow[]> {
  const rows: DomainRow[] = [];
  for (const s of await ctx.conn.listAllDomainSummaries()) rows.push((await row(ctx, s)).row);
  return rows;
}

export async function domainSummary(ctx: ViewContext, uuid: string): Promise<DomainSummary> {
  const dom = await ctx.conn.lookupByUUID(uuid);
  return dom.getInfo();
}

export async function domainDetail(ctx: ViewContext, uuid: string): Promise<DomainDetail> {
  const dom = await ctx.conn.lookupByUUID(uuid);
  const s = await dom.getInfo();
  const { row: r, tree, points } = await row(ctx, { ...s, name: dom.name, uuid: dom.uuid });
  const xml = await dom.getXMLDesc();
  return {
    ...r,
    description: childText(parseXml(xml), 'description'),
    checkpointTree: tree,
    jobs: ctx.jobs.of(uuid),
    points: points.reverse().map(({ repo, p }) => ({
      ...summary(repo, p),
      sizeBytes: p.disks.reduce((n, d) => n + d.size, 0),
      newBytes: p.disks.reduce((n, d) => n + d.bytesNew, 0),
      verified: p.verify ? (p.verify.ok ? 'ok' : 'bad') : null,
      verifiedAt: p.verify?.time ?? null,
    })),
  };
}
