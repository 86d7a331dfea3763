// The libvirt driver: the Driver interface over libvirt's remote protocol, to
// a real libvirtd (VMs that libvirt runs) or to virtbackd's libvirt socket.
// Each method is the procedures libvirt's own client library would send, with
// libvirt 9.0's flag values (ours are libvirt's but for the backup-begin bits,
// translated in semantics.ts); errors from the daemon come through unchanged.
// The original design's extras are emulated per connection in
// backup-jobs.ts; what cannot be emulated is refused with NO_SUPPORT.

import type { BlockJobInfo, DiskError, DomainRef, DomainSummary, Driver, DriverEvent, EventListener, JobStats, UnknownBitmap } from '../api/driver.js';
import { virErr } from '../errors.js';
import { EventId, JobType, ListDomainsFlags } from '../flags.js';
import { errField, silentLogger, type Logger } from '../log.js';
import { BackupJobs, type BackupJobHooks } from './backup-jobs.js';
import { LibvirtClient, type LibvirtClientOptions } from './client.js';
import { Program } from './packet.js';
import { REMOTE, qemuProcedures, remoteEvents, type WireCheckpoint, type WireDomain } from './procedures.js';
import { bytesToUuid, lifecycleFromWire, uuidToBytes } from './semantics.js';
import type { LibvirtStream } from './transport.js';
import { decode } from './xdr.js';

export interface LibvirtDriverOptions extends BackupJobHooks, Omit<LibvirtClientOptions, 'endpoint' | 'log'> {
  /** the URI this driver reports (what the user gave, e.g. qemu+unix:///system?socket=…) */
  uri: string;
  /** the name sent in CONNECT_OPEN: libvirt's URI with transport and socket= stripped, e.g. qemu:///system */
  openName: string;
  readOnly?: boolean;
  log?: Logger;
}

/** Our own listing filters libvirt does not have (bits 28/29): applied here, not sent. */
const CLIENT_SIDE_FILTERS = ListDomainsFlags.HAS_BACKUP_JOB | ListDomainsFlags.NO_BACKUP_JOB;

/** The events a listener gets: registered for all domains when the first listener subscribes. */
// (IO_ERROR_REASON carries everything IO_ERROR does, and its reason)
const LISTENED_EVENTS = [EventId.LIFECYCLE, EventId.REBOOT, EventId.IO_ERROR_REASON, EventId.BLOCK_JOB, EventId.JOB_COMPLETED] as const;

function noSupport(what: string): Error {
  return virErr('NO_SUPPORT', 'DOMAIN', `this function is not supported by the connection driver: ${what}`);
}

export class LibvirtDriver implements Driver {
  readonly uri: string;
  readonly client: LibvirtClient;
  private readonly log: Logger;
  private readonly jobs: BackupJobs;
  /** uuid -> the reference libvirt last gave us (clients send name, uuid and id back; libvirtd resolves by uuid) */
  private readonly refs = new Map<string, WireDomain>();
  private readonly listeners = new Set<EventListener>();
  /** eventID -> libvirt's callbackID of our registration */
  private readonly registered = new Map<number, number>();
  private jobsWatched = false;
  /** registrations change one at a time, so libvirt's state follows ours */
  private registration: Promise<void> = Promise.resolve();

  private constructor(client: LibvirtClient, opts: LibvirtDriverOptions) {
    this.uri = opts.uri;
    this.client = client;
    this.log = opts.log ?? silentLogger;
    this.jobs = new BackupJobs(this, { ...opts, log: this.log });
    client.onMessage((proc, payload) => this.onMessage(proc, payload));
  }

  /** Opens a libvirt connection over `stream` (see transport.ts) and performs libvirt's handshake. */
  static async open(transport: LibvirtStream, opts: LibvirtDriverOptions): Promise<LibvirtDriver> {
    const client = new LibvirtClient(transport.stream, { ...opts, endpoint: transport.endpoint, log: opts.log ?? silentLogger });
    try {
      await client.open(opts.openName, opts.readOnly === true);
    } catch (e) {
      transport.stream.destroy();
      throw e;
    }
    return new LibvirtDriver(client, opts);
  }

  async close(): Promise<void> {
    this.listeners.clear();
    // manifests of pushes that completed are written before the connection goes
    await this.jobs.drain();
    await this.client.close();
  }

  // ---- references -------------------------------------------------------

  private remember(dom: WireDomain): DomainRef {
    const uuid = bytesToUuid(dom.uuid);
    this.refs.set(uuid, dom);
    return { name: dom.name, uuid };
  }

  /** The wire reference of a domain: the one libvirt gave us, else looked up by uuid. */
  async wireDomain(uuid: string): Promise<WireDomain> {
    const known = this.refs.get(uuid);
    if (known) return known;
    const { dom } = await this.client.call('domainLookupByUUID', { uuid: uuidToBytes(uuid) });
    this.remember(dom);
    return dom;
  }

  private async checkpointRef(uuid: string, name: string): Promise<WireCheckpoint> {
    return { name, dom: await this.wireDomain(uuid) };
  }

  // ---- domains ------------------------------------------------------------

  async domainDefineXML(xml: string, flags: number): Promise<DomainRef> {
    const { dom } = flags === 0
      ? await this.client.call('domainDefineXML', { xml })
      : await this.client.call('domainDefineXMLFlags', { xml, flags });
    return this.remember(dom);
  }

  async domainUndefine(uuid: string, flags: number): Promise<void> {
    await this.client.call('domainUndefineFlags', { dom: await this.wireDomain(uuid), flags });
    this.refs.delete(uuid);
  }

  async domainCreate(uuid: string, flags: number): Promise<void> {
    const { dom } = await this.client.call('domainCreateWithFlags', { dom: await this.wireDomain(uuid), flags });
    this.remember(dom);
  }

  async domainDestroy(uuid: string, flags: number): Promise<void> {
    await this.client.call('domainDestroyFlags', { dom: await this.wireDomain(uuid), flags });
  }

  async domainShutdown(uuid: string, flags: number): Promise<void> {
    await this.client.call('domainShutdownFlags', { dom: await this.wireDomain(uuid), flags });
  }

  async domainReboot(uuid: string, flags: number): Promise<void> {
    await this.client.call('domainReboot', { dom: await this.wireDomain(uuid), flags });
  }

  async domainSuspend(uuid: string): Promise<void> {
    await this.client.call('domainSuspend', { dom: await this.wireDomain(uuid) });
  }

  async domainResume(uuid: string): Promise<void> {
    await this.client.call('domainResume', { dom: await this.wireDomain(uuid) });
  }

  async domainGetAutostart(uuid: string): Promise<boolean> {
    return (await this.client.call('domainGetAutostart', { dom: await this.wireDomain(uuid) })).autostart !== 0;
  }

  async domainSetAutostart(uuid: string, autostart: boolean): Promise<void> {
    await this.client.call('domainSetAutostart', { dom: await this.wireDomain(uuid), autostart: autostart ? 1 : 0 });
  }

  async domainUpdateDevice(uuid: string, xml: string, flags: number): Promise<void> {
    await this.client.call('domainUpdateDeviceFlags', { dom: await this.wireDomain(uuid), xml, flags });
  }

  /** As libvirt's clients call it: how many to ask for (maxerrors 0), then that many. */
  async domainGetDiskErrors(uuid: string, flags: number): Promise<DiskError[]> {
    const dom = await this.wireDomain(uuid);
    const { nerrors } = await this.client.call('domainGetDiskErrors', { dom, maxerrors: 0, flags });
    if (nerrors <= 0) return [];
    const r = await this.client.call('domainGetDiskErrors', { dom, maxerrors: Math.min(nerrors, REMOTE.DOMAIN_DISK_ERRORS_MAX), flags });
    return r.errors.slice(0, Math.max(r.nerrors, 0)).map((e) => ({ disk: e.disk, error: e.error }));
  }

  async domainGetBlockJobInfo(uuid: string, disk: string, flags: number): Promise<BlockJobInfo> {
    const r = await this.client.call('domainGetBlockJobInfo', { dom: await this.wireDomain(uuid), path: disk, flags });
    return { found: r.found !== 0, type: r.type, bandwidth: Number(r.bandwidth), cur: Number(r.cur), end: Number(r.end) };
  }

  async domainLookupByName(name: string): Promise<DomainRef> {
    return this.remember((await this.client.call('domainLookupByName', { name })).dom);
  }

  async domainLookupByUUID(uuid: string): Promise<DomainRef> {
    return this.remember((await this.client.call('domainLookupByUUID', { uuid: uuidToBytes(uuid) })).dom);
  }

  async listAllDomains(flags: number): Promise<DomainSummary[]> {
    const { domains } = await this.client.call('connectListAllDomains', { need_results: 1, flags: (flags & ~CLIENT_SIDE_FILTERS) >>> 0 });
    const all = await Promise.all(domains.map((d) => this.summary(d)));
    const F = ListDomainsFlags;
    const want = flags & CLIENT_SIDE_FILTERS;
    if (want === F.HAS_BACKUP_JOB) return all.filter((s) => s.hasBackupJob);
    if (want === F.NO_BACKUP_JOB) return all.filter((s) => !s.hasBackupJob);
    return all;
  }

  /** The summary and virDomainGetInfo's fields (16: KiB and ns, as ours). */
  async domainGetInfo(uuid: string): Promise<DomainSummary> {
    const { dom } = await this.client.call('domainLookupByUUID', { uuid: uuidToBytes(uuid) });
    const [summary, info] = await Promise.all([this.summary(dom), this.client.call('domainGetInfo', { dom })]);
    return { ...summary, maxMem: Number(info.maxMem), memory: Number(info.memory), nrVirtCpu: info.nrVirtCpu, cpuTime: Number(info.cpuTime) };
  }

  /** What `virtback list` shows of a domain: state (212), persistence (151), checkpoint count (413), a backup job (298). */
  private async summary(dom: WireDomain): Promise<DomainSummary> {
    const ref = this.remember(dom);
    const [state, persistent, checkpoints, job] = await Promise.all([
      this.client.call('domainGetState', { dom, flags: 0 }),
      this.client.call('domainIsPersistent', { dom }),
      this.client.call('domainListAllCheckpoints', { dom, need_results: 0, flags: 0 }),
      // libvirt refuses job stats of an inactive domain ("domain is not running"): it has no job
      dom.id > 0 ? this.client.call('domainGetJobStats', { dom, flags: 0 }) : { type: JobType.NONE },
    ]);
    return {
      ...ref,
      id: dom.id,
      state: state.state,
      reason: state.reason,
      persistent: persistent.persistent !== 0,
      checkpoints: checkpoints.ret,
      hasBackupJob: job.type === JobType.UNBOUNDED || job.type === JobType.BOUNDED,
    };
  }

  async domainGetXMLDesc(uuid: string, flags: number): Promise<string> {
    return (await this.client.call('domainGetXMLDesc', { dom: await this.wireDomain(uuid), flags })).xml;
  }

  async qemuMonitorCommand(uuid: string, command: string, flags: number): Promise<string> {
    const args = { dom: await this.wireDomain(uuid), cmd: command, flags };
    return (await this.client.callRow(Program.QEMU, qemuProcedures.domainMonitorCommand, args)).result;
  }

  async domainFSFreeze(uuid: string, mountpoints: string[], flags: number): Promise<number> {
    return (await this.client.call('domainFSFreeze', { dom: await this.wireDomain(uuid), mountpoints, flags })).filesystems;
  }

  async domainFSThaw(uuid: string, mountpoints: string[], flags: number): Promise<number> {
    return (await this.client.call('domainFSThaw', { dom: await this.wireDomain(uuid), mountpoints, flags })).filesystems;
  }

  // ---- checkpoints (libvirt's flag values are ours) ------------------------

  async checkpointCreateXML(uuid: string, xml: string, flags: number): Promise<string> {
    const dom = await this.wireDomain(uuid);
    return (await this.client.call('domainCheckpointCreateXML', { dom, xml_desc: xml, flags })).checkpoint.name;
  }

  async checkpointGetXMLDesc(uuid: string, name: string, flags: number): Promise<string> {
    return (await this.client.call('domainCheckpointGetXMLDesc', { checkpoint: await this.checkpointRef(uuid, name), flags })).xml;
  }

  async listAllCheckpoints(uuid: string, flags: number): Promise<string[]> {
    const dom = await this.wireDomain(uuid);
    return (await this.client.call('domainListAllCheckpoints', { dom, need_results: 1, flags })).checkpoints.map((c) => c.name);
  }

  async checkpointListAllChildren(uuid: string, name: string, flags: number): Promise<string[]> {
    const checkpoint = await this.checkpointRef(uuid, name);
    return (await this.client.call('domainCheckpointListAllChildren', { checkpoint, need_results: 1, flags })).children.map((c) => c.name);
  }

  async checkpointLookupByName(uuid: string, name: string, flags: number): Promise<string> {
    const dom = await this.wireDomain(uuid);
    return (await this.client.call('domainCheckpointLookupByName', { dom, name, flags })).checkpoint.name;
  }

  async checkpointGetParent(uuid: string, name: string, flags: number): Promise<string> {
    return (await this.client.call('domainCheckpointGetParent', { checkpoint: await this.checkpointRef(uuid, name), flags })).parent.name;
  }

  async checkpointDelete(uuid: string, name: string, flags: number): Promise<void> {
    await this.client.call('domainCheckpointDelete', { checkpoint: await this.checkpointRef(uuid, name), flags });
  }

  async listUnknownBitmaps(_uuid: string): Promise<UnknownBitmap[]> {
    throw noSupport('listing bitmaps no checkpoint knows (libvirt has no such API)');
  }

  // ---- backup jobs (backup-jobs.ts) -----------------------------------------

  backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    return this.jobs.backupBegin(uuid, backupXml, checkpointXml, flags);
  }

  backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string> {
    return this.jobs.backupGetXMLDesc(uuid, id, flags);
  }

  backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    return this.jobs.backupEnd(uuid, id, flags);
  }

  listJobIds(uuid: string): Promise<number[]> {
    return this.jobs.listJobIds(uuid);
  }

  getJobStats(uuid: string, flags: number): Promise<JobStats> {
    return this.jobs.getJobStats(uuid, flags);
  }

  abortJob(uuid: string, flags: number): Promise<void> {
    return this.jobs.abortJob(uuid, flags);
  }

  // ---- events ----------------------------------------------------------------

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    void this.syncRegistrations();
    return () => {
      this.listeners.delete(listener);
      void this.syncRegistrations();
    };
  }

  /** Resolves once libvirt's registrations match what this driver needs. */
  whenRegistered(): Promise<void> {
    return this.registration;
  }

  /** Job-completed events from now on, for the connection's own bookkeeping (job ids, manifests). */
  watchJobs(): Promise<void> {
    this.jobsWatched = true;
    return this.syncRegistrations();
  }

  private syncRegistrations(): Promise<void> {
    this.registration = this.registration.then(async () => {
      const wanted = new Set<number>(this.listeners.size > 0 ? LISTENED_EVENTS : []);
      if (this.jobsWatched) wanted.add(EventId.JOB_COMPLETED);
      for (const eventID of wanted) {
        if (this.registered.has(eventID) || !this.client.isOpen) continue;
        const { callbackID } = await this.client.call('connectDomainEventCallbackRegisterAny', { eventID, dom: null });
        this.registered.set(eventID, callbackID);
      }
      for (const [eventID, callbackID] of [...this.registered]) {
        if (wanted.has(eventID) || !this.client.isOpen) continue;
        this.registered.delete(eventID);
        await this.client.call('connectDomainEventCallbackDeregisterAny', { callbackID });
      }
    }).catch((e) => this.log.warn(errField(e), 'libvirt event registration failed'));
    return this.registration;
  }

  private ours(callbackID: number, eventID: number): boolean {
    return this.registered.get(eventID) === callbackID;
  }

  private onMessage(proc: number, payload: Buffer): void {
    let event: DriverEvent | null = null;
    if (proc === remoteEvents.jobCompleted.proc) {
      const m = decode(remoteEvents.jobCompleted.body, payload, 'job-completed event');
      if (!this.ours(m.callbackID, EventId.JOB_COMPLETED)) return;
      const domain = this.remember(m.dom);
      // the connection's bookkeeping sees every completion, listeners or not
      const { jobId, stats } = this.jobs.onJobCompleted(domain.uuid, domain.name, m.params);
      event = { type: 'job-completed', domain, jobId, stats };
    } else if (proc === remoteEvents.lifecycle.proc) {
      const m = decode(remoteEvents.lifecycle.body, payload, 'lifecycle event');
      if (!this.ours(m.callbackID, EventId.LIFECYCLE)) return;
      event = { type: 'lifecycle', domain: this.remember(m.dom), ...lifecycleFromWire(m.event, m.detail) };
    } else if (proc === remoteEvents.reboot.proc) {
      const m = decode(remoteEvents.reboot.body, payload, 'reboot event');
      if (!this.ours(m.callbackID, EventId.REBOOT)) return;
      event = { type: 'reboot', domain: this.remember(m.dom) };
    } else if (proc === remoteEvents.ioErrorReason.proc) {
      const m = decode(remoteEvents.ioErrorReason.body, payload, 'io-error-reason event');
      if (!this.ours(m.callbackID, EventId.IO_ERROR_REASON)) return;
      // libvirt's event names the disk by path and alias only: its target stays unknown here
      event = { type: 'io-error', domain: this.remember(m.dom), disk: '', srcPath: m.srcPath, devAlias: m.devAlias, action: m.action, reason: m.reason };
    } else if (proc === remoteEvents.blockJob.proc) {
      const m = decode(remoteEvents.blockJob.body, payload, 'block-job event');
      if (!this.ours(m.callbackID, EventId.BLOCK_JOB)) return;
      const domain = this.remember(m.dom);
      event = { type: 'block-job', domain, ...this.jobs.blockJobOf(domain.uuid, m.path), path: m.path, blockJobType: m.type, status: m.status };
    }
    if (event === null || this.listeners.size === 0) return;
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch (e) {
        this.log.warn(errField(e), 'event listener failed');
      }
    }
  }
}
