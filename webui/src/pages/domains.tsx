// Every domain at a glance: state, checkpoints, last backup point and its age, the running job, warnings.
import { enc, get } from '../api.js';
import { Badge, ErrorLine, ProgressBar, useLoad, useTick } from '../components.js';
import { domainsChanged, latestTaskOf, tasks } from '../events.js';
import { age, time } from '../format.js';
import { repoName, repos } from '../repos.js';
import { useStore } from '../store.js';
import type { DomainSummary, Task } from '../types.js';

/** The running job or console task with its bar; else the last finished console task. */
function JobCell(props: { d: DomainSummary; task: Task | null }) {
  const { d, task } = props;
  if (d.job && task?.state !== 'running') {
    return (
      <div class="job">
        <span class="job-kind">{d.job.kind} job {String(d.job.id)}</span>
        <ProgressBar processed={d.job.processed} total={d.job.total} />
      </div>
    );
  }
  if (!task) return <span class="muted">—</span>;
  return (
    <div class="job">
      <span class="job-kind">{task.kind}</span>
      <ProgressBar processed={task.processed} total={task.total} state={task.state} />
    </div>
  );
}

function DomainRow(props: { d: DomainSummary; task: Task | null; now: number }) {
  const { d, now } = props;
  const repoList = useStore(repos);
  return (
    <tr data-uuid={d.uuid}>
      <td class="name">
        <a href={`#/domain/${enc(d.uuid)}`}>{d.name}</a>
      </td>
      <td>
        <Badge value={d.state} />
      </td>
      <td class="num">{d.checkpoints}</td>
      <td>{d.currentCheckpoint ?? <span class="muted">—</span>}</td>
      <td>
        {d.lastPoint ? (
          <span title={time(d.lastPoint.time)}>
            {d.lastPoint.id} <span class={`level level-${d.lastPoint.level}`}>{d.lastPoint.level}</span>{' '}
            <span class="muted">in {repoName(repoList, d.lastPoint.repo)}</span>
          </span>
        ) : (
          <span class="muted">never</span>
        )}
      </td>
      <td class="age">{d.lastPoint ? age(d.lastPoint.time, now) : '—'}</td>
      <td class="jobcell">
        <JobCell d={d} task={props.task} />
      </td>
      <td class="warnings">
        {d.warnings.map((w) => (
          <div class="warn-text">{w}</div>
        ))}
      </td>
    </tr>
  );
}

export function DomainsPage() {
  const changed = useStore(domainsChanged);
  const all = useStore(tasks);
  const now = useTick(15_000);
  const { data, error } = useLoad(() => get<DomainSummary[]>('/api/domains'), [changed]);
  return (
    <div>
      <h1>Domains</h1>
      <ErrorLine error={error} />
      <table class="grid" id="domains">
        <thead>
          <tr>
            <th>Name</th>
            <th>State</th>
            <th class="num">Checkpoints</th>
            <th>Current checkpoint</th>
            <th>Last backup point</th>
            <th>Age</th>
            <th>Job</th>
            <th>Warnings</th>
          </tr>
        </thead>
        <tbody>
          {data?.map((d) => (
            <DomainRow key={d.uuid} d={d} task={latestTaskOf(all, d.uuid, d.name)} now={now} />
          ))}
          {data && data.length === 0 && (
            <tr>
              <td colSpan={8} class="muted">
                No domains defined.
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </div>
  );
}
