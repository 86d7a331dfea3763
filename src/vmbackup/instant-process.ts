// The `backup-serve` process behind an instant restore: started detached (it
// must outlive the command that started it, and serve the running VM), found
// again through its pidfile, and stopped by pid only after checking that the
// pid is still that serve process (pids are reused).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import type { S3Settings } from '../chunkstore/store-url.js';
import { virErr } from '../errors.js';
import { pidAlive } from './pid.js';

export interface ServeProcessSpec {
  /** argv that runs the virtback CLI, e.g. [node, ...execArgv, '/usr/lib/virtback/cli/virtback.js'] */
  virtbackCommand: string[];
  repoDir: string;
  domain: string;
  pointId: string;
  socket: string;
  pidfile: string;
  logFile: string;
  encryptKeyFile?: string;
  /** an s3:// repository: where it is reached, handed down as arguments and AWS_REGION/AWS_CA_BUNDLE (not left to the environment, which a later start may lack) */
  s3?: S3Settings;
  /** how long to wait for the pidfile (written once the exports listen) */
  readyTimeoutMs?: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function logTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-5).join(' | ');
  } catch {
    return '(no log)';
  }
}

/** Starts `virtback backup-serve` detached; resolves with its pid once its pidfile says it listens. */
export async function startServeProcess(s: ServeProcessSpec): Promise<number> {
  const [cmd, ...pre] = s.virtbackCommand;
  if (cmd === undefined) throw virErr('INTERNAL_ERROR', 'STORAGE', 'no command to run backup-serve with');
  const args = [...pre, 'backup-serve', '--repo', s.repoDir, s.domain, '--point', s.pointId, '--socket', s.socket, '--pidfile', s.pidfile];
  if (s.encryptKeyFile !== undefined) args.push('--encrypt-key', s.encryptKeyFile);
  if (s.s3?.endpoint !== undefined) args.push('--s3-endpoint', s.s3.endpoint);
  if (s.s3 !== undefined) args.push(s.s3.pathStyle ? '--s3-path-style' : '--no-s3-path-style');
  // credentials come from the environment as for any command; never from an argument (ps shows those)
  const env = { ...process.env, ...serveEnv(s.s3) };
  const log = fs.openSync(s.logFile, 'a', 0o600);
  let exited: string | undefined;
  try {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log, log], env });
    child.once('exit', (code, signal) => (exited = signal ?? `status ${code}`));
    child.once('error', (e) => (exited = e.message));
    child.unref();
  } finally {
    fs.closeSync(log);
  }
  const deadline = Date.now() + (s.readyTimeoutMs ?? 60_000);
  for (;;) {
    const pid = readPidfile(s.pidfile);
    if (pid !== undefined) return pid;
    if (exited !== undefined) {
      throw virErr('OPERATION_FAILED', 'STORAGE', `backup-serve exited (${exited}) before serving: ${logTail(s.logFile)}`);
    }
    if (Date.now() > deadline) throw virErr('OPERATION_TIMEOUT', 'STORAGE', `backup-serve did not start serving in time: ${logTail(s.logFile)}`);
    await sleep(100);
  }
}

/**
 * The recorded CA bundle to use now, or undefined. An AWS_CA_BUNDLE set where
 * the serving is (re)started wins over the recorded one, as the AWS CLI puts
 * the environment over its configuration: the admin who resumes says so
 * explicitly (a renewed gateway CA); a profile's ca_bundle there does not.
 * One rule for the serve process and for resume's own check (instant.ts).
 */
export function recordedCaBundle(s3: S3Settings | undefined): string | undefined {
  return process.env.AWS_CA_BUNDLE ? undefined : s3?.caBundle;
}

/** What the serve process is handed in its environment beyond ours: the recorded region and CA bundle. */
function serveEnv(s3: S3Settings | undefined): Record<string, string> {
  const ca = recordedCaBundle(s3);
  return { ...(s3?.region === undefined ? {} : { AWS_REGION: s3.region }), ...(ca ? { AWS_CA_BUNDLE: ca } : {}) };
}

export function readPidfile(file: string): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number(text.trim());
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

/** The pid of the serve process of `pidfile` when it still runs, serving `socket`. */
export function servingPid(pidfile: string, socket: string): number | undefined {
  const pid = readPidfile(pidfile);
  return pid !== undefined && pidAlive(pid) && isServeProcess(pid, socket) ? pid : undefined;
}

/** True when `pid` runs backup-serve on `socket` (so a reused pid is never signalled). */
function isServeProcess(pid: number, socket: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.includes('backup-serve') && argv.includes(socket);
  } catch {
    return false;
  }
}

/** Stops the serve process of `pidfile` (SIGTERM, then SIGKILL after `graceMs`); a process already gone is fine. */
export async function stopServeProcess(pidfile: string, socket: string, graceMs = 10_000): Promise<void> {
  const pid = servingPid(pidfile, socket);
  if (pid === undefined) {
    fs.rmSync(pidfile, { force: true });
    return;
  }
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (pidAlive(pid) && Date.now() < deadline) await sleep(100);
  if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  while (pidAlive(pid)) await sleep(50);
  fs.rmSync(pidfile, { force: true });
}
