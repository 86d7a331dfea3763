// The console's shell: hash routes, the header, and the session check on start.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { get, post, session, sessionExpired } from './api.js';
import { loadTasks, openStream, resetLive, streamState } from './events.js';
import { loadRepos } from './repos.js';
import { useStore } from './store.js';
import type { Session } from './types.js';
import { LoginPage } from './pages/login.js';
import { DomainsPage } from './pages/domains.js';
import { DomainPage } from './pages/domain.js';
import { EventsPage } from './pages/events.js';
import { DaemonPage } from './pages/daemon.js';

function useHash(): string {
  const [hash, setHash] = useState(location.hash || '#/domains');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/domains');
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function Header(props: { hash: string; s: Session }) {
  const stream = useStore(streamState);
  const link = (href: string, label: string) => (
    <a href={href} class={props.hash.startsWith(href) ? 'active' : undefined}>
      {label}
    </a>
  );
  const logout = () => {
    post('/api/logout').finally(() => {
      resetLive();
      sessionExpired('Logged out.');
    });
  };
  return (
    <header class="top">
      <span class="brand">virtback</span>
      <nav>
        {link('#/domains', 'Domains')}
        {link('#/events', 'Events')}
        {link('#/daemon', 'Daemon')}
      </nav>
      <span class="spacer" />
      <span class={`live live-${stream}`} title="live event stream">
        {stream === 'open' ? 'live' : stream}
      </span>
      <span class={`role role-${props.s.role}`}>{props.s.role === 'admin' ? 'admin' : 'read-only'}</span>
      <button type="button" class="link" onClick={logout}>
        Log out
      </button>
    </header>
  );
}

function Route(props: { hash: string }) {
  const [path, arg] = props.hash.replace(/^#\/?/, '').split('/', 2);
  switch (path) {
    case 'domain':
      return <DomainPage uuid={decodeURIComponent(arg ?? '')} />;
    case 'events':
      return <EventsPage />;
    case 'daemon':
      return <DaemonPage />;
    default:
      return <DomainsPage />;
  }
}

function App() {
  const hash = useHash();
  const s = useStore(session);
  const [checked, setChecked] = useState(false);
  useEffect(() => {
    get<Session>('/api/session').then(
      (v) => (session.set(v), setChecked(true)),
      () => setChecked(true),
    );
  }, []);
  useEffect(() => {
    if (!s) return;
    openStream();
    loadTasks().catch(() => undefined);
    loadRepos().catch(() => undefined);
  }, [s]);
  if (!checked) return <div class="loading">Loading…</div>;
  if (!s || hash === '#/login') return <LoginPage />;
  return (
    <div class="shell">
      <Header hash={hash} s={s} />
      {s.role !== 'admin' && <div class="banner">Read-only session: you can look at everything and change nothing.</div>}
      <main>
        <Route hash={hash} />
      </main>
    </div>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
