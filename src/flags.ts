import { virErr } from './errors.js';

// Every numeric flag and enum value of the API in one place.
// Values are libvirt's where libvirt has the item. The original backup design
// (job ids, backupEnd, NO_METADATA, QUIESCE) owns bits 0 and 1 of the
// backup-begin flags, so the upstream additions REUSE_EXTERNAL and
// PRESERVE_SHUTDOWN_DOMAIN move to bits 2 and 3 here (docs/architecture.md).

export const BackupBeginFlags = {
  NO_METADATA: 1 << 0,
  QUIESCE: 1 << 1,
  REUSE_EXTERNAL: 1 << 2,
  PRESERVE_SHUTDOWN_DOMAIN: 1 << 3,
} as const;

export const BackupEndFlags = {
  ABORT: 1 << 0,
} as const;

export const CheckpointCreateFlags = {
  REDEFINE: 1 << 0,
  QUIESCE: 1 << 1,
  REDEFINE_VALIDATE: 1 << 2,
} as const;

export const CheckpointXMLFlags = {
  SECURE: 1 << 0,
  NO_DOMAIN: 1 << 1,
  SIZE: 1 << 2,
} as const;

/** Bit 0 is ROOTS for listAllCheckpoints and DESCENDANTS for checkpointListAllChildren. */
export const CheckpointListFlags = {
  ROOTS: 1 << 0,
  DESCENDANTS: 1 << 0,
  TOPOLOGICAL: 1 << 1,
  LEAVES: 1 << 2,
  NO_LEAVES: 1 << 3,
} as const;

export const CheckpointDeleteFlags = {
  CHILDREN: 1 << 0,
  METADATA_ONLY: 1 << 1,
  CHILDREN_ONLY: 1 << 2,
} as const;

export const ListDomainsFlags = {
  ACTIVE: 1 << 0,
  INACTIVE: 1 << 1,
  PERSISTENT: 1 << 2,
  TRANSIENT: 1 << 3,
  RUNNING: 1 << 4,
  PAUSED: 1 << 5,
  SHUTOFF: 1 << 6,
  OTHER: 1 << 7,
  HAS_CHECKPOINT: 1 << 14,
  NO_CHECKPOINT: 1 << 15,
  // Not in libvirt: high bits so they cannot collide with future upstream ones.
  HAS_BACKUP_JOB: 1 << 28,
  NO_BACKUP_JOB: 1 << 29,
} as const;

export const UndefineFlags = {
  /** remove the domain's UEFI variable store */
  NVRAM: 1 << 2,
  /** keep it (without either flag, undefine is refused while it exists) */
  KEEP_NVRAM: 1 << 3,
  CHECKPOINTS_METADATA: 1 << 4,
} as const;

/** virDomainUpdateDeviceFlags (VIR_DOMAIN_DEVICE_MODIFY_*; 0 is CURRENT: live when running, else the definition) */
export const DeviceModifyFlags = {
  LIVE: 1 << 0,
  CONFIG: 1 << 1,
  /** eject even when the guest has locked the tray */
  FORCE: 1 << 2,
} as const;

/** virDomainDefineXMLFlags (VIR_DOMAIN_DEFINE_*) */
export const DomainDefineFlags = {
  VALIDATE: 1 << 0,
} as const;

/** virDomainCreateWithFlags (VIR_DOMAIN_START_*); virsh start --paused, --autodestroy, … */
export const DomainCreateFlags = {
  PAUSED: 1 << 0,
  AUTODESTROY: 1 << 1,
  BYPASS_CACHE: 1 << 2,
  FORCE_BOOT: 1 << 3,
  RESET_NVRAM: 1 << 5,
} as const;

/** virDomainDestroyFlags (VIR_DOMAIN_DESTROY_*) */
export const DomainDestroyFlags = {
  GRACEFUL: 1 << 0,
} as const;

/** virDomainShutdownFlags (VIR_DOMAIN_SHUTDOWN_*); virDomainReboot's VIR_DOMAIN_REBOOT_* have the same values */
export const DomainShutdownFlags = {
  ACPI_POWER_BTN: 1 << 0,
  GUEST_AGENT: 1 << 1,
  INITCTL: 1 << 2,
  SIGNAL: 1 << 3,
  PARAVIRT: 1 << 4,
} as const;

/** virDomainReboot (VIR_DOMAIN_REBOOT_*) */
export const DomainRebootFlags = DomainShutdownFlags;

/** virDomainGetBlockJobInfo (VIR_DOMAIN_BLOCK_JOB_INFO_*) */
export const BlockJobInfoFlags = {
  BANDWIDTH_BYTES: 1 << 0,
} as const;

export const DomainXMLFlags = {
  SECURE: 1 << 0,
  INACTIVE: 1 << 1,
} as const;

export const MonitorCommandFlags = {
  HMP: 1 << 0,
} as const;

export const JobStatsFlags = {
  COMPLETED: 1 << 0,
  KEEP_COMPLETED: 1 << 1,
} as const;

export const JobType = {
  NONE: 0,
  BOUNDED: 1,
  UNBOUNDED: 2,
  COMPLETED: 3,
  FAILED: 4,
  CANCELLED: 5,
} as const;

export const JobOperation = {
  UNKNOWN: 0,
  BACKUP: 9,
} as const;

export const BlockJobType = {
  UNKNOWN: 0,
  PULL: 1,
  COPY: 2,
  COMMIT: 3,
  ACTIVE_COMMIT: 4,
  BACKUP: 5,
} as const;

export const BlockJobStatus = {
  COMPLETED: 0,
  FAILED: 1,
  CANCELED: 2,
  READY: 3,
} as const;

export const DomainState = {
  NOSTATE: 0,
  RUNNING: 1,
  BLOCKED: 2,
  PAUSED: 3,
  SHUTDOWN: 4,
  SHUTOFF: 5,
  CRASHED: 6,
} as const;

/** virDomainRunningReason (the ones this driver reports) */
export const RunningReason = {
  UNKNOWN: 0,
  BOOTED: 1,
  UNPAUSED: 5,
} as const;

/** virDomainPausedReason (the ones this driver reports) */
export const PausedReason = {
  UNKNOWN: 0,
  USER: 1,
  /** a disk's write error stopped the guest (its error policy: QEMU's default on ENOSPC) */
  IOERROR: 5,
} as const;

/** virDomainShutdownReason */
export const ShutdownReason = {
  UNKNOWN: 0,
  USER: 1,
} as const;

export const ShutoffReason = {
  UNKNOWN: 0,
  SHUTDOWN: 1,
  DESTROYED: 2,
  CRASHED: 3,
  FAILED: 6,
} as const;

export const EventId = {
  LIFECYCLE: 0,
  REBOOT: 1,
  IO_ERROR: 4,
  IO_ERROR_REASON: 6,
  BLOCK_JOB: 8,
  BLOCK_JOB_2: 16,
  JOB_COMPLETED: 21,
} as const;

/** virDomainEventIOErrorAction: what QEMU did about a disk's I/O error (its werror/rerror policy) */
export const IoErrorAction = {
  /** 'ignore': the error was ignored */
  NONE: 0,
  /** 'stop': the guest was paused */
  PAUSE: 1,
  /** 'report': the guest saw the error */
  REPORT: 2,
} as const;

/** virDomainDiskErrorCode: a disk's last I/O error that stopped the guest (virDomainGetDiskErrors) */
export const DiskErrorCode = {
  NONE: 0,
  UNSPEC: 1,
  NO_SPACE: 2,
} as const;

/** libvirt's virCheckFlags: INVALID_ARG when `flags` has bits outside `allowed`. */
export function checkFlags(flags: number, allowed: number, fn: string): void {
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) {
    throw virErr('INVALID_ARG', 'NONE', `flags must be a non-negative 32-bit integer in function ${fn}`);
  }
  const extra = (flags & ~allowed) >>> 0;
  if (extra !== 0) {
    throw virErr('INVALID_ARG', 'NONE', `unsupported flags (0x${extra.toString(16)}) in function ${fn}`);
  }
}
