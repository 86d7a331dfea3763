// What the soak drives, through the public surface only: a private virtbackd
// (its own --state-dir/--run-dir under one temp dir), an SDK connection to it,
// one domain with one small qcow2 disk, and the processes the faults kill.
//
// Layout under the temp dir (/tmp/vb-XXXXXX, short for unix socket paths):
//   state/ run/     the daemon's          disks/   the domain's disk
//   push/           push targets          pull/    backup-pull output
//   nbd/            pull export sockets   small/   a tiny tmpfs (target-full fault)
//   work/           restore outputs and expected images

import { execFile } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { connect, type Connect, type Domain } from '../src/index.js';
import { DomainState } from '../src/flags.js';
import { runMain, type CliResult } from '../test/helpers/cli.js';
import { makeTestDomain, makeTestEnv, killQemuFor, sleep, type TestEnv } from '../test/helpers/qemu-env.js';
import { hmpWriteVia, qmp, startVirtbackd, stopVirtbackd, type Virtbackd } from '../test/qemu/daemon-util.js';

export const run = promisify(execFile);
export const DISK = 'sda';

export interface WorldDirs {
  dir: string;
  disks: string;
  push: string;
  pull: string;
  nbd: string;
  small: string;
  work: string;
}

export class World {
  daemon: Virtbackd | null = null;
  conn: Connect | null = null;
  dom: Domain | null = null;
  /** the domain's disk image */
  diskFile = '';
  /** node names of the disk while the domain runs (everything else in QEMU is a job's) */
  baseNodes = new Set<string>();
  diskNode = '';
  smallMounted = false;
  private xml = '';
  /** how many daemons this world has started (a change means a restart) */
  daemonStarts = 0;
  /** SIGKILL sent to the current daemon: it counts as dead before its exit event arrives */
  private daemonKilled = false;

  private constructor(readonly env: TestEnv, readonly dirs: WorldDirs, readonly diskMiB: number) {}

  static async create(diskMiB: number): Promise<World> {
    const env = await makeTestEnv();
    const d = (n: string) => path.join(env.dir, n);
    const dirs: WorldDirs = { dir: env.dir, disks: d('disks'), push: d('push'), pull: d('pull'), nbd: d('nbd'), small: d('small'), work: d('work') };
    for (const p of [dirs.disks, dirs.push, dirs.pull, dirs.nbd, dirs.small, dirs.work]) await mkdir(p, { recursive: true });
    const w = new World(env, dirs, diskMiB);
    const def = await makeTestDomain(dirs.disks, { name: 'soak', sizeMiB: diskMiB });
    w.xml = def.xml;
    w.diskFile = def.disks[0]!.path;
    return w;
  }

  /** The domain's definition as the world made it. */
  domainXml(): string {
    return this.xml;
  }

  get uri(): string {
    return `virtback+unix:///?socket=${path.join(this.env.runDir, 'virtbackd.sock')}`;
  }

  get domain(): Domain {
    if (this.dom === null) throw new Error('no domain connection (daemon down?)');
    return this.dom;
  }

  // ------------------------------------------------------------ daemon

  async startDaemon(): Promise<void> {
    this.daemon = await startVirtbackd({ stateDir: this.env.stateDir, runDir: this.env.runDir }, ['--log-level', 'warn']);
    this.daemonKilled = false;
    this.daemonStarts++;
    this.conn = await connect(this.uri);
    this.dom = this.daemonStarts === 1 ? await this.conn.defineXML(this.xml) : await this.conn.lookupByName('soak');
  }

  daemonAlive(): boolean {
    // after a SIGKILL the child's exit event may still be on its way: a kill
    // seen as "alive" would skip the restart and call through a dead socket
    return this.daemon !== null && !this.daemonKilled && this.daemon.child.exitCode === null && this.daemon.child.signalCode === null;
  }

  /** SIGKILL the daemon now (no await: callers time it into a pending call). */
  killDaemonNow(): void {
    if (this.daemonAlive()) {
      this.daemon!.child.kill('SIGKILL');
      this.daemonKilled = true;
    }
  }

  /** Make sure the daemon is dead (SIGKILL), then start a new one and reconnect. */
  async restartDaemon(sig: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.conn?.close().catch(() => {});
    this.conn = null;
    this.dom = null;
    if (this.daemon) await stopVirtbackd(this.daemon, sig);
    await this.startDaemon();
  }

  /** The daemon's log so far, for a finding's detail. */
  daemonLogTail(chars = 600): string {
    return (this.daemon?.stderr() ?? '').slice(-chars).trim();
  }

  // ------------------------------------------------------------ domain and QEMU

  async running(): Promise<boolean> {
    return (await this.domain.getInfo()).state === DomainState.RUNNING;
  }

  /** Start the domain and learn its disk's node names. */
  async startDomain(): Promise<void> {
    await this.domain.create();
    const blocks = await qmp<{ inserted?: { 'node-name': string } }[]>(this.domain, 'query-block');
    const nodes = await qmp<{ 'node-name': string }[]>(this.domain, 'query-named-block-nodes', { flat: true });
    this.diskNode = blocks.find((b) => b.inserted)?.inserted?.['node-name'] ?? '';
    this.baseNodes = new Set(nodes.map((n) => n['node-name']));
  }

  async qemuPid(): Promise<number> {
    return (await this.domain.getInfo()).id;
  }

  /** SIGKILL QEMU by pid; waits until the daemon reports the domain shut off. */
  async killQemu(pid: number): Promise<void> {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return; // gone already
    }
    const end = Date.now() + 20_000;
    while (Date.now() < end) {
      if (this.dom !== null && !(await this.running().catch(() => true))) return;
      await sleep(50);
    }
    throw new Error(`domain still reported running 20 s after its QEMU ${pid} was killed`);
  }

  /** Guest-like write through HMP qemu-io. */
  async write(offset: number, length: number, pattern: number): Promise<void> {
    await hmpWriteVia(this.domain, this.xml, DISK, pattern, offset, length);
  }

  /** The disk's guest-visible content, read from the image (domain shut off). */
  async readDisk(): Promise<Buffer> {
    const raw = path.join(this.dirs.work, 'disk-now.raw');
    await run('qemu-img', ['convert', '-U', '-O', 'raw', this.diskFile, raw]);
    try {
      return await readFile(raw);
    } finally {
      await rm(raw, { force: true });
    }
  }

  // ------------------------------------------------------------ CLI and tmpfs

  /** `virtback ARGS` in-process, as a user would run it (connection commands get -c). */
  async cli(...args: string[]): Promise<CliResult> {
    return runMain(args[0] === 'backup-pull' ? ['-c', this.uri, ...args] : args);
  }

  /** Mount a tiny tmpfs on small/ (root only); returns why not when it cannot. */
  async mountSmall(kib: number): Promise<string | null> {
    if (process.getuid?.() !== 0) return 'not root: cannot mount a tmpfs';
    if (this.smallMounted) await this.umountSmall();
    await run('mount', ['-t', 'tmpfs', '-o', `size=${kib}k`, 'soak-small', this.dirs.small]);
    this.smallMounted = true;
    return null;
  }

  async umountSmall(): Promise<void> {
    if (!this.smallMounted) return;
    await run('umount', [this.dirs.small]).catch(async () => {
      await sleep(200);
      await run('umount', ['-l', this.dirs.small]);
    });
    this.smallMounted = false;
  }

  /** Everything gone: connections, daemon, QEMU, tmpfs, the temp dir. Never throws. */
  async dispose(keep: boolean): Promise<void> {
    await this.conn?.close().catch(() => {});
    if (this.daemon) await stopVirtbackd(this.daemon, 'SIGKILL').catch(() => {});
    await killQemuFor(this.env.dir).catch(() => {});
    await this.umountSmall().catch(() => {});
    if (!keep) await this.env.cleanup().catch(() => {});
  }
}
