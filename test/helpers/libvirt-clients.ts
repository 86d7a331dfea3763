// Real libvirt clients against virtbackd's libvirt sockets: Debian's virsh
// and python3-libvirt, run as child processes exactly as a user would run
// them (a URI with `?socket=`, LC_ALL=C so the texts are libvirt's English
// ones), plus parsers for virsh's tables, "Key: value" blocks and event lines.
//
//   const uri = libvirtUri(env.runDir);              // qemu+unix:///system?socket=<run>/libvirt-sock
//   await virshOk(uri, 'define', file);
//   const rows = parseTable(await virshOk(uri, 'list', '--all'));   // [{ Id: '1', Name: 'x', State: 'running' }]
//   const r = await virsh(roUri, ['start', 'x']);   // { code: 1, stderr: 'error: …' }

import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { waitFor } from './qemu-env.js';

const run = promisify(execFile);

export interface ClientResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The environment of every client: libvirt's untranslated texts, no default URI from the caller's shell. */
function clientEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C', ...extra };
  delete env.LIBVIRT_DEFAULT_URI;
  delete env.VIRSH_DEFAULT_CONNECT_URI;
  return env;
}

function works(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000, env: clientEnv() });
    return true;
  } catch {
    return false;
  }
}

/** Why the virsh tests cannot run here (undefined: they can). */
export function virshMissing(): string | undefined {
  if (!works('virsh', ['--version'])) return 'virsh is not installed (Debian package libvirt-clients)';
  if (!works('nbdinfo', ['--version']) || !works('nbdcopy', ['--version'])) return 'nbdinfo/nbdcopy are not installed (libnbd-bin)';
  return undefined;
}

let python: string | null | undefined;

/**
 * A python3 that imports the libvirt module: Debian's python3-libvirt lives in
 * /usr/bin/python3's dist-packages, which a python3 earlier on PATH (pyenv, venv) does not see.
 */
export function libvirtPython(): string | null {
  python ??= ['/usr/bin/python3', 'python3'].find((p) => works(p, ['-c', 'import libvirt'])) ?? null;
  return python;
}

/**
 * The URI a libvirt client uses for virtbackd's libvirt socket in `runDir`:
 * `qemu+unix:///system?socket=…` or the transport-less `qemu:///system?socket=…`
 * (both reach the given socket); `ro` picks the read-only socket.
 */
export function libvirtUri(runDir: string, opts: { ro?: boolean; form?: 'qemu+unix' | 'qemu' } = {}): string {
  const socket = path.join(runDir, opts.ro ? 'libvirt-sock-ro' : 'libvirt-sock');
  return `${opts.form ?? 'qemu+unix'}:///system?socket=${socket}`;
}

/** `virsh -c uri args…`; never throws on a non-zero exit (the result says). */
export async function virsh(uri: string, args: string[], opts: { readOnly?: boolean; timeoutMs?: number } = {}): Promise<ClientResult> {
  const argv = [...(opts.readOnly ? ['-r'] : []), '-c', uri, ...args];
  try {
    const { stdout, stderr } = await run('virsh', argv, { env: clientEnv(), timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code?: number | string; stdout?: string; stderr?: string; message: string };
    if (typeof x.code !== 'number') throw new Error(`virsh ${argv.join(' ')}: ${x.message}`, { cause: e });
    return { code: x.code, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}

/** virsh that must succeed; returns its stdout. */
export async function virshOk(uri: string, ...args: string[]): Promise<string> {
  const r = await virsh(uri, args);
  assert.equal(r.code, 0, `virsh ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

/** virsh that must fail with `error` among its "error: …" lines; returns stderr. */
export async function virshFails(uri: string, args: string[], error: RegExp, opts: { readOnly?: boolean } = {}): Promise<string> {
  const r = await virsh(uri, args, opts);
  assert.notEqual(r.code, 0, `virsh ${args.join(' ')} should fail; printed ${r.stdout.trim()}`);
  assert.match(r.stderr, error, `virsh ${args.join(' ')}`);
  return r.stderr;
}

// ---------------------------------------------------------------- output parsers

/**
 * A virsh table (`list`, `domblklist`, `checkpoint-list`): a header row, a
 * dashed rule, then rows whose columns are separated by two or more spaces
 * (values such as "shut off" or a creation time hold single spaces).
 */
export function parseTable(out: string): Record<string, string>[] {
  const lines = out.split('\n').filter((l) => l.trim() !== '');
  const rule = lines.findIndex((l) => /^-+$/.test(l.trim()));
  assert.ok(rule >= 1, `a virsh table: ${out}`);
  const header = lines[rule - 1]!.trim().split(/\s{2,}/);
  return lines.slice(rule + 1).map((l) => {
    const cells = l.trim().split(/\s{2,}/);
    assert.equal(cells.length, header.length, `row '${l}' has the columns ${header.join('|')}`);
    return Object.fromEntries(header.map((h, i) => [h, cells[i]!]));
  });
}

/** "Key:   value" lines (`dominfo`, `domjobinfo`, `checkpoint-info`, `version`). */
export function parseFields(out: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of out.split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line.trimEnd());
    if (m) fields.set(m[1]!.trim(), m[2]!);
  }
  return fields;
}

export interface VirshEvent {
  event: string;
  domain: string;
  /** the typed parameters printed below the event line ("\tname: value") */
  params: Map<string, string>;
  /** the rest of the event line (lifecycle: "Started Booted") */
  detail: string;
}

/** `virsh event` output: "event 'job-completed' for domain 'x':" followed by tab-indented "name: value" lines. */
export function parseEvents(out: string): VirshEvent[] {
  const events: VirshEvent[] = [];
  for (const line of out.split('\n')) {
    const m = /^event '([^']+)' for domain '([^']+)':?\s*(.*)$/.exec(line);
    if (m) {
      events.push({ event: m[1]!, domain: m[2]!, detail: m[3]!, params: new Map() });
      continue;
    }
    const p = /^\t([^:]+): (.*)$/.exec(line);
    if (p && events.length > 0) events.at(-1)!.params.set(p[1]!, p[2]!);
  }
  return events;
}

// ---------------------------------------------------------------- long-running clients

export interface Background {
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
  /** SIGTERM it if still running, then wait for it */
  stop(): Promise<number | null>;
}

function background(cmd: string, args: string[], env: NodeJS.ProcessEnv): Background {
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    stdout: () => out,
    stderr: () => err,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** virsh left running (`event --loop`); stop() it, also in t.after. */
export function virshBackground(uri: string, args: string[]): Background {
  return background('virsh', ['-c', uri, ...args], clientEnv());
}

/** Poll a background client's stdout until `pred` holds for it; the error shows what it printed by then. */
export async function waitOutput(b: Background, pred: (out: string) => boolean, what: string, timeoutMs = 30_000): Promise<string> {
  try {
    return await waitFor(() => (pred(b.stdout()) ? b.stdout() : undefined), what, timeoutMs);
  } catch (e) {
    throw new Error(`${(e as Error).message}; stdout: ${b.stdout()}; stderr: ${b.stderr()}`, { cause: e });
  }
}

// ---------------------------------------------------------------- python3-libvirt

/** Runs `script args…` with the python that has libvirt; each stdout line is one JSON object. */
export async function runPythonJson(script: string, args: string[], timeoutMs = 120_000): Promise<{ code: number; lines: Record<string, unknown>[]; stderr: string }> {
  const py = libvirtPython();
  assert.ok(py, 'python3 with the libvirt module');
  const b = background(py, ['-u', script, ...args], clientEnv());
  const timer = setTimeout(() => void b.stop(), timeoutMs);
  const code = await b.exited;
  clearTimeout(timer);
  const lines = b.stdout().split('\n').filter((l) => l.trim() !== '').map((l) => {
    try {
      return JSON.parse(l) as Record<string, unknown>;
    } catch {
      throw new Error(`${script} printed a line that is not JSON: ${l}\nstderr: ${b.stderr()}`);
    }
  });
  return { code: code ?? -1, lines, stderr: b.stderr() };
}
