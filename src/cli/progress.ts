// `backup-begin --wait`: follow a backup job until it ends. On a terminal a
// cli-progress bar per disk; otherwise plain lines (or JSON lines with
// --json), at most one per disk every 10 % or 5 s, and one per state change;
// nothing with --quiet. Progress comes from getJobStats polls;
// completion from the job-completed event, or from the stats of the
// completed job when the event was missed.
//
// The Driver reports one aggregate disk_processed/disk_total per job, so a
// disk's bar follows the job's aggregate until that disk's block-job event
// says it is done. A driver that also returns per-disk figures as
// `stats.disks` (see DiskStats) gets exact per-disk bars.

import type cliProgress from 'cli-progress';
import { createRequire } from 'node:module';
import type { DriverEvent, JobStats } from '../api/driver.js';
import type { Domain } from '../api/public.js';
import { BlockJobStatus, JobStatsFlags, JobType } from '../flags.js';
import { attr, childElements, firstChild } from '../xml/node.js';
import { parseXml } from './xml-parser.js';

/** Per-disk figures a driver may add to JobStats (not part of the Driver interface today). */
export interface DiskStats {
  name: string;
  processed: number;
  total: number;
}

export type DiskState = 'running' | 'completed' | 'failed' | 'cancelled';

export interface DiskProgress {
  disk: string;
  processed: number;
  total: number;
  state: DiskState;
}

/** Whole percent done, as virsh rounds job progress (100 when nothing remains). */
export function percent(processed: number, total: number): number {
  if (total <= 0) return 0;
  const remaining = Math.max(0, total - processed);
  return remaining === 0 ? 100 : Math.floor(100 - (remaining * 100) / total);
}

/** The disks a backup job copies, from its <domainbackup> (backup='no' disks left out). */
export function backupDisks(xml: string): string[] {
  const root = parseXml(xml);
  const disks = firstChild(root, 'disks');
  if (disks === null) return [];
  return childElements(disks, 'disk')
    .filter((d) => attr(d, 'backup') !== 'no')
    .map((d) => attr(d, 'name') ?? '')
    .filter((n) => n !== '');
}

/** A display of per-disk progress. */
export interface ProgressView {
  update(disks: DiskProgress[]): void;
  stop(): void;
}

const MiB = 1024 * 1024;

/** Least progress, in percent, and least time between two reports of a running disk off a terminal. */
export const REPORT_PERCENT_STEP = 10;
export const REPORT_INTERVAL_MS = 5000;

/**
 * When a pipe or file gets the next report of a disk: a state change always;
 * while running, the first figure, then a step of 10 % or, after 5 s, any change.
 */
export class ReportThrottle {
  private readonly last = new Map<string, { percent: number; state: DiskState; at: number }>();
  constructor(private readonly now: () => number = Date.now) {}

  due(d: DiskProgress): boolean {
    const pct = percent(d.processed, d.total);
    const prev = this.last.get(d.disk);
    const at = this.now();
    const due =
      prev === undefined ||
      prev.state !== d.state ||
      (d.state === 'running' && (pct >= prev.percent + REPORT_PERCENT_STEP || (pct !== prev.percent && at - prev.at >= REPORT_INTERVAL_MS)));
    if (due) this.last.set(d.disk, { percent: pct, state: d.state, at });
    return due;
  }
}

/** Plain lines for a pipe or file: "vda: 40% (25.6/64.0 MiB)", then "vda: completed". */
export class LineProgress implements ProgressView {
  private readonly throttle: ReportThrottle;
  constructor(
    private readonly write: (s: string) => void,
    now?: () => number,
  ) {
    this.throttle = new ReportThrottle(now);
  }

  update(disks: DiskProgress[]): void {
    for (const d of disks) {
      if (!this.throttle.due(d)) continue;
      const line =
        d.state === 'running'
          ? `${d.disk}: ${percent(d.processed, d.total)}% (${(d.processed / MiB).toFixed(1)}/${(d.total / MiB).toFixed(1)} MiB)`
          : `${d.disk}: ${d.state}`;
      this.write(`${line}\n`);
    }
  }

  stop(): void {}
}

/** --json: one JSON line per report, {"type":"progress","disk",...}, as often as LineProgress. */
export class JsonProgress implements ProgressView {
  private readonly throttle: ReportThrottle;
  constructor(
    private readonly write: (s: string) => void,
    now?: () => number,
  ) {
    this.throttle = new ReportThrottle(now);
  }

  update(disks: DiskProgress[]): void {
    for (const d of disks) {
      if (this.throttle.due(d)) this.write(jsonLine({ type: 'progress', ...d, percent: percent(d.processed, d.total) }));
    }
  }

  stop(): void {}
}

/** --quiet: no progress at all. */
export const NO_PROGRESS: ProgressView = { update: () => {}, stop: () => {} };

/** One line of JSON (--json output is JSON lines: one object per line, nothing else). */
export function jsonLine(value: unknown): string {
  return `${JSON.stringify(value)}\n`;
}

/** The progress display for an output mode: nothing, JSON lines, bars on a terminal, else lines. */
export function progressView(o: { json?: boolean; quiet?: boolean }, stream: NodeJS.WriteStream, write: (s: string) => void): ProgressView {
  if (o.quiet) return NO_PROGRESS;
  if (o.json) return new JsonProgress(write);
  return stream.isTTY === true ? new BarProgress(stream) : new LineProgress(write);
}

// cli-progress (CommonJS, with its string-width dependencies) is required only
// when bars are drawn on a terminal, not at every virtback start.
const require = createRequire(import.meta.url);

/** cli-progress bars, one per disk, on the terminal. */
export class BarProgress implements ProgressView {
  private readonly multi: cliProgress.MultiBar;
  private readonly bars = new Map<string, cliProgress.SingleBar>();

  constructor(stream: NodeJS.WriteStream) {
    const bars = require('cli-progress') as typeof cliProgress;
    this.multi = new bars.MultiBar(
      {
        stream,
        format: '{disk} [{bar}] {percentage}% | {done}/{size} MiB | {state}',
        hideCursor: true,
        clearOnComplete: false,
        barsize: 30,
      },
      bars.Presets.shades_classic,
    );
  }

  update(disks: DiskProgress[]): void {
    const width = Math.max(...disks.map((d) => d.disk.length));
    for (const d of disks) {
      const total = Math.max(d.total, 1);
      const value = d.state === 'completed' ? total : Math.min(d.processed, total);
      const payload = {
        disk: d.disk.padEnd(width),
        done: (value / MiB).toFixed(1),
        size: (d.total / MiB).toFixed(1),
        state: d.state,
      };
      const bar = this.bars.get(d.disk);
      if (bar === undefined) this.bars.set(d.disk, this.multi.create(total, value, payload));
      else {
        bar.setTotal(total);
        bar.update(value, payload);
      }
    }
  }

  stop(): void {
    this.multi.stop();
  }
}

export interface WaitOptions {
  view: ProgressView;
  /** how often to poll getJobStats (ms) */
  intervalMs?: number;
}

function stateOf(status: number): DiskState {
  return status === BlockJobStatus.COMPLETED ? 'completed' : status === BlockJobStatus.FAILED ? 'failed' : 'cancelled';
}

function outcomeState(type: number): DiskState {
  return type === JobType.COMPLETED ? 'completed' : type === JobType.FAILED ? 'failed' : 'cancelled';
}

/**
 * Follow job `jobId` of `dom` until it is no longer running; resolves to the
 * completed job's statistics (type COMPLETED, FAILED or CANCELLED).
 */
export async function waitForBackup(dom: Domain, jobId: number, opts: WaitOptions): Promise<JobStats> {
  const conn = dom.getConnect();
  const intervalMs = opts.intervalMs ?? 250;
  const diskState = new Map<string, DiskState>();
  let names: string[] = [];
  try {
    names = backupDisks(await dom.backupGetXMLDesc(jobId));
  } catch {
    // the job may already be over; the stats below tell
  }
  for (const n of names) diskState.set(n, 'running');

  let finished: JobStats | null = null;
  let wake: (() => void) | null = null;
  const mine = (ev: DriverEvent): boolean => (ev.type === 'job-completed' || ev.type === 'block-job') && ev.domain.uuid === dom.uuid && ev.jobId === jobId;
  const offs = [
    conn.on('job-completed', (ev) => {
      if (!mine(ev)) return;
      finished = ev.stats;
      wake?.();
    }),
    conn.on('block-job', (ev) => {
      if (!mine(ev)) return;
      diskState.set(ev.disk, stateOf(ev.status));
      if (!names.includes(ev.disk)) names.push(ev.disk);
    }),
  ];

  const show = (s: JobStats, over: boolean): void => {
    const processed = s.disk_processed ?? 0;
    const total = s.disk_total ?? 0;
    const perDisk = (s as JobStats & { disks?: DiskStats[] }).disks;
    const list = names.length > 0 ? names : ['total'];
    opts.view.update(
      list.map((disk) => {
        const own = perDisk?.find((d) => d.name === disk);
        const state = diskState.get(disk) ?? (over ? outcomeState(s.type) : 'running');
        return { disk, processed: own?.processed ?? processed, total: own?.total ?? total, state };
      }),
    );
  };

  try {
    for (;;) {
      if (finished !== null) break;
      const s = await dom.getJobStats();
      const running = s.type === JobType.UNBOUNDED || s.type === JobType.BOUNDED;
      if (running && (s.id === undefined || s.id === jobId)) {
        show(s, false);
      } else {
        // Not running any more (or another job runs): the completed job's stats tell the outcome.
        const done = await dom.getJobStats({ completed: true, keepCompleted: true });
        if (finished === null && done.type !== JobType.NONE && (done.id === undefined || done.id === jobId)) finished = done;
        if (finished === null) {
          // the job-completed event is on its way
          await new Promise<void>((r) => setTimeout(r, intervalMs));
          if (finished === null) finished = { type: JobType.NONE };
        }
        break;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, intervalMs);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      wake = null;
    }
    const final: JobStats = finished;
    show(final, true);
    return final;
  } finally {
    for (const off of offs) off();
    opts.view.stop();
  }
}

/** The flags value of getJobStats({ completed, keepCompleted }) (exported for tests). */
export const COMPLETED_KEEP = JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED;
