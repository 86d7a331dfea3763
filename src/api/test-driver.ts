// An in-memory Driver, like libvirt's test:///default: no QEMU, no files.
// It keeps domains, a checkpoint tree and backup jobs with plausible
// semantics and libvirt's error codes, so the daemon, the remote driver, the
// SDK and the CLI can be exercised without real VMs (`virtbackd --driver
// test`). It does not parse XML beyond <name> and <uuid>.

import { randomUUID } from 'node:crypto';
import type { BlockJobInfo, DiskError, DomainRef, DomainSummary, Driver, DriverEvent, EventListener, JobStats, UnknownBitmap } from './driver.js';
import { virErr } from '../errors.js';
import {
  BackupBeginFlags,
  BackupEndFlags,
  BlockJobInfoFlags,
  BlockJobStatus,
  BlockJobType,
  CheckpointCreateFlags,
  CheckpointDeleteFlags,
  DomainCreateFlags,
  DomainDefineFlags,
  DomainDestroyFlags,
  DomainRebootFlags,
  DomainShutdownFlags,
  DomainState,
  JobOperation,
  JobStatsFlags,
  JobType,
  ListDomainsFlags,
  PausedReason,
  RunningReason,
  ShutoffReason,
  UndefineFlags,
  checkFlags,
} from '../flags.js';

interface TestCheckpoint {
  name: string;
  parent: string | null;
  creationTime: number;
}

interface TestJob {
  id: number;
  pull: boolean;
  /** null while running */
  outcome: 'completed' | 'failed' | 'cancelled' | null;
  started: number;
  xml: string;
}

interface TestDomain {
  name: string;
  uuid: string;
  xml: string;
  active: boolean;
  paused: boolean;
  /** started with START_AUTODESTROY: destroyed when this driver is closed */
  autodestroy: boolean;
  autostart: boolean;
  pid: number;
  /** the reason of the current state (running, paused or shut off) */
  reason: number;
  checkpoints: Map<string, TestCheckpoint>;
  job: TestJob | null;
  nextJobId: number;
  completed: JobStats | null;
}

function element(xml: string, tag: string): string | null {
  const m = new RegExp(`<${tag}>\\s*([^<]*?)\\s*</${tag}>`).exec(xml);
  return m ? m[1]! : null;
}

export interface TestDriverOptions {
  uri?: string;
  /** Milliseconds a push backup "copies" before it completes by itself (default 50). */
  pushDurationMs?: number;
}

export class TestDriver implements Driver {
  readonly uri: string;
  private readonly domains = new Map<string, TestDomain>();
  private readonly listeners = new Set<EventListener>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly pushDurationMs: number;
  private nextPid = 1000;

  constructor(opts: TestDriverOptions = {}) {
    this.uri = opts.uri ?? 'test:///default';
    this.pushDurationMs = opts.pushDurationMs ?? 50;
  }

  static open(opts: TestDriverOptions = {}): Promise<TestDriver> {
    return Promise.resolve(new TestDriver(opts));
  }

  async close(): Promise<void> {
    for (const d of this.domains.values()) if (d.active && d.autodestroy) await this.domainDestroy(d.uuid, 0);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.listeners.clear();
  }

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Publishes an event as the driver would (tests use it to script events). */
  emit(event: DriverEvent): void {
    for (const l of [...this.listeners]) l(event);
  }

  private dom(uuid: string): TestDomain {
    const d = this.domains.get(uuid);
    if (!d) throw virErr('NO_DOMAIN', 'QEMU', `no domain with matching uuid '${uuid}'`);
    return d;
  }

  private ref(d: TestDomain): DomainRef {
    return { name: d.name, uuid: d.uuid };
  }

  private requireActive(d: TestDomain): void {
    if (!d.active) throw virErr('OPERATION_INVALID', 'QEMU', 'domain is not running');
  }

  private summary(d: TestDomain): DomainSummary {
    return {
      ...this.ref(d),
      id: d.active ? d.pid : -1,
      state: !d.active ? DomainState.SHUTOFF : d.paused ? DomainState.PAUSED : DomainState.RUNNING,
      reason: d.reason,
      persistent: true,
      checkpoints: d.checkpoints.size,
      hasBackupJob: d.job !== null,
    };
  }

  // ---- domains ----

  async domainDefineXML(xml: string, flags: number): Promise<DomainRef> {
    checkFlags(flags, DomainDefineFlags.VALIDATE, 'virDomainDefineXMLFlags');
    const name = element(xml, 'name');
    if (!name) throw virErr('XML_ERROR', 'QEMU', 'missing domain name');
    const existing = [...this.domains.values()].find((d) => d.name === name);
    const uuid = element(xml, 'uuid')?.toLowerCase() ?? existing?.uuid ?? randomUUID();
    if (existing && existing.uuid !== uuid) {
      throw virErr('OPERATION_FAILED', 'QEMU', `domain '${name}' already exists with uuid ${existing.uuid}`);
    }
    const d: TestDomain = existing ?? {
      name,
      uuid,
      xml,
      active: false,
      paused: false,
      autodestroy: false,
      autostart: false,
      pid: 0,
      reason: ShutoffReason.UNKNOWN,
      checkpoints: new Map(),
      job: null,
      nextJobId: 1,
      completed: null,
    };
    d.xml = xml;
    this.domains.set(uuid, d);
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'defined', detail: existing ? 'updated' : 'added' });
    return this.ref(d);
  }

  async domainUndefine(uuid: string, flags: number): Promise<void> {
    const d = this.dom(uuid);
    if (d.checkpoints.size > 0 && (flags & UndefineFlags.CHECKPOINTS_METADATA) === 0) {
      throw virErr('OPERATION_INVALID', 'QEMU', `cannot delete inactive domain with ${d.checkpoints.size} checkpoints`);
    }
    if (d.active) throw virErr('OPERATION_INVALID', 'QEMU', 'cannot undefine a running domain in the test driver');
    this.domains.delete(uuid);
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'undefined', detail: 'removed' });
  }

  async domainCreate(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, DomainCreateFlags.PAUSED | DomainCreateFlags.AUTODESTROY, 'virDomainCreateWithFlags');
    const d = this.dom(uuid);
    if (d.active) throw virErr('OPERATION_INVALID', 'QEMU', 'domain is already running');
    d.active = true;
    d.paused = (flags & DomainCreateFlags.PAUSED) !== 0;
    d.autodestroy = (flags & DomainCreateFlags.AUTODESTROY) !== 0;
    d.reason = d.paused ? PausedReason.USER : RunningReason.BOOTED;
    d.pid = this.nextPid++;
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'started', detail: 'booted' });
    if (d.paused) this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'suspended', detail: 'paused' });
  }

  async domainDestroy(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, DomainDestroyFlags.GRACEFUL, 'virDomainDestroyFlags');
    const d = this.dom(uuid);
    this.requireActive(d);
    if (d.job && d.job.outcome === null) this.finishJob(d, 'failed', 'domain was destroyed');
    d.active = false;
    d.paused = false;
    d.autodestroy = false;
    d.reason = ShutoffReason.DESTROYED;
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'stopped', detail: 'destroyed' });
  }

  /** libvirt's test driver: the guest powers off at once (shut off, shutdown). */
  async domainShutdown(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, DomainShutdownFlags.ACPI_POWER_BTN | DomainShutdownFlags.GUEST_AGENT, 'virDomainShutdownFlags');
    const d = this.dom(uuid);
    this.requireActive(d);
    if (d.job && d.job.outcome === null) this.finishJob(d, 'failed', 'domain was shut down');
    d.active = false;
    d.paused = false;
    d.autodestroy = false;
    d.reason = ShutoffReason.SHUTDOWN;
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'shutdown', detail: 'finished' });
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'stopped', detail: 'shutdown' });
  }

  /** libvirt's test driver: the guest restarts at once (<on_reboot> restart): running (booted). */
  async domainReboot(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, DomainRebootFlags.ACPI_POWER_BTN | DomainRebootFlags.GUEST_AGENT, 'virDomainReboot');
    const d = this.dom(uuid);
    this.requireActive(d);
    d.paused = false;
    d.reason = RunningReason.BOOTED;
  }

  async domainSuspend(uuid: string): Promise<void> {
    const d = this.dom(uuid);
    this.requireActive(d);
    if (d.paused) return;
    d.paused = true;
    d.reason = PausedReason.USER;
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'suspended', detail: 'paused' });
  }

  async domainResume(uuid: string): Promise<void> {
    const d = this.dom(uuid);
    this.requireActive(d);
    if (!d.paused) throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not paused');
    d.paused = false;
    d.reason = RunningReason.UNPAUSED;
    this.emit({ type: 'lifecycle', domain: this.ref(d), event: 'resumed', detail: 'unpaused' });
  }

  async domainGetAutostart(uuid: string): Promise<boolean> {
    return this.dom(uuid).autostart;
  }

  async domainSetAutostart(uuid: string, autostart: boolean): Promise<void> {
    this.dom(uuid).autostart = autostart;
  }

  async domainUpdateDevice(uuid: string, _xml: string, flags: number): Promise<void> {
    checkFlags(flags, 0, 'virDomainUpdateDeviceFlags');
    this.dom(uuid);
    throw virErr('NO_SUPPORT', 'DOMAIN', 'this function is not supported by the connection driver: virDomainUpdateDeviceFlags');
  }

  /** No disk of a test domain ever fails. */
  async domainGetDiskErrors(uuid: string, flags: number): Promise<DiskError[]> {
    checkFlags(flags, 0, 'virDomainGetDiskErrors');
    this.requireActive(this.dom(uuid));
    return [];
  }

  async domainGetBlockJobInfo(uuid: string, disk: string, flags: number): Promise<BlockJobInfo> {
    checkFlags(flags, BlockJobInfoFlags.BANDWIDTH_BYTES, 'virDomainGetBlockJobInfo');
    const d = this.dom(uuid);
    // targets and file sources of the XML's disks; the events' 'vda' when it has none
    const names = [...d.xml.matchAll(/<(?:target dev|source file)=['"]([^'"]+)['"]/g)].map((m) => m[1]!);
    if (!(names.length > 0 ? names : ['vda', '/dev/null']).includes(disk)) {
      throw virErr('INVALID_ARG', 'QEMU', `invalid argument: disk '${disk}' not found in domain`);
    }
    this.requireActive(d);
    const job = d.job;
    // a push "copies" every disk; a pull has nothing to copy
    if (job === null || job.outcome !== null || job.pull) return { found: false, type: 0, bandwidth: 0, cur: 0, end: 0 };
    return { found: true, type: BlockJobType.BACKUP, bandwidth: 0, cur: 0, end: 1 << 20 };
  }

  async domainLookupByName(name: string): Promise<DomainRef> {
    const d = [...this.domains.values()].find((x) => x.name === name);
    if (!d) throw virErr('NO_DOMAIN', 'QEMU', `no domain with matching name '${name}'`);
    return this.ref(d);
  }

  async domainLookupByUUID(uuid: string): Promise<DomainRef> {
    return this.ref(this.dom(uuid));
  }

  async listAllDomains(flags: number): Promise<DomainSummary[]> {
    const F = ListDomainsFlags;
    const group = (a: number, b: number, va: boolean): boolean => {
      const fa = (flags & a) !== 0;
      const fb = (flags & b) !== 0;
      return fa === fb || (fa ? va : !va);
    };
    return [...this.domains.values()]
      .filter(
        (d) =>
          group(F.ACTIVE, F.INACTIVE, d.active) &&
          group(F.HAS_CHECKPOINT, F.NO_CHECKPOINT, d.checkpoints.size > 0) &&
          group(F.HAS_BACKUP_JOB, F.NO_BACKUP_JOB, d.job !== null) &&
          (flags & (F.PERSISTENT | F.TRANSIENT)) !== F.TRANSIENT,
      )
      .map((d) => this.summary(d));
  }

  async domainGetInfo(uuid: string): Promise<DomainSummary> {
    return this.summary(this.dom(uuid));
  }

  async domainGetXMLDesc(uuid: string, _flags: number): Promise<string> {
    return this.dom(uuid).xml;
  }

  async qemuMonitorCommand(uuid: string, command: string, _flags: number): Promise<string> {
    const d = this.dom(uuid);
    this.requireActive(d);
    return JSON.stringify({ return: {}, id: command.length });
  }

  async domainFSFreeze(uuid: string, mountpoints: string[], _flags: number): Promise<number> {
    this.requireActive(this.dom(uuid));
    return mountpoints.length || 1;
  }

  async domainFSThaw(uuid: string, mountpoints: string[], _flags: number): Promise<number> {
    this.requireActive(this.dom(uuid));
    return mountpoints.length || 1;
  }

  // ---- checkpoints ----

  private checkpoint(d: TestDomain, name: string): TestCheckpoint {
    const c = d.checkpoints.get(name);
    if (!c) throw virErr('NO_DOMAIN_CHECKPOINT', 'DOMAIN_CHECKPOINT', `no domain checkpoint with matching name '${name}'`);
    return c;
  }

  /** The newest leaf: parent of the next checkpoint. */
  private current(d: TestDomain): string | null {
    let best: TestCheckpoint | null = null;
    for (const c of d.checkpoints.values()) {
      const hasChild = [...d.checkpoints.values()].some((x) => x.parent === c.name);
      if (!hasChild && (best === null || c.creationTime >= best.creationTime)) best = c;
    }
    return best?.name ?? null;
  }

  private addCheckpoint(d: TestDomain, xml: string, redefine: boolean): string {
    const name = element(xml, 'name') ?? String(Math.floor(Date.now() / 1000));
    if (!redefine && d.checkpoints.has(name)) {
      throw virErr('INVALID_ARG', 'DOMAIN_CHECKPOINT', `checkpoint '${name}' already exists`);
    }
    const parentMatch = /<parent>\s*<name>\s*([^<]*?)\s*<\/name>/.exec(xml);
    const parent = redefine ? (parentMatch?.[1] ?? null) : this.current(d);
    d.checkpoints.set(name, { name, parent, creationTime: Date.now() / 1000 });
    return name;
  }

  async checkpointCreateXML(uuid: string, xml: string, flags: number): Promise<string> {
    const d = this.dom(uuid);
    const redefine = (flags & CheckpointCreateFlags.REDEFINE) !== 0;
    if (!redefine && !d.active) {
      throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot create checkpoint for inactive domain');
    }
    return this.addCheckpoint(d, xml, redefine);
  }

  async checkpointGetXMLDesc(uuid: string, name: string, _flags: number): Promise<string> {
    const d = this.dom(uuid);
    const c = this.checkpoint(d, name);
    const parent = c.parent === null ? '' : `  <parent>\n    <name>${c.parent}</name>\n  </parent>\n`;
    return (
      `<domaincheckpoint>\n  <name>${c.name}</name>\n${parent}` +
      `  <creationTime>${Math.floor(c.creationTime)}</creationTime>\n</domaincheckpoint>\n`
    );
  }

  async listAllCheckpoints(uuid: string, flags: number): Promise<string[]> {
    const d = this.dom(uuid);
    const all = [...d.checkpoints.values()];
    return all.filter((c) => (flags & 1) === 0 || c.parent === null).map((c) => c.name);
  }

  async checkpointListAllChildren(uuid: string, name: string, flags: number): Promise<string[]> {
    const d = this.dom(uuid);
    this.checkpoint(d, name);
    const out: string[] = [];
    const walk = (n: string): void => {
      for (const c of d.checkpoints.values()) {
        if (c.parent === n) {
          out.push(c.name);
          if ((flags & 1) !== 0) walk(c.name);
        }
      }
    };
    walk(name);
    return out;
  }

  async checkpointLookupByName(uuid: string, name: string, _flags: number): Promise<string> {
    return this.checkpoint(this.dom(uuid), name).name;
  }

  async checkpointGetParent(uuid: string, name: string, _flags: number): Promise<string> {
    const c = this.checkpoint(this.dom(uuid), name);
    if (c.parent === null) {
      throw virErr('NO_DOMAIN_CHECKPOINT', 'DOMAIN_CHECKPOINT', `checkpoint '${name}' does not have a parent`);
    }
    return c.parent;
  }

  async checkpointDelete(uuid: string, name: string, flags: number): Promise<void> {
    const d = this.dom(uuid);
    const c = this.checkpoint(d, name);
    const descendants = await this.checkpointListAllChildren(uuid, name, 1);
    if ((flags & (CheckpointDeleteFlags.CHILDREN | CheckpointDeleteFlags.CHILDREN_ONLY)) !== 0) {
      for (const n of descendants) d.checkpoints.delete(n);
    } else {
      for (const child of d.checkpoints.values()) if (child.parent === name) child.parent = c.parent;
    }
    if ((flags & CheckpointDeleteFlags.CHILDREN_ONLY) === 0) d.checkpoints.delete(name);
  }

  async listUnknownBitmaps(uuid: string): Promise<UnknownBitmap[]> {
    this.dom(uuid);
    return [];
  }

  // ---- backup jobs ----

  async backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    // like the QEMU driver, this one cannot keep a shut-down guest's domain alive (PRESERVE_SHUTDOWN_DOMAIN)
    checkFlags(flags, BackupBeginFlags.NO_METADATA | BackupBeginFlags.QUIESCE | BackupBeginFlags.REUSE_EXTERNAL, 'virDomainBackupBegin');
    const d = this.dom(uuid);
    if (!d.active) throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot perform disk backup for inactive domain');
    if (d.job !== null) throw virErr('OPERATION_INVALID', 'QEMU', 'another backup job is already running');
    if (checkpointXml !== null && (flags & BackupBeginFlags.NO_METADATA) === 0) this.addCheckpoint(d, checkpointXml, false);
    const pull = /mode=['"]pull['"]/.test(backupXml ?? '');
    const id = d.nextJobId++;
    d.job = { id, pull, outcome: null, started: Date.now(), xml: backupXml ?? '<domainbackup/>' };
    if (!pull) {
      const t = setTimeout(() => {
        this.timers.delete(t);
        if (d.job?.id === id && d.job.outcome === null) this.finishJob(d, 'completed');
      }, this.pushDurationMs);
      this.timers.add(t);
    }
    return id;
  }

  private finishJob(d: TestDomain, outcome: 'completed' | 'failed' | 'cancelled', errmsg?: string): void {
    const job = d.job!;
    job.outcome = outcome;
    const stats = this.stats(d, job);
    d.completed = stats;
    this.emit({
      type: 'block-job',
      domain: this.ref(d),
      jobId: job.id,
      disk: 'vda',
      path: '/dev/null',
      blockJobType: BlockJobType.BACKUP,
      status:
        outcome === 'completed' ? BlockJobStatus.COMPLETED : outcome === 'failed' ? BlockJobStatus.FAILED : BlockJobStatus.CANCELED,
    });
    this.emit({ type: 'job-completed', domain: this.ref(d), jobId: job.id, stats: errmsg ? { ...stats, errmsg } : stats });
    if (outcome !== 'completed' || job.pull) d.job = null;
  }

  private stats(d: TestDomain, job: TestJob): JobStats {
    const type =
      job.outcome === null
        ? JobType.UNBOUNDED
        : job.outcome === 'completed'
          ? JobType.COMPLETED
          : job.outcome === 'failed'
            ? JobType.FAILED
            : JobType.CANCELLED;
    const s: JobStats = { type, operation: JobOperation.BACKUP, id: job.id, time_elapsed: Date.now() - job.started };
    if (!job.pull) {
      const done = job.outcome === null ? 0 : 1 << 20;
      Object.assign(s, { disk_total: 1 << 20, disk_processed: done, disk_remaining: (1 << 20) - done });
    }
    if (job.outcome !== null) s.success = job.outcome === 'completed';
    void d;
    return s;
  }

  private job(d: TestDomain, id: number): TestJob {
    if (d.job === null || (id !== 0 && d.job.id !== id)) {
      throw virErr('NO_DOMAIN_BACKUP', 'QEMU', 'no domain backup job present');
    }
    return d.job;
  }

  async backupGetXMLDesc(uuid: string, id: number, _flags: number): Promise<string> {
    const job = this.job(this.dom(uuid), id);
    return `<domainbackup mode='${job.pull ? 'pull' : 'push'}' id='${job.id}'/>\n`;
  }

  async backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    const d = this.dom(uuid);
    const job = this.job(d, id);
    if (job.pull || job.outcome !== null) {
      if (job.outcome === null) this.finishJob(d, 'completed');
      d.job = null;
      return 1;
    }
    if ((flags & BackupEndFlags.ABORT) === 0) {
      throw virErr('OPERATION_INVALID', 'QEMU', `backup job ${job.id} is still copying; end it with ABORT to cancel it`);
    }
    this.finishJob(d, 'cancelled');
    return 0;
  }

  async listJobIds(uuid: string): Promise<number[]> {
    const d = this.dom(uuid);
    return d.job === null ? [] : [d.job.id];
  }

  async getJobStats(uuid: string, flags: number): Promise<JobStats> {
    const d = this.dom(uuid);
    if ((flags & JobStatsFlags.COMPLETED) !== 0) {
      const s = d.completed ?? { type: JobType.NONE };
      if ((flags & JobStatsFlags.KEEP_COMPLETED) === 0) d.completed = null;
      return s;
    }
    return d.job === null || d.job.outcome !== null ? { type: JobType.NONE } : this.stats(d, d.job);
  }

  async abortJob(uuid: string, _flags: number): Promise<void> {
    const d = this.dom(uuid);
    if (d.job === null || d.job.outcome !== null) throw virErr('OPERATION_INVALID', 'QEMU', 'no job is active on the domain');
    if (d.job.pull) this.finishJob(d, 'completed');
    else this.finishJob(d, 'cancelled');
  }
}
