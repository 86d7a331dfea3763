// Helpers for tests (and the scale bench) that run virtbackd as a child
// process serving the real QEMU driver and talk to it through the SDK.
//
// Everything lives under one temp dir (makeTestEnv: /tmp/vb-XXXXXX): the
// daemon's state and run dirs, the disks, the backup targets. cleanup() kills
// our daemons (by pid) and our QEMUs (by the temp dir on their command line)
// and removes the dir, also when the test failed.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { connect, type ConnectOptions } from '../../src/sdk/connect.js';
import type { DriverEvent } from '../../src/api/driver.js';
import type { Connect, Domain } from '../../src/api/public.js';
import { qdevIdForDisk } from '../../src/qemu/command-line.js';
import { parseDomainXML } from '../../src/xml/domain.js';
import { libvirtUri, virshOk } from '../helpers/libvirt-clients.js';
import { makeTestDomain, makeTestEnv, qemuProcessesFor, socketsUnder, waitFor, type TestEnv } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml } from '../helpers/tiny-guest.js';
import { programArgs, ROOT } from '../helpers/entry.js';


export interface Virtbackd {
  pid: number;
  child: ChildProcess;
  /** what the daemon wrote to stderr so far (its log unless --log-file) */
  stderr(): string;
  /** resolves with the exit code (null when killed by a signal) */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts virtbackd (test/helpers/entry.ts: the build, else the sources) with `--state-dir S --run-dir R`
 * and resolves once it reported ready on its readiness pipe (fd 3).
 */
export async function startVirtbackd(
  dirs: { stateDir: string; runDir: string },
  extra: string[] = [],
  opts: { compiled?: string } = {},
): Promise<Virtbackd> {
  // `compiled`: run this virtbackd.js instead
  const entry = opts.compiled ? [opts.compiled] : programArgs('cli/virtbackd');
  const child = spawn(
    process.execPath,
    [...entry, '--state-dir', dirs.stateDir, '--run-dir', dirs.runDir, '--ready-fd', '3', ...extra],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const ready = child.stdio[3] as NodeJS.ReadableStream;
  let line = '';
  ready.setEncoding('utf8');
  ready.on('data', (d: string) => (line += d));
  await Promise.race([
    new Promise<void>((resolve) => ready.on('end', () => resolve())),
    exited.then(() => undefined),
  ]);
  if (!line.startsWith('ready')) {
    if (child.exitCode === null) child.kill('SIGKILL');
    throw new Error(`virtbackd did not start: ${line.trim()} ${err.trim()}`);
  }
  return { pid: child.pid!, child, stderr: () => err, exited };
}

/** Sends `sig` and waits until the daemon has exited. */
export async function stopVirtbackd(d: Virtbackd, sig: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill(sig);
  return d.exited;
}

export interface DaemonEnv extends TestEnv {
  socket: string;
  uri: string;
  roUri: string;
  /** every daemon started through start(), newest last */
  daemons: Virtbackd[];
  start(extra?: string[]): Promise<Virtbackd>;
  /** an SDK connection, closed by cleanup */
  connect(opts?: ConnectOptions): Promise<Connect>;
  /** no QEMU, no daemon, no socket of ours left; only `allowedFiles` (relative to dir) outside state/ */
  assertAllGone(allowedFiles: string[]): Promise<void>;
}

export async function makeDaemonEnv(t: TestContext): Promise<DaemonEnv> {
  const base = await makeTestEnv();
  const daemons: Virtbackd[] = [];
  const conns: Connect[] = [];
  const socket = path.join(base.runDir, 'virtbackd.sock');
  const env: DaemonEnv = {
    ...base,
    socket,
    uri: `virtback+unix:///?socket=${socket}`,
    roUri: `virtback+unix:///?socket=${path.join(base.runDir, 'virtbackd-ro.sock')}`,
    daemons,
    async start(extra = []) {
      const d = await startVirtbackd({ stateDir: base.stateDir, runDir: base.runDir }, [...extra, '--log-level', 'debug']);
      daemons.push(d);
      return d;
    },
    async connect(opts = {}) {
      const c = await connect(env.uri, opts);
      conns.push(c);
      return c;
    },
    async assertAllGone(allowedFiles) {
      for (const d of daemons) assert.equal(isAlive(d.pid), false, `virtbackd ${d.pid} still running`);
      assert.deepEqual((await qemuProcessesFor(base.dir)).map((p) => p.pid), [], 'QEMU left running');
      assert.deepEqual(await socketsUnder(base.dir), [], 'sockets left');
      const files = (await readdir(base.dir, { recursive: true, withFileTypes: true }))
        .filter((e) => !e.isDirectory())
        .map((e) => path.relative(base.dir, path.join(e.parentPath, e.name)))
        .filter((f) => !f.startsWith(`state${path.sep}`))
        // a daemon's once-per-boot autostart mark stays, as libvirt's /run/libvirt/qemu/autostarted
        .filter((f) => f !== path.join('run', 'autostarted'))
        .sort();
      assert.deepEqual(files, [...allowedFiles].sort(), 'files left besides the expected ones');
      assert.deepEqual(await readdir(path.join(base.stateDir, 'status')).catch(() => []), [], 'status files left');
    },
    async cleanup() {
      for (const c of conns.splice(0)) await c.close().catch(() => {});
      for (const d of daemons) {
        if (d.child.exitCode === null && d.child.signalCode === null) {
          d.child.kill('SIGKILL');
          await d.exited;
        }
      }
      await base.cleanup();
    },
  };
  t.after(() => env.cleanup());
  return env;
}

/** The tiny guest (one 16 MiB disk, no disks mounted) defined with virsh over the daemon's libvirt socket; `cmdline`: more tg.* options. */
export async function virshDefinedGuest(env: DaemonEnv, opts: { agent: boolean; cmdline?: string }): Promise<{ name: string; uuid: string }> {
  const guest = await tinyGuest();
  const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 16, agent: opts.agent, osXml: tinyGuestOsXml(guest, `tg.disks=none ${opts.cmdline ?? ''}`.trim()) });
  const file = path.join(env.dir, 'dom.xml');
  await writeFile(file, dom.xml);
  await virshOk(libvirtUri(env.runDir), 'define', file);
  return { name: dom.name, uuid: dom.uuid };
}

// ---------------------------------------------------------------- domains through the SDK

/** Raw QMP through the daemon; throws on an error reply. */
export async function qmp<T = unknown>(dom: Domain, execute: string, args?: object): Promise<T> {
  const out = JSON.parse(await dom.qemuMonitorCommand(JSON.stringify(args === undefined ? { execute } : { execute, arguments: args }))) as {
    return?: T;
    error?: { desc: string };
  };
  if (out.error) throw new Error(`${execute}: ${out.error.desc}`);
  return out.return as T;
}

/** HMP qemu-io write of `len` bytes of `pattern` at `offset` through the daemon (scsi/sata disks). */
export async function hmpWriteVia(dom: Domain, xml: string, target: string, pattern: number, offset: number, len: number): Promise<void> {
  const qdev = qdevIdForDisk(parseDomainXML(xml), target);
  const cmd = `qemu-io -d ${qdev} "write -P 0x${pattern.toString(16)} ${offset} ${len}"`;
  const out = await dom.qemuMonitorCommand(cmd, { hmp: true });
  // QEMU 7.2 prints qemu-io's result ("wrote …" or "write failed: …") to its own
  // stdout, /dev/null once daemonized: the reply is empty and a failed write
  // goes unseen here (callers compare contents; see bench/full-target-repro.ts)
  if (out.trim() !== '' && !/^wrote /m.test(out)) throw new Error(`${cmd}: ${out.trim()}`);
}

/** What QEMU holds: node names, bitmaps per node, exports, jobs. */
export async function qemuStateVia(dom: Domain): Promise<{ nodes: string[]; bitmaps: string[]; exports: string[]; jobs: string[] }> {
  const nodes = await qmp<{ 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[]>(dom, 'query-named-block-nodes', { flat: true });
  const exports = await qmp<{ id: string }[]>(dom, 'query-block-exports');
  const jobs = await qmp<{ id: string }[]>(dom, 'query-jobs');
  return {
    nodes: nodes.map((n) => n['node-name']).sort(),
    bitmaps: nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => `${n['node-name']}/${b.name}`)).sort(),
    exports: exports.map((x) => x.id).sort(),
    jobs: jobs.map((j) => j.id).sort(),
  };
}

/** The QEMU job ids a push/pull backup of these disks gets: `backup-<target>-<disk format node>` (docs/backup.md). */
export async function backupJobIds(dom: Domain, targets: string[]): Promise<Map<string, string>> {
  const blocks = await qmp<{ qdev?: string; device: string; inserted?: { 'node-name': string } }[]>(dom, 'query-block');
  const xml = await dom.getXMLDesc();
  const def = parseDomainXML(xml);
  const out = new Map<string, string>();
  for (const target of targets) {
    const qdev = qdevIdForDisk(def, target);
    const b = blocks.find((x) => x.qdev === qdev || x.qdev?.endsWith(`/${qdev}`) || x.qdev?.startsWith(`${qdev}/`) || x.device === qdev);
    if (!b?.inserted) throw new Error(`no block device for disk ${target} (qdev ${qdev}) in query-block`);
    out.set(target, `backup-${target}-${b.inserted['node-name']}`);
  }
  return out;
}

export interface JobInfo {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
}

/**
 * Collects the connection's events from now on. Resolves once the daemon
 * has surely registered the subscription (two round trips after it was
 * requested: the daemon reads a connection's frames in order).
 */
export async function collectEvents(conn: Connect): Promise<{ events: DriverEvent[]; off: () => void }> {
  const events: DriverEvent[] = [];
  const off = conn.on('job-completed', (ev) => events.push(ev));
  const off2 = conn.on('block-job', (ev) => events.push(ev));
  await conn.listAllDomainSummaries();
  await conn.listAllDomainSummaries();
  return {
    events,
    off: () => {
      off();
      off2();
    },
  };
}

export function waitEvent<T extends DriverEvent>(events: DriverEvent[], pred: (e: DriverEvent) => e is T, what: string, timeoutMs = 30_000): Promise<T> {
  return waitFor(() => events.find(pred), what, timeoutMs) as Promise<T>;
}

/** The daemon's log file, if it was started with --log-file. */
export async function readLog(file: string): Promise<string> {
  return readFile(file, 'utf8').catch(() => '');
}
