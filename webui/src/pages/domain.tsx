// One domain: its checkpoint tree, job history, backup points per repository, and the actions on them.
import { useState } from 'preact/hooks';
import { enc, get, post } from '../api.js';
import { ActionButton, Badge, ErrorLine, Panel, ProgressBar, useLoad, useTick } from '../components.js';
import { domainsChanged, tasks } from '../events.js';
import { age, bytes, duration, time } from '../format.js';
import { repos } from '../repos.js';
import { useStore } from '../store.js';
import type { CheckpointNode, DomainDetail, JobRecord, Task } from '../types.js';
import { taskSummary } from '../task-summary.js';
import { BackupForm, RawJobForm } from './domain-actions.js';
import { PointsPanel } from './points.js';
import { PrunePanel } from './prune.js';

function CheckpointTree(props: { nodes: CheckpointNode[]; current: string | null }) {
  const names = new Set(props.nodes.map((n) => n.name));
  const children = new Map<string | null, CheckpointNode[]>();
  for (const n of props.nodes) {
    const parent = n.parent !== null && names.has(n.parent) ? n.parent : null;
    children.set(parent, [...(children.get(parent) ?? []), n]);
  }
  const branch = (parent: string | null) => {
    const list = children.get(parent);
    if (!list) return null;
    return (
      <ul class="tree">
        {list.map((n) => (
          <li key={n.name} data-checkpoint={n.name}>
            <span class={n.name === props.current ? 'cp current' : 'cp'}>{n.name}</span>{' '}
            <span class="muted">
              {time(n.creationTime)} · {n.disks.join(', ')}
            </span>
            {n.name === props.current && <span class="badge badge-ok">current</span>}
            {n.inconsistent !== null && <span class="badge badge-bad" title={n.inconsistent}>inconsistent</span>}
            {branch(n.name)}
          </li>
        ))}
      </ul>
    );
  };
  if (props.nodes.length === 0) return <p class="muted">No checkpoints.</p>;
  return branch(null);
}

function JobsTable(props: { uuid: string; jobs: JobRecord[]; onError: (e: unknown) => void }) {
  return (
    <table class="grid" id="jobs">
      <thead>
        <tr>
          <th>Job</th><th>Kind</th><th>Result</th><th>Started</th><th>Duration</th><th>Bytes</th><th>Error</th><th />
        </tr>
      </thead>
      <tbody>
        {props.jobs.map((j) => (
          <tr key={String(j.id)} data-job={String(j.id)}>
            <td class="num">{String(j.id)}</td>
            <td>{j.kind}</td>
            <td><Badge value={j.result} /></td>
            <td class="time">{time(j.startedAt)}</td>
            <td>{j.result === 'running' ? '…' : duration(j.durationMs)}</td>
            <td class="num">{bytes(j.bytes)}</td>
            <td class="error-text">{j.error ?? ''}</td>
            <td>
              {j.result === 'running' && (
                <ActionButton
                  label="Abort"
                  name="abort"
                  danger
                  onError={props.onError}
                  run={() => post(`/api/domains/${enc(props.uuid)}/jobs/${enc(String(j.id))}/abort`)}
                />
              )}
            </td>
          </tr>
        ))}
        {props.jobs.length === 0 && <tr><td colSpan={8} class="muted">No jobs yet.</td></tr>}
      </tbody>
    </table>
  );
}

function TasksTable(props: { list: Task[]; onError: (e: unknown) => void }) {
  if (props.list.length === 0) return <p class="muted">No console tasks for this domain since the page was loaded.</p>;
  return (
    <table class="grid" id="tasks">
      <thead>
        <tr><th>Task</th><th>Kind</th><th>Progress</th><th>Started</th><th>Result</th><th /></tr>
      </thead>
      <tbody>
        {props.list.map((t) => (
          <tr key={t.task} data-task={t.task} data-kind={t.kind} data-state={t.state}>
            <td class="mono">{t.task}</td>
            <td>{t.kind}</td>
            <td class="jobcell"><ProgressBar processed={t.processed} total={t.total} state={t.state} /></td>
            <td class="time">{time(t.startedAt)}</td>
            <td class={t.error ? 'error-text' : undefined}>{taskSummary(t)}</td>
            <td>
              {t.state === 'running' && t.kind === 'instant-restore' && (
                <ActionButton label="Stop" name="stop-task" danger onError={props.onError} run={() => post(`/api/tasks/${enc(t.task)}/stop`)} />
              )}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function DomainHeader(props: { d: DomainDetail; now: number }) {
  const { d } = props;
  return (
    <div class="domain-head">
      <h1 id="domain-name">{d.name}</h1>
      <div class="facts">
        <Badge value={d.state} />
        <span class="muted mono"> {d.uuid}</span>
        {d.lastPoint && (
          <span>
            {' '}· last point {d.lastPoint.id} ({d.lastPoint.level}) {age(d.lastPoint.time, props.now)}
          </span>
        )}
      </div>
      {d.description && <p id="domain-description" class="description">{d.description}</p>}
      {d.warnings.map((w) => <div class="warn-text">{w}</div>)}
    </div>
  );
}

export function DomainPage(props: { uuid: string }) {
  const changed = useStore(domainsChanged);
  const all = useStore(tasks);
  const now = useTick(15_000);
  const [actionError, setActionError] = useState<unknown>(null);
  const { data: d, error } = useLoad(() => get<DomainDetail>(`/api/domains/${enc(props.uuid)}`), [props.uuid, changed]);
  const repoList = useStore(repos);
  if (!d) return <div><ErrorLine error={error} />{!error && <p class="muted">Loading…</p>}</div>;
  const mine = [...all.values()]
    .filter((t) => t.domain === d.uuid || t.domain === d.name)
    .sort((a, b) => String(b.startedAt).localeCompare(String(a.startedAt)));
  return (
    <div>
      <p class="crumbs"><a href="#/domains">Domains</a> / {d.name}</p>
      <DomainHeader d={d} now={now} />
      <ErrorLine error={error} />
      <ErrorLine error={actionError} />
      <div class="cols">
        <Panel title="Start a backup" id="backup-panel">
          <BackupForm uuid={d.uuid} repos={repoList} onError={setActionError} />
        </Panel>
        <Panel title="Checkpoints" id="checkpoints-panel">
          <CheckpointTree nodes={d.checkpointTree} current={d.currentCheckpoint} />
        </Panel>
      </div>
      <Panel title="Console tasks" id="tasks-panel">
        <TasksTable list={mine} onError={setActionError} />
      </Panel>
      <Panel title="Backup points" id="points-panel">
        <PointsPanel domain={d} repos={repoList} onError={setActionError} />
      </Panel>
      <div class="cols">
        <Panel title="Jobs" id="jobs-panel">
          <JobsTable uuid={d.uuid} jobs={d.jobs} onError={setActionError} />
        </Panel>
        <Panel title="Prune preview" id="prune-panel">
          <PrunePanel domain={d} repos={repoList} onError={setActionError} />
        </Panel>
      </div>
      <Panel title="Raw push/pull job" id="raw-panel">
        <RawJobForm uuid={d.uuid} name={d.name} onError={setActionError} />
      </Panel>
    </div>
  );
}
