// Running qemu-img and qemu-nbd for the repository: failures become VirErrors
// that carry the tool's own message, and every qemu-nbd we start is ended by us.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { virErr } from '../errors.js';

/** Run a tool to completion; a non-zero exit becomes OPERATION_FAILED with its stderr. */
export function runTool(cmd: string, args: string[], what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const text = (stderr || err.message).trim().split('\n').pop() ?? '';
      reject(virErr('OPERATION_FAILED', 'STORAGE', `${what} failed: ${text}`, err));
    });
  });
}

/** The fields of `qemu-img info --output=json` this module uses. */
export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
}

/** Info about one image alone (never opens its backing file, so a broken chain still answers). */
export async function imageInfo(file: string, format?: string): Promise<ImageInfo> {
  // -U: we only read metadata, and the image may be a live disk that QEMU holds locked.
  const args = ['info', '--output=json', '-U', ...(format ? ['-f', format] : []), file];
  return JSON.parse(await runTool('qemu-img', args, `qemu-img info of '${file}'`)) as ImageInfo;
}

export interface NbdExport {
  socketPath: string;
  exportName: string;
  /**
   * End qemu-nbd (SIGTERM: it flushes and closes the image cleanly; SIGKILL after 10 s)
   * and remove its socket folder. Rejects when qemu-nbd did not exit with status 0.
   * Safe to call twice.
   */
  close(): Promise<void>;
}

export interface ExportOptions {
  image: string;
  format: string;
  readOnly: boolean;
  /** Expose qemu:allocation-depth (which layer of the chain holds each range). */
  allocationDepth?: boolean;
}

// ---- socket folders
// Each export's socket lives in its own folder under one parent per user,
// marked with its maker's host and pid. close() removes it; a maker that is
// SIGKILLed cannot, so every new export first removes the folders whose
// maker (on this host) is gone.

const OWNER = 'owner.json';

/** The parent of every export's socket folder: $TMPDIR/virtback-nbd-<uid>, ours and private. */
export function exportSocketRoot(): string {
  return path.join(os.tmpdir(), `virtback-nbd-${process.getuid?.() ?? 0}`);
}

async function ensureSocketRoot(): Promise<string> {
  const root = exportSocketRoot();
  await fs.mkdir(root, { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'EEXIST') throw e;
  });
  // a shared /tmp: never put sockets in a folder (or through a link) someone else made
  const st = await fs.lstat(root);
  if (!st.isDirectory() || st.uid !== (process.getuid?.() ?? st.uid) || (st.mode & 0o077) !== 0) {
    throw virErr('OPERATION_FAILED', 'STORAGE', `'${root}' is not a private folder of this user: remove it`);
  }
  return root;
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

async function readOwner(dir: string): Promise<{ host?: unknown; pid?: unknown } | null> {
  try {
    return JSON.parse(await fs.readFile(path.join(dir, OWNER), 'utf8')) as { host?: unknown; pid?: unknown };
  } catch {
    return null;
  }
}

/** Remove the socket folders under `root` whose maker, on this host, no longer runs; returns them. */
export async function removeDeadExportDirs(root = exportSocketRoot()): Promise<string[]> {
  const removed: string[] = [];
  const names = await fs.readdir(root).catch(() => [] as string[]);
  for (const name of names) {
    const dir = path.join(root, name);
    const owner = await readOwner(dir);
    // unmarked (or half-written): being made right now, the mark follows mkdtemp at once
    if (owner === null || owner.host !== os.hostname() || typeof owner.pid !== 'number' || !processGone(owner.pid)) continue;
    await fs.rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/** A fresh socket folder, marked as this process's. */
async function makeSocketDir(): Promise<string> {
  let dir: string | undefined;
  for (let attempt = 0; dir === undefined; attempt++) {
    // ENOENT: another process's close() removed the (then empty) root meanwhile,
    // between our mkdir and its check, or before our mkdtemp: make it again
    const again = (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT' || attempt >= 3) throw e;
      return undefined;
    };
    const root = await ensureSocketRoot().catch(again);
    if (root === undefined) continue;
    await removeDeadExportDirs(root);
    dir = await fs.mkdtemp(path.join(root, 'nbd-')).catch(again);
  }
  await fs.writeFile(path.join(dir, OWNER), JSON.stringify({ host: os.hostname(), pid: process.pid }), { mode: 0o600 });
  return dir;
}

/** Exit status of the wrapper of orphanSafe() when its parent had already died. */
export const ORPHANED_AT_START = 97;

/**
 * The argv that runs `cmd` so that it dies with this process: setpriv sets
 * PR_SET_PDEATHSIG (SIGKILL: a qemu-nbd whose client is gone has nothing to
 * flush that anyone wants, and SIGTERM could wait on a half-made client), then
 * a shell checks that its parent is still us before exec'ing `cmd` — the
 * kernel never sends the signal for a parent that died before the prctl (a
 * daemon SIGKILLed right after the spawn left a qemu-nbd serving for hours).
 */
export function orphanSafe(cmd: string[], parentPid = process.pid): string[] {
  const check = `while read k v; do [ "$k" = PPid: ] && break; done < /proc/$$/status; [ "$v" = "${parentPid}" ] || exit ${ORPHANED_AT_START}; exec "$@"`;
  return ['setpriv', '--pdeathsig', 'KILL', '--', '/bin/sh', '-c', check, 'sh', ...cmd];
}

/** Serve `image` (with its backing chain) on a private unix socket with qemu-nbd. */
export async function startExport(opts: ExportOptions): Promise<NbdExport> {
  const dir = await makeSocketDir();
  const socketPath = path.join(dir, 'nbd.sock');
  const args = [
    '--persistent', // our readiness probe must not count as the one client
    '--shared=4',
    `--format=${opts.format}`,
    `--socket=${socketPath}`,
    '--export-name=',
    ...(opts.readOnly ? ['--read-only'] : ['--discard=unmap']),
    ...(opts.allocationDepth ? ['--allocation-depth'] : []),
    opts.image,
  ];
  const [wrapper, ...argv] = orphanSafe(['qemu-nbd', ...args]);
  const proc: ChildProcess = spawn(wrapper!, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => {
    proc.once('exit', (code) => resolve(code));
    proc.once('error', (e) => {
      stderr += e.message;
      resolve(-1);
    });
  });
  const gone = () => proc.exitCode !== null || proc.signalCode !== null;
  const failure = () => virErr('OPERATION_FAILED', 'STORAGE', `qemu-nbd for '${opts.image}' failed: ${stderr.trim() || 'exited'}`);
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      const wasGone = gone();
      if (!wasGone) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
      await fs.rm(dir, { recursive: true, force: true });
      // the shared root goes with its last folder: nothing of ours stays in $TMPDIR
      await fs.rmdir(path.dirname(dir)).catch(() => undefined);
      if (wasGone || (await exited) !== 0) throw failure();
    })());
  try {
    for (let i = 0; ; i++) {
      if (gone()) throw failure();
      if (await canConnect(socketPath)) break;
      if (i > 400) throw virErr('OPERATION_TIMEOUT', 'STORAGE', `qemu-nbd for '${opts.image}' did not listen on ${socketPath} within 10 s`);
      await new Promise((r) => setTimeout(r, 25));
    }
  } catch (e) {
    await close().catch(() => undefined);
    throw e;
  }
  return { socketPath, exportName: '', close };
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.createConnection(socketPath);
    // wait for the server's greeting before hanging up: a probe that resets
    // before qemu-nbd has started its handshake can leave that client half
    // made, and qemu-nbd then ignored the SIGTERM of close() (seen: 1 in 3)
    const done = () => {
      clearTimeout(timer);
      c.destroy();
      resolve(true);
    };
    const timer = setTimeout(done, 2000);
    c.once('data', done);
    c.once('end', done);
    c.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}
