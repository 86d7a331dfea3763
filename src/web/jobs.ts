// The job history the domain page shows: backup jobs the daemon's events
// reported ended, and the ones seen running (by the console's own requests),
// per domain, bounded. In memory only: the daemon keeps no job history of
// its own, and a restart starts an empty one.

import type { JobCompletedEvent, JobStats } from '../api/driver.js';
import { JobType } from '../flags.js';

export type JobKind = 'push' | 'pull' | 'backup';
export type JobResult = 'completed' | 'failed' | 'aborted' | 'running';

export interface JobRecord {
  id: number;
  kind: JobKind;
  result: JobResult;
  startedAt: string;
  endedAt: string | null;
  durationMs: number | null;
  bytes: number | null;
  error: string | null;
}

const PER_DOMAIN = 50;
const MAX_DOMAINS = 1000;

export function jobResult(stats: JobStats): JobResult {
  if (stats.success === true || stats.type === JobType.COMPLETED) return 'completed';
  if (stats.type === JobType.CANCELLED) return 'aborted';
  return 'failed';
}

export class JobHistory {
  private readonly byDomain = new Map<string, JobRecord[]>();
  /** results told by backupEnd (a pull job ended with ABORT reports success in its event: its data was whole) */
  private readonly told = new Map<string, JobResult>();

  constructor(private readonly now: () => number = Date.now) {}

  /** A job seen running (kind known then: the job's XML says push or pull). */
  running(uuid: string, id: number, kind: JobKind, elapsedMs: number): void {
    const rec = this.find(uuid, id);
    if (rec) {
      if (rec.kind === 'backup') rec.kind = kind;
      return;
    }
    this.add(uuid, { id, kind, result: 'running', startedAt: new Date(this.now() - elapsedMs).toISOString(), endedAt: null, durationMs: null, bytes: null, error: null });
  }

  ended(ev: JobCompletedEvent): JobRecord {
    const t = this.now();
    const elapsed = ev.stats.time_elapsed ?? null;
    const prev = this.find(ev.domain.uuid, ev.jobId);
    const startedAt = prev?.startedAt ?? new Date(t - (elapsed ?? 0)).toISOString();
    const key = `${ev.domain.uuid}/${ev.jobId}`;
    const told = this.told.get(key);
    this.told.delete(key);
    const rec: JobRecord = {
      id: ev.jobId,
      kind: prev?.kind ?? 'backup',
      result: told ?? jobResult(ev.stats),
      startedAt,
      endedAt: new Date(t).toISOString(),
      durationMs: elapsed ?? t - Date.parse(startedAt),
      bytes: ev.stats.disk_processed ?? ev.stats.disk_total ?? null,
      error: ev.stats.success === false ? (ev.stats.errmsg ?? null) : null,
    };
    if (prev) Object.assign(prev, rec);
    else this.add(ev.domain.uuid, rec);
    return prev ?? rec;
  }

  /** backupEnd's answer for a job the console ended: 1 complete, 0 aborted (its event may come before or after). */
  endedBy(uuid: string, id: number, complete: boolean): void {
    const result: JobResult = complete ? 'completed' : 'aborted';
    const rec = this.find(uuid, id);
    if (rec && rec.result !== 'running') rec.result = result;
    else {
      if (this.told.size > 1000) this.told.clear();
      this.told.set(`${uuid}/${id}`, result);
    }
  }

  /** Newest first. */
  of(uuid: string): JobRecord[] {
    return [...(this.byDomain.get(uuid) ?? [])].reverse();
  }

  private find(uuid: string, id: number): JobRecord | undefined {
    return this.byDomain.get(uuid)?.find((r) => r.id === id);
  }

  private add(uuid: string, rec: JobRecord): void {
    let list = this.byDomain.get(uuid);
    if (!list) {
      if (this.byDomain.size >= MAX_DOMAINS) this.byDomain.delete(this.byDomain.keys().next().value!);
      list = [];
      this.byDomain.set(uuid, list);
    }
    list.push(rec);
    if (list.length > PER_DOMAIN) list.splice(0, list.length - PER_DOMAIN);
  }
}
