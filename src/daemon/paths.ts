// Where virtbackd keeps its state and sockets, for the system daemon (root)
// and the per-user session daemon. Shared by the daemon and by connect().

import * as os from 'node:os';
import * as path from 'node:path';

export const SOCKET_NAME = 'virtbackd.sock';
export const RO_SOCKET_NAME = 'virtbackd-ro.sock';
export const PID_FILE_NAME = 'virtbackd.pid';
export const LOCK_FILE_NAME = 'virtbackd.lock';

export type Env = Record<string, string | undefined>;

function uid(): number {
  return typeof process.getuid === 'function' ? process.getuid() : -1;
}

/** /run/virtback for root. */
export function systemRunDir(): string {
  return '/run/virtback';
}

/** /var/lib/virtback for root. */
export function systemStateDir(): string {
  return '/var/lib/virtback';
}

/** $XDG_RUNTIME_DIR/virtback, or /tmp/virtback-$UID when there is none. */
export function sessionRunDir(env: Env = process.env, userId: number = uid()): string {
  const xdg = env.XDG_RUNTIME_DIR;
  return xdg ? path.join(xdg, 'virtback') : path.join(os.tmpdir(), `virtback-${userId}`);
}

/** $XDG_STATE_HOME/virtback, or ~/.local/state/virtback. */
export function sessionStateDir(env: Env = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  const home = env.HOME ?? os.homedir();
  return xdg ? path.join(xdg, 'virtback') : path.join(home, '.local', 'state', 'virtback');
}

/** The daemon's defaults: explicit option, then environment, then system (root) or session. */
export function daemonDirs(
  opts: { stateDir?: string; runDir?: string },
  env: Env = process.env,
  userId: number = uid(),
): { stateDir: string; runDir: string } {
  const root = userId === 0;
  return {
    stateDir: path.resolve(opts.stateDir ?? env.VIRTBACK_STATE_DIR ?? (root ? systemStateDir() : sessionStateDir(env))),
    runDir: path.resolve(opts.runDir ?? env.VIRTBACK_RUN_DIR ?? (root ? systemRunDir() : sessionRunDir(env, userId))),
  };
}
