// The login page: one token (admin or read-only), exchanged for a session cookie and a CSRF token.
import { useState } from 'preact/hooks';
import { errorText, loginMessage, post, session } from '../api.js';
import { useStore } from '../store.js';
import type { Session } from '../types.js';

export function LoginPage() {
  const message = useStore(loginMessage);
  const [token, setToken] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = (e: Event) => {
    e.preventDefault();
    setBusy(true);
    post<Session>('/api/login', { token: token.trim() }).then(
      (s) => {
        setBusy(false);
        loginMessage.set('');
        session.set(s);
        location.hash = '#/domains';
      },
      (err: unknown) => (setBusy(false), setError(err)),
    );
  };
  return (
    <div class="login">
      <form onSubmit={submit}>
        <h1>virtback console</h1>
        {message && <p class="notice" id="login-message">{message}</p>}
        <label>
          Token
          <input
            type="password"
            name="token"
            autocomplete="current-password"
            value={token}
            onInput={(e) => setToken((e.currentTarget as HTMLInputElement).value)}
          />
        </label>
        <p class="hint">The admin or read-only token from the daemon's state directory (web/admin.token, web/readonly.token).</p>
        {error ? <div class="error" role="alert">{errorText(error)}</div> : null}
        <button type="submit" disabled={busy || token.trim() === ''}>
          Log in
        </button>
      </form>
    </div>
  );
}
