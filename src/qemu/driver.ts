// The local QEMU driver: domains defined in a state directory, each running
// domain a detached QEMU process driven over QMP. QEMU outlives the driver:
// close() only disconnects, and open() reconnects to every QEMU still alive.
//
// This class only composes and routes. Its parts: registry.ts (domains by
// uuid and name, locks), definitions.ts (define/undefine), lifecycle.ts
// (start, reconnect, stop), runtime.ts (the handle on one running QEMU:
// monitor, agent, node indexes, status file), event-bus.ts, hook-set.ts.
// The checkpoint and backup modules get this object as their DomainHost.

import path from 'node:path';
import type {
  BlockJobInfo,
  DiskError,
  Driver,
  DomainRef,
  DomainSummary,
  DriverEvent,
  EventListener,
  JobStats,
  UnknownBitmap,
} from '../api/driver.js';
import { virErr } from '../errors.js';
import {
  BlockJobInfoFlags,
  checkFlags,
  DomainCreateFlags,
  DomainDefineFlags,
  DomainDestroyFlags,
  DeviceModifyFlags,
  DomainXMLFlags,
  MonitorCommandFlags,
  UndefineFlags,
} from '../flags.js';
import { errField, silentLogger, type Logger } from '../log.js';
import { formatDomainXML, parseDomainXML } from '../xml/domain.js';
import { QemuBackups, type PushCompleteInfo } from './backup.js';
import type { LocatePreviousBackup } from './backup-prepare.js';
import { QemuCheckpoints } from './checkpoints.js';
import { QEMU_BINARY, type DiskNodes } from './command-line.js';
import { DomainDefinitions } from './definitions.js';
import type { DomainObject } from './domain-object.js';
import { blockJobInfo } from './block-job-info.js';
import { diskErrorList } from './io-errors.js';
import { domainInfo, filterDomains, LIST_DOMAINS_FLAGS, summarize } from './domain-list.js';
import { EventBus } from './event-bus.js';
import { HookSet } from './hook-set.js';
import { ConsoleSessions } from './console.js';
import { ConsoleFlags, type ConsoleStream } from '../api/console-stream.js';
import { changeMediaLive, modificationImpact, parseMediaChange, withMedia } from './media.js';
import type { BackupOps, CheckpointAccess, CheckpointOps, DomainHooks, DomainHost } from './host.js';
import { DomainLifecycle } from './lifecycle.js';
import { passMonitorCommand } from './monitor-command.js';
import type { GuestAgentClient } from './qmp/agent.js';
import { readProcCpuTimeNs } from './process.js';
import type { QmpClient } from './qmp/client.js';
import { DomainRegistry } from './registry.js';
import { notRunning, type QemuRuntime } from './runtime.js';
import { removeStaleTempFiles, resolveDirs, StatePaths, writeFileAtomic } from './state.js';

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
  /** how long a graceful destroy waits for QEMU after SIGTERM (libvirt's 15 s) */
  gracefulDestroyMs?: number;
  /** subscribed before reconnecting, so it sees the events open() emits (domains found crashed) */
  listener?: EventListener;
  /**
   * qemu.conf backup_tls_x509_cert_dir: ca-cert.pem, server-cert.pem,
   * server-key.pem for pull backups with <server tls='yes'> (unset: refused);
   * with client-cert.pem, client-key.pem the end of such a pull checks its frozen view
   */
  backupTlsX509CertDir?: string;
  /** qemu.conf backup_tls_x509_verify: NBD clients need a certificate signed by the CA (default true) */
  backupTlsX509Verify?: boolean;
  /** bandwidth limit of every push backup disk job, bytes/s (default: none); QMP block-job-set-speed changes it per job */
  backupSpeedLimit?: number;
  /** refuse a push whose targets may not fit on their filesystems (default true; backup-space.ts) */
  backupSpaceCheck?: boolean;
  /**
   * Work after a push completed and its targets are closed (virtbackd writes
   * manifests here); runs in one background queue, backupEnd waits for it.
   * `liveSources` are the domain's own disk paths (a backing file among them is no backup).
   */
  afterPushComplete?: (info: PushCompleteInfo, liveSources: ReadonlySet<string>) => Promise<void>;
  /** finds an incremental push's previous backup by its manifest when the job history lost it (virtbackd injects it) */
  locatePreviousBackup?: LocatePreviousBackup;
  /** structured log (default: silent) */
  log?: Logger;
  /** construct the checkpoint / backup modules (tests inject fakes here) */
  checkpoints?: (host: DomainHost) => CheckpointOps & CheckpointAccess;
  backups?: (host: DomainHost, checkpoints: CheckpointAccess) => BackupOps;
}

function noSupport(fn: string): Error {
  return virErr('NO_SUPPORT', 'QEMU', `this function is not supported by the connection driver: ${fn}`);
}

export class QemuDriver implements Driver, DomainHost {
  readonly uri: string;
  readonly paths: StatePaths;
  readonly binary: string;
  readonly log: Logger;
  private checkpointOps: CheckpointOps | null = null;
  private backupOps: BackupOps | null = null;
  private readonly bus: EventBus;
  private readonly hooks: HookSet;
  private readonly registry: DomainRegistry;
  private readonly definitions: DomainDefinitions;
  private readonly lifecycle: DomainLifecycle;
  private readonly gracefulDestroyMs: number;
  private readonly consoles: ConsoleSessions;
  private closed = false;

  private constructor(opts: QemuDriverOptions) {
    this.paths = new StatePaths(resolveDirs(opts));
    this.binary = opts.binary ?? QEMU_BINARY;
    this.uri = opts.uri ?? 'qemu:///embed';
    this.log = opts.log ?? silentLogger;
    this.gracefulDestroyMs = opts.gracefulDestroyMs ?? 15_000;
    this.consoles = new ConsoleSessions(this.log);
    this.bus = new EventBus(this.log);
    if (opts.listener) this.bus.subscribe(opts.listener);
    this.hooks = new HookSet(this.log);
    this.registry = new DomainRegistry(this.hooks);
    const { paths, log, bus, registry, hooks } = this;
    this.definitions = new DomainDefinitions({ paths, log, bus, registry, checkpoints: () => this.checkpointOps });
    this.lifecycle = new DomainLifecycle({
      paths, log, bus, registry, hooks,
      binary: this.binary,
      qmpTimeoutMs: opts.qmpTimeoutMs ?? 30_000,
      startTimeoutMs: opts.startTimeoutMs ?? 60_000,
    });
  }

  /** Load every definition and reconnect to every QEMU that is still running. */
  static async open(opts: QemuDriverOptions = {}): Promise<QemuDriver> {
    const d = new QemuDriver(opts);
    // The extension modules are created first so their hooks see the load and reconnect.
    const checkpoints = (opts.checkpoints ?? ((host) => new QemuCheckpoints(host)))(d);
    d.checkpointOps = checkpoints;
    const afterPush = opts.afterPushComplete;
    d.backupOps = (opts.backups ?? ((host, cps) => new QemuBackups(host, cps, {
      tlsX509CertDir: opts.backupTlsX509CertDir ?? null,
      tlsX509Verify: opts.backupTlsX509Verify ?? true,
      ...(opts.backupSpeedLimit ? { speed: opts.backupSpeedLimit } : {}),
      ...(opts.backupSpaceCheck === false ? { spaceCheck: false } : {}),
      ...(afterPush ? { afterPushComplete: (info: PushCompleteInfo) => afterPush(info, d.liveSources(info.uuid)) } : {}),
      ...(opts.locatePreviousBackup ? { locatePreviousBackup: opts.locatePreviousBackup } : {}),
    })))(d, checkpoints);
    await d.paths.ensure();
    for (const sub of ['domains', 'status', 'autostart', 'checkpoints', 'backups']) {
      for (const file of await removeStaleTempFiles(path.join(d.paths.dirs.stateDir, sub))) {
        d.log.info({ file }, 'removed the temp file of a killed writer');
      }
    }
    await d.definitions.load();
    await d.lifecycle.reconnectAll();
    return d;
  }

  // ------------------------------------------------------------ DomainHost (for checkpoints, backups)

  /** Events the backup module published while open() recovered jobs (drained). */
  recoveredEvents(): DriverEvent[] {
    return this.backupOps?.recoveredEvents() ?? [];
  }

  /** Every disk path of the domain, persistent and live definition. */
  private liveSources(uuid: string): ReadonlySet<string> {
    const dom = this.getDomain(uuid);
    return new Set([...dom.def.disks, ...(dom.liveDef?.disks ?? [])].map((k) => k.source).filter((p): p is string => p !== null));
  }

  /** Register lifecycle hooks; returns the function that removes them. */
  addHooks(h: DomainHooks): () => void {
    return this.hooks.add(h);
  }

  /** Publish an event to every subscriber (backup module: job-completed, block-job). */
  emit(ev: DriverEvent): void {
    this.bus.emit(ev);
  }

  /** The domain object, or NO_DOMAIN. */
  getDomain(uuid: string): DomainObject {
    return this.registry.get(uuid);
  }

  /** Every domain, by name. */
  allDomains(): DomainObject[] {
    return this.registry.all();
  }

  /** Run `fn` holding the domain's mutex (every mutating operation on one domain is serialised through it). */
  withDomainLock<T>(uuid: string, fn: (dom: DomainObject) => Promise<T>): Promise<T> {
    return this.registry.withDomainLock(uuid, fn);
  }

  /** The running domain's handle; OPERATION_INVALID when it is shut off. */
  private running(uuid: string): QemuRuntime {
    const run = this.getDomain(uuid).run;
    if (!run) throw notRunning();
    return run;
  }

  /** The running domain's monitor; OPERATION_INVALID when it is not running. Reconnects if needed. */
  monitor(uuid: string): Promise<QmpClient> {
    return this.running(uuid).monitor();
  }

  /** Disk target -> node names and qdev id of the running domain (OPERATION_INVALID when shut off). */
  diskNodes(uuid: string): DiskNodes[] {
    return this.running(uuid).disks;
  }

  /** The running domain's own run directory (sockets, logs; the place for scratch sockets). */
  domainRunDir(uuid: string): string {
    return this.running(uuid).runDir;
  }

  /** A fresh N for run-time block nodes, never handed out twice during this run; persisted. */
  allocateNodeIndex(uuid: string): Promise<number> {
    return this.running(uuid).allocateNodeIndex();
  }

  /** Persist the running domain's status file (including `status.extra`, which other modules may fill). */
  async saveStatus(dom: DomainObject): Promise<void> {
    if (!dom.run) throw notRunning();
    await dom.run.save();
  }

  /** Write a file atomically (temp + fsync + rename + fsync dir). */
  writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
    return writeFileAtomic(file, data);
  }

  /**
   * Run `fn` with a connected guest agent (one session at a time: qemu-ga
   * serves one client). OPERATION_INVALID when not running,
   * OPERATION_UNSUPPORTED without an agent channel, AGENT_UNRESPONSIVE when it does not answer.
   */
  async withAgent<T>(uuid: string, fn: (agent: GuestAgentClient) => Promise<T>, opts?: { timeoutMs?: number }): Promise<T> {
    return this.running(uuid).withAgent(fn, opts);
  }

  // ------------------------------------------------------------ Driver: domains

  /** Destroys the domains this driver started with START_AUTODESTROY, then detaches from every QEMU. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const dom of this.allDomains().filter((d) => d.autodestroy)) {
      await this.withDomainLock(dom.uuid, async (d) => {
        if (d.autodestroy && d.run) await this.lifecycle.destroy(d);
      }).catch((e) => this.log.error({ ...errField(e), domain: dom.name }, 'cannot destroy an autodestroy domain'));
    }
    await this.lifecycle.close();
    this.bus.clear();
  }

  async domainDefineXML(xml: string, flags: number): Promise<DomainRef> {
    // VALIDATE asks for the RelaxNG check, which parseDomainXML makes on every definition
    checkFlags(flags, DomainDefineFlags.VALIDATE, 'virDomainDefineXMLFlags');
    return this.definitions.define(parseDomainXML(xml));
  }

  async domainUndefine(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, UndefineFlags.CHECKPOINTS_METADATA | UndefineFlags.NVRAM | UndefineFlags.KEEP_NVRAM, 'virDomainUndefineFlags');
    await this.definitions.undefine(uuid, flags);
  }

  /**
   * PAUSED: CPUs never started (resume starts them). AUTODESTROY: destroyed
   * when this driver is closed, or by the next driver that reconnects to it;
   * a daemon serving it ties the domain to the client connection instead
   * (AutoDestroyTracker). BYPASS_CACHE (no save
   * images here) and FORCE_BOOT are refused as libvirt's
   * drivers refuse what they cannot do.
   */
  async domainCreate(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, DomainCreateFlags.PAUSED | DomainCreateFlags.AUTODESTROY | DomainCreateFlags.RESET_NVRAM, 'virDomainCreateWithFlags');
    await this.withDomainLock(uuid, async (dom) => {
      await this.lifecycle.start(dom, {
        paused: (flags & DomainCreateFlags.PAUSED) !== 0,
        resetNvram: (flags & DomainCreateFlags.RESET_NVRAM) !== 0,
        autodestroy: (flags & DomainCreateFlags.AUTODESTROY) !== 0,
      });
    });
  }

  async domainDestroy(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, DomainDestroyFlags.GRACEFUL, 'virDomainDestroyFlags');
    const graceful = flags & DomainDestroyFlags.GRACEFUL ? { ms: this.gracefulDestroyMs } : null;
    await this.withDomainLock(uuid, (dom) => this.lifecycle.destroy(dom, graceful));
  }

  /** ACPI power button or guest agent (power.ts); returns once the guest was asked. */
  async domainShutdown(uuid: string, flags: number): Promise<void> {
    await this.withDomainLock(uuid, (dom) => this.lifecycle.power.shutdown(dom, flags));
  }

  async domainReboot(uuid: string, flags: number): Promise<void> {
    await this.withDomainLock(uuid, (dom) => this.lifecycle.power.reboot(dom, flags));
  }

  async domainSuspend(uuid: string): Promise<void> {
    await this.withDomainLock(uuid, (dom) => this.lifecycle.suspend(dom));
  }

  async domainResume(uuid: string): Promise<void> {
    await this.withDomainLock(uuid, (dom) => this.lifecycle.resume(dom));
  }

  async domainGetAutostart(uuid: string): Promise<boolean> {
    return this.getDomain(uuid).autostart;
  }

  async domainSetAutostart(uuid: string, autostart: boolean): Promise<void> {
    await this.definitions.setAutostart(uuid, autostart);
  }

  /** A cdrom's medium (media.ts): live through QMP, and/or in the persistent definition. */
  async domainUpdateDevice(uuid: string, xml: string, flags: number): Promise<void> {
    checkFlags(flags, DeviceModifyFlags.LIVE | DeviceModifyFlags.CONFIG | DeviceModifyFlags.FORCE, 'virDomainUpdateDeviceFlags');
    const change = parseMediaChange(xml);
    const persistent = await this.withDomainLock(uuid, async (dom) => {
      const { live, config } = modificationImpact(dom, flags);
      const def = config ? withMedia(dom.def, change) : null;
      if (live) {
        const run = dom.run!;
        dom.liveDef = await changeMediaLive(dom, {
          qmp: await run.monitor(),
          allocateNodeIndex: () => run.allocateNodeIndex(),
          save: async (liveDef, disks) => {
            run.status.disks = disks;
            run.status.liveXml = formatDomainXML(liveDef, { secure: true });
            await run.save();
          },
        }, change, (flags & DeviceModifyFlags.FORCE) !== 0);
      }
      return def;
    });
    if (persistent !== null) await this.definitions.define(persistent);
  }

  /** qemuDomainGetDiskErrors: each disk's error that stopped the guest, until it runs again (io-errors.ts). */
  async domainGetDiskErrors(uuid: string, flags: number): Promise<DiskError[]> {
    checkFlags(flags, 0, 'virDomainGetDiskErrors');
    const run = this.running(uuid);
    return diskErrorList(run.disks, run.diskErrors);
  }

  async domainGetBlockJobInfo(uuid: string, disk: string, flags: number): Promise<BlockJobInfo> {
    checkFlags(flags, BlockJobInfoFlags.BANDWIDTH_BYTES, 'virDomainGetBlockJobInfo');
    const dom = this.getDomain(uuid);
    const run = this.running(uuid);
    const def = dom.liveDef ?? dom.def;
    const found = def.disks.find((d) => d.target === disk || (d.source !== null && d.source === disk));
    if (!found) throw virErr('INVALID_ARG', 'QEMU', `invalid argument: disk '${disk}' not found in domain`);
    const jobId = dom.backupJobs?.diskBlockJob?.(found.target) ?? null;
    if (jobId === null) return blockJobInfo(null, flags);
    const jobs = await (await run.monitor()).execute('query-block-jobs');
    return blockJobInfo(jobs.find((j) => j.device === jobId) ?? null, flags);
  }

  async domainLookupByName(name: string): Promise<DomainRef> {
    const dom = this.registry.getByName(name);
    return { name: dom.name, uuid: dom.uuid };
  }

  async domainLookupByUUID(uuid: string): Promise<DomainRef> {
    const dom = this.getDomain(uuid);
    return { name: dom.name, uuid: dom.uuid };
  }

  async listAllDomains(flags: number): Promise<DomainSummary[]> {
    checkFlags(flags, LIST_DOMAINS_FLAGS, 'virConnectListAllDomains');
    await Promise.all(this.allDomains().map((d) => this.lifecycle.refreshLiveness(d)));
    return filterDomains(this.allDomains().map(summarize), flags);
  }

  async domainGetInfo(uuid: string): Promise<DomainSummary> {
    const dom = this.getDomain(uuid);
    await this.lifecycle.refreshLiveness(dom);
    const cpuTime = dom.run ? ((await readProcCpuTimeNs(dom.run.pid)) ?? 0) : 0;
    return domainInfo(dom, cpuTime);
  }

  async domainGetXMLDesc(uuid: string, flags: number): Promise<string> {
    checkFlags(flags, DomainXMLFlags.SECURE | DomainXMLFlags.INACTIVE, 'virDomainGetXMLDesc');
    const dom = this.getDomain(uuid);
    const def = flags & DomainXMLFlags.INACTIVE || !dom.liveDef ? dom.def : dom.liveDef;
    return formatDomainXML(def, { secure: (flags & DomainXMLFlags.SECURE) !== 0 });
  }

  async openConsole(uuid: string, devName: string | null, flags: number): Promise<ConsoleStream> {
    checkFlags(flags, ConsoleFlags.FORCE | ConsoleFlags.SAFE, 'virDomainOpenConsole');
    const dom = this.getDomain(uuid);
    return this.consoles.open(dom.uuid, dom.liveDef, devName, flags);
  }

  async qemuMonitorCommand(uuid: string, command: string, flags: number): Promise<string> {
    checkFlags(flags, MonitorCommandFlags.HMP, 'virDomainQemuMonitorCommand');
    return passMonitorCommand(await this.monitor(uuid), command, (flags & MonitorCommandFlags.HMP) !== 0);
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
    return this.bus.subscribe(listener);
  }

  // ------------------------------------------------------------ Driver: checkpoints (src/qemu/checkpoints.ts)

  private cp(fn: string): CheckpointOps {
    if (!this.checkpointOps) throw noSupport(fn);
    return this.checkpointOps;
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
    if (!this.backupOps) throw noSupport(fn);
    return this.backupOps;
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
}
