// The public, typed SDK: Connect, Domain and DomainCheckpoint, shaped like
// libvirt's virConnect/virDomain/virDomainCheckpoint handles. Each method
// turns named options into numeric flags by its entry point's row
// (api/entry-points.ts) and makes one call through CheckedDriver, which runs
// the row's checks first. The same classes sit on the local driver and on
// the remote driver.

import type {
  BlockJobEvent,
  BlockJobInfo,
  DiskError,
  DomainRef,
  DomainSummary,
  Driver,
  DriverEvent,
  JobCompletedEvent,
  JobStats,
  IoErrorEvent,
  LifecycleEvent,
  RebootEvent,
  UnknownBitmap,
} from './driver.js';
import { CheckedDriver } from './checked-driver.js';
import type {
  BackupBeginOptions,
  BackupEndOptions,
  BlockJobInfoOptions,
  UpdateDeviceOptions,
  CheckpointCreateOptions,
  CheckpointDeleteOptions,
  CheckpointXMLOptions,
  CreateOptions,
  DefineOptions,
  DestroyOptions,
  RebootOptions,
  ShutdownOptions,
  DomainXMLOptions,
  JobStatsOptions,
  ListChildrenOptions,
  ListCheckpointsOptions,
  ListDomainsOptions,
  MonitorCommandOptions,
  NoOptions,
  UndefineOptions,
} from './options.js';
import { virErr } from '../errors.js';

export interface EventMap {
  'job-completed': JobCompletedEvent;
  'block-job': BlockJobEvent;
  lifecycle: LifecycleEvent;
  reboot: RebootEvent;
  'io-error': IoErrorEvent;
}
export type EventName = keyof EventMap;
export type EventCallback<K extends EventName> = (event: EventMap[K], domain: Domain) => void;

export class Connect {
  private readonly driver: CheckedDriver;
  private closed = false;
  private unsubscribeDriver: (() => void) | null = null;
  private readonly listeners = new Set<(event: DriverEvent) => void>();

  /** Use connect() or connectLocal(); this wraps an already opened driver. */
  constructor(driver: Driver, readOnly: boolean) {
    this.driver = driver instanceof CheckedDriver && driver.readOnly === readOnly ? driver : new CheckedDriver(driver, readOnly);
  }

  /** The underlying (checked) driver, for callers that want the flat interface. */
  get rawDriver(): Driver {
    return this.driver;
  }

  getURI(): string {
    return this.driver.uri;
  }

  isReadOnly(): boolean {
    return this.driver.readOnly;
  }

  isAlive(): boolean {
    return !this.closed;
  }

  /** Closes the connection (and, for connectLocal, the driver). Domains and jobs are not touched. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribeDriver?.();
    this.unsubscribeDriver = null;
    this.listeners.clear();
    await this.driver.close();
  }

  /** A handle for a domain reference, e.g. one carried by an event. */
  domain(ref: DomainRef): Domain {
    return new Domain(this, this.driver, ref);
  }

  async defineXML(xml: string, flags?: DefineOptions): Promise<Domain> {
    return this.domain(await this.driver.domainDefineXML(xml, this.driver.flagsOf('domainDefineXML', flags)));
  }

  async lookupByName(name: string): Promise<Domain> {
    return this.domain(await this.driver.domainLookupByName(name));
  }

  async lookupByUUID(uuid: string): Promise<Domain> {
    return this.domain(await this.driver.domainLookupByUUID(uuid));
  }

  async listAllDomains(flags?: ListDomainsOptions): Promise<Domain[]> {
    return (await this.listAllDomainSummaries(flags)).map((s) => this.domain({ name: s.name, uuid: s.uuid }));
  }

  /** listAllDomains with each domain's state, id and counts in one call (what `virtback list` prints). */
  async listAllDomainSummaries(flags?: ListDomainsOptions): Promise<DomainSummary[]> {
    return this.driver.listAllDomains(this.driver.flagsOf('listAllDomains', flags));
  }

  /** Calls `cb` for every event of this kind until the returned function is called. */
  on<K extends EventName>(type: K, cb: EventCallback<K>): () => void {
    const listener = (event: DriverEvent): void => {
      if (event.type === type) cb(event as EventMap[K], this.domain(event.domain));
    };
    return this.addListener(listener);
  }

  /**
   * Events as an async iterator, optionally only some kinds:
   * `for await (const ev of conn.events(['job-completed'])) …`. Breaking out
   * of the loop unsubscribes. Events are queued while the consumer is busy.
   */
  events(types?: EventName[]): AsyncIterableIterator<DriverEvent> {
    const queue: DriverEvent[] = [];
    let wake: ((r: IteratorResult<DriverEvent>) => void) | null = null;
    let done = false;
    const off = this.addListener((event) => {
      if (types !== undefined && !types.includes(event.type)) return;
      if (wake) {
        const w = wake;
        wake = null;
        w({ value: event, done: false });
      } else queue.push(event);
    });
    const finish = (): IteratorResult<DriverEvent> => {
      done = true;
      off();
      queue.length = 0;
      if (wake) {
        const w = wake;
        wake = null;
        w({ value: undefined, done: true });
      }
      return { value: undefined, done: true };
    };
    const iterator: AsyncIterableIterator<DriverEvent> = {
      next: () => {
        const ev = queue.shift();
        if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
        if (done || this.closed) return Promise.resolve(finish());
        return new Promise((resolve) => {
          wake = resolve;
        });
      },
      return: () => Promise.resolve(finish()),
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  private addListener(listener: (event: DriverEvent) => void): () => void {
    if (this.closed) throw virErr('NO_CONNECT', 'NONE', 'connection is closed');
    this.listeners.add(listener);
    if (this.unsubscribeDriver === null) {
      this.unsubscribeDriver = this.driver.subscribe((event) => {
        for (const l of [...this.listeners]) {
          try {
            l(event);
          } catch {
            // A throwing listener must not starve the others.
          }
        }
      });
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.unsubscribeDriver !== null) {
        this.unsubscribeDriver();
        this.unsubscribeDriver = null;
      }
    };
  }
}

export class Domain {
  readonly name: string;
  readonly uuid: string;

  constructor(
    private readonly conn: Connect,
    private readonly driver: CheckedDriver,
    ref: DomainRef,
  ) {
    this.name = ref.name;
    this.uuid = ref.uuid;
  }

  getName(): string {
    return this.name;
  }

  getUUIDString(): string {
    return this.uuid;
  }

  getConnect(): Connect {
    return this.conn;
  }

  /** `{ paused: true }` starts it paused; `{ autodestroy: true }` ties it to this connection. */
  async create(flags?: CreateOptions): Promise<void> {
    return this.driver.domainCreate(this.uuid, this.driver.flagsOf('domainCreate', flags));
  }

  /** `{ graceful: true }`: SIGTERM only, never SIGKILL. */
  async destroy(flags?: DestroyOptions): Promise<void> {
    return this.driver.domainDestroy(this.uuid, this.driver.flagsOf('domainDestroy', flags));
  }

  /** `{ acpiPowerBtn: true }` or `{ guestAgent: true }`; none: the agent when configured, else ACPI. */
  async shutdown(flags?: ShutdownOptions): Promise<void> {
    return this.driver.domainShutdown(this.uuid, this.driver.flagsOf('domainShutdown', flags));
  }

  /** As shutdown; the guest resets instead of powering off. */
  async reboot(flags?: RebootOptions): Promise<void> {
    return this.driver.domainReboot(this.uuid, this.driver.flagsOf('domainReboot', flags));
  }

  async suspend(): Promise<void> {
    return this.driver.domainSuspend(this.uuid);
  }

  async resume(): Promise<void> {
    return this.driver.domainResume(this.uuid);
  }

  async getAutostart(): Promise<boolean> {
    return this.driver.domainGetAutostart(this.uuid);
  }

  async setAutostart(autostart: boolean): Promise<void> {
    return this.driver.domainSetAutostart(this.uuid, autostart);
  }

  /** virDomainUpdateDeviceFlags: a cdrom's `<disk>` with a new `<source>` (or none: eject). */
  async updateDevice(xml: string, flags?: UpdateDeviceOptions): Promise<void> {
    return this.driver.domainUpdateDevice(this.uuid, xml, this.driver.flagsOf('domainUpdateDevice', flags));
  }

  /** The block job of a disk (target or source path); `found` false when it has none. */
  async getBlockJobInfo(disk: string, flags?: BlockJobInfoOptions): Promise<BlockJobInfo> {
    return this.driver.domainGetBlockJobInfo(this.uuid, disk, this.driver.flagsOf('domainGetBlockJobInfo', flags));
  }

  /** virDomainGetDiskErrors: the disks whose I/O error paused the guest (none once it resumed). */
  async getDiskErrors(flags?: NoOptions): Promise<DiskError[]> {
    return this.driver.domainGetDiskErrors(this.uuid, this.driver.flagsOf('domainGetDiskErrors', flags));
  }

  async undefine(flags?: UndefineOptions): Promise<void> {
    return this.driver.domainUndefine(this.uuid, this.driver.flagsOf('domainUndefine', flags));
  }

  async getXMLDesc(flags?: DomainXMLOptions): Promise<string> {
    return this.driver.domainGetXMLDesc(this.uuid, this.driver.flagsOf('domainGetXMLDesc', flags));
  }

  async getInfo(): Promise<DomainSummary> {
    return this.driver.domainGetInfo(this.uuid);
  }

  async qemuMonitorCommand(command: string, flags?: MonitorCommandOptions): Promise<string> {
    return this.driver.qemuMonitorCommand(
      this.uuid,
      command,
      this.driver.flagsOf('qemuMonitorCommand', flags),
    );
  }

  async fsFreeze(mountpoints: string[] = [], flags?: NoOptions): Promise<number> {
    return this.driver.domainFSFreeze(this.uuid, mountpoints, this.driver.flagsOf('domainFSFreeze', flags));
  }

  async fsThaw(mountpoints: string[] = [], flags?: NoOptions): Promise<number> {
    return this.driver.domainFSThaw(this.uuid, mountpoints, this.driver.flagsOf('domainFSThaw', flags));
  }

  async checkpointCreateXML(xml: string, flags?: CheckpointCreateOptions): Promise<DomainCheckpoint> {
    const name = await this.driver.checkpointCreateXML(
      this.uuid,
      xml,
      this.driver.flagsOf('checkpointCreateXML', flags),
    );
    return new DomainCheckpoint(this, this.driver, name);
  }

  async listAllCheckpoints(flags?: ListCheckpointsOptions): Promise<DomainCheckpoint[]> {
    const names = await this.driver.listAllCheckpoints(
      this.uuid,
      this.driver.flagsOf('listAllCheckpoints', flags),
    );
    return names.map((n) => new DomainCheckpoint(this, this.driver, n));
  }

  /** virtback: bitmaps in this domain's images that no checkpoint knows; adopt one with checkpointCreateXML(..., { redefine: true }). */
  async listUnknownBitmaps(): Promise<UnknownBitmap[]> {
    return this.driver.listUnknownBitmaps(this.uuid);
  }

  async checkpointLookupByName(name: string, flags?: NoOptions): Promise<DomainCheckpoint> {
    const found = await this.driver.checkpointLookupByName(
      this.uuid,
      name,
      this.driver.flagsOf('checkpointLookupByName', flags),
    );
    return new DomainCheckpoint(this, this.driver, found);
  }

  /** Starts a backup job; resolves to its positive job id. backupXml omitted: push, full, every disk. */
  async backupBegin(backupXml?: string | null, checkpointXml?: string | null, flags?: BackupBeginOptions): Promise<number> {
    return this.driver.backupBegin(
      this.uuid,
      backupXml ?? null,
      checkpointXml ?? null,
      this.driver.flagsOf('backupBegin', flags),
    );
  }

  /** The job's <domainbackup> with every default filled in; id 0 = the current job. */
  async backupGetXMLDesc(id = 0, flags?: NoOptions): Promise<string> {
    return this.driver.backupGetXMLDesc(this.uuid, id, this.driver.flagsOf('backupGetXMLDesc', flags));
  }

  /** Ends a job: 1 when the backup is complete and consistent, 0 when aborted. id 0 = the current job. */
  async backupEnd(id = 0, flags?: BackupEndOptions): Promise<number> {
    return this.driver.backupEnd(this.uuid, id, this.driver.flagsOf('backupEnd', flags));
  }

  async listJobIds(): Promise<number[]> {
    return this.driver.listJobIds(this.uuid);
  }

  async getJobStats(flags?: JobStatsOptions): Promise<JobStats> {
    return this.driver.getJobStats(this.uuid, this.driver.flagsOf('getJobStats', flags));
  }

  async abortJob(flags?: NoOptions): Promise<void> {
    return this.driver.abortJob(this.uuid, this.driver.flagsOf('abortJob', flags));
  }
}

export class DomainCheckpoint {
  constructor(
    private readonly dom: Domain,
    private readonly driver: CheckedDriver,
    readonly name: string,
  ) {}

  getName(): string {
    return this.name;
  }

  getDomain(): Domain {
    return this.dom;
  }

  getConnect(): Connect {
    return this.dom.getConnect();
  }

  async getXMLDesc(flags?: CheckpointXMLOptions): Promise<string> {
    return this.driver.checkpointGetXMLDesc(
      this.dom.uuid,
      this.name,
      this.driver.flagsOf('checkpointGetXMLDesc', flags),
    );
  }

  /** The parent checkpoint; a root gives NO_DOMAIN_CHECKPOINT "checkpoint '…' does not have a parent". */
  async getParent(flags?: NoOptions): Promise<DomainCheckpoint> {
    const parent = await this.driver.checkpointGetParent(
      this.dom.uuid,
      this.name,
      this.driver.flagsOf('checkpointGetParent', flags),
    );
    return new DomainCheckpoint(this.dom, this.driver, parent);
  }

  async listAllChildren(flags?: ListChildrenOptions): Promise<DomainCheckpoint[]> {
    const names = await this.driver.checkpointListAllChildren(
      this.dom.uuid,
      this.name,
      this.driver.flagsOf('checkpointListAllChildren', flags),
    );
    return names.map((n) => new DomainCheckpoint(this.dom, this.driver, n));
  }

  async delete(flags?: CheckpointDeleteOptions): Promise<void> {
    return this.driver.checkpointDelete(
      this.dom.uuid,
      this.name,
      this.driver.flagsOf('checkpointDelete', flags),
    );
  }
}
