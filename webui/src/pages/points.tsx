// Backup points of a domain, per repository: level, size, verified state, and what can be done
// with one: verify it, restore it (after a preview of what will be written), serve it instantly.
import { useState } from 'preact/hooks';
import { enc, get, post } from '../api.js';
import { ActionButton, Badge, useReadOnly } from '../components.js';
import { bytes, time } from '../format.js';
import { repoName } from '../repos.js';
import type { DomainDetail, PointRecord, Repo, RestorePreview } from '../types.js';

const pointPath = (p: PointRecord, domain: string) =>
  `/api/repos/${enc(p.repo)}/points/${enc(domain)}/${enc(p.id)}`;

const inputValue = (e: Event) => (e.currentTarget as HTMLInputElement).value;

function RestorePanel(props: { p: PointRecord; domain: string; onError: (e: unknown) => void; onClose: () => void }) {
  const readOnly = useReadOnly();
  const [destDir, setDestDir] = useState('');
  const [format, setFormat] = useState<'raw' | 'qcow2'>('raw');
  const [preview, setPreview] = useState<RestorePreview | null>(null);
  const [started, setStarted] = useState<string | null>(null);
  const base = pointPath(props.p, props.domain);
  const load = async () => {
    setPreview(await get<RestorePreview>(`${base}/restore-preview?dest=${enc(destDir)}&format=${format}`));
  };
  const taken = preview ? preview.disks.some((x) => x.exists) : true;
  return (
    <div class="subpanel" id="restore-panel">
      <h3>Restore point {props.p.id} (every disk of the point, into new files)</h3>
      <div class="inline form">
        <label>
          Destination directory (absolute)
          <input type="text" name="destDir" value={destDir} disabled={readOnly} onInput={(e) => (setDestDir(inputValue(e)), setPreview(null))} />
        </label>
        <label>
          Format
          <select name="format" value={format} disabled={readOnly} onChange={(e) => (setFormat(inputValue(e) as 'raw'), setPreview(null))}>
            <option value="raw">raw</option>
            <option value="qcow2">qcow2</option>
          </select>
        </label>
      </div>
      <div class="buttons">
        <ActionButton label="Preview" name="restore-preview" disabled={destDir.trim() === ''} onError={props.onError} run={load} />
        {preview && (
          <ActionButton
            label="Restore"
            name="restore"
            disabled={taken}
            onError={props.onError}
            run={async () => setStarted((await post<{ task: string }>(`${base}/restore`, { destDir, format })).task)}
          />
        )}
        <button type="button" onClick={props.onClose}>Close</button>
        {started && <span class="muted">started task {started}</span>}
      </div>
      {preview && (
        <table class="grid" id="restore-preview">
          <thead><tr><th>Disk</th><th>Size</th><th>Will write</th><th /></tr></thead>
          <tbody>
            {preview.disks.map((x) => (
              <tr key={x.target} data-target={x.target}>
                <td>{x.target}</td>
                <td class="num">{bytes(x.size)}</td>
                <td class="mono">{x.dest}</td>
                <td>{x.exists ? <span class="badge badge-bad">exists: restore refused</span> : <span class="badge badge-ok">new file</span>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function InstantPanel(props: { p: PointRecord; domain: string; onError: (e: unknown) => void; onClose: () => void }) {
  const readOnly = useReadOnly();
  const [name, setName] = useState(`${props.domain}-instant`);
  const [served, setServed] = useState<{ task: string; nbdUri: string } | null>(null);
  return (
    <div class="subpanel" id="instant-panel">
      <h3>Instant restore of point {props.p.id}</h3>
      <p class="muted">Defines a new domain whose disks are overlays on the point, served over NBD from the repository; stop the task to end it.</p>
      <div class="inline form">
        <label>
          New domain name
          <input type="text" name="instantName" value={name} disabled={readOnly} onInput={(e) => setName(inputValue(e))} />
        </label>
      </div>
      <div class="buttons">
        <ActionButton
          label="Start instant restore"
          name="instant-restore"
          disabled={name.trim() === ''}
          onError={props.onError}
          run={async () => setServed(await post<{ task: string; nbdUri: string }>(`${pointPath(props.p, props.domain)}/instant-restore`, { name }))}
        />
        <button type="button" onClick={props.onClose}>Close</button>
      </div>
      {served && (
        <p id="instant-restore">
          Serving at <span class="mono">{served.nbdUri}</span> (task <span class="mono">{served.task}</span>).
        </p>
      )}
    </div>
  );
}

function PointRow(props: { p: PointRecord; domain: string; onOpen: (what: 'restore' | 'instant') => void; onError: (e: unknown) => void }) {
  const { p } = props;
  const readOnly = useReadOnly();
  return (
    <tr data-point={p.id} data-level={p.level} data-verified={p.verified ?? ''}>
      <td class="mono">{p.id}</td>
      <td class="time">{time(p.time)}</td>
      <td><span class={`level level-${p.level}`}>{p.level}</span></td>
      <td class="num">{bytes(p.sizeBytes)}</td>
      <td class="num">{bytes(p.newBytes)}</td>
      <td>
        {p.verified === null ? <span class="muted">not verified</span> : <Badge value={p.verified} />}
        {p.verifiedAt && <span class="muted"> {time(p.verifiedAt)}</span>}
      </td>
      <td class="actions">
        <ActionButton label="Verify" name="verify" onError={props.onError} run={() => post(`/api/repos/${enc(p.repo)}/verify`, { domain: props.domain, point: p.id })} />{' '}
        <button type="button" data-action="restore-open" disabled={readOnly} onClick={() => props.onOpen('restore')}>Restore…</button>{' '}
        <button type="button" data-action="instant-open" disabled={readOnly} onClick={() => props.onOpen('instant')}>Instant restore…</button>
      </td>
    </tr>
  );
}

export function PointsPanel(props: { domain: DomainDetail; repos: Repo[]; onError: (e: unknown) => void }) {
  const [open, setOpen] = useState<{ p: PointRecord; what: 'restore' | 'instant' } | null>(null);
  const byRepo = new Map<string, PointRecord[]>();
  for (const p of props.domain.points) byRepo.set(p.repo, [...(byRepo.get(p.repo) ?? []), p]);
  if (byRepo.size === 0) return <p class="muted">No backup points of this domain in the console's repositories.</p>;
  const close = () => setOpen(null);
  return (
    <div>
      {[...byRepo].map(([repo, points]) => (
        <div key={repo} class="repo" data-repo={repo}>
          <h3>Repository {repoName(props.repos, repo)}</h3>
          <table class="grid points">
            <thead>
              <tr><th>Point</th><th>Time</th><th>Level</th><th>Size</th><th title="bytes this point added to the repository (after deduplication and compression)">New stored</th><th>Verified</th><th>Actions</th></tr>
            </thead>
            <tbody>
              {points.map((p) => (
                <PointRow key={p.id} p={p} domain={props.domain.name} onOpen={(what) => setOpen({ p, what })} onError={props.onError} />
              ))}
            </tbody>
          </table>
        </div>
      ))}
      {open?.what === 'restore' && <RestorePanel key={open.p.id} p={open.p} domain={props.domain.name} onError={props.onError} onClose={close} />}
      {open?.what === 'instant' && <InstantPanel key={open.p.id} p={open.p} domain={props.domain.name} onError={props.onError} onClose={close} />}
    </div>
  );
}
