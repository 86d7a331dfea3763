// The handle on one running QEMU (libvirt's qemuDomainObjPrivate): its
// process, its monitor (connected again on use when it was lost), guest-agent
// sessions, run-time block-node indexes, and its status file. What the domain
// is doing (running, paused, shutting off) is lifecycle.ts's business; the
// handle tells it when a monitor appears or the process is found gone.

import { lstat, rm, unlink } from 'node:fs/promises';
import path from 'node:path';
import { virErr } from '../errors.js';
import { errField, type Logger } from '../log.js';
import { nextNodeIndex, type DiskNodes } from './command-line.js';
import { AsyncMutex } from './mutex.js';
import { isOurQemu, processAlive, signalProcess, terminateProcess, waitForExit } from './process.js';
import { GuestAgentClient } from './qmp/agent.js';
import { QmpClient, qmpErrorToVirError } from './qmp/client.js';
import { removeFileDurably, writeStatus, type DomainStatus } from './state.js';

export function notRunning(): Error {
  return virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not running');
}

/** What the owner of a runtime hears from it. */
export interface MonitorWatch {
  /** a monitor connection was made: subscribe to its events (push unsubscribers onto run.detach) */
  attached(run: QemuRuntime, qmp: QmpClient): void;
  /** monitor() found the process gone: clean up (in the background: the caller may hold the domain lock) */
  gone(run: QemuRuntime): void;
}

export interface RuntimeEnv {
  /** status/<uuid>.json */
  statusFile: string;
  qmpTimeoutMs: number;
  log: Logger;
  watch: MonitorWatch;
}

export class QemuRuntime {
  /** null while the monitor is not connected (reconnect failed; retried on use) */
  qmp: QmpClient | null = null;
  /** set before QEMU is stopped or cleaned up, so a closing monitor is not taken for a crash */
  stopping = false;
  /** QEMU announced a SHUTDOWN (guest power-off, quit, SIGTERM): its exit is a shutdown, not a crash */
  shutdownSeen = false;
  /** a powered-off guest is being reset: QEMU's STOP and RESUME are not the user's */
  resetting = false;
  /** a pull's devices are moving onto their filters with the vCPUs paused (milliseconds): that STOP and RESUME are no state change */
  instantPause = false;
  /** unsubscribe functions for monitor listeners */
  readonly detach: (() => void)[] = [];
  /**
   * disk target -> flags.DiskErrorCode of the I/O error that stopped the
   * guest, until it runs again (virDomainGetDiskErrors; io-errors.ts). QEMU
   * keeps the same as query-block's io-status, but `cont` clears that only
   * for -drive devices, never for ours on -blockdev nodes.
   */
  readonly diskErrors = new Map<string, number>();
  /** qemu-ga serves one client at a time: sessions queue here (not on the domain lock, which a backup may hold while quiescing) */
  private readonly agentLock = new AsyncMutex();
  private connecting: Promise<QmpClient> | null = null;

  /** `status` is persisted as is by save(): other modules keep per-run data in `status.extra` */
  constructor(readonly status: DomainStatus, private readonly env: RuntimeEnv) {}

  get pid(): number {
    return this.status.pid;
  }
  get pidStartTime(): number {
    return this.status.pidStartTime;
  }
  /** the domain's own run directory (sockets, logs; the place for scratch sockets) */
  get runDir(): string {
    return this.status.runDir;
  }
  /** disk target -> node names and qdev id (a copy) */
  get disks(): DiskNodes[] {
    return this.status.disks.map((d) => ({ ...d }));
  }

  /**
   * An ACPI reboot was asked for: the guest's next power-off is reset instead
   * (power.ts). Kept in the status file (libvirt's <fakereboot/>) so that a
   * driver restarted meanwhile still boots the guest instead of letting it end.
   */
  get fakeReboot(): boolean {
    return this.status.extra.fakeReboot === true;
  }
  set fakeReboot(on: boolean) {
    if (on) this.status.extra.fakeReboot = true;
    else delete this.status.extra.fakeReboot;
  }

  /** The process is still there (same pid and start time, not a zombie). */
  alive(): Promise<boolean> {
    return processAlive(this.pid, this.pidStartTime);
  }

  /** Connect the monitor (raw errors); the watch subscribes to it. */
  async connect(): Promise<QmpClient> {
    const qmp = await QmpClient.connect(this.status.qmpSocket, { timeoutMs: this.env.qmpTimeoutMs, log: this.env.log });
    this.qmp = qmp;
    this.env.watch.attached(this, qmp);
    return qmp;
  }

  /** The monitor, connected again if it was lost without QEMU dying; OPERATION_INVALID once QEMU is gone. */
  async monitor(): Promise<QmpClient> {
    if (this.qmp && !this.qmp.isClosed) return this.qmp;
    if (this.stopping) throw notRunning();
    this.connecting ??= this.reconnect().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private async reconnect(): Promise<QmpClient> {
    if (!(await this.alive())) {
      this.env.watch.gone(this);
      throw notRunning();
    }
    let qmp: QmpClient;
    try {
      qmp = await this.connect();
    } catch (e) {
      throw qmpErrorToVirError(e, 'cannot connect to the QEMU monitor');
    }
    if (this.stopping) {
      // the domain shut off while we connected: nobody else will close this one
      await this.closeMonitor();
      throw notRunning();
    }
    this.env.log.info({ pid: this.pid }, 'monitor reconnected');
    return qmp;
  }

  /** Unsubscribe and close the monitor (QEMU keeps running). */
  async closeMonitor(): Promise<void> {
    for (const off of this.detach.splice(0)) off();
    const qmp = this.qmp;
    this.qmp = null;
    if (qmp) await qmp.close().catch(() => {});
  }

  /**
   * Run `fn` with a connected guest agent, one session at a time.
   * ARGUMENT_UNSUPPORTED without an agent channel (libvirt's qemuDomainAgentAvailable), AGENT_UNRESPONSIVE when it does not answer.
   */
  withAgent<T>(fn: (agent: GuestAgentClient) => Promise<T>, opts?: { timeoutMs?: number }): Promise<T> {
    return this.agentLock.run(async () => {
      if (this.stopping) throw notRunning();
      if (this.status.agentSocket === null) {
        throw virErr('ARGUMENT_UNSUPPORTED', 'QEMU', 'QEMU guest agent is not configured');
      }
      const agent = await GuestAgentClient.connect(this.status.agentSocket, { timeoutMs: opts?.timeoutMs });
      try {
        return await fn(agent);
      } finally {
        agent.close();
      }
    });
  }

  /**
   * A fresh N for run-time block nodes (`libvirt-N-storage`/`-format`), above
   * every N in use and never handed out twice during this run; persisted.
   */
  async allocateNodeIndex(): Promise<number> {
    const last = typeof this.status.extra.lastNodeIndex === 'number' ? this.status.extra.lastNodeIndex : 0;
    const n = Math.max(last + 1, nextNodeIndex(this.status.disks));
    this.status.extra.lastNodeIndex = n;
    await this.save();
    return n;
  }

  /** Persist the status file (atomically), `status.extra` included. */
  save(): Promise<void> {
    return writeStatus(this.env.statusFile, this.status);
  }

  /** `quit` over QMP, then SIGTERM/SIGKILL if QEMU does not go; resolves once the process is gone. */
  async stopProcess(): Promise<void> {
    this.stopping = true;
    const qmp = this.qmp;
    if (qmp && !qmp.isClosed) {
      try {
        await qmp.executeRaw('quit', undefined, { timeoutMs: 5000 });
      } catch {
        // the reply may be lost when QEMU closes the socket first; the exit is what counts
      }
      if (await waitForExit(this.pid, this.pidStartTime, 10_000)) return;
    }
    await terminateProcess(this.pid, this.pidStartTime);
  }

  /**
   * SIGTERM only (DESTROY_GRACEFUL): true once the process is gone within
   * `timeoutMs`; false when it is still there, and the runtime is ours again.
   */
  async terminateGracefully(timeoutMs: number): Promise<boolean> {
    this.stopping = true;
    await signalProcess(this.pid, this.pidStartTime, 'SIGTERM');
    if (await waitForExit(this.pid, this.pidStartTime, timeoutMs)) return true;
    this.stopping = false;
    return false;
  }

  /** Make sure the process is gone after its monitor closed: wait a little, then kill it. */
  async ensureExited(): Promise<void> {
    if (await waitForExit(this.pid, this.pidStartTime, 3000)) return;
    await terminateProcess(this.pid, this.pidStartTime, 2000)
      .catch((e) => this.env.log.error({ ...errField(e), pid: this.pid }, 'cannot kill QEMU'));
  }

  /**
   * Remove the run directory, an agent socket outside it, and the status file.
   * Never while the process lives: its monitor socket and pid file are how it is found again.
   */
  async removeFiles(): Promise<void> {
    if (await isOurQemu(this.pid, this.pidStartTime, this.status.uuid)) {
      this.env.log.error({ pid: this.pid, runDir: this.runDir }, 'QEMU still running: its run directory and status file are kept');
      return;
    }
    const { agentSocket, runDir } = this.status;
    if (agentSocket && !agentSocket.startsWith(runDir + path.sep)) {
      try {
        if ((await lstat(agentSocket)).isSocket()) await unlink(agentSocket);
      } catch {
        // already gone
      }
    }
    await rm(runDir, { recursive: true, force: true })
      .catch((e) => this.env.log.warn({ ...errField(e), runDir }, 'cannot remove the run directory'));
    await removeFileDurably(this.env.statusFile)
      .catch((e) => this.env.log.warn({ ...errField(e), file: this.env.statusFile }, 'cannot remove the status file'));
  }
}
