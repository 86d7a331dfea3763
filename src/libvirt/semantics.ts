// What virtback's values are in libvirt's wire terms and back: errors (with
// libvirt's message prefixes), job stats as typed parameters, lifecycle
// events as (event, detail) numbers, UUIDs as 16 bytes, and the few flags
// whose bits differ between the original backup design and shipped libvirt.
// Pure; the server and the client driver both translate through here, so a
// value makes the same round trip in either direction.

import type { JobStats, LifecycleEvent } from '../api/driver.js';
import { ErrorCode, VirError, virErr } from '../errors.js';
import { BackupBeginFlags, JobType } from '../flags.js';
import { TypedParamType, type TypedParam, type WireError } from './procedures.js';

/** The libvirt release whose protocol and behaviour virtbackd implements (CONNECT_GET_LIB_VERSION). */
export const LIBVIRT_VERSION = { major: 9, minor: 0, micro: 0 } as const;
export const LIB_VERSION_NUMBER = LIBVIRT_VERSION.major * 1_000_000 + LIBVIRT_VERSION.minor * 1_000 + LIBVIRT_VERSION.micro;

/** virErrorLevel */
const VIR_ERR_ERROR = 2;

/** libvirt's message prefix per code (virErrorMsg), which virsh prints after "error: ". */
const messagePrefix: Readonly<Record<number, string>> = {
  [ErrorCode.INTERNAL_ERROR]: 'internal error',
  [ErrorCode.NO_SUPPORT]: 'this function is not supported by the connection driver',
  [ErrorCode.INVALID_ARG]: 'invalid argument',
  [ErrorCode.OPERATION_FAILED]: 'operation failed',
  [ErrorCode.XML_ERROR]: 'XML error',
  [ErrorCode.OPERATION_DENIED]: 'operation forbidden',
  [ErrorCode.NO_DOMAIN]: 'Domain not found',
  [ErrorCode.OPERATION_INVALID]: 'Requested operation is not valid',
  [ErrorCode.CONFIG_UNSUPPORTED]: 'unsupported configuration',
  [ErrorCode.OPERATION_TIMEOUT]: 'Timed out during operation',
  [ErrorCode.ARGUMENT_UNSUPPORTED]: 'argument unsupported',
  78: 'operation aborted',
  [ErrorCode.OPERATION_UNSUPPORTED]: 'Operation not supported',
  [ErrorCode.AGENT_UNRESPONSIVE]: 'Guest agent is not responding',
  [ErrorCode.XML_INVALID_SCHEMA]: 'XML document failed to validate against schema',
  [ErrorCode.INVALID_DOMAIN_CHECKPOINT]: 'Invalid domain checkpoint',
  [ErrorCode.NO_DOMAIN_CHECKPOINT]: 'Domain checkpoint not found',
  [ErrorCode.NO_DOMAIN_BACKUP]: 'Domain backup job id not found',
  [ErrorCode.CHECKPOINT_INCONSISTENT]: 'checkpoint inconsistent',
};

/** The message as libvirt would word it: its prefix for the code, unless ours already starts with it. */
export function libvirtMessage(code: number, message: string): string {
  const prefix = messagePrefix[code];
  if (!prefix || message.toLowerCase().startsWith(prefix.toLowerCase())) return message;
  return `${prefix}: ${message}`;
}

/** A VirError as the remote_error a libvirt client decodes (message prefixed; str1/str2 as libvirtd fills them). */
export function toWireError(e: VirError): WireError {
  const message = libvirtMessage(e.code, e.message);
  const prefix = messagePrefix[e.code];
  return {
    code: e.code,
    domain: e.domain,
    message,
    level: VIR_ERR_ERROR,
    dom: null,
    str1: prefix ? `${prefix}: %s` : '%s',
    str2: prefix && message.startsWith(`${prefix}: `) ? message.slice(prefix.length + 2) : message,
    str3: null,
    int1: -1,
    int2: -1,
    net: null,
  };
}

/** A remote_error from a libvirt peer as our error: code, domain and message kept as sent. */
export function fromWireError(w: WireError): VirError {
  return new VirError(w.code, w.domain, w.message ?? w.str2 ?? `libvirt error ${w.code}`);
}

// ---- UUIDs ----------------------------------------------------------------

export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw virErr('INVALID_ARG', 'RPC', `invalid UUID '${uuid}'`);
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---- job stats as typed parameters ----------------------------------------

type NumberKey = 'time_elapsed' | 'disk_total' | 'disk_processed' | 'disk_remaining' | 'disk_temp_used' | 'disk_temp_total';
/** The ULLONG fields of a backup job, in the order libvirtd lists them. */
const ullongFields: readonly NumberKey[] = ['time_elapsed', 'disk_total', 'disk_processed', 'disk_remaining', 'disk_temp_used', 'disk_temp_total'];

/** JobStats as virDomainGetJobStats's typed parameters, with libvirt's names and types (clients use typed getters). */
export function jobStatsToParams(stats: JobStats): TypedParam[] {
  const params: TypedParam[] = [];
  if (stats.operation !== undefined) params.push({ field: 'operation', value: { type: TypedParamType.INT, value: stats.operation } });
  for (const key of ullongFields) {
    const v = stats[key];
    if (v !== undefined) params.push({ field: key, value: { type: TypedParamType.ULLONG, value: BigInt(Math.max(0, Math.trunc(v))) } });
  }
  if (stats.success !== undefined) params.push({ field: 'success', value: { type: TypedParamType.BOOLEAN, value: stats.success ? 1 : 0 } });
  if (stats.errmsg !== undefined) params.push({ field: 'errmsg', value: { type: TypedParamType.STRING, value: stats.errmsg } });
  return params;
}

/** Typed parameters from a libvirt peer as JobStats; unknown fields are skipped, known ones of another type refused. */
export function paramsToJobStats(type: number, params: readonly TypedParam[]): JobStats {
  const stats: JobStats = { type };
  for (const { field, value } of params) {
    if (field === 'operation' && value.type === TypedParamType.INT) stats.operation = value.value;
    else if ((ullongFields as readonly string[]).includes(field) && value.type === TypedParamType.ULLONG) {
      stats[field as NumberKey] = Number(value.value);
    } else if (field === 'success' && value.type === TypedParamType.BOOLEAN) stats.success = value.value !== 0;
    else if (field === 'errmsg' && value.type === TypedParamType.STRING) stats.errmsg = value.value;
  }
  return stats;
}

/** virDomainGetJobInfo's fixed struct from JobStats: pull jobs report their scratch use as data. */
export function jobStatsToJobInfo(stats: JobStats): {
  type: number;
  timeElapsed: bigint;
  timeRemaining: bigint;
  dataTotal: bigint;
  dataProcessed: bigint;
  dataRemaining: bigint;
  memTotal: bigint;
  memProcessed: bigint;
  memRemaining: bigint;
  fileTotal: bigint;
  fileProcessed: bigint;
  fileRemaining: bigint;
} {
  const n = (v: number | undefined): bigint => BigInt(Math.max(0, Math.trunc(v ?? 0)));
  const total = stats.disk_total ?? stats.disk_temp_total;
  const processed = stats.disk_processed ?? stats.disk_temp_used;
  return {
    // the legacy call has no COMPLETED report of its own: a finished job reads as none
    type: stats.type === JobType.COMPLETED ? JobType.NONE : stats.type,
    timeElapsed: n(stats.time_elapsed),
    timeRemaining: 0n,
    dataTotal: n(total),
    dataProcessed: n(processed),
    dataRemaining: n(stats.disk_remaining ?? (total !== undefined && processed !== undefined ? total - processed : 0)),
    memTotal: 0n,
    memProcessed: 0n,
    memRemaining: 0n,
    fileTotal: 0n,
    fileProcessed: 0n,
    fileRemaining: 0n,
  };
}

// ---- lifecycle events ------------------------------------------------------

/** virDomainEventType and, per type, its detail enum (libvirt's values, as words). */
const lifecycleTable: readonly (readonly [string, readonly string[]])[] = [
  ['defined', ['added', 'updated', 'renamed', 'from-snapshot']],
  ['undefined', ['removed', 'renamed']],
  ['started', ['booted', 'migrated', 'restored', 'from-snapshot', 'wakeup']],
  ['suspended', ['paused', 'migrated', 'ioerror', 'watchdog', 'restored', 'from-snapshot', 'api-error', 'postcopy', 'postcopy-failed']],
  ['resumed', ['unpaused', 'migrated', 'from-snapshot', 'postcopy']],
  ['stopped', ['shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from-snapshot']],
  ['shutdown', ['finished', 'guest', 'host']],
  ['pmsuspended', ['memory', 'disk']],
  ['crashed', ['panicked', 'crashloaded']],
];

/** A lifecycle event as libvirt's (event, detail) numbers; a detail we do not know reads as 0. */
export function lifecycleToWire(e: Pick<LifecycleEvent, 'event' | 'detail'>): { event: number; detail: number } | null {
  const event = lifecycleTable.findIndex(([name]) => name === e.event);
  if (event < 0) return null;
  return { event, detail: Math.max(0, lifecycleTable[event]![1].indexOf(e.detail)) };
}

export function lifecycleFromWire(event: number, detail: number): Pick<LifecycleEvent, 'event' | 'detail'> {
  const row = lifecycleTable[event];
  return { event: row?.[0] ?? `event-${event}`, detail: row?.[1][detail] ?? `detail-${detail}` };
}

// ---- flags whose bits moved --------------------------------------------------

/** Shipped libvirt's virDomainBackupBeginFlags (9.0): the original design's bits 0 and 1 are ours. */
export const WireBackupBeginFlags = { REUSE_EXTERNAL: 1 } as const;

/** Backup-begin flags from a libvirt client as ours; bits shipped libvirt does not have are refused. */
export function backupBeginFlagsFromWire(flags: number): number {
  const extra = (flags & ~WireBackupBeginFlags.REUSE_EXTERNAL) >>> 0;
  if (extra !== 0) throw virErr('INVALID_ARG', 'DOMAIN', `unsupported flags (0x${extra.toString(16)}) in function virDomainBackupBegin`);
  return flags & WireBackupBeginFlags.REUSE_EXTERNAL ? BackupBeginFlags.REUSE_EXTERNAL : 0;
}

/** Our backup-begin flags as a libvirt server takes them; the caller emulates or refuses the rest first. */
export function backupBeginFlagsToWire(flags: number): number {
  return flags & BackupBeginFlags.REUSE_EXTERNAL ? WireBackupBeginFlags.REUSE_EXTERNAL : 0;
}

// ---- list filters virtback's driver does not have ---------------------------

/**
 * virConnectListAllDomains filter groups of libvirt that our ListDomainsFlags
 * lack: a libvirt server filters them itself (nothing here has a managed save
 * image or a snapshot; autostart is asked per domain).
 */
export const WireListDomainsFlags = {
  MANAGEDSAVE: 1 << 8,
  NO_MANAGEDSAVE: 1 << 9,
  AUTOSTART: 1 << 10,
  NO_AUTOSTART: 1 << 11,
  HAS_SNAPSHOT: 1 << 12,
  NO_SNAPSHOT: 1 << 13,
} as const;

/** One filter group: true = only those that have it, false = only those that do not, null = no filter (neither or both). */
export type GroupFilter = boolean | null;

function group(flags: number, has: number, hasNot: number): GroupFilter {
  const a = (flags & has) !== 0;
  const b = (flags & hasNot) !== 0;
  return a === b ? null : a;
}

/** libvirt's list flags split into ours (for the driver) and the groups the server filters. */
export function splitListDomainsFlags(flags: number): {
  driverFlags: number;
  managedSave: GroupFilter;
  autostart: GroupFilter;
  snapshot: GroupFilter;
} {
  const W = WireListDomainsFlags;
  const extra = Object.values(W).reduce((a, b) => a | b, 0);
  return {
    driverFlags: (flags & ~extra) >>> 0,
    managedSave: group(flags, W.MANAGEDSAVE, W.NO_MANAGEDSAVE),
    autostart: group(flags, W.AUTOSTART, W.NO_AUTOSTART),
    snapshot: group(flags, W.HAS_SNAPSHOT, W.NO_SNAPSHOT),
  };
}
