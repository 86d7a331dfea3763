// Where the QEMU driver keeps things on disk, and how it writes them.
//
// stateDir (survives reboots):
//   domains/<uuid>.xml     persistent domain definitions
//   status/<uuid>.json     one per running domain: what reconnecting needs
//   autostart/<uuid>       present while the domain is marked autostart (libvirt's autostart/ links)
// runDir (sockets, pid files, logs; gone after a reboot, like libvirt's /run):
//   <uuid>/qmp.sock, qga.sock, qemu.pid, qemu.log, console.log
//
// Every file is written atomically (temp file, fsync, rename, fsync of the
// directory) so a crash leaves either the old or the new content, never half.

import { constants as fsc } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { virErr } from '../errors.js';
import type { DiskNodes } from './command-line.js';

export interface DriverDirs {
  stateDir: string;
  runDir: string;
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/**
 * Directories from options, then env (VIRTBACK_STATE_DIR, VIRTBACK_RUN_DIR),
 * then defaults: /var/lib/virtback and /run/virtback for root, else
 * $XDG_STATE_HOME/virtback (~/.local/state/virtback) and $XDG_RUNTIME_DIR/virtback
 * (or <tmpdir>/virtback-<uid> without XDG_RUNTIME_DIR).
 */
export function resolveDirs(opts: Partial<DriverDirs> = {}, env: NodeJS.ProcessEnv = process.env): DriverDirs {
  const root = isRoot();
  const stateDir = opts.stateDir ?? env.VIRTBACK_STATE_DIR ?? (root
    ? '/var/lib/virtback'
    : path.join(env.XDG_STATE_HOME ?? path.join(os.homedir(), '.local', 'state'), 'virtback'));
  const runDir = opts.runDir ?? env.VIRTBACK_RUN_DIR ?? (root
    ? '/run/virtback'
    : env.XDG_RUNTIME_DIR
      ? path.join(env.XDG_RUNTIME_DIR, 'virtback')
      : path.join(os.tmpdir(), `virtback-${process.getuid?.() ?? 'user'}`));
  return { stateDir: path.resolve(stateDir), runDir: path.resolve(runDir) };
}

/** What reconnecting to a running domain needs; status/<uuid>.json. */
export interface DomainStatus {
  version: 1;
  uuid: string;
  name: string;
  /** false once undefined while running: the domain goes away when it stops */
  persistent: boolean;
  pid: number;
  /** /proc/<pid>/stat field 22 (clock ticks since boot): tells a reused pid apart */
  pidStartTime: number;
  binary: string;
  qmpSocket: string;
  agentSocket: string | null;
  /** the domain's own directory under runDir */
  runDir: string;
  disks: DiskNodes[];
  /** ISO time the domain was started */
  startedAt: string;
  /** started with START_AUTODESTROY: a driver that reconnects to it destroys it */
  autodestroy?: boolean;
  /** the definition QEMU was started with (the live XML) */
  liveXml: string;
  /** room for other modules (backup jobs, checkpoints) to persist per-run data */
  extra: Record<string, unknown>;
}

export class StatePaths {
  constructor(readonly dirs: DriverDirs) {}

  get domainsDir(): string {
    return path.join(this.dirs.stateDir, 'domains');
  }
  get statusDir(): string {
    return path.join(this.dirs.stateDir, 'status');
  }
  definition(uuid: string): string {
    return path.join(this.domainsDir, `${uuid}.xml`);
  }
  status(uuid: string): string {
    return path.join(this.statusDir, `${uuid}.json`);
  }
  get autostartDir(): string {
    return path.join(this.dirs.stateDir, 'autostart');
  }
  /** The autostart mark of a domain: an (empty) file. */
  autostart(uuid: string): string {
    return path.join(this.autostartDir, uuid);
  }
  /** UEFI variable stores of the domains (firmware.ts), NAME_VARS.fd: they outlive runs. */
  get nvramDir(): string {
    return path.join(this.dirs.stateDir, 'nvram');
  }
  /** Per-domain run directory (sockets, pid file, logs). */
  domainRunDir(uuid: string): string {
    return path.join(this.dirs.runDir, uuid);
  }

  async ensure(): Promise<void> {
    await mkdir(this.domainsDir, { recursive: true, mode: 0o700 });
    await mkdir(this.statusDir, { recursive: true, mode: 0o700 });
    await mkdir(this.autostartDir, { recursive: true, mode: 0o700 });
    await mkdir(this.dirs.runDir, { recursive: true, mode: 0o700 });
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

let tmpCounter = 0;
/** `.<name>.tmp-<pid>-<n>`: what writeFileAtomic leaves when its process is killed between write and rename */
const TMP_RE = /^\..+\.tmp-(\d+)-\d+$/;

/**
 * Remove the temp files of writers that were killed (a SIGKILL between write
 * and rename), in `dir` and the folders right below it. Only one driver
 * works on a state directory (virtbackd holds its lock), so a temp file of
 * another pid is nobody's.
 */
export async function removeStaleTempFiles(dir: string): Promise<string[]> {
  const removed: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      for (const sub of await readdir(p).catch(() => [] as string[])) {
        const m = TMP_RE.exec(sub);
        if (m && Number(m[1]) !== process.pid) removed.push(path.join(p, sub));
      }
    } else {
      const m = TMP_RE.exec(e.name);
      if (m && Number(m[1]) !== process.pid) removed.push(p);
    }
  }
  for (const p of removed) await rm(p, { force: true });
  return removed;
}

/** Write `data` to `file` atomically: temp file + fsync + rename + fsync of the directory. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${++tmpCounter}`);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
    await fsyncDir(dir);
  } catch (e) {
    await rm(tmp, { force: true });
    throw virErr('SYSTEM_ERROR', 'QEMU', `cannot write file '${file}': ${(e as Error).message}`, e);
  }
}

/** Remove a file; missing is fine. The directory is fsynced so the removal is durable. */
export async function removeFileDurably(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw virErr('SYSTEM_ERROR', 'QEMU', `cannot remove file '${file}': ${(e as Error).message}`, e);
  }
  await fsyncDir(path.dirname(file));
}

/** Names in `dir` ending in `suffix`, without it; [] when the directory is missing. Temp files are skipped. */
export async function listIds(dir: string, suffix: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return names.filter((n) => n.endsWith(suffix) && !n.startsWith('.')).map((n) => n.slice(0, -suffix.length)).sort();
}

export async function readStatus(file: string): Promise<DomainStatus> {
  const v = JSON.parse(await readFile(file, 'utf8')) as DomainStatus;
  if (v.version !== 1 || typeof v.uuid !== 'string' || typeof v.pid !== 'number') {
    throw new Error(`unrecognised status file '${file}'`);
  }
  v.extra ??= {};
  return v;
}

export async function writeStatus(file: string, status: DomainStatus): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(status, null, 2) + '\n');
}
