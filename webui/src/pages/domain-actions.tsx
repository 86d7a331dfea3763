// Starting work on a domain: a backup into a repository (the backup command's flow, run by the
// daemon), or a raw push/pull job whose XML is shown, as it will be sent, before it runs.
import { useState } from 'preact/hooks';
import { enc, post } from '../api.js';
import { ActionButton, useReadOnly } from '../components.js';
import type { Repo } from '../types.js';

export function BackupForm(props: { uuid: string; repos: Repo[]; onError: (e: unknown) => void }) {
  const readOnly = useReadOnly();
  const [repo, setRepo] = useState('');
  const [level, setLevel] = useState<'auto' | 'full' | 'inc'>('auto');
  const [quiesce, setQuiesce] = useState(false);
  const [started, setStarted] = useState<string | null>(null);
  const chosen = repo || (props.repos[0] ? String(props.repos[0].id) : '');
  return (
    <form class="form" id="backup-form" onSubmit={(e) => e.preventDefault()}>
      <label>
        Repository
        <select name="repo" value={chosen} disabled={readOnly} onChange={(e) => setRepo((e.currentTarget as HTMLSelectElement).value)}>
          {props.repos.map((r) => (
            <option key={String(r.id)} value={String(r.id)}>{r.name}</option>
          ))}
        </select>
      </label>
      <label>
        Level
        <select name="level" value={level} disabled={readOnly} onChange={(e) => setLevel((e.currentTarget as HTMLSelectElement).value as 'auto')}>
          <option value="auto">auto (incremental when possible)</option>
          <option value="full">full</option>
          <option value="inc">incremental</option>
        </select>
      </label>
      <label class="check">
        <input type="checkbox" name="quiesce" checked={quiesce} disabled={readOnly} onChange={(e) => setQuiesce((e.currentTarget as HTMLInputElement).checked)} />
        Quiesce file systems (guest agent)
      </label>
      <ActionButton
        label="Start backup"
        name="start-backup"
        disabled={chosen === ''}
        onError={props.onError}
        run={async () => {
          const r = await post<{ task: string }>(`/api/domains/${enc(props.uuid)}/backup`, { repo: chosen, level, quiesce });
          setStarted(r.task);
        }}
      />
      {started && <span class="muted"> started task {started}</span>}
    </form>
  );
}

function templateXml(mode: 'pull' | 'push', name: string): string {
  if (mode === 'pull') {
    return `<domainbackup mode='pull'>\n  <server transport='unix' socket='/run/virtback-pull-${name.replace(/[^A-Za-z0-9_.-]/g, '_')}.sock'/>\n</domainbackup>\n`;
  }
  return `<domainbackup mode='push'>\n  <disks>\n    <disk name='vda' type='file'>\n      <target file='/var/lib/virtback/${name.replace(/[^A-Za-z0-9_.-]/g, '_')}-vda.qcow2'/>\n      <driver type='qcow2'/>\n    </disk>\n  </disks>\n</domainbackup>\n`;
}

export function RawJobForm(props: { uuid: string; name: string; onError: (e: unknown) => void }) {
  const readOnly = useReadOnly();
  const [backupXml, setBackupXml] = useState(templateXml('pull', props.name));
  const [checkpointXml, setCheckpointXml] = useState('');
  const [review, setReview] = useState(false);
  const [started, setStarted] = useState<string | null>(null);
  if (review) {
    return (
      <div id="raw-review">
        <p>This job will be sent to the daemon exactly as shown:</p>
        <h3>Backup XML</h3>
        <pre class="xml" id="raw-backup-xml">{backupXml}</pre>
        {checkpointXml.trim() !== '' && (
          <>
            <h3>Checkpoint XML</h3>
            <pre class="xml" id="raw-checkpoint-xml">{checkpointXml}</pre>
          </>
        )}
        <div class="buttons">
          <button type="button" onClick={() => setReview(false)}>Edit</button>
          <ActionButton
            label="Run this job"
            name="run-raw-job"
            onError={props.onError}
            run={async () => {
              const body = checkpointXml.trim() === '' ? { backupXml } : { backupXml, checkpointXml };
              const r = await post<{ jobId: number | string }>(`/api/domains/${enc(props.uuid)}/jobs`, body);
              setStarted(String(r.jobId));
              setReview(false);
            }}
          />
        </div>
      </div>
    );
  }
  return (
    <form class="form" id="raw-form" onSubmit={(e) => (e.preventDefault(), setReview(true))}>
      <div class="buttons">
        <button type="button" disabled={readOnly} onClick={() => setBackupXml(templateXml('pull', props.name))}>Pull template</button>
        <button type="button" disabled={readOnly} onClick={() => setBackupXml(templateXml('push', props.name))}>Push template</button>
      </div>
      <label>
        Backup XML (&lt;domainbackup&gt;)
        <textarea name="backupXml" rows={8} spellcheck={false} disabled={readOnly} value={backupXml} onInput={(e) => setBackupXml((e.currentTarget as HTMLTextAreaElement).value)} />
      </label>
      <label>
        Checkpoint XML (optional, &lt;domaincheckpoint&gt;)
        <textarea name="checkpointXml" rows={3} spellcheck={false} disabled={readOnly} value={checkpointXml} onInput={(e) => setCheckpointXml((e.currentTarget as HTMLTextAreaElement).value)} />
      </label>
      <button type="submit" data-action="review-raw-job" disabled={readOnly || backupXml.trim() === ''}>Review…</button>
      {started && <span class="muted"> started job {started}</span>}
    </form>
  );
}
