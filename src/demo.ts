#!/usr/bin/env node
// The main job end to end, on a throwaway VM: a private virtbackd, a domain
// with two qcow2 disks, guest-like writes, a full push backup with checkpoint
// c1 while writes continue, an incremental push from c1 with c2, restore of
// both points, and a pull-mode incremental read by nbdcopy — each checked
// against the disk content at its backup instant, computed independently.
//
// "The disk at the instant" is reconstructed from the write log: the disks
// start empty (all zeroes) and every write goes through QEMU's monitor, which
// runs the writes and the backup transaction one after another, so the writes
// completed before backupBegin are exactly what the backup must contain.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connect } from './sdk/connect.js';
import type { Connect, Domain } from './api/public.js';
import type { JobCompletedEvent } from './api/driver.js';
import { qdevIdForDisk } from './qemu/command-line.js';
import { parseDomainXML } from './xml/domain.js';
import { restoreBackup, verifyBackup } from './repository/index.js';

const run = promisify(execFile);
const MiB = 1 << 20;
const DISK_MIB = 128;
const DISKS = ['sda', 'sdb'];

interface Write {
  disk: string;
  offset: number;
  length: number;
  pattern: number;
}

const t0 = Date.now();
function say(msg: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(1).padStart(5);
  process.stdout.write(`[${s}s] ${msg}\n`);
}

function fmtBytes(n: number): string {
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

/** Guest-like writes through HMP qemu-io, logged; a gate lets a backup start between two writes. */
class Writer {
  readonly log: Write[] = [];
  private running = false;
  private loop: Promise<void> | null = null;
  private gate: Promise<void> | null = null;
  private inflight: Promise<void> = Promise.resolve();
  private openGate: (() => void) | null = null;
  private seed = 0x9e3779b9;

  constructor(private readonly dom: Domain, private readonly qdev: Map<string, string>) {}

  async write(w: Write): Promise<void> {
    const cmd = `qemu-io -d ${this.qdev.get(w.disk)} "write -P 0x${w.pattern.toString(16)} ${w.offset} ${w.length}"`;
    const out = await this.dom.qemuMonitorCommand(cmd, { hmp: true });
    // HMP's qemu-io prints nothing (or a "wrote" line) on success, the error text otherwise
    if (out.trim() !== '' && !/^wrote /m.test(out)) throw new Error(`${cmd}: ${out.trim()}`);
    this.log.push(w);
  }

  /** A pseudo-random (seeded, so every run is alike) write of 64 KiB..1 MiB, aligned to 64 KiB. */
  next(): Write {
    const r = (): number => {
      // xorshift32
      this.seed ^= this.seed << 13;
      this.seed ^= this.seed >>> 17;
      this.seed ^= this.seed << 5;
      return this.seed >>> 0;
    };
    const length = ((r() % 16) + 1) * 65536;
    const offset = (r() % ((DISK_MIB * MiB - length) / 65536)) * 65536;
    return { disk: DISKS[r() % DISKS.length]!, offset, length, pattern: (r() % 255) + 1 };
  }

  async fill(count: number): Promise<void> {
    for (let i = 0; i < count; i++) await this.write(this.next());
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        if (this.gate) await this.gate;
        if (!this.running) break;
        this.inflight = this.write(this.next());
        await this.inflight;
      }
    })();
  }

  /** Run `fn` between two writes; returns its result and how many writes preceded it. */
  async between<T>(fn: () => Promise<T>): Promise<{ value: T; before: number }> {
    this.gate = new Promise((r) => (this.openGate = r));
    await this.inflight; // the loop parks on the gate after this write
    const before = this.log.length;
    try {
      return { value: await fn(), before };
    } finally {
      this.openGate?.();
      this.gate = null;
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    this.openGate?.();
    await this.loop;
  }
}

/** sha256 of a disk as it was after the first `count` writes (all zeroes before). */
function expectedSha(log: Write[], count: number, disk: string): string {
  const buf = Buffer.alloc(DISK_MIB * MiB);
  for (const w of log.slice(0, count)) if (w.disk === disk) buf.fill(w.pattern, w.offset, w.offset + w.length);
  return createHash('sha256').update(buf).digest('hex');
}

async function rawSha(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

function check(what: string, got: string, want: string): void {
  if (got !== want) throw new Error(`${what}: sha256 ${got.slice(0, 12)}… differs from the disk at the backup instant ${want.slice(0, 12)}…`);
  say(`  ✔ ${what} equals the disk at its backup instant (sha256 ${got.slice(0, 12)}…)`);
}

function waitForJob(conn: Connect, jobId: number): Promise<JobCompletedEvent> {
  return new Promise((resolve) => {
    const off = conn.on('job-completed', (ev) => {
      if (ev.jobId === jobId) {
        off();
        resolve(ev);
      }
    });
  });
}

async function startDaemon(dir: string): Promise<{ child: ChildProcess; socket: string }> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const js = path.join(here, 'cli', 'virtbackd.js');
  const args = existsSync(js) ? [js] : ['--import', 'tsx', path.join(here, 'cli', 'virtbackd.ts')];
  const runDir = path.join(dir, 'run');
  const child = spawn(process.execPath, [...args, '--state-dir', path.join(dir, 'state'), '--run-dir', runDir, '--log-level', 'warn'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const socket = path.join(runDir, 'virtbackd.sock');
  for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(socket)) throw new Error('virtbackd did not start');
  return { child, socket };
}

/** What cleanup has to undo; each step fills in what it created, as it creates it. */
interface DemoState {
  dir: string;
  daemon: { child: ChildProcess; socket: string } | null;
  conn: Connect | null;
  dom: Domain | null;
  writer: Writer | null;
}

/** The running demo: a connection, the domain, its disk images and the writer. */
interface Running {
  dir: string;
  conn: Connect;
  dom: Domain;
  disks: string[];
  writer: Writer;
}

async function cleanup(s: DemoState): Promise<void> {
  await s.writer?.stop().catch(() => {});
  if (s.dom) {
    await s.dom.abortJob().catch(() => {});
    await s.dom.destroy().catch(() => {});
    await s.dom.undefine({ checkpointsMetadata: true }).catch(() => {});
  }
  await s.conn?.close().catch(() => {});
  s.daemon?.child.kill('SIGTERM');
  await rm(s.dir, { recursive: true, force: true });
}

/** A private virtbackd, a domain with two empty qcow2 disks, started, then filled by guest-like writes. */
async function setUp(s: DemoState): Promise<Running> {
  const { dir } = s;
  say(`virtback demo in ${dir}`);
  s.daemon = await startDaemon(dir);
  const conn = (s.conn = await connect(`virtback+unix:///?socket=${s.daemon.socket}`));
  say(`virtbackd running, connected to ${conn.getURI()}`);

  const disks = DISKS.map((d) => path.join(dir, `demo-${d}.qcow2`));
  for (const d of disks) await run('qemu-img', ['create', '-q', '-f', 'qcow2', d, `${DISK_MIB}M`]);
  const xml = `<domain type='qemu'><name>virtback-demo</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
      ${DISKS.map((t, i) => `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disks[i]}'/><target dev='${t}' bus='scsi'/></disk>`).join('')}
      </devices></domain>`;
  const dom = (s.dom = await conn.defineXML(xml));
  await dom.create();
  const def = parseDomainXML(await dom.getXMLDesc());
  const qdev = new Map(DISKS.map((t) => [t, qdevIdForDisk(def, t)]));
  say(`domain virtback-demo started: 2 qcow2 disks of ${DISK_MIB} MiB (${disks.map((d) => path.basename(d)).join(', ')})`);

  const writer = (s.writer = new Writer(dom, qdev));
  await writer.fill(40);
  say(`filled the disks with ${writer.log.length} guest-like writes (${fmtBytes(writer.log.reduce((sum, w) => sum + w.length, 0))})`);
  return { dir, conn, dom, disks, writer };
}

/** 1. full push backup + checkpoint c1, while writes continue; returns the writes it holds. */
async function pushFull({ conn, dom, writer }: Running): Promise<number> {
  const tb = Date.now();
  const full = await writer.between(() => dom.backupBegin(null, '<domaincheckpoint><name>c1</name></domaincheckpoint>'));
  const fullDone = await waitForJob(conn, full.value);
  if (!fullDone.stats.success) throw new Error(`full backup failed: ${fullDone.stats.errmsg}`);
  say(`full push backup job ${full.value} + checkpoint c1: ${fmtBytes(fullDone.stats.disk_total ?? 0)} in ${((Date.now() - tb) / 1000).toFixed(2)} s ` +
    `(${writer.log.length - full.before} writes landed during the copy)`);
  await dom.backupEnd(full.value);
  return full.before;
}

/** 2. incremental push from c1 + checkpoint c2; returns the writes it holds. */
async function pushIncremental({ conn, dom, disks, writer }: Running): Promise<number> {
  const tb = Date.now();
  const inc = await writer.between(() =>
    dom.backupBegin('<domainbackup><incremental>c1</incremental></domainbackup>', '<domaincheckpoint><name>c2</name></domaincheckpoint>'));
  const incDone = await waitForJob(conn, inc.value);
  if (!incDone.stats.success) throw new Error(`incremental backup failed: ${incDone.stats.errmsg}`);
  const incSize = (await stat(`${disks[0]}.c2`)).size + (await stat(`${disks[1]}.c2`)).size;
  say(`incremental push backup job ${inc.value} since c1 + checkpoint c2: ${fmtBytes(incSize)} written in ${((Date.now() - tb) / 1000).toFixed(2)} s`);
  await dom.backupEnd(inc.value);
  return inc.before;
}

/** 3. restore both points and compare with the disk at each instant. */
async function restoreAndCheck({ dir, disks, writer }: Running, points: (readonly [string, number])[]): Promise<void> {
  for (const [i, disk] of DISKS.entries()) {
    for (const [point, n] of points) {
      const target = `${disks[i]}.${point}`;
      const out = path.join(dir, `restored-${disk}-${point}.raw`);
      const tb = Date.now();
      await restoreBackup({ target, output: out, format: 'raw' });
      const v = await verifyBackup({ target });
      if (!v.ok) throw new Error(`verify of ${target} failed`);
      check(`${disk} restored from ${path.basename(target)} (${((Date.now() - tb) / 1000).toFixed(2)} s, verified against its manifest)`,
        await rawSha(out), expectedSha(writer.log, n, disk));
      await rm(out);
    }
  }
}

/** 4. pull-mode incremental from c2 + checkpoint c3, read by nbdcopy while writes continue. */
async function pullIncremental({ dir, dom, writer }: Running): Promise<void> {
  writer.start();
  await new Promise((r) => setTimeout(r, 500));
  const sock = path.join(dir, 'nbd.sock');
  const tb = Date.now();
  const pull = await writer.between(() => dom.backupBegin(
    `<domainbackup mode='pull'><incremental>c2</incremental><server transport='unix' socket='${sock}'/></domainbackup>`,
    '<domaincheckpoint><name>c3</name></domaincheckpoint>'));
  await new Promise((r) => setTimeout(r, 300)); // more writes land on the live disk during the read
  for (const disk of DISKS) {
    const out = path.join(dir, `pull-${disk}.raw`);
    await run('nbdcopy', [`nbd+unix:///${disk}?socket=${sock}`, out]);
    const { stdout } = await run('nbdinfo', [`--map=qemu:dirty-bitmap:backup-${disk}`, '--json', `nbd+unix:///${disk}?socket=${sock}`]);
    const dirty = (JSON.parse(stdout) as { length: number; type: number }[]).filter((e) => e.type & 1).reduce((s, e) => s + e.length, 0);
    check(`${disk} read by nbdcopy from the pull export (${fmtBytes(dirty)} dirty since c2)`, await rawSha(out), expectedSha(writer.log, pull.before, disk));
    await rm(out);
  }
  await dom.backupEnd(pull.value);
  say(`pull-mode incremental job ${pull.value} since c2 + checkpoint c3 ended after ${((Date.now() - tb) / 1000).toFixed(2)} s`);
}

async function main(): Promise<void> {
  const state: DemoState = { dir: await mkdtemp(path.join(os.tmpdir(), 'virtback-demo-')), daemon: null, conn: null, dom: null, writer: null };
  process.once('SIGINT', () => {
    say('interrupted: cleaning up');
    cleanup(state).finally(() => process.exit(130));
  });

  try {
    const demo = await setUp(state);
    demo.writer.start();
    const c1 = await pushFull(demo);
    await new Promise((r) => setTimeout(r, 300));
    const c2 = await pushIncremental(demo);
    await demo.writer.stop();
    say(`${demo.writer.log.length} writes so far; writer paused while restoring`);
    await restoreAndCheck(demo, [['c1', c1], ['c2', c2]]);
    await pullIncremental(demo);
    await demo.writer.stop();
    say(`checkpoints: ${(await demo.dom.listAllCheckpoints({ topological: true })).map((c) => c.getName()).join(' -> ')}`);
    say('all backups restored byte-exact; cleaning up');
  } finally {
    await cleanup(state);
  }
  say('done');
}

main().catch((e: unknown) => {
  process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
