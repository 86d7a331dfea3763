// The daemon: version, uptime, memory, how many domains and clients, the console's repositories.
import { get } from '../api.js';
import { ErrorLine, Panel, useLoad } from '../components.js';
import { domainsChanged } from '../events.js';
import { bytes, duration } from '../format.js';
import { useStore } from '../store.js';
import type { DaemonInfo } from '../types.js';

export function DaemonPage() {
  const changed = useStore(domainsChanged);
  const { data: d, error, reload } = useLoad(() => get<DaemonInfo>('/api/daemon'), [changed]);
  return (
    <div>
      <h1>Daemon</h1>
      <ErrorLine error={error} />
      {d && (
        <div class="cols">
          <Panel title="virtbackd">
            <table class="kv" id="daemon">
              <tbody>
                <tr><th>Version</th><td>{d.version}</td></tr>
                <tr><th>Uptime</th><td>{duration(d.uptimeSec * 1000)}</td></tr>
                <tr><th>Memory (RSS)</th><td>{bytes(d.rssBytes)}</td></tr>
                <tr><th>Heap used</th><td>{bytes(d.heapUsedBytes)}</td></tr>
                <tr><th>Domains</th><td>{d.domains}</td></tr>
                <tr><th>Clients</th><td>{d.clients}</td></tr>
              </tbody>
            </table>
            <button type="button" onClick={reload}>Refresh</button>
          </Panel>
          <Panel title="Repositories">
            <table class="grid">
              <thead>
                <tr><th>Id</th><th>Name</th><th>Location</th></tr>
              </thead>
              <tbody>
                {d.repos.map((r) => (
                  <tr key={String(r.id)}><td>{String(r.id)}</td><td>{r.name}</td><td class="mono">{r.url}</td></tr>
                ))}
              </tbody>
            </table>
          </Panel>
        </div>
      )}
    </div>
  );
}
