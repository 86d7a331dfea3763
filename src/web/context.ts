// What the console's routes share: the two connections (read-write for admin
// sessions, read-only for the others: libvirt's own check refuses a mutation
// on the read-only one too), repositories, job history, tasks, live events and
// sessions. server.ts builds it; the route files only read it.

import type { Context } from 'hono';
import type { Connect } from '../api/public.js';
import type { Logger } from '../log.js';
import type { LoginLimiter, Session, Sessions, Tokens } from './auth.js';
import type { EventHub } from './events.js';
import type { JobHistory } from './jobs.js';
import type { RepoSet } from './repos.js';
import type { TaskTable } from './tasks.js';

export interface WebState {
  rw: Connect;
  ro: Connect;
  repos: RepoSet;
  jobs: JobHistory;
  tasks: TaskTable;
  hub: EventHub;
  sessions: Sessions;
  tokens: Tokens;
  limiter: LoginLimiter;
  /** HTTPS (cookies get Secure, origins are https://) */
  secure: boolean;
  log: Logger;
  version: string;
  startedAt: number;
  /** clients of the daemon's sockets now */
  clients: () => number;
  /** argv of the virtback CLI (an instant restore's serve process is `virtback backup-serve`) */
  virtbackCommand: string[];
  /** <state-dir>/web: tokens, certificate, default instant-restore folders */
  webDir: string;
}

export type Env = { Variables: { session: Session } };

/** The connection of the request's session: read-only unless the session is admin. */
export function connOf(st: WebState, c: Context<Env>): Connect {
  return c.get('session').role === 'admin' ? st.rw : st.ro;
}
