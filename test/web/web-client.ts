// A client of virtbackd's web console for the tests: HTTPS trusting the
// console's generated certificate (or plain HTTP), one session cookie, the
// session's CSRF token and this origin on every non-GET, and an SSE reader.

import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import { startVirtbackd, type Virtbackd } from '../qemu/daemon-util.js';
import { waitFor } from '../helpers/qemu-env.js';

const UUID = '6f0c3c2e-8d7b-4a55-9d38-000000000001';

/** Every mutating route of the API (docs/web-console.md ## API), with a plausible body. */

/** Bodies from this size on wait for an early answer before they are sent (see request). */
const BODY_AFTER_ANSWER = 1024 * 1024;
export const MUTATING_ROUTES: Array<[string, unknown]> = [
  [`/api/domains/${UUID}/backup`, { repo: '0', level: 'auto', quiesce: false }],
  [`/api/domains/${UUID}/jobs`, { backupXml: "<domainbackup mode='pull'/>" }],
  [`/api/domains/${UUID}/jobs/1/abort`, {}],
  ['/api/repos/0/verify', {}],
  ['/api/repos/0/points/d/p/restore', { destDir: '/tmp/x' }],
  ['/api/repos/0/points/d/p/instant-restore', { name: 'x' }],
  ['/api/tasks/0123456789abcdef/stop', {}],
];

export interface Reply<T = unknown> {
  status: number;
  headers: http.IncomingHttpHeaders;
  json: T;
  text: string;
}

export interface RequestOptions {
  body?: unknown;
  /** raw body (sent as is) */
  raw?: string | Buffer;
  headers?: Record<string, string>;
  /** leave out the CSRF header */
  noCsrf?: boolean;
  /** Origin to send (default: this console's); null: none */
  origin?: string | null;
}

export interface SseEvent {
  event: string;
  data: unknown;
}

export class WebClient {
  cookie: string | null = null;
  csrf: string | null = null;

  constructor(readonly base: string, readonly ca: Buffer | null) {}

  get origin(): string {
    return this.base.replace(/\/$/, '');
  }

  request<T = unknown>(method: string, p: string, o: RequestOptions = {}): Promise<Reply<T>> {
    const url = new URL(p, this.base);
    const payload = o.raw ?? (o.body === undefined ? undefined : JSON.stringify(o.body));
    const headers: Record<string, string> = payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) };
    if (this.cookie) headers.cookie = `vb_session=${this.cookie}`;
    if (method !== 'GET' && !o.noCsrf && this.csrf) headers['x-csrf-token'] = this.csrf;
    const origin = o.origin === undefined ? this.origin : o.origin;
    if (method !== 'GET' && origin !== null) headers.origin = origin;
    Object.assign(headers, o.headers ?? {});
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method, headers, agent: false, ...(this.ca ? { ca: this.ca } : {}) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (b: Buffer) => chunks.push(b));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = null;
          try {
            json = JSON.parse(text);
          } catch {
            // not JSON (assets)
          }
          const set = res.headers['set-cookie']?.find((c) => c.startsWith('vb_session='));
          if (set) this.cookie = /^vb_session=([^;]*)/.exec(set)![1]! || null;
          resolve({ status: res.statusCode!, headers: res.headers, json: json as T, text });
        });
      });
      req.on('error', reject);
      if (payload === undefined || Buffer.byteLength(payload) < BODY_AFTER_ANSWER) {
        if (payload !== undefined) req.write(payload);
        req.end();
        return;
      }
      // A body over the server's limit is refused from its headers, and the server closes the
      // connection: writing it meanwhile races that close (EPIPE). Send the headers, and the
      // body only if no answer came first.
      req.flushHeaders();
      const timer = setTimeout(() => req.end(payload), 2000);
      req.once('response', () => clearTimeout(timer));
    });
  }

  get<T = unknown>(p: string): Promise<Reply<T>> {
    return this.request<T>('GET', p);
  }

  post<T = unknown>(p: string, body: unknown = {}, o: RequestOptions = {}): Promise<Reply<T>> {
    return this.request<T>('POST', p, { ...o, body });
  }

  async login(token: string): Promise<Reply<{ role: string; csrf: string }>> {
    const r = await this.post<{ role: string; csrf: string }>('/api/login', { token });
    if (r.status === 200) this.csrf = r.json.csrf;
    return r;
  }

  /** Opens /api/events; events arrive in `events` until close() or the server ends the stream. */
  events(): Promise<{ events: SseEvent[]; ended: Promise<void>; close(): void }> {
    const events: SseEvent[] = [];
    return new Promise((resolve, reject) => {
      const req = getEvents(this, reject, (res) => {
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          buf += d;
          let i: number;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const ev = /^event: ?(.*)$/m.exec(block)?.[1] ?? 'message';
            const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.replace(/^data: ?/, '')).join('\n');
            events.push({ event: ev, data: data === '' ? null : JSON.parse(data) });
          }
        });
        const ended = new Promise<void>((r) => {
          res.on('end', () => r());
          res.on('close', () => r());
        });
        resolve({ events, ended, close: () => req.destroy() });
      });
      req.on('error', (e) => (events.length === 0 ? reject(e) : undefined));
    });
  }
}

/** GET /api/events with the client's session; `onStream` gets a 200 response, anything else rejects. */
function getEvents(c: WebClient, reject: (e: Error) => void, onStream: (res: http.IncomingMessage) => void): http.ClientRequest {
  const url = new URL('/api/events', c.base);
  const mod = url.protocol === 'https:' ? https : http;
  return mod.get(url, { agent: false, headers: { cookie: `vb_session=${c.cookie}` }, ...(c.ca ? { ca: c.ca } : {}) }, (res) => {
    if (res.statusCode !== 200) {
      reject(new Error(`events: HTTP ${res.statusCode}`));
      res.resume();
      return;
    }
    onStream(res);
  });
}

/**
 * Opens /api/events and drops it the way a client may: 'destroy' (the socket
 * torn down after the first event), 'half-close' (the client's FIN only, then
 * it waits for the server to close), 'early' (torn down as soon as the request
 * is sent, possibly before the handler runs). Resolves once the client is done.
 */
export function dropEventStream(c: WebClient, how: 'destroy' | 'half-close' | 'early'): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = getEvents(c, reject, (res) => {
      res.once('data', () => {
        if (how !== 'half-close') {
          req.destroy();
          resolve();
          return;
        }
        res.on('close', () => resolve());
        res.resume();
        req.socket!.end();
      });
    });
    req.on('error', () => (how === 'destroy' ? undefined : resolve()));
    if (how === 'early') {
      req.once('finish', () => {
        req.destroy();
        resolve();
      });
    }
  });
}

/** The console's URL from the daemon's log line "web console listening". */
export async function consoleUrl(d: Virtbackd): Promise<string> {
  return waitFor(() => {
    for (const line of d.stderr().split('\n')) {
      if (!line.includes('web console listening')) continue;
      return (JSON.parse(line) as { url: string }).url;
    }
    return null;
  }, 'the web console listening', 30_000);
}

export interface ConsoleDaemon {
  daemon: Virtbackd;
  url: string;
  ca: Buffer | null;
  adminToken: string;
  readonlyToken: string;
  client(): WebClient;
}

/** virtbackd with `--web 127.0.0.1:0 …extra` on these dirs; the tokens read from their files, as an admin would. */
export async function startConsoleDaemon(dirs: { stateDir: string; runDir: string }, extra: string[], opts: { insecure?: boolean; caFile?: string } = {}): Promise<ConsoleDaemon> {
  const daemon = await startVirtbackd(dirs, ['--web', '127.0.0.1:0', ...(opts.insecure ? ['--web-insecure-http'] : []), ...extra]);
  const url = await consoleUrl(daemon);
  const web = path.join(dirs.stateDir, 'web');
  const ca = opts.insecure ? null : fs.readFileSync(opts.caFile ?? path.join(web, 'cert.pem'));
  return {
    daemon,
    url,
    ca,
    adminToken: fs.readFileSync(path.join(web, 'admin.token'), 'utf8').trim(),
    readonlyToken: fs.readFileSync(path.join(web, 'readonly.token'), 'utf8').trim(),
    client: () => new WebClient(url, ca),
  };
}
