// A domain's life as a QEMU process: start (launch), reconnect (open() finds
// it alive), and every way it ends — destroy, guest shutdown, a crash seen on
// the monitor, found on use, or found at open(). Becoming running and becoming
// shut off are each written once, below; every path goes through them.

import { existsSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { isVirError, virErr } from '../errors.js';
import { DomainState, PausedReason, RunningReason, ShutoffReason } from '../flags.js';
import { errField, type Logger } from '../log.js';
import { formatDomainXML, parseDomainXML, type DomainDef } from '../xml/domain.js';
import { buildCommandLine, type DiskNodes, type QemuCommandLine } from './command-line.js';
import { withLiveConsoles } from './console.js';
import { bridgeTaps, prepareTaps, removeTaps } from './net.js';
import { DomainObject } from './domain-object.js';
import { prepareNvram, resolveFirmware, withFirmwareFiles } from './firmware.js';
import { lifecycleEvent, type EventBus } from './event-bus.js';
import type { HookSet } from './hook-set.js';
import { diskErrorCode, diskOfNode, diskOfRootNode, ioErrorEvent, ioStatusErrors, type BlockIoErrorData } from './io-errors.js';
import {
  checkDiskSources,
  findLiveQemu,
  isOurQemu,
  kvmUsable,
  launchQemu,
  readProcStat,
  terminateProcess,
  type LaunchedProcess,
} from './process.js';
import { DomainPower } from './power.js';
import { qmpErrorToVirError, type QmpClient } from './qmp/client.js';
import type { DomainRegistry } from './registry.js';
import { notRunning, QemuRuntime } from './runtime.js';
import { listIds, readStatus, removeFileDurably, type DomainStatus, type StatePaths } from './state.js';

/** sun_path is 108 bytes including the terminating NUL */
const MAX_SOCKET_PATH = 107;

export interface LifecycleEnv {
  paths: StatePaths;
  binary: string;
  qmpTimeoutMs: number;
  startTimeoutMs: number;
  log: Logger;
  bus: EventBus;
  hooks: HookSet;
  registry: DomainRegistry;
}

/** Everything a start needs, worked out (and checked) before anything is touched. */
interface StartPlan {
  def: DomainDef;
  runDir: string;
  qmpSocket: string;
  agentSocket: string | null;
  pidFile: string;
  commandLine: QemuCommandLine;
  /** START_PAUSED: QEMU starts with -S and its CPUs are never started */
  paused: boolean;
  /** taps created for type='bridge' interfaces (removed again if the start fails) */
  taps: string[];
}

export interface StartOptions {
  paused: boolean;
  /** START_RESET_NVRAM: a fresh copy of the UEFI variable store's template */
  resetNvram?: boolean;
  /** START_AUTODESTROY: kept in the status file, so a restarted driver destroys it (its starter is gone) */
  autodestroy?: boolean;
}

/** libvirt's shut-off reasons as event details */
const STOP_DETAIL: Record<number, string> = {
  [ShutoffReason.SHUTDOWN]: 'shutdown',
  [ShutoffReason.DESTROYED]: 'destroyed',
  [ShutoffReason.CRASHED]: 'crashed',
  [ShutoffReason.FAILED]: 'failed',
};

export class DomainLifecycle {
  /** set by close(): monitors closing from then on are ours, not QEMU dying */
  private closed = false;

  /** shutdown and reboot, and the guest's power-off (power.ts) */
  readonly power: DomainPower;

  constructor(private readonly env: LifecycleEnv) {
    this.power = new DomainPower({ bus: env.bus, log: env.log });
  }

  private logFor(dom: DomainObject): Logger {
    return this.env.log.child({ domain: dom.name, uuid: dom.uuid });
  }

  /** Disconnect from every QEMU, leaving it running. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.env.registry.all().map((dom) => dom.lock.run(async () => {
      await dom.run?.closeMonitor();
    })));
  }

  // ------------------------------------------------------------ start

  /** Start QEMU for the domain's persistent definition (paused: its CPUs stay stopped). Lock held. */
  async start(dom: DomainObject, opts: StartOptions = { paused: false }): Promise<void> {
    if (dom.run) {
      throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is already running');
    }
    await this.refuseUnknownQemu(dom, this.env.paths.domainRunDir(dom.uuid));
    const plan = await this.planStart(dom, opts);
    await rm(plan.runDir, { recursive: true, force: true });
    await mkdir(plan.runDir, { recursive: true, mode: 0o700 });
    let launched: LaunchedProcess | null = null;
    try {
      launched = await launchQemu({
        binary: this.env.binary,
        args: plan.commandLine.args,
        logFile: path.join(plan.runDir, 'qemu.log'),
        pidFile: plan.pidFile,
        timeoutMs: this.env.startTimeoutMs,
      });
      const run = this.newRuntime(dom, { ...this.statusFor(dom, plan, launched), ...(opts.autodestroy ? { autodestroy: true } : {}) });
      this.becomeRunning(dom, run, plan.def);
      dom.autodestroy = opts.autodestroy === true;
      if (plan.paused) [dom.state, dom.reason] = [DomainState.PAUSED, PausedReason.USER];
      const qmp = await run.connect().catch((e) => {
        throw qmpErrorToVirError(e, 'internal error: cannot connect to the QEMU monitor');
      });
      // the pty and VNC port QEMU chose, in the live XML as libvirt shows them
      const live = await withLiveConsoles(qmp, plan.def);
      if (live !== plan.def) [dom.liveDef, run.status.liveXml] = [live, formatDomainXML(live, { secure: true })];
      await run.save();
    } catch (e) {
      await this.abortStart(dom, launched, plan);
      this.logFor(dom).error({ ...errField(e), pid: launched?.pid }, 'domain failed to start');
      throw e;
    }
    await this.announceRunning(dom, 'started');
  }

  /** The live definition, sockets and command line; refuses what QEMU could not start with. */
  private async planStart(dom: DomainObject, opts: StartOptions): Promise<StartPlan> {
    const runDir = this.env.paths.domainRunDir(dom.uuid);
    const qmpSocket = path.join(runDir, 'qmp.sock');
    const agentSocket = dom.def.agent ? dom.def.agent.path ?? path.join(runDir, 'qga.sock') : null;
    // the live definition names the socket the driver chose, as libvirt's live XML does
    let def: DomainDef = agentSocket === null ? dom.def : { ...dom.def, agent: { path: agentSocket } };
    await checkDiskSources(def);
    const firmware = resolveFirmware(def, this.env.paths.nvramDir);
    if (firmware !== null) {
      await prepareNvram(firmware, { reset: opts.resetNvram === true });
      def = withFirmwareFiles(def, firmware);
    }
    for (const s of [qmpSocket, agentSocket]) {
      if (s !== null && Buffer.byteLength(s) > MAX_SOCKET_PATH) {
        throw virErr('CONFIG_UNSUPPORTED', 'QEMU',
          `socket path '${s}' is longer than ${MAX_SOCKET_PATH} bytes: choose a shorter run directory`);
      }
    }
    const accel = def.type === 'kvm' && (await kvmUsable()) ? 'kvm' : 'tcg';
    const pidFile = path.join(runDir, 'qemu.pid');
    // last: the taps are the first thing a start makes
    const net = await prepareTaps(def.devicesExtra ?? [], this.logFor(dom));
    const liveDef: DomainDef = { ...def, devicesExtra: net.devices };
    try {
      const commandLine = buildCommandLine({
        def: liveDef, accel, qmpSocket, pidFile, agentSocket, consoleLog: path.join(runDir, 'console.log'), paused: opts.paused, firmware,
      });
      return { def: liveDef, runDir, qmpSocket, agentSocket, pidFile, commandLine, paused: opts.paused, taps: net.created };
    } catch (e) {
      await removeTaps(net.created, this.logFor(dom));
      throw e;
    }
  }

  /**
   * A QEMU of this domain may still run although we hold no status for it (its
   * status file was deleted): its run directory is the only way to reach it, so
   * it is left alone and the start refused — a second QEMU would fail on the
   * image locks anyway.
   */
  private async refuseUnknownQemu(dom: DomainObject, runDir: string): Promise<void> {
    const found = await findLiveQemu(dom.uuid, runDir);
    if (found === null) return;
    this.logFor(dom).error({ pid: found.pid, runDir },
      'refusing to start: a QEMU of this domain is running without a status file');
    throw virErr('OPERATION_INVALID', 'QEMU',
      `Requested operation is not valid: domain '${dom.name}' already has a running QEMU (pid ${found.pid}) ` +
      `that has no status file; stop that process first`);
  }

  private statusFor(dom: DomainObject, plan: StartPlan, launched: LaunchedProcess): DomainStatus {
    return {
      version: 1,
      uuid: dom.uuid,
      name: dom.name,
      persistent: dom.persistent,
      pid: launched.pid,
      pidStartTime: launched.startTime,
      binary: this.env.binary,
      qmpSocket: plan.qmpSocket,
      agentSocket: plan.agentSocket,
      runDir: plan.runDir,
      disks: plan.commandLine.disks,
      startedAt: new Date().toISOString(),
      liveXml: formatDomainXML(plan.def, { secure: true }),
      extra: {},
    };
  }

  /** Undo a failed start: stop what was launched, remove its files, shut off (failed). */
  private async abortStart(dom: DomainObject, launched: LaunchedProcess | null, plan: StartPlan): Promise<void> {
    const run = dom.run;
    if (run) {
      run.stopping = true;
      await run.closeMonitor();
    }
    this.clearRun(dom, ShutoffReason.FAILED);
    if (launched) await terminateProcess(launched.pid, launched.startTime, 2000).catch(() => {});
    else await this.killFromPidFile(plan.pidFile, dom.uuid);
    await rm(plan.runDir, { recursive: true, force: true }).catch(() => {});
    await removeFileDurably(this.env.paths.status(dom.uuid)).catch(() => {});
    await removeTaps(plan.taps, this.logFor(dom));
  }

  /** A QEMU that daemonized although its launch failed (timeout): find it by its pid file and stop it. */
  private async killFromPidFile(pidFile: string, uuid: string): Promise<void> {
    try {
      const pid = Number((await readFile(pidFile, 'utf8')).trim());
      const st = Number.isInteger(pid) && pid > 0 ? await readProcStat(pid) : null;
      if (st && (await isOurQemu(pid, st.startTime, uuid))) await terminateProcess(pid, st.startTime, 2000);
    } catch {
      // no pid file: QEMU never got that far
    }
  }

  // ------------------------------------------------------------ reconnect

  /** Reconnect to every QEMU with a status file (at open()); report those that run without one. */
  async reconnectAll(): Promise<void> {
    const ids = await listIds(this.env.paths.statusDir, '.json');
    await Promise.all(ids.map((id) => this.reconnectOne(id)));
    for (const dom of this.env.registry.all()) {
      const runDir = this.env.paths.domainRunDir(dom.uuid);
      if (dom.run || !existsSync(runDir)) continue;
      const found = await findLiveQemu(dom.uuid, runDir);
      if (found) {
        this.logFor(dom).error({ pid: found.pid, runDir },
          'a QEMU of this shut-off domain is running without a status file: it is not managed, and start will refuse');
      }
    }
  }

  /** The status file and live definition of a domain that was running, or null (logged). */
  private async readRunning(id: string): Promise<{ status: DomainStatus; liveDef: DomainDef } | null> {
    const file = this.env.paths.status(id);
    try {
      const status = await readStatus(file);
      const liveDef = parseDomainXML(status.liveXml);
      liveDef.uuid = liveDef.uuid.toLowerCase();
      return { status, liveDef };
    } catch (e) {
      this.env.log.warn({ ...errField(e), file }, 'cannot read status file');
      return null;
    }
  }

  private async reconnectOne(id: string): Promise<void> {
    const found = await this.readRunning(id);
    if (!found) return;
    const { status, liveDef } = found;
    const { registry } = this.env;
    let dom = registry.find(status.uuid);
    if (!dom) {
      // running transient domain (undefined while it ran): it exists only through its status
      if (registry.findByName(liveDef.name)) {
        this.env.log.warn({ file: this.env.paths.status(id), domain: liveDef.name }, 'ignoring status file: name is taken');
        return;
      }
      dom = new DomainObject(liveDef, false);
      await registry.add(dom);
    }
    const d = dom;
    await d.lock.run(async () => {
      const run = this.newRuntime(d, status);
      this.becomeRunning(d, run, liveDef);
      if (!(await isOurQemu(status.pid, status.pidStartTime, status.uuid))) {
        // It died while no driver watched it.
        await this.becomeShutoff(d, ShutoffReason.CRASHED);
        return;
      }
      try {
        const qmp = await run.connect();
        const st = (await qmp.executeRaw('query-status')) as { status?: string; running?: boolean };
        // the reason it was paused for is not kept across a driver restart
        if (st.running === false && st.status !== 'running') [d.state, d.reason] = [DomainState.PAUSED, st.status === 'io-error' ? PausedReason.IOERROR : PausedReason.UNKNOWN];
        // the disks' errors of that stop, which the driver keeps only while it runs
        if (st.status === 'io-error') for (const [k, v] of ioStatusErrors(run.disks, await qmp.execute('query-block'))) run.diskErrors.set(k, v);
        await this.power.finishPowerOff(d, run, st.status);
      } catch (e) {
        if (!(await run.alive())) {
          await this.becomeShutoff(d, ShutoffReason.CRASHED);
          return;
        }
        this.logFor(d).warn({ ...errField(e), pid: run.pid }, 'cannot reconnect to the monitor (will retry on use)');
      }
      await this.announceRunning(d, 'reconnected');
      if (status.autodestroy) await this.destroyOrphan(d);
    });
  }

  /**
   * A START_AUTODESTROY domain outlived the driver (or daemon) that started it:
   * the connection it was tied to is gone for good, so it dies now as it would
   * have then (an offline backup's paused QEMU after a daemon kill).
   */
  private async destroyOrphan(dom: DomainObject): Promise<void> {
    if (!dom.run) return;
    this.logFor(dom).warn({ pid: dom.run.pid }, 'destroying an autodestroy domain: the connection that started it died with the previous daemon');
    await this.destroy(dom).catch((e) => this.logFor(dom).error(errField(e), 'cannot destroy an autodestroy domain'));
  }

  // ------------------------------------------------------------ running

  private newRuntime(dom: DomainObject, status: DomainStatus): QemuRuntime {
    return new QemuRuntime(status, {
      statusFile: this.env.paths.status(dom.uuid),
      qmpTimeoutMs: this.env.qmpTimeoutMs,
      log: this.logFor(dom),
      watch: {
        attached: (run, qmp) => this.watchMonitor(dom, run, qmp),
        gone: (run) => {
          dom.lock.run(() => this.handleGone(dom, run))
            .catch((e) => this.logFor(dom).error(errField(e), 'cleanup after QEMU exit failed'));
        },
      },
    });
  }

  /** Becoming running (started or reconnected): the domain's fields. */
  private becomeRunning(dom: DomainObject, run: QemuRuntime, liveDef: DomainDef): void {
    dom.run = run;
    dom.liveDef = liveDef;
    dom.state = DomainState.RUNNING;
    dom.reason = RunningReason.BOOTED;
  }

  /** Becoming running, told: the modules' hooks, the log, and (for a start) subscribers. */
  private async announceRunning(dom: DomainObject, how: 'started' | 'reconnected'): Promise<void> {
    const run = dom.run;
    if (!run) return;
    this.logFor(dom).info({ pid: run.pid, monitor: run.qmp !== null, paused: dom.state === DomainState.PAUSED },
      how === 'started' ? 'domain started' : 'domain reconnected');
    await this.env.hooks.run(dom, how === 'started' ? 'onStarted' : 'onReconnected');
    if (how !== 'started') return;
    this.env.bus.emit(lifecycleEvent(dom, 'started', 'booted'));
    // libvirt follows a paused start with its suspended event (qemuDomainObjStart)
    if (dom.state === DomainState.PAUSED) this.env.bus.emit(lifecycleEvent(dom, 'suspended', 'paused'));
  }

  // ------------------------------------------------------------ pause

  /**
   * virDomainSuspend: QMP stop, paused (user). State and reason are set before
   * the command so the STOP event it causes is recognised as ours. Lock held.
   */
  async suspend(dom: DomainObject): Promise<void> {
    const run = dom.run;
    if (!run) throw notRunning();
    if (dom.state === DomainState.PAUSED) return; // libvirt: nothing to do, no error
    await this.switchCpus(dom, run, 'stop', [DomainState.PAUSED, PausedReason.USER], ['suspended', 'paused']);
  }

  /** virDomainResume: QMP cont, running (unpaused); a running domain is left alone. Lock held. */
  async resume(dom: DomainObject): Promise<void> {
    const run = dom.run;
    if (!run) throw notRunning();
    if (dom.state !== DomainState.PAUSED) return;
    await this.switchCpus(dom, run, 'cont', [DomainState.RUNNING, RunningReason.UNPAUSED], ['resumed', 'unpaused']);
    // (QEMU's RESUME, which comes before cont's reply, has cleared them already)
    run.diskErrors.clear();
  }

  private async switchCpus(
    dom: DomainObject, run: QemuRuntime, command: 'stop' | 'cont', [state, reason]: [number, number], [event, detail]: [string, string],
  ): Promise<void> {
    const before: [number, number] = [dom.state, dom.reason];
    [dom.state, dom.reason] = [state, reason];
    try {
      await (await run.monitor()).execute(command);
    } catch (e) {
      if (dom.run === run) [dom.state, dom.reason] = before;
      throw e;
    }
    this.env.bus.emit(lifecycleEvent(dom, event, detail));
  }

  /** Follow the monitor's state events and its end. */
  private watchMonitor(dom: DomainObject, run: QemuRuntime, qmp: QmpClient): void {
    const { bus } = this.env;
    run.detach.push(
      qmp.on('BLOCK_IO_ERROR', (ev) => this.onIoError(dom, run, ev.data as BlockIoErrorData)),
      qmp.on('STOP', () => {
        if (dom.run !== run || dom.state === DomainState.PAUSED || run.resetting || run.instantPause) return;
        // not our suspend (that sets the state first): a monitor command or the guest
        [dom.state, dom.reason] = [DomainState.PAUSED, PausedReason.UNKNOWN];
        bus.emit(lifecycleEvent(dom, 'suspended', 'paused'));
      }),
      qmp.on('RESUME', () => {
        // QEMU's cont: the disks' errors are history (as io-status would be, were it reset for -blockdev devices)
        if (dom.run === run) run.diskErrors.clear();
        if (dom.run !== run || dom.state !== DomainState.PAUSED) return;
        [dom.state, dom.reason] = [DomainState.RUNNING, RunningReason.UNPAUSED];
        bus.emit(lifecycleEvent(dom, 'resumed', 'unpaused'));
      }),
      qmp.on('SHUTDOWN', (ev) => this.power.onShutdownEvent(dom, run, ev.data)),
      // qemuProcessHandleReset: every reset is libvirt's reboot event, the guest's own and a fake reboot's system_reset
      qmp.on('RESET', () => {
        if (dom.run === run) bus.emit({ type: 'reboot', domain: { name: dom.name, uuid: dom.uuid } });
      }),
      qmp.onClose((err) => {
        // err undefined: we closed it ourselves (close(), destroy)
        if (err === undefined || run.stopping || this.closed || dom.run !== run) return;
        this.env.registry.withDomainLock(dom.uuid, (d) => this.handleGone(d, run)).catch((e) => {
          if (!isVirError(e, 'NO_DOMAIN')) this.logFor(dom).error(errField(e), 'cleanup after QEMU exit failed');
        });
      }),
    );
  }

  /**
   * QEMU's BLOCK_IO_ERROR, as qemuProcessHandleIOError: the io-error event
   * for every error, and with action stop, paused (I/O error) and its
   * 'suspended' event after it. QEMU announces the error before the STOP it
   * requests, so the state changes at once; the events wait only when the
   * error names a node that is not a disk's own (a backup's filter above it):
   * query-block says whose device it is.
   */
  private onIoError(dom: DomainObject, run: QemuRuntime, data: BlockIoErrorData): void {
    if (dom.run !== run) return;
    const pause = data.action === 'stop' && dom.state === DomainState.RUNNING;
    if (pause) [dom.state, dom.reason] = [DomainState.PAUSED, PausedReason.IOERROR];
    const publish = (disk: DiskNodes | undefined): void => {
      // QEMU's io-status keeps a disk's first stopping error until cont (a late answer after a resume is not one)
      if (data.action === 'stop' && disk !== undefined && dom.run === run && dom.state === DomainState.PAUSED && !run.diskErrors.has(disk.target)) {
        run.diskErrors.set(disk.target, diskErrorCode(data));
      }
      this.env.bus.emit(ioErrorEvent(dom, disk, (dom.liveDef ?? dom.def).disks, data));
      if (pause) this.env.bus.emit(lifecycleEvent(dom, 'suspended', 'ioerror'));
    };
    const node = data['node-name'];
    const disks = run.disks;
    const disk = diskOfNode(disks, node);
    if (disk !== undefined || node === undefined || node === '') {
      publish(disk);
      return;
    }
    run.monitor()
      .then((qmp) => qmp.execute('query-block'))
      .then((blocks) => diskOfRootNode(disks, blocks, node), () => undefined)
      .then(publish)
      .catch((e) => this.logFor(dom).warn(errField(e), 'io-error event not published'));
  }

  // ------------------------------------------------------------ stop

  /**
   * Stop QEMU (quit, then signals) and shut off (destroyed). Graceful
   * (DESTROY_GRACEFUL): SIGTERM only, waiting `gracefulMs` (libvirt's 15 s);
   * a QEMU still there stays running and the destroy fails as libvirt's
   * virProcessKillPainfully does. Lock held.
   */
  async destroy(dom: DomainObject, graceful: { ms: number } | null = null): Promise<void> {
    const run = dom.run;
    if (!run) throw notRunning();
    if (graceful === null) await run.stopProcess();
    else if (!(await run.terminateGracefully(graceful.ms))) {
      throw virErr('SYSTEM_ERROR', 'QEMU', `Failed to terminate process ${run.pid} with SIGTERM: Device or resource busy`);
    }
    await this.becomeShutoff(dom, ShutoffReason.DESTROYED);
  }

  /**
   * The cheap check for a domain whose monitor is not connected: is its
   * process still there? Never waits for a lock holder (possibly our caller).
   */
  async refreshLiveness(dom: DomainObject): Promise<void> {
    const run = dom.run;
    if (!run || run.stopping || (run.qmp && !run.qmp.isClosed) || dom.lock.locked) return;
    if (await run.alive()) return;
    await dom.lock.run(() => this.handleGone(dom, run))
      .catch((e) => this.logFor(dom).error(errField(e), 'cleanup after QEMU exit failed'));
  }

  /**
   * The monitor closed or the process vanished behind our back: QEMU is (about
   * to be) gone. Like libvirt's monitor EOF handling, make sure it is dead, then
   * shut off with reason SHUTDOWN when QEMU announced a shutdown, else CRASHED.
   */
  private async handleGone(dom: DomainObject, run: QemuRuntime): Promise<void> {
    if (dom.run !== run || run.stopping) return;
    run.stopping = true;
    await run.ensureExited();
    await this.becomeShutoff(dom, run.shutdownSeen ? ShutoffReason.SHUTDOWN : ShutoffReason.CRASHED);
  }

  /**
   * Becoming shut off, for every reason: QEMU is gone; the hooks clean up, the
   * run files and status go, subscribers hear of it, a transient domain is
   * forgotten. Lock held.
   */
  private async becomeShutoff(dom: DomainObject, reason: number): Promise<void> {
    const run = dom.run;
    if (!run) return;
    run.stopping = true;
    await run.closeMonitor();
    const detail = STOP_DETAIL[reason] ?? 'unknown';
    const log = this.logFor(dom);
    if (reason === ShutoffReason.CRASHED) log.warn({ pid: run.pid, reason: detail }, 'domain crashed');
    else log.info({ pid: run.pid, reason: detail }, 'domain stopped');
    // Events the hooks publish (a backup job failing with its domain) wait until
    // the domain is shut off, so a listener never sees them on a running domain.
    await this.env.bus.holding(dom.uuid, async () => {
      await this.env.hooks.run(dom, 'onStopped', reason);
      await run.removeFiles();
      await removeTaps(bridgeTaps(dom.liveDef?.devicesExtra ?? []), log);
      this.clearRun(dom, reason);
    });
    this.env.bus.emit(lifecycleEvent(dom, 'stopped', detail));
    if (!dom.persistent) await this.env.registry.remove(dom);
  }

  /** The domain's fields once it has no QEMU. */
  private clearRun(dom: DomainObject, reason: number): void {
    dom.run = null;
    dom.liveDef = null;
    dom.state = DomainState.SHUTOFF;
    dom.reason = reason;
    dom.autodestroy = false;
  }
}
