// Every call to the console API goes through request(): JSON in and out, the session's CSRF token
// on every non-GET, and a 401 (no or expired session) sends the browser back to the login page.
import { store } from './store.js';
import type { Session } from './types.js';

export const session = store<Session | null>(null);
/** Why the login page is shown (e.g. the session expired), shown above the form. */
export const loginMessage = store<string>('');

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: number | null,
    readonly errName: string,
    message: string,
  ) {
    super(message);
  }
}

export function sessionExpired(message: string): void {
  session.set(null);
  loginMessage.set(message);
  if (location.hash !== '#/login') location.hash = '#/login';
}

async function errorOf(res: Response): Promise<ApiError> {
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const e = (body as { error?: { code?: number; name?: string; message?: string } } | null)?.error;
  return new ApiError(res.status, e?.code ?? null, e?.name ?? `HTTP ${res.status}`, e?.message ?? res.statusText);
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const s = session.get();
  if (method !== 'GET' && s) headers['X-CSRF-Token'] = s.csrf;
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && path !== '/api/login') {
    // a session we had ended (idle expiry, logout elsewhere); none at all is just the login page
    sessionExpired(s ? 'Your session has expired; log in again.' : '');
    throw await errorOf(res);
  }
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const get = <T>(path: string) => request<T>('GET', path);
export const post = <T>(path: string, body: unknown = {}) => request<T>('POST', path, body);

/** A path segment or query value, encoded (names and ids come from the server and from users). */
export const enc = encodeURIComponent;

export function errorText(e: unknown): string {
  if (e instanceof ApiError) return `${e.errName}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
