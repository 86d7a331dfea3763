// The local QEMU driver: domains defined in a state directory, each running
// domain a detached QEMU process driven over QMP. QEMU outlives the driver:
// close() only disconnects, and open() reconnects to every QEMU still alive.
//
// Checkpoints and backups live in their own modules; this class routes the
// Driver methods to `checkpointsImpl` / `backupsImpl` and gives those modules
// what they need: the domain's QmpClient, disk -> node names, run directory,
// a per-domain mutex, lifecycle hooks and persistence helpers.

import { lstat, mkdir, readFile, rm, unlink } from 'node:fs/promises';
import path from 'node:path';
import type {
  Driver,
  DomainRef,
  DomainSummary,
  DriverEvent,
  EventListener,
  JobStats,
  UnknownBitmap,
} from '../api/driver.js';
import { isVirError, virErr } from '../errors.js';
import {
  checkFlags,
  DomainState,
  DomainXMLFlags,
  ListDomainsFlags,
  MonitorCommandFlags,
  ShutoffReason,
  UndefineFlags,
} from '../flags.js';
import { formatDomainXML, parseDomainXML, type DomainDef } from '../xml/domain.js';
import { buildCommandLine, nextNodeIndex, QEMU_BINARY, type DiskNodes } from './command-line.js';
import { DomainObject, AsyncMutex, type RunningInstance } from './domain-object.js';
import {
  checkDiskSources,
  isOurQemu,
  kvmUsable,
  launchQemu,
  processAlive,
  readProcStat,
  terminateProcess,
  waitForExit,
} from './process.js';
import { QmpClient, QmpCommandError, qmpErrorToVirError } from './qmp/client.js';
import { GuestAgentClient } from './qmp/agent.js';
import { QemuCheckpoints } from './checkpoints.js';
import { QemuBackups, type PushCompleteInfo } from './backup.js';
import type { BackupOps, CheckpointAccess, CheckpointOps, DomainHooks, DomainHost } from './host.js';
import { silentLogger, type Logger } from '../log.js';
import {
  listIds,
  readStatus,
  removeFileDurably,
  resolveDirs,
  StatePaths,
  writeFileAtomic,
  writeStatus,
  type DomainStatus,
} from './state.js';

export interface QemuDriverOptions {
  /** definitions and status files; default see resolveDirs (env VIRTBACK_STATE_DIR) */
  stateDir?: string;
  /** sockets, pid files, logs; default see resolveDirs (env VIRTBACK_RUN_DIR) */
  runDir?: string;
  /** QEMU binary (default qemu-system-x86_64 from PATH) */
  binary?: string;
  uri?: string;
  /** default timeout of QMP commands (30 s) */
  qmpTimeoutMs?: number;
  /** how long QEMU may take to start (60 s) */
  startTimeoutMs?: number;
  /** subscribed before reconnecting, so it sees the events open() emits (domains found crashed) */
  listener?: EventListener;
  /**
   * qemu.conf backup_tls_x509_cert_dir: ca-cert.pem, server-cert.pem,
   * server-key.pem for pull backups with <server tls='yes'> (unset: refused)
   */
  backupTlsX509CertDir?: string;
  /** qemu.conf backup_tls_x509_verify: NBD clients need a certificate signed by the CA (default true) */
  backupTlsX509Verify?: boolean;
  /** bandwidth limit of every push backup disk job, bytes/s (default: none); QMP block-job-set-speed changes it per job */
  backupSpeedLimit?: number;
  /**
   * Work after a push completed and its targets are closed (virtbackd writes
   * manifests here); runs in one background queue, backupEnd waits for it.
   * `liveSources` are the domain's own disk paths (a backing file among them is no backup).
   */
  afterPushComplete?: (info: PushCompleteInfo, liveSources: ReadonlySet<string>) => Promise<void>;
  /** structured log (default: silent) */
  log?: Logger;
  /** construct the checkpoint / backup modules (tests inject fakes here) */
  checkpoints?: (host: DomainHost) => CheckpointOps & CheckpointAccess;
  backups?: (host: DomainHost, checkpoints: CheckpointAccess) => BackupOps;
}

/** sun_path is 108 bytes including the terminating NUL */
const MAX_SOCKET_PATH = 107;

function notRunning(): Error {
  return virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not running');
}

function noSupport(fn: string): Error {
  return virErr('NO_SUPPORT', 'QEMU', `this function is not supported by the connection driver: ${fn}`);
}

function warn(msg: string, e?: unknown): void {
  process.emitWarning(`virtback qemu driver: ${msg}${e === undefined ? '' : `: ${e instanceof Error ? e.message : String(e)}`}`);
}

export class QemuDriver implements Driver, DomainHost {
  readonly uri: string;
  readonly paths: StatePaths;
  readonly binary: string;
  readonly log: Logger;
  private checkpointsImpl: CheckpointOps | null = null;
  private backupsImpl: BackupOps | null = null;

  private readonly byUuid = new Map<string, DomainObject>();
  private readonly byName = new Map<string, DomainObject>();
  private readonly listeners = new Set<EventListener>();
  private readonly hooks = new Set<DomainHooks>();
  /** events held back while a domain is being stopped (see finishStop) */
  private readonly heldEvents = new Map<string, DriverEvent[]>();
  private readonly qmpTimeoutMs: number;
  private readonly startTimeoutMs: number;
  /** guards the name/uuid maps while a definition file is written */
  private readonly defineLock = new AsyncMutex();
  private closed = false;

  private constructor(opts: QemuDriverOptions) {
    this.paths = new StatePaths(resolveDirs(opts));
    this.binary = opts.binary ?? QEMU_BINARY;
    this.uri = opts.uri ?? 'qemu:///embed';
    this.qmpTimeoutMs = opts.qmpTimeoutMs ?? 30_000;
    this.startTimeoutMs = opts.startTimeoutMs ?? 60_000;
    this.log = opts.log ?? silentLogger;
    if (opts.listener) this.listeners.add(opts.listener);
  }

  /** Load every definition and reconnect to every QEMU that is still running. */
  static async open(opts: QemuDriverOptions = {}): Promise<QemuDriver> {
    const d = new QemuDriver(opts);
    // The extension modules are created first so their hooks see the load and reconnect.
    // Their constructors call d.addHooks(...) to attach dom.checkpoints / dom.backupJobs in onLoaded.
    const checkpoints = (opts.checkpoints ?? ((host) => new QemuCheckpoints(host)))(d);
    d.checkpointsImpl = checkpoints;
    const afterPush = opts.afterPushComplete;
    d.backupsImpl = (opts.backups ?? ((host, cps) => new QemuBackups(host, cps, {
      tlsX509CertDir: opts.backupTlsX509CertDir ?? null,
      tlsX509Verify: opts.backupTlsX509Verify ?? true,
      ...(opts.backupSpeedLimit ? { speed: opts.backupSpeedLimit } : {}),
      ...(afterPush ? { afterPushComplete: (info: PushCompleteInfo) => afterPush(info, d.liveSources(info.uuid)) } : {}),
    })))(d, checkpoints);
    await d.paths.ensure();
    await d.loadDefinitions();
    await d.reconnectAll();
    return d;
  }

  // ------------------------------------------------------------ for other modules

  /** Events the backup module published while open() recovered jobs (drained). */
  recoveredEvents(): DriverEvent[] {
    return this.backupsImpl?.recoveredEvents() ?? [];
  }

  /** Every disk path of the domain, persistent and live definition. */
  private liveSources(uuid: string): ReadonlySet<string> {
    const dom = this.getDomain(uuid);
    return new Set([...dom.def.disks, ...(dom.liveDef?.disks ?? [])].map((k) => k.source).filter((p): p is string => p !== null));
  }

  /** Register lifecycle hooks; returns the function that removes them. */
  addHooks(h: DomainHooks): () => void {
    this.hooks.add(h);
    return () => this.hooks.delete(h);
  }

  /** Publish an event to every subscriber (backup module: job-completed, block-job). */
  emit(ev: DriverEvent): void {
    const held = this.heldEvents.get(ev.domain.uuid);
    if (held) {
      held.push(ev);
      return;
    }
    for (const l of [...this.listeners]) {
      try {
        l(ev);
      } catch (e) {
        warn('event listener threw', e);
      }
    }
  }

  /** The domain object, or NO_DOMAIN. */
  getDomain(uuid: string): DomainObject {
    const dom = this.byUuid.get(String(uuid).toLowerCase());
    if (!dom) {
      throw virErr('NO_DOMAIN', 'QEMU', `Domain not found: no domain with matching uuid '${uuid}'`);
    }
    return dom;
  }

  /** Every domain, by name. */
  allDomains(): DomainObject[] {
    return [...this.byUuid.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Run `fn` holding the domain's mutex: every mutating operation on one domain
   * is serialised through it. The domain is looked up again inside, so `fn`
   * never sees a domain that was removed while it waited.
   */
  withDomainLock<T>(uuid: string, fn: (dom: DomainObject) => Promise<T>): Promise<T> {
    const dom = this.getDomain(uuid);
    return dom.lock.run(async () => {
      if (dom.removed) this.getDomain(uuid); // throws NO_DOMAIN
      return fn(dom);
    });
  }

  /** The running domain's monitor; OPERATION_INVALID when it is not running. Reconnects if needed. */
  async monitor(uuid: string): Promise<QmpClient> {
    const dom = this.getDomain(uuid);
    const run = dom.run;
    if (!run) throw notRunning();
    if (run.qmp && !run.qmp.isClosed) return run.qmp;
    // The monitor was lost without QEMU dying (reconnect failed at open()): try again.
    if (!(await processAlive(run.pid, run.pidStartTime))) {
      // Clean up in the background: the caller may hold the domain lock.
      dom.lock.run(() => this.handleGone(dom, run)).catch((e) => warn('cleanup after QEMU exit failed', e));
      throw notRunning();
    }
    try {
      const qmp = await QmpClient.connect(run.status.qmpSocket, { timeoutMs: this.qmpTimeoutMs });
      if (dom.run !== run || (run.qmp && !run.qmp.isClosed)) {
        await qmp.close();
        return this.monitor(uuid);
      }
      this.attachMonitor(dom, run, qmp);
      return qmp;
    } catch (e) {
      throw qmpErrorToVirError(e, 'cannot connect to the QEMU monitor');
    }
  }

  /** Disk target -> node names and qdev id of the running domain (OPERATION_INVALID when shut off). */
  diskNodes(uuid: string): DiskNodes[] {
    const dom = this.getDomain(uuid);
    if (!dom.run) throw notRunning();
    return dom.run.status.disks.map((d) => ({ ...d }));
  }

  /** The running domain's own run directory (sockets, logs; the place for scratch sockets). */
  domainRunDir(uuid: string): string {
    const dom = this.getDomain(uuid);
    if (!dom.run) throw notRunning();
    return dom.run.status.runDir;
  }

  /**
   * A fresh N for run-time block nodes (`libvirt-N-storage`/`-format`), above
   * every N in use and never handed out twice during this run; persisted.
   */
  async allocateNodeIndex(uuid: string): Promise<number> {
    const dom = this.getDomain(uuid);
    const run = dom.run;
    if (!run) throw notRunning();
    const last = typeof run.status.extra.lastNodeIndex === 'number' ? run.status.extra.lastNodeIndex : 0;
    const n = Math.max(last + 1, nextNodeIndex(run.status.disks));
    run.status.extra.lastNodeIndex = n;
    await this.saveStatus(dom);
    return n;
  }

  /** Persist the running domain's status file (including `status.extra`, which other modules may fill). */
  async saveStatus(dom: DomainObject): Promise<void> {
    if (!dom.run) throw notRunning();
    await writeStatus(this.paths.status(dom.uuid), dom.run.status);
  }

  /** Write a file atomically (temp + fsync + rename + fsync dir). */
  writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
    return writeFileAtomic(file, data);
  }

  /**
   * Run `fn` with a connected guest agent (one connection at a time: qemu-ga
   * serves one client). Errors: OPERATION_INVALID when not running,
   * OPERATION_UNSUPPORTED when the domain has no agent channel,
   * AGENT_UNRESPONSIVE when the agent does not answer.
   */
  async withAgent<T>(uuid: string, fn: (agent: GuestAgentClient) => Promise<T>, opts?: { timeoutMs?: number }): Promise<T> {
    const dom = this.getDomain(uuid);
    return dom.agentLock.run(async () => {
      const run = dom.run;
      if (!run) throw notRunning();
      if (run.status.agentSocket === null) {
        throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'QEMU guest agent is not configured');
      }
      const agent = await GuestAgentClient.connect(run.status.agentSocket, { timeoutMs: opts?.timeoutMs });
      try {
        return await fn(agent);
      } finally {
        agent.close();
      }
    });
  }

  // ------------------------------------------------------------ Driver: domains

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      [...this.byUuid.values()].map((dom) =>
        dom.lock.run(async () => {
          const run = dom.run;
          if (!run) return;
          for (const off of run.detach.splice(0)) off();
          const qmp = run.qmp;
          run.qmp = null;
          if (qmp) await qmp.close().catch(() => {});
        }),
      ),
    );
    this.listeners.clear();
  }

  async domainDefineXML(xml: string, flags: number): Promise<DomainRef> {
    checkFlags(flags, 0, 'virDomainDefineXMLFlags');
    const def = parseDomainXML(xml);
    def.uuid = def.uuid.toLowerCase();
    return this.defineLock.run(async () => {
      const existing = this.byUuid.get(def.uuid);
      if (existing && existing.name !== def.name) {
        throw virErr('OPERATION_FAILED', 'QEMU',
          `operation failed: domain '${existing.name}' is already defined with uuid ${def.uuid}`);
      }
      const sameName = this.byName.get(def.name);
      if (sameName && sameName.uuid !== def.uuid) {
        throw virErr('OPERATION_FAILED', 'QEMU',
          `operation failed: domain '${def.name}' already exists with uuid ${sameName.uuid}`);
      }
      const text = formatDomainXML(def, { secure: true });
      if (existing) {
        return existing.lock.run(async () => {
          await writeFileAtomic(this.paths.definition(def.uuid), text);
          existing.def = def;
          existing.persistent = true;
          if (existing.run && !existing.run.status.persistent) {
            // a running transient domain defined again becomes persistent again
            existing.run.status.persistent = true;
            await this.saveStatus(existing);
          }
          this.emit(this.lifecycle(existing, 'defined', 'updated'));
          return { name: def.name, uuid: def.uuid };
        });
      }
      await writeFileAtomic(this.paths.definition(def.uuid), text);
      const dom = new DomainObject(def, true);
      this.insert(dom);
      await dom.lock.run(() => this.runHooks(dom, 'onLoaded'));
      this.emit(this.lifecycle(dom, 'defined', 'added'));
      return { name: def.name, uuid: def.uuid };
    });
  }

  async domainUndefine(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, UndefineFlags.CHECKPOINTS_METADATA, 'virDomainUndefineFlags');
    await this.defineLock.run(() =>
      this.withDomainLock(uuid, async (dom) => {
        if (!dom.persistent) {
          throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: cannot undefine transient domain');
        }
        // libvirt refuses only for an inactive domain: a running one keeps its
        // checkpoints in memory until it stops (qemuDomainUndefineFlags).
        if (!dom.active) {
          const n = dom.checkpoints?.count() ?? 0;
          if (n > 0) {
            if (!(flags & UndefineFlags.CHECKPOINTS_METADATA)) {
              throw virErr('OPERATION_INVALID', 'QEMU',
                `Requested operation is not valid: cannot delete inactive domain with ${n} checkpoints`);
            }
            if (!this.checkpointsImpl) throw noSupport('virDomainUndefineFlags with checkpoints');
            await this.checkpointsImpl.discardAllMetadata(dom);
          }
        }
        await removeFileDurably(this.paths.definition(dom.uuid));
        this.emit(this.lifecycle(dom, 'undefined', 'removed'));
        if (dom.run) {
          // Running: it becomes transient and goes away when it stops.
          dom.persistent = false;
          dom.run.status.persistent = false;
          await this.saveStatus(dom);
        } else {
          await this.remove(dom);
        }
      }),
    );
  }

  async domainCreate(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, 0, 'virDomainCreateWithFlags');
    await this.withDomainLock(uuid, (dom) => this.start(dom));
  }

  async domainDestroy(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, 0, 'virDomainDestroyFlags');
    await this.withDomainLock(uuid, async (dom) => {
      const run = dom.run;
      if (!run) throw notRunning();
      run.stopping = true;
      await this.stopProcess(run);
      await this.finishStop(dom, ShutoffReason.DESTROYED, 'destroyed');
    });
  }

  async domainLookupByName(name: string): Promise<DomainRef> {
    const dom = this.byName.get(name);
    if (!dom) throw virErr('NO_DOMAIN', 'QEMU', `Domain not found: no domain with matching name '${name}'`);
    return { name: dom.name, uuid: dom.uuid };
  }

  async domainLookupByUUID(uuid: string): Promise<DomainRef> {
    const dom = this.getDomain(uuid);
    return { name: dom.name, uuid: dom.uuid };
  }

  async listAllDomains(flags: number): Promise<DomainSummary[]> {
    const F = ListDomainsFlags;
    const all = F.ACTIVE | F.INACTIVE | F.PERSISTENT | F.TRANSIENT | F.RUNNING | F.PAUSED | F.SHUTOFF | F.OTHER |
      F.HAS_CHECKPOINT | F.NO_CHECKPOINT | F.HAS_BACKUP_JOB | F.NO_BACKUP_JOB;
    checkFlags(flags, all, 'virConnectListAllDomains');
    await Promise.all(this.allDomains().map((d) => this.refreshLiveness(d)));
    // Like virDomainObjListFilter: OR inside a group, AND across groups.
    const group = (mask: number, test: (d: DomainSummary) => number): ((d: DomainSummary) => boolean) =>
      (d) => (flags & mask) === 0 || (flags & test(d)) !== 0;
    const tests = [
      group(F.ACTIVE | F.INACTIVE, (d) => (d.state !== DomainState.SHUTOFF ? F.ACTIVE : F.INACTIVE)),
      group(F.PERSISTENT | F.TRANSIENT, (d) => (d.persistent ? F.PERSISTENT : F.TRANSIENT)),
      group(F.RUNNING | F.PAUSED | F.SHUTOFF | F.OTHER, (d) =>
        d.state === DomainState.RUNNING ? F.RUNNING
          : d.state === DomainState.PAUSED ? F.PAUSED
            : d.state === DomainState.SHUTOFF ? F.SHUTOFF : F.OTHER),
      group(F.HAS_CHECKPOINT | F.NO_CHECKPOINT, (d) => (d.checkpoints > 0 ? F.HAS_CHECKPOINT : F.NO_CHECKPOINT)),
      group(F.HAS_BACKUP_JOB | F.NO_BACKUP_JOB, (d) => (d.hasBackupJob ? F.HAS_BACKUP_JOB : F.NO_BACKUP_JOB)),
    ];
    return this.allDomains().map((d) => this.summary(d)).filter((s) => tests.every((t) => t(s)));
  }

  async domainGetInfo(uuid: string): Promise<DomainSummary> {
    const dom = this.getDomain(uuid);
    await this.refreshLiveness(dom);
    return this.summary(dom);
  }

  async domainGetXMLDesc(uuid: string, flags: number): Promise<string> {
    checkFlags(flags, DomainXMLFlags.SECURE | DomainXMLFlags.INACTIVE, 'virDomainGetXMLDesc');
    const dom = this.getDomain(uuid);
    const def = flags & DomainXMLFlags.INACTIVE || !dom.liveDef ? dom.def : dom.liveDef;
    return formatDomainXML(def, { secure: (flags & DomainXMLFlags.SECURE) !== 0 });
  }

  async qemuMonitorCommand(uuid: string, command: string, flags: number): Promise<string> {
    checkFlags(flags, MonitorCommandFlags.HMP, 'virDomainQemuMonitorCommand');
    const qmp = await this.monitor(uuid);
    if (flags & MonitorCommandFlags.HMP) {
      try {
        return await qmp.hmp(command);
      } catch (e) {
        throw qmpErrorToVirError(e);
      }
    }
    let msg: unknown;
    try {
      msg = JSON.parse(command);
    } catch (e) {
      throw virErr('INTERNAL_ERROR', 'QEMU', `internal error: cannot parse json ${command}: ${(e as Error).message}`);
    }
    if (typeof msg !== 'object' || msg === null || typeof (msg as { execute?: unknown }).execute !== 'string') {
      throw virErr('INVALID_ARG', 'QEMU', `invalid argument: monitor command must be a JSON object with a string 'execute': ${command}`);
    }
    const { execute, arguments: args } = msg as { execute: string; arguments?: object };
    // Like virsh qemu-monitor-command: the reply comes back as JSON, an error reply
    // included ({"error":{...}} is a result, not a failure); our message id is left out.
    try {
      const ret = await qmp.executeRaw(execute, args);
      return JSON.stringify({ return: ret });
    } catch (e) {
      if (e instanceof QmpCommandError) return JSON.stringify({ error: { class: e.errorClass, desc: e.desc } });
      throw qmpErrorToVirError(e);
    }
  }

  async domainFSFreeze(uuid: string, mountpoints: string[], flags: number): Promise<number> {
    checkFlags(flags, 0, 'virDomainFSFreeze');
    return this.withAgent(uuid, (a) => a.fsfreezeFreeze(mountpoints.length > 0 ? mountpoints : undefined));
  }

  async domainFSThaw(uuid: string, mountpoints: string[], flags: number): Promise<number> {
    checkFlags(flags, 0, 'virDomainFSThaw');
    if (mountpoints.length > 0) {
      // qemu-ga thaws everything; libvirt refuses a list the same way
      throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'specifying mountpoints is not supported');
    }
    return this.withAgent(uuid, (a) => a.fsfreezeThaw());
  }

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ------------------------------------------------------------ Driver: checkpoints (src/qemu/checkpoints.ts)

  private cp(fn: string): CheckpointOps {
    if (!this.checkpointsImpl) throw noSupport(fn);
    return this.checkpointsImpl;
  }

  async checkpointCreateXML(uuid: string, xml: string, flags: number): Promise<string> {
    return this.cp('virDomainCheckpointCreateXML').checkpointCreateXML(uuid, xml, flags);
  }
  async checkpointGetXMLDesc(uuid: string, name: string, flags: number): Promise<string> {
    return this.cp('virDomainCheckpointGetXMLDesc').checkpointGetXMLDesc(uuid, name, flags);
  }
  async listAllCheckpoints(uuid: string, flags: number): Promise<string[]> {
    return this.cp('virDomainListAllCheckpoints').listAllCheckpoints(uuid, flags);
  }
  async checkpointListAllChildren(uuid: string, name: string, flags: number): Promise<string[]> {
    return this.cp('virDomainCheckpointListAllChildren').checkpointListAllChildren(uuid, name, flags);
  }
  async checkpointLookupByName(uuid: string, name: string, flags: number): Promise<string> {
    return this.cp('virDomainCheckpointLookupByName').checkpointLookupByName(uuid, name, flags);
  }
  async checkpointGetParent(uuid: string, name: string, flags: number): Promise<string> {
    return this.cp('virDomainCheckpointGetParent').checkpointGetParent(uuid, name, flags);
  }
  async checkpointDelete(uuid: string, name: string, flags: number): Promise<void> {
    return this.cp('virDomainCheckpointDelete').checkpointDelete(uuid, name, flags);
  }
  async listUnknownBitmaps(uuid: string): Promise<UnknownBitmap[]> {
    return this.cp('virtbackListUnknownBitmaps').listUnknownBitmaps(uuid);
  }

  // ------------------------------------------------------------ Driver: backup jobs (src/qemu/backup.ts)

  private bk(fn: string): BackupOps {
    if (!this.backupsImpl) throw noSupport(fn);
    return this.backupsImpl;
  }

  async backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    return this.bk('virDomainBackupBegin').backupBegin(uuid, backupXml, checkpointXml, flags);
  }
  async backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string> {
    return this.bk('virDomainBackupGetXMLDesc').backupGetXMLDesc(uuid, id, flags);
  }
  async backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    return this.bk('virDomainBackupEnd').backupEnd(uuid, id, flags);
  }
  async listJobIds(uuid: string): Promise<number[]> {
    return this.bk('virDomainListJobIds').listJobIds(uuid);
  }
  async getJobStats(uuid: string, flags: number): Promise<JobStats> {
    return this.bk('virDomainGetJobStats').getJobStats(uuid, flags);
  }
  async abortJob(uuid: string, flags: number): Promise<void> {
    return this.bk('virDomainAbortJob').abortJob(uuid, flags);
  }

  // ------------------------------------------------------------ internals

  private insert(dom: DomainObject): void {
    this.byUuid.set(dom.uuid, dom);
    this.byName.set(dom.name, dom);
  }

  /** Forget the domain (undefined while inactive, or transient and stopped). Lock held. */
  private async remove(dom: DomainObject): Promise<void> {
    dom.removed = true;
    if (this.byUuid.get(dom.uuid) === dom) this.byUuid.delete(dom.uuid);
    if (this.byName.get(dom.name) === dom) this.byName.delete(dom.name);
    await this.runHooks(dom, 'onRemoved');
  }

  private lifecycle(dom: DomainObject, event: string, detail: string): DriverEvent {
    return { type: 'lifecycle', domain: { name: dom.name, uuid: dom.uuid }, event, detail };
  }

  private summary(dom: DomainObject): DomainSummary {
    return {
      name: dom.name,
      uuid: dom.uuid,
      id: dom.run ? dom.run.pid : -1,
      state: dom.state,
      // libvirt's reason codes: running 1 = booted, paused 1 = user, shut off: why it stopped
      reason: dom.state === DomainState.SHUTOFF ? dom.reason : 1,
      persistent: dom.persistent,
      checkpoints: dom.checkpoints?.count() ?? 0,
      hasBackupJob: dom.backupJobs?.hasActiveJob() ?? false,
    };
  }

  private async runHooks(dom: DomainObject, name: keyof DomainHooks, reason?: number): Promise<void> {
    for (const h of [...this.hooks]) {
      try {
        if (name === 'onStopped') await h.onStopped?.(dom, reason ?? 0);
        else await h[name]?.(dom);
      } catch (e) {
        warn(`${name} hook failed for domain '${dom.name}'`, e);
      }
    }
  }

  private async loadDefinitions(): Promise<void> {
    for (const id of await listIds(this.paths.domainsDir, '.xml')) {
      let def: DomainDef;
      try {
        def = parseDomainXML(await readFile(this.paths.definition(id), 'utf8'));
      } catch (e) {
        warn(`cannot load domain definition '${this.paths.definition(id)}'`, e);
        continue;
      }
      def.uuid = def.uuid.toLowerCase();
      if (def.uuid !== id || this.byName.has(def.name)) {
        warn(`ignoring domain definition '${this.paths.definition(id)}': uuid or name clash`);
        continue;
      }
      const dom = new DomainObject(def, true);
      this.insert(dom);
      await dom.lock.run(() => this.runHooks(dom, 'onLoaded'));
    }
  }

  private async reconnectAll(): Promise<void> {
    const ids = await listIds(this.paths.statusDir, '.json');
    await Promise.all(ids.map((id) => this.reconnectOne(id)));
  }

  private async reconnectOne(id: string): Promise<void> {
    const file = this.paths.status(id);
    let status: DomainStatus;
    try {
      status = await readStatus(file);
    } catch (e) {
      warn(`cannot read status file '${file}'`, e);
      return;
    }
    let dom = this.byUuid.get(status.uuid);
    let liveDef: DomainDef;
    try {
      liveDef = parseDomainXML(status.liveXml);
      liveDef.uuid = liveDef.uuid.toLowerCase();
    } catch (e) {
      warn(`cannot parse the live definition in '${file}'`, e);
      return;
    }
    if (!dom) {
      // running transient domain (undefined while it ran): it exists only through its status
      if (this.byName.has(liveDef.name)) {
        warn(`ignoring status file '${file}': name '${liveDef.name}' is taken`);
        return;
      }
      dom = new DomainObject(liveDef, false);
      this.insert(dom);
      await dom.lock.run(() => this.runHooks(dom!, 'onLoaded'));
    }
    const d = dom;
    await d.lock.run(async () => {
      const run: RunningInstance = {
        pid: status.pid,
        pidStartTime: status.pidStartTime,
        qmp: null,
        status,
        stopping: false,
        shutdownSeen: false,
        detach: [],
      };
      d.run = run;
      d.liveDef = liveDef;
      d.state = DomainState.RUNNING;
      d.reason = 0;
      if (!(await isOurQemu(status.pid, status.pidStartTime, status.uuid))) {
        // It died while no driver watched it.
        run.stopping = true;
        await this.finishStop(d, ShutoffReason.CRASHED, 'crashed');
        return;
      }
      try {
        const qmp = await QmpClient.connect(status.qmpSocket, { timeoutMs: this.qmpTimeoutMs });
        this.attachMonitor(d, run, qmp);
        const st = (await qmp.executeRaw('query-status')) as { status?: string; running?: boolean };
        d.state = st.running === false && st.status !== 'running' ? DomainState.PAUSED : DomainState.RUNNING;
      } catch (e) {
        if (!(await processAlive(run.pid, run.pidStartTime))) {
          run.stopping = true;
          await this.finishStop(d, ShutoffReason.CRASHED, 'crashed');
          return;
        }
        warn(`cannot reconnect to the monitor of domain '${d.name}' (will retry on use)`, e);
      }
      await this.runHooks(d, 'onReconnected');
    });
  }

  /** Subscribe to the monitor's state events and to its end. */
  private attachMonitor(dom: DomainObject, run: RunningInstance, qmp: QmpClient): void {
    run.qmp = qmp;
    run.detach.push(
      qmp.on('STOP', () => {
        if (dom.run !== run || dom.state === DomainState.PAUSED) return;
        dom.state = DomainState.PAUSED;
        this.emit(this.lifecycle(dom, 'suspended', 'paused'));
      }),
      qmp.on('RESUME', () => {
        if (dom.run !== run || dom.state !== DomainState.PAUSED) return;
        dom.state = DomainState.RUNNING;
        this.emit(this.lifecycle(dom, 'resumed', 'unpaused'));
      }),
      qmp.on('SHUTDOWN', () => {
        run.shutdownSeen = true;
      }),
      qmp.onClose((err) => {
        // err undefined: we closed it ourselves (close(), destroy)
        if (err === undefined || run.stopping || this.closed || dom.run !== run) return;
        this.withDomainLock(dom.uuid, (d) => this.handleGone(d, run)).catch((e) => {
          if (!isVirError(e, 'NO_DOMAIN')) warn(`cleaning up after domain '${dom.name}' stopped`, e);
        });
      }),
    );
  }

  /**
   * The monitor closed or the process vanished behind our back: QEMU is (about
   * to be) gone. Like libvirt's monitor EOF handling, make sure it is dead, then
   * clean up: shut off with reason SHUTDOWN when QEMU announced a shutdown, else CRASHED.
   */
  private async handleGone(dom: DomainObject, run: RunningInstance): Promise<void> {
    if (dom.run !== run || run.stopping) return;
    run.stopping = true;
    if (!(await waitForExit(run.pid, run.pidStartTime, 3000))) {
      await terminateProcess(run.pid, run.pidStartTime, 2000).catch((e) => warn('cannot kill QEMU', e));
    }
    if (run.shutdownSeen) await this.finishStop(dom, ShutoffReason.SHUTDOWN, 'shutdown');
    else await this.finishStop(dom, ShutoffReason.CRASHED, 'crashed');
  }

  /** The cheap check for a domain whose monitor is not connected: is its process still there? */
  private async refreshLiveness(dom: DomainObject): Promise<void> {
    const run = dom.run;
    if (!run || run.stopping || (run.qmp && !run.qmp.isClosed)) return;
    // A lock holder (possibly our caller) deals with the domain itself: never wait for it here.
    if (dom.lock.locked) return;
    if (await processAlive(run.pid, run.pidStartTime)) return;
    await dom.lock.run(() => this.handleGone(dom, run)).catch((e) => warn('cleanup after QEMU exit failed', e));
  }

  /** `quit` over QMP, then SIGTERM/SIGKILL if QEMU does not go; resolves once the process is gone. */
  private async stopProcess(run: RunningInstance): Promise<void> {
    const qmp = run.qmp;
    if (qmp && !qmp.isClosed) {
      try {
        await qmp.executeRaw('quit', undefined, { timeoutMs: 5000 });
      } catch {
        // the reply may be lost when QEMU closes the socket first; the exit is what counts
      }
      if (await waitForExit(run.pid, run.pidStartTime, 10_000)) return;
    }
    await terminateProcess(run.pid, run.pidStartTime);
  }

  /** QEMU is gone: let hooks clean up, remove status and run files, mark shut off, tell subscribers. Lock held. */
  private async finishStop(dom: DomainObject, reason: number, detail: string): Promise<void> {
    const run = dom.run;
    if (!run) return;
    run.stopping = true;
    for (const off of run.detach.splice(0)) off();
    const qmp = run.qmp;
    run.qmp = null;
    if (qmp) await qmp.close().catch(() => {});
    // Events the hooks publish (a backup job failing with its domain) wait until
    // the domain is shut off, so a listener never sees them on a running domain.
    const held: DriverEvent[] = [];
    this.heldEvents.set(dom.uuid, held);
    try {
      await this.runHooks(dom, 'onStopped', reason);
      await this.removeRunFiles(run.status);
      await removeFileDurably(this.paths.status(dom.uuid)).catch((e) => warn('cannot remove status file', e));
      dom.run = null;
      dom.liveDef = null;
      dom.state = DomainState.SHUTOFF;
      dom.reason = reason;
    } finally {
      this.heldEvents.delete(dom.uuid);
      for (const ev of held) this.emit(ev);
    }
    this.emit(this.lifecycle(dom, 'stopped', detail));
    if (!dom.persistent) await this.remove(dom);
  }

  private async removeRunFiles(status: DomainStatus): Promise<void> {
    // The agent socket may live outside the run dir (<channel><source path=.../>): remove it if it is a socket.
    if (status.agentSocket && !status.agentSocket.startsWith(status.runDir + path.sep)) {
      try {
        if ((await lstat(status.agentSocket)).isSocket()) await unlink(status.agentSocket);
      } catch {
        // already gone
      }
    }
    await rm(status.runDir, { recursive: true, force: true }).catch((e) => warn(`cannot remove '${status.runDir}'`, e));
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

  /** Start QEMU for the domain's persistent definition. Lock held. */
  private async start(dom: DomainObject): Promise<void> {
    if (dom.run) {
      throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is already running');
    }
    const runDir = this.paths.domainRunDir(dom.uuid);
    const qmpSocket = path.join(runDir, 'qmp.sock');
    const agentSocket = dom.def.agent ? dom.def.agent.path ?? path.join(runDir, 'qga.sock') : null;
    // the live definition names the socket the driver chose, as libvirt's live XML does
    const def: DomainDef = agentSocket === null ? dom.def : { ...dom.def, agent: { path: agentSocket } };
    await checkDiskSources(def);
    for (const s of [qmpSocket, agentSocket]) {
      if (s !== null && Buffer.byteLength(s) > MAX_SOCKET_PATH) {
        throw virErr('CONFIG_UNSUPPORTED', 'QEMU',
          `socket path '${s}' is longer than ${MAX_SOCKET_PATH} bytes: choose a shorter run directory`);
      }
    }
    const accel = def.type === 'kvm' && (await kvmUsable()) ? 'kvm' : 'tcg';
    const pidFile = path.join(runDir, 'qemu.pid');
    const cl = buildCommandLine({ def, accel, qmpSocket, pidFile, agentSocket, consoleLog: path.join(runDir, 'console.log') });
    await rm(runDir, { recursive: true, force: true });
    await mkdir(runDir, { recursive: true, mode: 0o700 });
    let launched: { pid: number; startTime: number } | null = null;
    try {
      launched = await launchQemu({
        binary: this.binary,
        args: cl.args,
        logFile: path.join(runDir, 'qemu.log'),
        pidFile,
        timeoutMs: this.startTimeoutMs,
      });
      const qmp = await QmpClient.connect(qmpSocket, { timeoutMs: this.qmpTimeoutMs }).catch((e) => {
        throw qmpErrorToVirError(e, 'internal error: cannot connect to the QEMU monitor');
      });
      const status: DomainStatus = {
        version: 1,
        uuid: dom.uuid,
        name: dom.name,
        persistent: dom.persistent,
        pid: launched.pid,
        pidStartTime: launched.startTime,
        binary: this.binary,
        qmpSocket,
        agentSocket,
        runDir,
        disks: cl.disks,
        startedAt: new Date().toISOString(),
        liveXml: formatDomainXML(def, { secure: true }),
        extra: {},
      };
      const run: RunningInstance = {
        pid: launched.pid,
        pidStartTime: launched.startTime,
        qmp: null,
        status,
        stopping: false,
        shutdownSeen: false,
        detach: [],
      };
      dom.run = run;
      dom.liveDef = def;
      dom.state = DomainState.RUNNING;
      dom.reason = 0;
      this.attachMonitor(dom, run, qmp);
      await writeStatus(this.paths.status(dom.uuid), status);
    } catch (e) {
      const run = dom.run;
      if (run) run.stopping = true;
      if (run?.qmp) {
        for (const off of run.detach.splice(0)) off();
        await run.qmp.close().catch(() => {});
      }
      dom.run = null;
      dom.liveDef = null;
      dom.state = DomainState.SHUTOFF;
      dom.reason = ShutoffReason.FAILED;
      if (launched) await terminateProcess(launched.pid, launched.startTime, 2000).catch(() => {});
      else await this.killFromPidFile(pidFile, dom.uuid);
      await rm(runDir, { recursive: true, force: true }).catch(() => {});
      await removeFileDurably(this.paths.status(dom.uuid)).catch(() => {});
      throw e;
    }
    await this.runHooks(dom, 'onStarted');
    this.emit(this.lifecycle(dom, 'started', 'booted'));
  }
}

