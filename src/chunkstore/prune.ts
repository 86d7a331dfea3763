// Which points a retention policy keeps (a pure planner) and applying the plan.
//
// Semantics are Proxmox Backup Server's (also its prune simulator), in UTC:
// rules run in the order last, hourly, daily, weekly, monthly, yearly. Each
// rule walks the points newest first and keeps the newest point of each
// period (the point itself for keep-last) until it has kept N periods.
// Periods that already hold a point kept by an earlier rule are skipped and
// do not count towards N; the other points of a period this rule kept are
// removed. What no rule keeps is removed. No rule at all keeps everything.

import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { listClaims } from './lease.js';
import { pointKey, type ChunkRepository, type PointRecord } from './repo.js';
import { deleteUnlessRetained, RetentionTally, type RetentionReport } from './retention.js';

import { PRUNE_RULES } from './defaults.js';

export { PRUNE_RULES };
export type PruneRule = (typeof PRUNE_RULES)[number];
export type KeepPolicy = Partial<Record<PruneRule, number>>;

export interface PrunePlan {
  /** Newest first, with the rule that kept each point. */
  keep: { point: PointRecord; rule: PruneRule | 'no-policy' }[];
  /** Newest first. */
  remove: PointRecord[];
}

/** The ISO-8601 week of a UTC date, as 'YYYY-Www' (weeks start on Monday; week 1 holds the first Thursday). */
export function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day); // the Thursday of this week decides its year
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** The period a point falls in under `rule` (UTC). */
export function periodOf(rule: PruneRule, p: PointRecord): string {
  const d = new Date(p.time);
  const iso = d.toISOString();
  switch (rule) {
    case 'last':
      return `${p.time} ${p.id}`;
    case 'hourly':
      return iso.slice(0, 13);
    case 'daily':
      return iso.slice(0, 10);
    case 'weekly':
      return isoWeek(d);
    case 'monthly':
      return iso.slice(0, 7);
    case 'yearly':
      return iso.slice(0, 4);
  }
}

function newestFirst(a: PointRecord, b: PointRecord): number {
  return a.time > b.time ? -1 : a.time < b.time ? 1 : a.id > b.id ? -1 : a.id < b.id ? 1 : 0;
}

/** The plan for one domain's points under `policy` (counts of 0 or absent: the rule is off). */
export function planPrune(points: PointRecord[], policy: KeepPolicy): PrunePlan {
  const list = [...points].sort(newestFirst);
  const active = PRUNE_RULES.filter((r) => (policy[r] ?? 0) > 0);
  if (active.length === 0) return { keep: list.map((point) => ({ point, rule: 'no-policy' })), remove: [] };
  const mark = new Map<PointRecord, PruneRule | 'remove'>();
  for (const rule of active) {
    const n = policy[rule]!;
    const covered = new Set<string>();
    for (const p of list) if (mark.has(p) && mark.get(p) !== 'remove') covered.add(periodOf(rule, p));
    const taken = new Set<string>();
    for (const p of list) {
      if (mark.has(p)) continue;
      const period = periodOf(rule, p);
      if (covered.has(period)) continue;
      if (taken.has(period)) {
        mark.set(p, 'remove');
      } else {
        if (taken.size >= n) break;
        taken.add(period);
        mark.set(p, rule);
      }
    }
  }
  const plan: PrunePlan = { keep: [], remove: [] };
  for (const p of list) {
    const m = mark.get(p);
    if (m === undefined || m === 'remove') plan.remove.push(p);
    else plan.keep.push({ point: p, rule: m });
  }
  return plan;
}

export interface PruneApplied {
  /** ids of the points removed */
  removed: string[];
  /** index objects of removed points kept because a running backup reuses them as its base (gc removes them later) */
  keptForRuns: string[];
  /** points (and indexes) the store's object lock keeps for now */
  retained: RetentionReport;
}

export interface PruneApplyOptions {
  log?: Logger;
  /** Tests: after the records are deleted, before the lease claims are listed. */
  afterRecordsDeleted?: () => Promise<void>;
}

/**
 * Remove the plan's points: their records first, then — after listing the
 * lease claims of running backups — their indexes, except those a live claim
 * names as its base (docs/repository.md, "prune with several writers").
 * Chunks stay until gc. A record under object lock stays, with its indexes.
 */
export async function prunePoints(repo: ChunkRepository, plan: PrunePlan, opts: PruneApplyOptions = {}): Promise<PruneApplied> {
  const log = opts.log ?? silentLogger;
  const tally = new RetentionTally();
  const gone: PointRecord[] = [];
  for (const p of plan.remove) {
    const key = pointKey(p.domain.name, p.id);
    if (!(await deleteUnlessRetained(repo.store, key, tally))) continue;
    log.info({ domain: p.domain.name, point: p.id }, 'pruned backup point');
    gone.push(p);
  }
  await opts.afterRecordsDeleted?.();
  const claimed = new Set<string>();
  if (gone.length > 0) for (const c of await listClaims(repo.store)) if (c.live) for (const k of c.claim?.base?.indexes ?? []) claimed.add(k);
  const keptForRuns: string[] = [];
  for (const p of gone) {
    for (const d of p.disks) {
      if (claimed.has(d.index)) keptForRuns.push(d.index);
      else await deleteUnlessRetained(repo.store, d.index, tally);
    }
  }
  if (keptForRuns.length > 0) log.info({ indexes: keptForRuns.length }, 'kept the indexes of pruned points that running backups reuse');
  return { removed: gone.map((p) => p.id), keptForRuns, retained: tally.report() };
}

/** prunePoints, returning the removed ids. */
export async function applyPrune(repo: ChunkRepository, plan: PrunePlan, log: Logger = silentLogger): Promise<string[]> {
  return (await prunePoints(repo, plan, { log })).removed;
}

/**
 * The checkpoint names the remaining points still reference: after a prune,
 * the domain's checkpoints of this repository's chain that are not in this
 * set are no longer needed by any point (the caller, which has the driver,
 * deletes them).
 */
export function checkpointsReferenced(points: PointRecord[]): Set<string> {
  const names = new Set<string>();
  for (const p of points) if (p.checkpoint) names.add(p.checkpoint.name);
  return names;
}
