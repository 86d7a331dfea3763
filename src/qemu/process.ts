// QEMU as an operating-system process: launch it detached, recognise it
// again later (pid + start time + command line), wait for it to end, kill it.
//
// QEMU is started with -daemonize: the launcher process exits once QEMU is
// initialised (monitor socket listening) or has failed, so start-up errors
// come back synchronously in the launcher's exit status and stderr (our log
// file), and the daemon is reparented away from us and outlives this process.
// A process that ended but was not reaped (a zombie, since nothing may reap
// orphans in a container) counts as gone.

import { spawn } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, open, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { virErr } from '../errors.js';
import type { DomainDef } from '../xml/domain.js';

/** /dev/kvm exists and we may open it read-write. */
export async function kvmUsable(): Promise<boolean> {
  try {
    await access('/dev/kvm', fsc.R_OK | fsc.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Every disk source must exist before QEMU is started, as libvirt checks
 * (virStorageSourceReportBrokenChain): SYSTEM_ERROR
 * "Cannot access storage file '<path>' (as uid:U, gid:G): No such file or directory".
 */
export async function checkDiskSources(def: DomainDef): Promise<void> {
  for (const disk of def.disks) {
    if (disk.source === null) continue;
    const mode = disk.readonly || disk.device === 'cdrom' ? fsc.R_OK : fsc.R_OK | fsc.W_OK;
    try {
      await access(disk.source, mode);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const uid = process.getuid?.() ?? 0;
      const gid = process.getgid?.() ?? 0;
      throw virErr('SYSTEM_ERROR', 'STORAGE',
        `Cannot access storage file '${disk.source}' (as uid:${uid}, gid:${gid}): ${errnoText(err)}`, e);
    }
  }
}

function errnoText(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOENT': return 'No such file or directory';
    case 'EACCES': return 'Permission denied';
    case 'EROFS': return 'Read-only file system';
    case 'ENOTDIR': return 'Not a directory';
    default: return err.message;
  }
}

export interface ProcInfo {
  /** field 3 of /proc/PID/stat: R, S, D, Z, ... */
  state: string;
  /** field 22: start time in clock ticks after boot */
  startTime: number;
}

/** The fields of /proc/<pid>/stat from field 3 on (field N is [N - 3]), or null when there is no such process. */
async function procStatFields(pid: number): Promise<string[] | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm (field 2) may contain spaces and parentheses: split after the last ')'.
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** /proc/<pid>/stat, or null when there is no such process. */
export async function readProcStat(pid: number): Promise<ProcInfo | null> {
  const rest = await procStatFields(pid);
  if (rest === null) return null;
  const state = rest[0] ?? '';
  const startTime = Number(rest[19]);
  if (!Number.isFinite(startTime)) return null;
  return { state, startTime };
}

/** USER_HZ: the unit of /proc/PID/stat times (sysconf(_SC_CLK_TCK), 100 on Linux) */
const CLK_TCK = 100;

/** CPU time the process (all its threads) used, ns: utime + stime of /proc/PID/stat; null when it is gone. */
export async function readProcCpuTimeNs(pid: number): Promise<number | null> {
  const rest = await procStatFields(pid);
  if (rest === null) return null;
  const ticks = Number(rest[14 - 3]) + Number(rest[15 - 3]);
  return Number.isFinite(ticks) ? ticks * (1e9 / CLK_TCK) : null;
}

export async function readProcCmdline(pid: number): Promise<string[] | null> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    const parts = raw.split('\0');
    if (parts.at(-1) === '') parts.pop();
    return parts;
  } catch {
    return null;
  }
}

/** Alive = exists and is not a zombie. */
export async function processAlive(pid: number, startTime?: number): Promise<boolean> {
  const st = await readProcStat(pid);
  if (st === null || st.state === 'Z' || st.state === 'X') return false;
  return startTime === undefined || st.startTime === startTime;
}

/**
 * The process `pid` is still the QEMU we started for `uuid`: same start time,
 * a qemu-system-* binary, and `-uuid <uuid>` on its command line.
 */
export async function isOurQemu(pid: number, startTime: number, uuid: string): Promise<boolean> {
  if (!(await processAlive(pid, startTime))) return false;
  const argv = await readProcCmdline(pid);
  if (argv === null || argv.length === 0) return false;
  if (!path.basename(argv[0]!).startsWith('qemu-system-')) return false;
  const i = argv.indexOf('-uuid');
  return i >= 0 && argv[i + 1]?.toLowerCase() === uuid.toLowerCase();
}

/**
 * A live QEMU of domain `uuid` started for `runDir`, found without a status
 * file: a qemu-system-* process with `-uuid <uuid>` on its command line that
 * names `runDir` (its monitor socket and pid file live there). The pid file
 * is tried first; a scan of /proc finds it when that file is gone too.
 */
export async function findLiveQemu(uuid: string, runDir: string): Promise<LaunchedProcess | null> {
  const fromFile = Number((await readFile(path.join(runDir, 'qemu.pid'), 'utf8').catch(() => '')).trim());
  const pids = Number.isInteger(fromFile) && fromFile > 0 ? [fromFile] : [];
  const all = await readdir('/proc').catch(() => [] as string[]);
  pids.push(...all.filter((n) => /^\d+$/.test(n)).map(Number).filter((p) => p !== fromFile && p !== process.pid));
  for (const pid of pids) {
    const argv = await readProcCmdline(pid);
    if (argv === null || argv.length === 0 || !path.basename(argv[0]!).startsWith('qemu-system-')) continue;
    const i = argv.indexOf('-uuid');
    if (i < 0 || argv[i + 1]?.toLowerCase() !== uuid.toLowerCase()) continue;
    if (!argv.some((a) => a.includes(runDir + path.sep))) continue;
    const st = await readProcStat(pid);
    if (st !== null && st.state !== 'Z' && st.state !== 'X') return { pid, startTime: st.startTime };
  }
  return null;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Wait until the process is gone (or a zombie); true if it ended within `timeoutMs`. */
export async function waitForExit(pid: number, startTime: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (!(await processAlive(pid, startTime))) return true;
    if (Date.now() >= end) return false;
    await sleep(25);
  }
}

/** Send `signal` unless the pid now belongs to another process. */
export async function signalProcess(pid: number, startTime: number, signal: NodeJS.Signals): Promise<void> {
  if (!(await processAlive(pid, startTime))) return;
  try {
    process.kill(pid, signal);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

/** SIGTERM, then SIGKILL after `graceMs` (libvirt's qemuProcessKill); resolves once it is gone. */
export async function terminateProcess(pid: number, startTime: number, graceMs = 5000): Promise<void> {
  await signalProcess(pid, startTime, 'SIGTERM');
  if (await waitForExit(pid, startTime, graceMs)) return;
  await signalProcess(pid, startTime, 'SIGKILL');
  if (!(await waitForExit(pid, startTime, 5000))) {
    throw virErr('OPERATION_FAILED', 'QEMU', `Failed to terminate process ${pid} with SIGKILL`);
  }
}

export interface LaunchOptions {
  binary: string;
  args: string[];
  /** receives the launcher's stdout and stderr (appended) */
  logFile: string;
  /** the -pidfile QEMU writes */
  pidFile: string;
  /** how long QEMU may take to initialise */
  timeoutMs?: number;
}

export interface LaunchedProcess {
  pid: number;
  startTime: number;
}

/** The last non-empty line QEMU wrote to the log since `offset` (its error message). */
async function lastLogLine(logFile: string, offset: number): Promise<string> {
  try {
    const text = (await readFile(logFile)).subarray(offset).toString('utf8');
    const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '');
    return lines.at(-1) ?? '';
  } catch {
    return '';
  }
}

/**
 * Start QEMU daemonized; resolve with its pid once it is initialised.
 * Failure: INTERNAL_ERROR carrying QEMU's own error line.
 */
export async function launchQemu(opts: LaunchOptions): Promise<LaunchedProcess> {
  const log = await open(opts.logFile, 'a', 0o600);
  let exit: { code: number | null; signal: NodeJS.Signals | null };
  let offset: number;
  try {
    await log.write(`${new Date().toISOString()}: starting up\n${[opts.binary, ...opts.args].join(' ')}\n`);
    offset = (await log.stat()).size;
    const child = spawn(opts.binary, opts.args, {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
    });
    child.unref();
    const timeoutMs = opts.timeoutMs ?? 60_000;
    exit = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(virErr('OPERATION_TIMEOUT', 'QEMU', `QEMU did not finish starting within ${timeoutMs} ms`));
      }, timeoutMs);
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(virErr('INTERNAL_ERROR', 'QEMU', `cannot execute binary ${opts.binary}: ${e.message}`, e));
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal });
      });
    });
  } finally {
    await log.close();
  }
  if (exit.code !== 0) {
    const line = await lastLogLine(opts.logFile, offset);
    const why = line === '' ? `exit status ${exit.code ?? exit.signal}` : line;
    throw virErr('INTERNAL_ERROR', 'QEMU', `internal error: process exited while connecting to monitor: ${why}`);
  }
  const pid = Number((await readFile(opts.pidFile, 'utf8')).trim());
  if (!Number.isInteger(pid) || pid <= 0) {
    throw virErr('INTERNAL_ERROR', 'QEMU', `invalid pid in '${opts.pidFile}'`);
  }
  const st = await readProcStat(pid);
  if (st === null || st.state === 'Z') {
    const line = await lastLogLine(opts.logFile, offset);
    throw virErr('INTERNAL_ERROR', 'QEMU', `internal error: qemu unexpectedly closed the monitor: ${line}`);
  }
  return { pid, startTime: st.startTime };
}
