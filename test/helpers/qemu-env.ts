// Shared helpers for tests that run real QEMU through the QemuDriver.
//
//   test('...', async (t) => {
//     const env = await makeTestEnv(t);            // temp dir + state/run dirs, cleaned up in t.after
//     const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
//     const driver = await env.openDriver();        // closed by the cleanup
//     const { uuid } = await driver.domainDefineXML(dom.xml, 0);
//     await driver.domainCreate(uuid, 0);
//     await hmpWrite(driver, uuid, 'sda', 0xab, 0, 65536);
//     await driver.domainDestroy(uuid, 0);
//     assert.equal(await imageHasPattern(dom.disks[0].path, 0xab, 0, 65536), true);
//     await env.assertClean();                      // no QEMU, socket, status file of ours is left
//   });
//
// Everything the tests create lives under one short temp dir (/tmp/vb-XXXXXX:
// unix socket paths must stay under 108 bytes), and every QEMU started for it
// has that dir on its command line, which is how leaks are found and killed.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import type { DriverEvent } from '../../src/api/driver.js';
import { MonitorCommandFlags } from '../../src/flags.js';
import type { LogFields, Logger } from '../../src/log.js';
import { findPushBackup, writePushManifests } from '../../src/repository/push-manifests.js';
import { QemuDriver, type QemuDriverOptions } from '../../src/qemu/driver.js';

const run = promisify(execFile);

// ---------------------------------------------------------------- processes

export interface ProcInfo {
  pid: number;
  argv: string[];
}

/** Live (non-zombie) processes whose command line mentions `needle`, excluding this process. */
export async function processesMentioning(needle: string): Promise<ProcInfo[]> {
  const out: ProcInfo[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    try {
      const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
      if (!raw.includes(needle)) continue;
      const st = await readFile(`/proc/${pid}/stat`, 'utf8');
      const state = st.slice(st.lastIndexOf(')') + 2).split(' ')[0];
      if (state === 'Z' || state === 'X') continue;
      out.push({ pid, argv: raw.split('\0').filter((s) => s !== '') });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** QEMU processes whose command line mentions `dir` (the test's temp dir). */
export async function qemuProcessesFor(dir: string): Promise<ProcInfo[]> {
  return (await processesMentioning(dir)).filter((p) => path.basename(p.argv[0] ?? '').startsWith('qemu-system-'));
}

/** SIGKILL every QEMU of `dir` and wait until they are gone; returns the pids that were still running. */
export async function killQemuFor(dir: string): Promise<number[]> {
  const procs = await qemuProcessesFor(dir);
  for (const p of procs) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  const end = Date.now() + 5000;
  while ((await qemuProcessesFor(dir)).length > 0 && Date.now() < end) await sleep(25);
  return procs.map((p) => p.pid);
}

/** Files (recursively) under `dir` whose type is socket. */
export async function socketsUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  let entries;
  try {
    entries = await readdir(dir, { recursive: true, withFileTypes: true });
  } catch {
    return [];
  }
  for (const e of entries) {
    if (e.isSocket()) found.push(path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
  }
  return found;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws `what`). */
export async function waitFor<T>(fn: () => Promise<T> | T, what: string, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

// ---------------------------------------------------------------- logs

export interface LogEntry {
  level: 'error' | 'warn' | 'info' | 'debug';
  msg: string;
  /** the bindings of child loggers and the line's own fields, merged */
  fields: LogFields;
}

/** A Logger that keeps every line in `entries` (pass `log` to openDriver). */
export function recordingLogger(): { log: Logger; entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const make = (bindings: LogFields): Logger => {
    const at = (level: LogEntry['level']) => (a: LogFields | string, b?: string): void => {
      entries.push(typeof a === 'string'
        ? { level, msg: a, fields: { ...bindings } }
        : { level, msg: b ?? '', fields: { ...bindings, ...a } });
    };
    return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: (b) => make({ ...bindings, ...b }) };
  };
  return { log: make({}), entries };
}

// ---------------------------------------------------------------- environment

export interface TestEnv {
  /** the temp dir; everything of the test lives below it */
  dir: string;
  stateDir: string;
  runDir: string;
  /** every event of every driver opened through openDriver, in order */
  events: DriverEvent[];
  /** open a driver on this env's state/run dirs (it is closed by cleanup); extra options are passed on */
  openDriver(opts?: Partial<QemuDriverOptions>): Promise<QemuDriver>;
  /**
   * Assert that nothing of a running domain is left: no QEMU mentioning `dir`,
   * no socket under the run dir, no status file.
   */
  assertClean(): Promise<void>;
  /** close drivers, kill leftover QEMU, remove the temp dir (registered with t.after) */
  cleanup(): Promise<void>;
}

/** A fresh temp dir with state/ and run/ below it; cleaned up after the test (also when it fails). */
export async function makeTestEnv(t?: TestContext): Promise<TestEnv> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-'));
  const stateDir = path.join(dir, 'state');
  const runDir = path.join(dir, 'run');
  const drivers: QemuDriver[] = [];
  const events: DriverEvent[] = [];
  const env: TestEnv = {
    dir,
    stateDir,
    runDir,
    events,
    async openDriver(opts = {}) {
      const d = await QemuDriver.open({
        stateDir,
        runDir,
        afterPushComplete: writePushManifests, // as virtbackd assembles it
        locatePreviousBackup: findPushBackup,
        ...opts,
        listener: (ev) => {
          events.push(ev);
          opts.listener?.(ev);
        },
      });
      drivers.push(d);
      return d;
    },
    async assertClean() {
      const procs = await qemuProcessesFor(dir);
      assert.deepEqual(procs.map((p) => p.pid), [], `QEMU processes left running for ${dir}`);
      assert.deepEqual(await socketsUnder(runDir), [], 'sockets left in the run directory');
      const statusDir = path.join(stateDir, 'status');
      const status = await readdir(statusDir).catch(() => []);
      assert.deepEqual(status, [], 'status files left');
    },
    async cleanup() {
      for (const d of drivers.splice(0)) await d.close().catch(() => {});
      await killQemuFor(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
  t?.after(() => env.cleanup());
  return env;
}

// ---------------------------------------------------------------- domains

export interface TestDisk {
  target: string;
  path: string;
  bus: 'scsi' | 'sata' | 'virtio';
}

export interface TestDomain {
  name: string;
  uuid: string;
  xml: string;
  disks: TestDisk[];
}

export interface TestDomainOptions {
  /** number of qcow2 data disks (default 1) */
  disks?: number;
  /** virtual size of each disk (default 64 MiB) */
  sizeMiB?: number;
  /** bus of every disk (default scsi: HMP qemu-io works on it); or one bus per disk */
  bus?: 'scsi' | 'sata' | 'virtio' | ('scsi' | 'sata' | 'virtio')[];
  name?: string;
  uuid?: string;
  memoryMiB?: number;
  /** add a guest-agent channel (socket chosen by the driver) */
  agent?: boolean;
  /** an <os> element (e.g. tinyGuestOsXml()); default: <os><type>hvm</type></os>, nothing boots */
  osXml?: string;
  /** extra XML inside <devices> */
  devicesXml?: string;
  /** extra XML at the end of <domain> (e.g. <on_reboot>destroy</on_reboot>) */
  domainXml?: string;
}

function targetName(bus: 'scsi' | 'sata' | 'virtio', i: number): string {
  return (bus === 'virtio' ? 'vd' : 'sd') + String.fromCharCode(97 + i);
}

/** Create qcow2 images `<dir>/<name>-<target>.qcow2` and return a domain XML using them. */
export async function makeTestDomain(dir: string, opts: TestDomainOptions = {}): Promise<TestDomain> {
  const n = opts.disks ?? 1;
  const size = opts.sizeMiB ?? 64;
  const name = opts.name ?? `t-${randomUUID().slice(0, 8)}`;
  const uuid = opts.uuid ?? randomUUID();
  // scsi and sata disks share the sd* names, as in libvirt
  const counters = { sd: 0, vd: 0 };
  const disks: TestDisk[] = [];
  for (let i = 0; i < n; i++) {
    const bus = Array.isArray(opts.bus) ? (opts.bus[i] ?? 'scsi') : (opts.bus ?? 'scsi');
    const target = targetName(bus, bus === 'virtio' ? counters.vd++ : counters.sd++);
    const file = path.join(dir, `${name}-${target}.qcow2`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, `${size}M`]);
    disks.push({ target, path: file, bus });
  }
  const diskXml = disks
    .map((d) =>
      `    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='${d.path}'/>\n` +
      `      <target dev='${d.target}' bus='${d.bus}'/>\n    </disk>\n`)
    .join('');
  const agentXml = opts.agent
    ? "    <channel type='unix'>\n      <source mode='bind'/>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n"
    : '';
  const xml =
    `<domain type='qemu'>\n  <name>${name}</name>\n  <uuid>${uuid}</uuid>\n` +
    `  <memory unit='MiB'>${opts.memoryMiB ?? 128}</memory>\n  <vcpu>1</vcpu>\n` +
    `  ${opts.osXml ?? "<os><type arch='x86_64' machine='q35'>hvm</type></os>"}\n` +
    `  <devices>\n${diskXml}${agentXml}${opts.devicesXml ?? ''}  </devices>\n${opts.domainXml ?? ''}</domain>\n`;
  return { name, uuid, xml, disks };
}

// ---------------------------------------------------------------- data

/**
 * Write `len` bytes of `pattern` at `offset` into disk `target` of a running
 * domain, through HMP `qemu-io -d <qdev id>` (scsi and sata disks only; QEMU
 * cannot do it for virtio-blk). Throws with QEMU's text when the write fails.
 */
export async function hmpWrite(
  driver: QemuDriver, uuid: string, target: string, pattern: number, offset: number, len: number,
): Promise<void> {
  const disk = driver.diskNodes(uuid).find((d) => d.target === target);
  if (!disk) throw new Error(`no disk '${target}' in the running domain ${uuid}`);
  const cmd = `qemu-io -d ${disk.qdevId} "write -P 0x${pattern.toString(16)} ${offset} ${len}"`;
  const out = await driver.qemuMonitorCommand(uuid, cmd, MonitorCommandFlags.HMP);
  if (out.trim() !== '' && !/^wrote /m.test(out)) throw new Error(`${cmd}: ${out.trim()}`);
}

/** true when the image holds `pattern` in [offset, offset+len) (qemu-io read -P; -U reads a disk in use). */
export async function imageHasPattern(file: string, pattern: number, offset: number, len: number, opts: { shared?: boolean } = {}): Promise<boolean> {
  const args = ['-r', ...(opts.shared ? ['-U'] : []), '-c', `read -P 0x${pattern.toString(16)} ${offset} ${len}`, file];
  const { stdout } = await run('qemu-io', args);
  return !stdout.includes('Pattern verification failed');
}

/** sha256 of the image's guest-visible content (qemu-img convert to raw in the same dir, then hashed). */
export async function imageSha256(file: string): Promise<string> {
  const raw = `${file}.sha-${process.pid}.raw`;
  try {
    await run('qemu-img', ['convert', '-U', '-O', 'raw', file, raw]);
    const h = createHash('sha256');
    h.update(await readFile(raw));
    return h.digest('hex');
  } finally {
    await rm(raw, { force: true });
  }
}

/** Whether a path exists. */
export async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** Whether this process may mount a tmpfs (tests of full filesystems need one). */
export const canMountTmpfs = process.getuid?.() === 0;

/**
 * A tmpfs of `sizeMiB` at `<dir>/small` while `fn` runs (root only): a real
 * filesystem that fills up. Unmounted before the test env's cleanup removes
 * `dir` (after hooks run in order, so not with one).
 */
export async function withSmallTmpfs<T>(dir: string, sizeMiB: number, fn: (small: string) => Promise<T>): Promise<T> {
  const small = path.join(dir, 'small');
  await mkdir(small);
  await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'vbt-small', small]);
  try {
    return await fn(small);
  } finally {
    await run('umount', ['-l', small]).catch(() => undefined);
  }
}
