// The console's HTTP application: strict headers on everything, bounded
// bodies, login/logout/session, the session and CSRF checks in front of
// /api/*, the live event stream, the API routes, and the browser's files.

import { Hono, type Context, type Next } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import { streamSSE } from 'hono/streaming';
import { getConnInfo } from '@hono/node-server/conninfo';
import { z } from 'zod';
import { virErr } from '../errors.js';
import { roleOfToken, tokenMatches } from './auth.js';
import type { Env, WebState } from './context.js';
import { body, errorResponse, SECURITY_HEADERS, sameOrigin } from './http.js';
import { registerActions } from './routes-actions.js';
import { registerReads } from './routes-read.js';
import { serveAsset } from './static.js';

export const SESSION_COOKIE = 'vb_session';
/** Requests carry small JSON (XML documents included: libvirt's own limit is 10 MiB, ours is tighter). */
export const MAX_BODY_BYTES = 1024 * 1024;
/** events queued for one stream before its reader counts as gone */
const MAX_UNWRITTEN_EVENTS = 1000;

function sessionCheck(st: WebState) {
  return async (c: Context<Env>, next: Next): Promise<Response | void> => {
    const s = st.sessions.touch(getCookie(c, SESSION_COOKIE));
    if (!s) return errorResponse(c, virErr('AUTH_FAILED', 'NONE', 'not logged in, or the session expired'));
    if (c.req.method !== 'GET' && c.req.method !== 'HEAD') {
      if (!sameOrigin(c, st.secure)) return errorResponse(c, virErr('OPERATION_DENIED', 'NONE', 'cross-origin request refused'));
      if (!tokenMatches(c.req.header('x-csrf-token') ?? '', s.csrf)) return errorResponse(c, virErr('OPERATION_DENIED', 'NONE', 'missing or wrong X-CSRF-Token'));
      // every change is the server's to refuse, not only the buttons'
      if (s.role !== 'admin' && c.req.path !== '/api/logout') return errorResponse(c, virErr('OPERATION_DENIED', 'NONE', 'read-only session: the console refuses changes'));
    }
    c.set('session', s);
    await next();
  };
}

function registerLogin(app: Hono<Env>, st: WebState): void {
  app.post('/api/login', async (c) => {
    if (!sameOrigin(c, st.secure)) return errorResponse(c, virErr('OPERATION_DENIED', 'NONE', 'cross-origin request refused'));
    const addr = getConnInfo(c).remote.address ?? 'unknown';
    if (!st.limiter.allowed(addr)) return errorResponse(c, virErr('OPERATION_DENIED', 'NONE', 'too many failed logins: wait a minute'), 429);
    const { token } = await body(c, z.object({ token: z.string().max(1024) }));
    const role = roleOfToken(st.tokens, token.trim());
    if (role === null) {
      st.limiter.failed(addr);
      st.log.warn({ remote: addr }, 'web console: failed login');
      return errorResponse(c, virErr('AUTH_FAILED', 'NONE', 'wrong token'));
    }
    // a login replaces the session this browser had
    const old = getCookie(c, SESSION_COOKIE);
    if (old !== undefined) st.sessions.end(old);
    const s = st.sessions.create(role);
    setCookie(c, SESSION_COOKIE, s.id, { httpOnly: true, sameSite: 'Strict', secure: st.secure, path: '/' });
    st.log.info({ remote: addr, role }, 'web console: login');
    return c.json({ role, csrf: s.csrf, expiresAt: new Date(s.expiresAt).toISOString() });
  });
  app.post('/api/logout', (c) => {
    st.sessions.end(c.get('session').id);
    deleteCookie(c, SESSION_COOKIE, { path: '/', secure: st.secure, httpOnly: true, sameSite: 'Strict' });
    return c.json({});
  });
  app.get('/api/session', (c) => {
    const s = c.get('session');
    return c.json({ role: s.role, csrf: s.csrf, expiresAt: new Date(s.expiresAt).toISOString() });
  });
}

function registerEvents(app: Hono<Env>, st: WebState): void {
  app.get('/api/events', (c) => {
    const session = c.get('session').id;
    return streamSSE(c, async (stream) => {
      let closed = false;
      let wake = (): void => {};
      const done = new Promise<void>((r) => (wake = r));
      let unwritten = 0;
      const remove = st.hub.add({
        session,
        send: (event, data) => {
          if (!closed && !st.sessions.alive(session)) {
            st.sessions.end(session); // an expired session's stream ends at its next event
            return;
          }
          // a reader that does not read is dropped, not buffered for without end
          if (unwritten >= MAX_UNWRITTEN_EVENTS) throw virErr('OPERATION_FAILED', 'NONE', 'event stream reader too slow');
          unwritten++;
          stream.writeSSE({ event, data: JSON.stringify(data) }).then(() => unwritten--, () => wake());
        },
        close: () => {
          closed = true;
          wake();
        },
      });
      // an idle session's stream ends when the session expires, not at the next event
      let timer: NodeJS.Timeout | undefined;
      const watch = (): void => {
        const s = st.sessions.peek(session);
        if (!s || s.expiresAt <= Date.now()) st.sessions.end(session);
        else timer = setTimeout(watch, s.expiresAt - Date.now() + 50);
      };
      watch();
      stream.onAbort(() => {
        closed = true;
        remove();
        wake();
      });
      await stream.writeSSE({ event: 'ping', data: JSON.stringify({ time: new Date().toISOString() }) });
      await done;
      clearTimeout(timer);
      remove();
    });
  });
}

export function createApp(st: WebState, assetsDir: string | null): Hono<Env> {
  const app = new Hono<Env>();
  app.use('*', async (c, next) => {
    await next();
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) c.res.headers.set(k, v);
  });
  app.use('/api/*', bodyLimit({ maxSize: MAX_BODY_BYTES, onError: (c) => errorResponse(c, virErr('INVALID_ARG', 'NONE', `request body over ${MAX_BODY_BYTES} bytes`), 413) }));
  app.onError((err, c) => errorResponse(c, err));
  app.use('/api/*', async (c, next) => (c.req.path === '/api/login' ? next() : sessionCheck(st)(c, next)));
  registerLogin(app, st);
  registerEvents(app, st);
  registerReads(app, st);
  registerActions(app, st);
  app.all('/api/*', (c) => errorResponse(c, virErr('NO_SUPPORT', 'NONE', `no API route ${c.req.method} ${c.req.path}`), 404));
  app.get('*', (c) => serveAsset(c, assetsDir));
  return app;
}
