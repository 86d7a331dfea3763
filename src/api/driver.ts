// The Driver interface: one method per entry point, with plain serialisable
// arguments so the same interface is implemented by the local QEMU driver and
// by the remote driver that talks to virtbackd. Argument and flag checks that
// libvirt makes in its public wrapper (src/libvirt-*.c) live in
// api/checked-driver.ts, not here; a driver checks only what it alone knows
// (domain state, disks, which flags it supports).
//
// Domains are addressed by UUID (stable across renames and redefinitions, like
// libvirt's virDomainPtr); checkpoints by (domain UUID, checkpoint name).

import type { ConsoleStream } from './console-stream.js';

export interface DomainRef {
  name: string;
  uuid: string;
}

export interface DomainSummary extends DomainRef {
  /** QEMU process id while running, -1 when shut off (libvirt's domain id). */
  id: number;
  /** flags.DomainState */
  state: number;
  /** the reason of `state`: flags.RunningReason, PausedReason or ShutoffReason (libvirt's values) */
  reason: number;
  persistent: boolean;
  checkpoints: number;
  hasBackupJob: boolean;
  // virDomainInfo's other fields: domainGetInfo fills them, listAllDomains may leave them out
  /** <memory>, KiB */
  maxMem?: number;
  /** <currentMemory> (default <memory>), KiB */
  memory?: number;
  /** <vcpu> */
  nrVirtCpu?: number;
  /** CPU time used by the running QEMU, ns (0 when shut off) */
  cpuTime?: number;
}

/** virDomainGetBlockJobInfo's virDomainBlockJobInfo; `found` false is libvirt's return 0 (no job). */
export interface BlockJobInfo {
  found: boolean;
  /** flags.BlockJobType */
  type: number;
  /** MiB/s, or bytes/s with BlockJobInfoFlags.BANDWIDTH_BYTES; 0 = unlimited */
  bandwidth: number;
  /** progress, in units of `end` (bytes) */
  cur: number;
  end: number;
}

/** virDomainGetJobStats typed parameters (libvirt key names) plus our job id. */
export interface JobStats {
  /** flags.JobType */
  type: number;
  operation?: number;
  /** Our addition: the backup job id (not a libvirt key). */
  id?: number;
  time_elapsed?: number;
  disk_total?: number;
  disk_processed?: number;
  disk_remaining?: number;
  disk_temp_used?: number;
  disk_temp_total?: number;
  success?: boolean;
  errmsg?: string;
}

/** virDomainDiskError: a disk whose I/O error stopped the guest (cleared when it resumes). */
export interface DiskError {
  /** disk target, e.g. 'vda' */
  disk: string;
  /** flags.DiskErrorCode: NO_SPACE, or UNSPEC for any other error */
  error: number;
}

/** A dirty bitmap in a disk image that no checkpoint's metadata describes. */
export interface UnknownBitmap {
  /** disk target, e.g. 'sda' */
  disk: string;
  bitmap: string;
}

export interface JobCompletedEvent {
  type: 'job-completed';
  domain: DomainRef;
  jobId: number;
  stats: JobStats;
}

export interface BlockJobEvent {
  type: 'block-job';
  domain: DomainRef;
  jobId: number;
  /** disk target, e.g. 'sda' */
  disk: string;
  /** the disk's source path (libvirt's BLOCK_JOB event carries the path) */
  path: string;
  /** flags.BlockJobType */
  blockJobType: number;
  /** flags.BlockJobStatus */
  status: number;
}

export interface LifecycleEvent {
  type: 'lifecycle';
  domain: DomainRef;
  /** 'started' | 'stopped' | 'defined' | 'undefined' */
  event: string;
  /** e.g. 'destroyed', 'crashed', 'shutdown', 'booted' */
  detail: string;
}

/**
 * What a driver reports of a push backup that completed, its targets closed:
 * the input of the work injected after it (virtbackd writes manifests).
 */
export interface FinishedPush {
  uuid: string;
  name: string;
  jobId: number;
  /** the backup instant, epoch milliseconds */
  time: number;
  disks: {
    target: string;
    path: string;
    format: string;
    checkpoint: string | null;
    incremental: string | null;
    backingFile: string | null;
    virtualSize: number;
  }[];
}

/** The guest reset (libvirt's VIR_DOMAIN_EVENT_ID_REBOOT: every QEMU RESET, the guest's own or a fake reboot's). */
export interface RebootEvent {
  type: 'reboot';
  domain: DomainRef;
}

/**
 * A disk's I/O error as QEMU reported it (BLOCK_IO_ERROR), whatever its
 * policy did about it: libvirt's VIR_DOMAIN_EVENT_ID_IO_ERROR and
 * IO_ERROR_REASON, which libvirt sends both for every error.
 */
export interface IoErrorEvent {
  type: 'io-error';
  domain: DomainRef;
  /** disk target, e.g. 'vda' ('' when QEMU named no disk of the domain) */
  disk: string;
  /** the disk's source path ('' when unknown or the disk has none) */
  srcPath: string;
  /** the guest device's alias, e.g. 'virtio-disk0' ('' when unknown) */
  devAlias: string;
  /** flags.IoErrorAction: NONE (ignored), PAUSE (the guest stopped), REPORT (the guest saw it) */
  action: number;
  /** 'enospc' when the host ran out of space, else '' (libvirt's reasons) */
  reason: string;
}

export type DriverEvent = JobCompletedEvent | BlockJobEvent | LifecycleEvent | RebootEvent | IoErrorEvent;

export type EventListener = (event: DriverEvent) => void;

export interface Driver {
  /** The URI this driver answers for, e.g. 'qemu:///embed' or 'virtback:///system'. */
  readonly uri: string;
  close(): Promise<void>;

  // domains
  domainDefineXML(xml: string, flags: number): Promise<DomainRef>;
  domainUndefine(uuid: string, flags: number): Promise<void>;
  domainCreate(uuid: string, flags: number): Promise<void>;
  /** flags.DomainDestroyFlags: GRACEFUL = SIGTERM only (SYSTEM_ERROR when QEMU does not go). */
  domainDestroy(uuid: string, flags: number): Promise<void>;
  /** QMP stop: paused (user). */
  domainSuspend(uuid: string): Promise<void>;
  /** QMP cont: running (unpaused). */
  domainResume(uuid: string): Promise<void>;
  /** flags.DomainShutdownFlags: ACPI_POWER_BTN, GUEST_AGENT (0: the agent when configured, else ACPI). Returns once asked. */
  domainShutdown(uuid: string, flags: number): Promise<void>;
  /** flags.DomainRebootFlags, as domainShutdown; the guest resets instead of powering off. */
  domainReboot(uuid: string, flags: number): Promise<void>;
  domainGetAutostart(uuid: string): Promise<boolean>;
  /** Persisted with the definition; OPERATION_INVALID for a transient domain. */
  domainSetAutostart(uuid: string, autostart: boolean): Promise<void>;
  /** virDomainUpdateDeviceFlags: a CD-ROM drive's medium changed or ejected (virsh change-media). */
  domainUpdateDevice(uuid: string, xml: string, flags: number): Promise<void>;
  /** virDomainGetDiskErrors: every disk whose I/O error paused the guest; OPERATION_INVALID when shut off. */
  domainGetDiskErrors(uuid: string, flags: number): Promise<DiskError[]>;
  /** `disk` is a target ('sda') or a source path; INVALID_ARG when the domain has no such disk. */
  domainGetBlockJobInfo(uuid: string, disk: string, flags: number): Promise<BlockJobInfo>;
  domainLookupByName(name: string): Promise<DomainRef>;
  domainLookupByUUID(uuid: string): Promise<DomainRef>;
  listAllDomains(flags: number): Promise<DomainSummary[]>;
  domainGetInfo(uuid: string): Promise<DomainSummary>;
  domainGetXMLDesc(uuid: string, flags: number): Promise<string>;
  /** Raw QMP JSON in/out, or HMP text with MonitorCommandFlags.HMP. */
  qemuMonitorCommand(uuid: string, command: string, flags: number): Promise<string>;
  /** Guest-agent fs freeze/thaw (virDomainFSFreeze/FSThaw); return the number of file systems. */
  domainFSFreeze(uuid: string, mountpoints: string[], flags: number): Promise<number>;
  domainFSThaw(uuid: string, mountpoints: string[], flags: number): Promise<number>;

  // checkpoints
  checkpointCreateXML(uuid: string, xml: string, flags: number): Promise<string>;
  checkpointGetXMLDesc(uuid: string, name: string, flags: number): Promise<string>;
  listAllCheckpoints(uuid: string, flags: number): Promise<string[]>;
  checkpointListAllChildren(uuid: string, name: string, flags: number): Promise<string[]>;
  checkpointLookupByName(uuid: string, name: string, flags: number): Promise<string>;
  checkpointGetParent(uuid: string, name: string, flags: number): Promise<string>;
  checkpointDelete(uuid: string, name: string, flags: number): Promise<void>;
  /** Our addition: bitmaps found in the domain's images that no checkpoint knows (adopt them with REDEFINE). */
  listUnknownBitmaps(uuid: string): Promise<UnknownBitmap[]>;

  // backup jobs
  backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number>;
  backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string>;
  backupEnd(uuid: string, id: number, flags: number): Promise<number>;
  listJobIds(uuid: string): Promise<number[]>;
  getJobStats(uuid: string, flags: number): Promise<JobStats>;
  abortJob(uuid: string, flags: number): Promise<void>;

  // events
  subscribe(listener: EventListener): () => void;

  /**
   * Optional capability: events the driver published while it opened
   * (e.g. a push that finished while no daemon ran), before anyone could
   * subscribe. Drains them; virtbackd replays them to later subscribers.
   */
  recoveredEvents?(): DriverEvent[];

  /**
   * Optional capability: virDomainOpenConsole. `devName` null = the first
   * console; flags ConsoleFlags. Not an entry point: a stream is no
   * serialisable result (remote/stream.ts carries it over the wire).
   */
  openConsole?(uuid: string, devName: string | null, flags: number): Promise<ConsoleStream>;
}
