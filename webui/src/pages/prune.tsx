// What a retention policy would keep and remove in a repository: a preview only, nothing is deleted.
import { useState } from 'preact/hooks';
import { enc, get } from '../api.js';
import type { DomainDetail, PrunePreview, Repo } from '../types.js';

const KEEPS = ['keepLast', 'keepDaily', 'keepWeekly', 'keepMonthly'] as const;

function label(x: unknown): string {
  if (typeof x === 'string') return x;
  const p = x as { id?: string; level?: string; rule?: string };
  if (p.id === undefined) return JSON.stringify(x);
  return `${p.id}${p.level ? ` (${p.level})` : ''}${p.rule ? ` — ${p.rule}` : ''}`;
}

export function PrunePanel(props: { domain: DomainDetail; repos: Repo[]; onError: (e: unknown) => void }) {
  const [repo, setRepo] = useState('');
  const [keep, setKeep] = useState<Record<string, string>>({ keepLast: '3' });
  const [result, setResult] = useState<PrunePreview | null>(null);
  const chosen = repo || (props.repos[0] ? String(props.repos[0].id) : '');
  const run = (e: Event) => {
    e.preventDefault();
    const q = new URLSearchParams({ domain: props.domain.name });
    for (const k of KEEPS) if (keep[k]) q.set(k, keep[k] ?? '');
    get<PrunePreview>(`/api/repos/${enc(chosen)}/prune-preview?${q.toString()}`).then(setResult, props.onError);
  };
  return (
    <form class="form" id="prune-form" onSubmit={run}>
      <label>
        Repository
        <select value={chosen} onChange={(e) => setRepo((e.currentTarget as HTMLSelectElement).value)}>
          {props.repos.map((r) => <option key={String(r.id)} value={String(r.id)}>{r.name}</option>)}
        </select>
      </label>
      <div class="inline">
        {KEEPS.map((k) => (
          <label key={k}>
            {k.replace('keep', 'keep ').toLowerCase()}
            <input type="number" min={0} name={k} value={keep[k] ?? ''} onInput={(e) => setKeep({ ...keep, [k]: (e.currentTarget as HTMLInputElement).value })} />
          </label>
        ))}
      </div>
      <button type="submit">Preview</button>
      {result && (
        <div class="cols" id="prune-result">
          <div><h3>Keep ({result.keep.length})</h3><ul>{result.keep.map((x) => <li class="keep">{label(x)}</li>)}</ul></div>
          <div><h3>Remove ({result.remove.length})</h3><ul>{result.remove.map((x) => <li class="remove">{label(x)}</li>)}</ul></div>
        </div>
      )}
    </form>
  );
}
