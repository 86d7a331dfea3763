// Backup points of a domain, per repository: level, size, verified state, and what can be done
// with one: verify it, restore it (after a preview of what will be written), serve it instantly.
import { useState } from 'preact/hooks';
import { enc, get, post } from '../api.js';
import { ActionButton, Badge, useReadOnly } from '../components.js';
import { bytes, time } from '../format.js';
import type { DomainDetail, PointRecord, RestorePreview } from '../types.js';

const pointPath = (p: PointRecord, domain: string) =>
  `/api/repos/${enc(p.repo)}/points/${enc(domain)}/${enc(p.id)}`;

function RestorePanel(props: { p: PointRecord; domain: string; onError: (e: unknown) => void; onClose: () => void }) {
  const readOnly = useReadOnly();
  const [destDir, setDestDir] = useState('');
  const [preview, setPreview] = useState<RestorePreview | null>(null);
  const [skip, setSkip] = useState<Set<string>>(new Set());
  const [started, setStarted] = useState<string | null>(null);
  const base = pointPath(props.p, props.domain);
  const load = async () => {
    setPreview(await get<RestorePreview>(`${base}/restore-preview?dest=${enc(destDir)}`));
  };
  const chosen = preview ? preview.disks.filter((x) => !skip.has(x.target)).map((x) => x.target) : [];
  const blocked = preview ? preview.disks.some((x) => chosen.includes(x.target) && x.exists) : true;
  const toggle = (target: string) => {
    const next = new Set(skip);
    if (next.has(target)) next.delete(target);
    else next.add(target);
    setSkip(next);
  };
  return (
    <div class="subpanel" id="restore-panel">
      <h3>Restore point {props.p.id} from {props.p.repo}</h3>
      <label>
        Destination directory
        <input type="text" name="destDir" value={destDir} disabled={readOnly} onInput={(e) => (setDestDir((e.currentTarget as HTMLInputElement).value), setPreview(null))} />
      </label>
      <div class="buttons">
        <ActionButton label="Preview" name="restore-preview" disabled={destDir.trim() === ''} onError={props.onError} run={load} />
        <button type="button" onClick={props.onClose}>Close</button>
      </div>
      {preview && (
        <table class="grid" id="restore-preview">
          <thead><tr><th /><th>Disk</th><th>Size</th><th>Will write</th><th>Note</th></tr></thead>
          <tbody>
            {preview.disks.map((x) => (
              <tr key={x.target} data-target={x.target}>
                <td><input type="checkbox" checked={!skip.has(x.target)} disabled={readOnly} onChange={() => toggle(x.target)} /></td>
                <td>{x.target}</td>
                <td class="num">{bytes(x.size)}</td>
                <td class="mono">{x.dest}</td>
                <td>{x.exists ? <span class="badge badge-bad">exists: refused</span> : <span class="badge badge-ok">new file</span>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {preview && (
        <ActionButton
          label="Restore"
          name="restore"
          disabled={blocked || chosen.length === 0}
          onError={props.onError}
          run={async () => setStarted((await post<{ task: string }>(`${base}/restore`, { disks: chosen, destDir })).task)}
        />
      )}
      {started && <span class="muted"> started task {started}</span>}
    </div>
  );
}

function PointRow(props: { p: PointRecord; domain: string; onRestore: () => void; onError: (e: unknown) => void; onNbd: (uri: string) => void }) {
  const { p } = props;
  const readOnly = useReadOnly();
  return (
    <tr data-point={p.id} data-level={p.level}>
      <td class="mono">{p.id}</td>
      <td>{time(p.time)}</td>
      <td><span class={`level level-${p.level}`}>{p.level}</span></td>
      <td class="num">{bytes(p.sizeBytes)}</td>
      <td class="num">{bytes(p.newBytes)}</td>
      <td>
        {p.verified === null ? <span class="muted">not verified</span> : <Badge value={p.verified} />}
        {p.verifiedAt && <span class="muted"> {time(p.verifiedAt)}</span>}
      </td>
      <td class="buttons">
        <ActionButton label="Verify" name="verify" onError={props.onError} run={() => post(`/api/repos/${enc(p.repo)}/verify`, { domain: props.domain, point: p.id })} />
        <button type="button" data-action="restore-open" disabled={readOnly} onClick={props.onRestore}>Restore…</button>
        <ActionButton
          label="Instant restore"
          name="instant-restore"
          onError={props.onError}
          run={async () => props.onNbd((await post<{ nbdUri: string }>(`${pointPath(p, props.domain)}/instant-restore`)).nbdUri)}
        />
      </td>
    </tr>
  );
}

export function PointsPanel(props: { domain: DomainDetail; onError: (e: unknown) => void }) {
  const [restoring, setRestoring] = useState<PointRecord | null>(null);
  const [nbd, setNbd] = useState<string | null>(null);
  const byRepo = new Map<string, PointRecord[]>();
  for (const p of props.domain.points) byRepo.set(p.repo, [...(byRepo.get(p.repo) ?? []), p]);
  if (byRepo.size === 0) return <p class="muted">No backup points in the console's repositories.</p>;
  return (
    <div>
      {[...byRepo].map(([repo, points]) => (
        <div key={repo} class="repo" data-repo={repo}>
          <h3>Repository {repo}</h3>
          <table class="grid points">
            <thead>
              <tr><th>Point</th><th>Time</th><th>Level</th><th>Size</th><th>New data</th><th>Verified</th><th>Actions</th></tr>
            </thead>
            <tbody>
              {points.map((p) => (
                <PointRow key={p.id} p={p} domain={props.domain.name} onRestore={() => setRestoring(p)} onError={props.onError} onNbd={setNbd} />
              ))}
            </tbody>
          </table>
        </div>
      ))}
      {nbd && <p id="instant-restore">Serving over NBD at <span class="mono">{nbd}</span> (stop it in the tasks above).</p>}
      {restoring && <RestorePanel p={restoring} domain={props.domain.name} onError={props.onError} onClose={() => setRestoring(null)} />}
    </div>
  );
}
