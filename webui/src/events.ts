// The one live feed: /api/events (server-sent events) while logged in. Driver events go to the
// events page and tell the open page its data changed; task events carry console tasks' progress.
import { get } from './api.js';
import { store } from './store.js';
import { taskSummary } from './task-summary.js';
import type { LiveEvent, Task } from './types.js';

const KEEP_EVENTS = 500;

export const liveEvents = store<LiveEvent[]>([]);
export const tasks = store<Map<string, Task>>(new Map());
/** Bumped (at most every 250 ms) when a driver event arrived: pages showing domains refetch. */
export const domainsChanged = store<number>(0);
export const streamState = store<'connecting' | 'open' | 'closed'>('closed');

let source: EventSource | null = null;
let seq = 0;
let bumpTimer: ReturnType<typeof setTimeout> | null = null;

function push(e: Omit<LiveEvent, 'seq'>): void {
  const list = [{ ...e, seq: ++seq }, ...liveEvents.get()];
  liveEvents.set(list.length > KEEP_EVENTS ? list.slice(0, KEEP_EVENTS) : list);
}

function bumpDomains(): void {
  if (bumpTimer !== null) return;
  bumpTimer = setTimeout(() => {
    bumpTimer = null;
    domainsChanged.set(domainsChanged.get() + 1);
  }, 250);
}

function detailText(detail: unknown): string {
  if (detail === null || detail === undefined) return '';
  return typeof detail === 'string' ? detail : JSON.stringify(detail);
}

interface DomainEventData {
  type: string;
  domain?: { uuid?: string; name?: string };
  detail?: Record<string, unknown>;
  time?: string;
}

// libvirt's virDomainBlockJobType and virConnectDomainEventBlockJobStatus
const BLOCK_JOB_TYPES = ['unknown', 'pull', 'copy', 'commit', 'active commit', 'backup'];
const BLOCK_JOB_STATUS = ['completed', 'failed', 'canceled', 'ready'];

/** A driver event's detail as a line: lifecycle and job ends read as words, others as their fields. */
function domainDetailText(d: DomainEventData): string {
  const x = d.detail ?? {};
  if (d.type === 'lifecycle') return `${String(x.event ?? '')}${x.detail ? ` (${String(x.detail)})` : ''}`;
  if (d.type === 'job-completed') {
    const stats = (x.stats ?? {}) as { success?: boolean; errmsg?: string; disk_processed?: number; disk_total?: number };
    const how = stats.success === false ? `failed: ${stats.errmsg ?? 'unknown error'}` : 'completed';
    return `job ${String(x.jobId ?? '?')} ${how}${stats.disk_total !== undefined ? `, ${stats.disk_processed ?? 0}/${stats.disk_total} bytes` : ''}`;
  }
  if (d.type === 'block-job') {
    const kind = BLOCK_JOB_TYPES[Number(x.blockJobType)] ?? `type ${String(x.blockJobType)}`;
    const status = BLOCK_JOB_STATUS[Number(x.status)] ?? `status ${String(x.status)}`;
    return `disk ${String(x.disk ?? '?')}: ${kind} block job of job ${String(x.jobId ?? '?')} ${status}`;
  }
  return detailText(x);
}

function onDomainEvent(msg: MessageEvent<string>): void {
  const d = JSON.parse(msg.data) as DomainEventData;
  push({
    channel: 'domain',
    type: d.type,
    domain: d.domain?.name ?? d.domain?.uuid ?? '',
    detail: domainDetailText(d),
    time: d.time ?? new Date().toISOString(),
  });
  bumpDomains();
}

function onTaskEvent(msg: MessageEvent<string>): void {
  const t = JSON.parse(msg.data) as Task;
  const before = tasks.get().get(t.task);
  const next = new Map(tasks.get());
  next.set(t.task, t);
  tasks.set(next);
  // the list records a task's start and end, not each progress step
  if (!before || before.state !== t.state) {
    const detail = t.state === 'running' ? '' : taskSummary(t);
    push({ channel: 'task', type: `${t.kind} ${t.state}`, domain: t.domain ?? '', detail, time: t.endedAt ?? t.startedAt });
  }
  if (t.state !== 'running') bumpDomains();
}

export async function loadTasks(): Promise<void> {
  const list = await get<Task[]>('/api/tasks');
  const next = new Map(tasks.get());
  for (const t of list) next.set(t.task, t);
  tasks.set(next);
}

export function openStream(): void {
  if (source) return;
  streamState.set('connecting');
  const es = new EventSource('/api/events');
  source = es;
  es.addEventListener('open', () => {
    streamState.set('open');
    // after a reconnect, what happened meanwhile is not replayed: refetch instead
    bumpDomains();
    loadTasks().catch(() => undefined);
  });
  es.addEventListener('domain', onDomainEvent as EventListener);
  es.addEventListener('task', onTaskEvent as EventListener);
  es.addEventListener('error', () => {
    if (es.readyState !== EventSource.CLOSED) {
      streamState.set('connecting');
      return;
    }
    closeStream();
    // the server refused the stream: most likely the session ended; the check sends us to login
    get('/api/session').then(
      () => setTimeout(openStream, 2000),
      () => undefined,
    );
  });
}

export function closeStream(): void {
  source?.close();
  source = null;
  streamState.set('closed');
}

export function resetLive(): void {
  closeStream();
  liveEvents.set([]);
  tasks.set(new Map());
}

/** The newest console task of a domain (by uuid or name), running or just finished. */
export function latestTaskOf(all: Map<string, Task>, uuid: string, name: string): Task | null {
  let best: Task | null = null;
  for (const t of all.values()) {
    if (t.domain !== uuid && t.domain !== name) continue;
    if (!best || String(t.startedAt) > String(best.startedAt)) best = t;
  }
  return best;
}
