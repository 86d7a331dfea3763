// virtbackd's web console (docs/web-console.md): HTTPS (a self-signed
// certificate made on first start, or the admin's), plain HTTP only on a
// loopback address and only when asked. It serves the Driver virtbackd
// already has through the public API (Connect, read-write or read-only by the
// session's role) and the backup command's flows: no second path to the driver.

import type { Server } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createAdaptorServer } from '@hono/node-server';
import type { Driver } from '../api/driver.js';
import { Connect } from '../api/public.js';
import { virErr } from '../errors.js';
import { errField, type Logger } from '../log.js';
import { createApp } from './app.js';
import { ensureTokens, LoginLimiter, Sessions } from './auth.js';
import { loadOrCreateCert } from './cert.js';
import type { WebState } from './context.js';
import { domainEventView, EventHub } from './events.js';
import { JobHistory } from './jobs.js';
import { RepoSet } from './repos.js';
import { TaskTable } from './tasks.js';

export interface WebConsoleOptions {
  host: string;
  /** 0: a free port (tests) */
  port: number;
  stateDir: string;
  driver: Driver;
  /** chunk repository folders (--web-repo) */
  repos: readonly string[];
  /** the built browser files (dist/webui); null: API only */
  assetsDir: string | null;
  insecureHttp?: boolean;
  cert?: { certFile: string; keyFile: string };
  /** idle expiry of a session (default 1800 s) */
  sessionTtlSec?: number;
  maxSessions?: number;
  maxEventStreams?: number;
  version: string;
  clients: () => number;
  virtbackCommand: string[];
  log: Logger;
}

export const WEB_DIR = 'web';

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export class WebConsole {
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly server: Server,
    private readonly st: WebState,
    private readonly unsubscribe: () => void,
    readonly url: string,
    /** the certificate file browsers and tests trust (null over plain HTTP) */
    readonly certFile: string | null,
  ) {}

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  static async start(o: WebConsoleOptions): Promise<WebConsole> {
    if (o.insecureHttp && !isLoopback(o.host)) {
      throw virErr('OPERATION_DENIED', 'NONE', `plain HTTP is refused on '${o.host}': only a loopback address may serve the console without TLS`);
    }
    const log = o.log.child({ component: 'web' });
    const webDir = path.join(o.stateDir, WEB_DIR);
    const { tokens, created } = ensureTokens(webDir);
    for (const role of created) log.info(`web console ${role === 'admin' ? 'admin' : 'read-only'} token: ${tokens[role]}`);
    const st = WebConsole.state(o, log, webDir, tokens);
    const unsubscribe = WebConsole.subscribe(st);
    const app = createApp(st, o.assetsDir);
    let server: Server;
    let certFile: string | null = null;
    if (o.insecureHttp) {
      server = createAdaptorServer({ fetch: app.fetch }) as Server;
    } else {
      const pair = await loadOrCreateCert(webDir, o.host, o.cert);
      if (pair.generated) log.info({ cert: pair.certFile }, 'web console: self-signed certificate generated');
      certFile = pair.certFile;
      server = createAdaptorServer({ fetch: app.fetch, createServer: https.createServer, serverOptions: { cert: pair.cert, key: pair.key } }) as unknown as Server;
    }
    // slow or idle clients cannot hold sockets forever; SSE streams are kept alive by pings
    server.headersTimeout = 20_000;
    server.requestTimeout = 60_000;
    server.maxConnections = 256;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port, o.host, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((e: unknown) => {
      unsubscribe();
      throw virErr('SYSTEM_ERROR', 'NONE', `web console cannot listen on ${o.host}:${o.port}: ${(e as Error).message}`, e);
    });
    const port = (server.address() as AddressInfo).port;
    const host = o.host.includes(':') ? `[${o.host}]` : o.host;
    const url = `${o.insecureHttp ? 'http' : 'https'}://${host}:${port}/`;
    log.info({ url }, 'web console listening');
    return new WebConsole(server, st, unsubscribe, url, certFile);
  }

  private static state(o: WebConsoleOptions, log: Logger, webDir: string, tokens: WebState['tokens']): WebState {
    const hub = new EventHub(o.maxEventStreams ?? 32);
    const repos = new RepoSet(o.repos);
    const sessions = new Sessions({ ttlMs: (o.sessionTtlSec ?? 1800) * 1000, max: o.maxSessions ?? 64 });
    sessions.onEnd((id) => hub.closeSession(id));
    return {
      rw: new Connect(o.driver, false),
      ro: new Connect(o.driver, true),
      repos,
      jobs: new JobHistory(),
      tasks: new TaskTable((view) => hub.broadcast('task', view), log, () => repos.invalidate()),
      hub,
      sessions,
      tokens,
      limiter: new LoginLimiter(),
      secure: !o.insecureHttp,
      log,
      version: o.version,
      startedAt: Date.now(),
      clients: o.clients,
      virtbackCommand: o.virtbackCommand,
      webDir,
    };
  }

  /** The daemon's events, to the streams; a finished job may have written a point, so listings refresh. */
  private static subscribe(st: WebState): () => void {
    const offs = (['lifecycle', 'job-completed', 'block-job'] as const).map((type) =>
      st.rw.on(type, (ev) => {
        try {
          if (ev.type === 'job-completed') {
            st.jobs.ended(ev);
            st.repos.invalidate();
          }
          st.hub.broadcast('domain', domainEventView(ev));
        } catch (e) {
          st.log.warn(errField(e), 'web console: event not passed on');
        }
      }),
    );
    return () => offs.forEach((off) => off());
  }

  /** Ends every session and stream, stops listening. Running tasks' flows go on in the daemon until it stops. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.unsubscribe();
      this.st.sessions.endAll();
      this.st.hub.closeAll();
      this.st.tasks.close();
      await new Promise<void>((resolve) => {
        this.server.close(() => resolve());
        this.server.closeAllConnections();
      });
    })();
    return this.closing;
  }
}
