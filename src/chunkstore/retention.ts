// Object lock as prune and gc see it: an object still under retention cannot
// be deleted yet (S3 Object Lock; in a versioned bucket a plain DELETE would
// only hide it behind a delete marker), so they skip it and say how many they
// skipped and until when, instead of failing the run. A store without object
// lock (the folder) reports no retention, and everything is deletable.

import type { ObjectStore } from './object-store.js';

export interface RetentionReport {
  /** objects skipped because they are under retention */
  count: number;
  /** the earliest and latest end of their retention (ISO-8601), null when none */
  earliestUntil: string | null;
  latestUntil: string | null;
}

export class RetentionTally {
  private count = 0;
  private earliest = Infinity;
  private latest = -Infinity;

  add(untilMs: number): void {
    this.count++;
    this.earliest = Math.min(this.earliest, untilMs);
    this.latest = Math.max(this.latest, untilMs);
  }

  report(): RetentionReport {
    if (this.count === 0) return { count: 0, earliestUntil: null, latestUntil: null };
    return { count: this.count, earliestUntil: new Date(this.earliest).toISOString(), latestUntil: new Date(this.latest).toISOString() };
  }
}

/** Human words for a report ('' when nothing was retained). */
export function describeRetention(r: RetentionReport, what: string): string {
  if (r.count === 0) return '';
  const when = r.earliestUntil === r.latestUntil ? `until ${r.latestUntil}` : `until ${r.earliestUntil} … ${r.latestUntil}`;
  return `${r.count} ${what} are under object lock ${when}: not deleted yet (a later run deletes them)`;
}

/**
 * Delete `key` unless its retention has not ended (then tally it and return
 * false). `st`: a stat the caller just made (saves a request).
 */
export async function deleteUnlessRetained(store: ObjectStore, key: string, tally: RetentionTally, st?: { retainUntilMs?: number } | null, nowMs = Date.now()): Promise<boolean> {
  const info = st === undefined ? await store.stat(key) : st;
  const until = info?.retainUntilMs;
  if (until !== undefined && until > nowMs) {
    tally.add(until);
    return false;
  }
  await store.delete(key);
  return true;
}
