// Small pieces every page uses: progress bars, state badges, error lines, loading data.
import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { errorText, session } from './api.js';
import { domainsChanged } from './events.js';
import { percent } from './format.js';
import { useStore } from './store.js';

export function ProgressBar(props: { processed: number; total: number; state?: string }) {
  const pct = props.state === 'completed' ? 100 : percent(props.processed, props.total);
  return (
    <div
      class={`bar bar-${props.state ?? 'running'}`}
      role="progressbar"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={pct}
      title={`${props.processed} / ${props.total} bytes`}
    >
      <div class="bar-fill" style={{ width: `${pct}%` }} />
      <span class="bar-text">{props.state && props.state !== 'running' ? `${pct} % ${props.state}` : `${pct} %`}</span>
    </div>
  );
}

const STATE_CLASS: Record<string, string> = {
  running: 'ok',
  completed: 'ok',
  ok: 'ok',
  paused: 'warn',
  pmsuspended: 'warn',
  blocked: 'warn',
  shutdown: 'warn',
  aborted: 'warn',
  failed: 'bad',
  bad: 'bad',
  crashed: 'bad',
  shutoff: 'off',
};

export function Badge(props: { value: string | null | undefined; label?: string }) {
  const v = props.value ?? '—';
  return <span class={`badge badge-${STATE_CLASS[v] ?? 'off'}`}>{props.label ?? v}</span>;
}

export function ErrorLine(props: { error: unknown }) {
  const ref = useRef<HTMLDivElement>(null);
  // an action's refusal is shown at the top of the page: bring it into view
  useEffect(() => ref.current?.scrollIntoView({ block: 'nearest' }), [props.error]);
  if (!props.error) return null;
  return (
    <div class="error" role="alert" ref={ref}>
      {errorText(props.error)}
    </div>
  );
}

export function Panel(props: { title: string; children: ComponentChildren; id?: string }) {
  return (
    <section class="panel" id={props.id}>
      <h2>{props.title}</h2>
      <div class="panel-body">{props.children}</div>
    </section>
  );
}

export interface Loaded<T> {
  data: T | null;
  error: unknown;
  reload: () => void;
}

/** Loads once, again when a dependency changes (e.g. the live feed's change counter), and on reload(). */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (v) => live && (setData(v), setError(null)),
      (e: unknown) => live && setError(e),
    );
    return () => {
      live = false;
    };
  }, [...deps, n]);
  const reload = useCallback(() => setN((x) => x + 1), []);
  return { data, error, reload };
}

/** Re-renders every `ms` so ages ("3 min ago") stay true without asking the server. */
export function useTick(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

export function useReadOnly(): boolean {
  return useStore(session)?.role !== 'admin';
}

/** Tells the pages to refetch: an action's effect (a job started) may come with no driver event. */
export function refreshAfterAction(): void {
  domainsChanged.set(domainsChanged.get() + 1);
}

/** A button for a mutating action: disabled for a read-only session, busy while its call runs, the page refetched after. */
export function ActionButton(props: {
  label: string;
  run: () => Promise<unknown>;
  onError: (e: unknown) => void;
  onDone?: () => void;
  danger?: boolean;
  disabled?: boolean;
  name?: string;
}) {
  const readOnly = useReadOnly();
  const [busy, setBusy] = useState(false);
  const click = () => {
    setBusy(true);
    props.onError(null);
    props.run().then(
      () => (setBusy(false), refreshAfterAction(), props.onDone?.()),
      (e: unknown) => (setBusy(false), props.onError(e)),
    );
  };
  return (
    <button
      type="button"
      class={props.danger ? 'danger' : undefined}
      data-action={props.name ?? props.label}
      disabled={readOnly || busy || props.disabled}
      title={readOnly ? 'read-only session' : undefined}
      onClick={click}
    >
      {props.label}
    </button>
  );
}
