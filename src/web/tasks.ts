// Console tasks: the backup command's flows (backup, verify, restore, instant
// restore) run in the daemon on behalf of a browser. Each has an id, progress
// (bytes), a state and a result; progress is passed on at most 4 times a
// second per task (SSE), the state change at once. Finished tasks are kept,
// bounded, for the task list.

import { randomBytes } from 'node:crypto';
import { toVirError, virErr } from '../errors.js';
import { errField, type Logger } from '../log.js';

export type TaskKind = 'backup' | 'verify' | 'restore' | 'instant-restore';
export type TaskState = 'running' | 'completed' | 'failed' | 'aborted';

export interface TaskView {
  task: string;
  kind: TaskKind;
  domain: string | null;
  state: TaskState;
  processed: number;
  total: number;
  startedAt: string;
  endedAt: string | null;
  result: unknown;
  error: { code: number; name: string; message: string } | null;
}

export interface TaskContext {
  /** bytes done and to do, over all disks */
  progress(processed: number, total: number): void;
  /** a task that keeps something running after its flow returned (instant restore) stays 'running' until stopped */
  keepRunning(stop: () => Promise<unknown>): void;
}

const PROGRESS_INTERVAL_MS = 250;
const KEEP_FINISHED = 100;
const MAX_RUNNING = 16;

interface Entry {
  view: TaskView;
  lastSent: number;
  /** a running view with bytes done was sent (the first one is never held back) */
  moved: boolean;
  pending: NodeJS.Timeout | null;
  stop: (() => Promise<unknown>) | null;
}

export class TaskTable {
  private readonly tasks = new Map<string, Entry>();

  constructor(
    private readonly emit: (view: TaskView) => void,
    private readonly log: Logger,
    /** after a task ends (success or not): repository listings may have changed */
    private readonly ended: (view: TaskView) => void = () => {},
  ) {}

  list(): TaskView[] {
    return [...this.tasks.values()].map((e) => ({ ...e.view })).reverse();
  }

  get(id: string): TaskView {
    return { ...this.entry(id).view };
  }

  /** Starts `run`; its result becomes the task's result. Resolves once it started, with its id. */
  start(kind: TaskKind, domain: string | null, run: (ctx: TaskContext) => Promise<unknown>): TaskView {
    if ([...this.tasks.values()].filter((e) => e.view.state === 'running').length >= MAX_RUNNING) {
      throw virErr('OPERATION_INVALID', 'NONE', `${MAX_RUNNING} console tasks are running already`);
    }
    const view: TaskView = {
      task: randomBytes(8).toString('hex'),
      kind,
      domain,
      state: 'running',
      processed: 0,
      total: 0,
      startedAt: new Date().toISOString(),
      endedAt: null,
      result: null,
      error: null,
    };
    const e: Entry = { view, lastSent: 0, moved: false, pending: null, stop: null };
    this.tasks.set(view.task, e);
    this.trim();
    const ctx: TaskContext = {
      progress: (processed, total) => {
        view.processed = processed;
        view.total = total;
        this.throttled(e);
      },
      keepRunning: (stop) => {
        e.stop = stop;
      },
    };
    this.emit({ ...view });
    run(ctx).then(
      (result) => {
        view.result = result ?? null;
        if (e.stop === null) this.finish(e, 'completed');
        else this.emitNow(e);
      },
      (err: unknown) => {
        const v = toVirError(err);
        this.log.warn({ ...errField(err), task: view.task, kind }, 'console task failed');
        view.error = { code: v.code, name: `VIR_ERR_${v.codeName}`, message: v.message };
        this.finish(e, 'failed');
      },
    );
    return { ...view };
  }

  /** Stops a task that kept something running (an instant restore's serving). */
  async stop(id: string): Promise<TaskView> {
    const e = this.entry(id);
    if (e.view.state !== 'running' || e.stop === null) {
      throw virErr('OPERATION_INVALID', 'NONE', `task ${id} (${e.view.kind}) cannot be stopped: ${e.view.state === 'running' ? 'it ends by itself' : `it is ${e.view.state}`}`);
    }
    await e.stop();
    e.stop = null;
    // what it kept running ended as asked: the task is done
    this.finish(e, 'completed');
    return { ...e.view };
  }

  /** Tasks still running when the console closes: their flows go on; only the view ends. */
  close(): void {
    for (const e of this.tasks.values()) if (e.pending) clearTimeout(e.pending);
  }

  private entry(id: string): Entry {
    const e = this.tasks.get(id);
    if (!e) throw virErr('INVALID_ARG', 'NONE', `no console task '${id}'`);
    return e;
  }

  private finish(e: Entry, state: TaskState): void {
    e.view.state = state;
    e.view.endedAt = new Date().toISOString();
    this.emitNow(e);
    this.ended({ ...e.view });
  }

  private throttled(e: Entry): void {
    // the first bytes done go out at once: a task shorter than the interval still shows it moved
    if (!e.moved && e.view.processed > 0) return this.emitNow(e);
    if (e.pending) return;
    const wait = e.lastSent + PROGRESS_INTERVAL_MS - Date.now();
    if (wait <= 0) this.emitNow(e);
    else e.pending = setTimeout(() => this.emitNow(e), wait);
  }

  private emitNow(e: Entry): void {
    if (e.pending) clearTimeout(e.pending);
    e.pending = null;
    e.lastSent = Date.now();
    if (e.view.processed > 0) e.moved = true;
    this.emit({ ...e.view });
  }

  /** Finished tasks beyond the bound go, oldest first. */
  private trim(): void {
    const finished = [...this.tasks.values()].filter((e) => e.view.state !== 'running');
    for (const e of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.tasks.delete(e.view.task);
  }
}
