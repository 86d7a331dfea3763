// Where virtbackd keeps its state and sockets, for the system daemon (root)
// and the per-user session daemon. Shared by the daemon and by connect().

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { virErr } from '../errors.js';

export const SOCKET_NAME = 'virtbackd.sock';
export const RO_SOCKET_NAME = 'virtbackd-ro.sock';
export const PID_FILE_NAME = 'virtbackd.pid';
export const LOCK_FILE_NAME = 'virtbackd.lock';
/** libvirt's remote protocol (virsh, libvirt bindings): read-write 0600 and read-only 0666, named as libvirtd's */
export const LIBVIRT_SOCKET_NAME = 'libvirt-sock';
export const LIBVIRT_RO_SOCKET_NAME = 'libvirt-sock-ro';

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

/** $XDG_RUNTIME_DIR/virtback, or /tmp/virtback-$UID when there is none (prepareRunDir makes it private). */
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

/**
 * Create the run directory and check that it is safe to put sockets in: a
 * directory (not a symlink) owned by us, that no one else may write into, and
 * for a session daemon (not root) that no one else may enter. In /tmp another
 * user could have created it first, to read or replace our sockets.
 * Throws OPERATION_INVALID naming the directory.
 */
export function prepareRunDir(dir: string, userId: number = uid(), opts: { private?: boolean } = {}): void {
  const priv = opts.private ?? userId !== 0;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: priv ? 0o700 : 0o755 });
  } catch (e) {
    throw virErr('SYSTEM_ERROR', 'NONE', `cannot create run directory '${dir}': ${(e as Error).message}`, e);
  }
  const st = fs.lstatSync(dir);
  const refuse = (why: string) => virErr('OPERATION_INVALID', 'NONE', `run directory '${dir}' ${why}; remove it or choose another with --run-dir`);
  if (!st.isDirectory()) throw refuse('is not a directory');
  if (userId >= 0 && st.uid !== userId) throw refuse(`is owned by uid ${st.uid}, not by us (uid ${userId})`);
  const open = st.mode & (priv ? 0o077 : 0o022);
  if (open !== 0) throw refuse(`has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}: others may ${priv ? 'enter' : 'write into'} it`);
}
