// The entry points of the API, one row each: libvirt's function, the
// arguments, the result, the flags it accepts and their rules, and whether a
// read-only connection may call it. Start reading here.
//
// Everything that used to repeat these facts is derived from this table:
//   api/checked-driver.ts  libvirt's public-wrapper checks, per row
//   api/options.ts         the SDK's named options ({ noMetadata: true })
//   remote/protocol.ts     the wire procedures: argument/result schemas, read-only rule
//   remote/client.ts       the remote driver's methods
//   cli/flag-options.ts    the CLI's flag options (--no-metadata, --abort, …)
// A driver keeps only its own "flag not supported here" checks (libvirt's
// virCheckFlags in each driver): the table says what the API accepts, not
// what every driver can do. Adding an entry point: a row here, the method in
// api/driver.ts and in the drivers, tests.

import type { BlockJobInfo, DiskError, DomainRef, DomainSummary, Driver, JobStats, UnknownBitmap } from './driver.js';
import {
  BackupBeginFlags,
  BackupEndFlags,
  BlockJobInfoFlags,
  CheckpointCreateFlags,
  CheckpointDeleteFlags,
  CheckpointListFlags,
  CheckpointXMLFlags,
  DomainCreateFlags,
  DomainDefineFlags,
  DomainDestroyFlags,
  DomainRebootFlags,
  DomainShutdownFlags,
  DomainXMLFlags,
  JobStatsFlags,
  ListDomainsFlags,
  MonitorCommandFlags,
  UndefineFlags,
  DeviceModifyFlags,
} from '../flags.js';

/** Named flag bits, e.g. `{ NO_METADATA: 1, QUIESCE: 2 }`. */
export type FlagTable = Readonly<Record<string, number>>;

/** What an argument is; each kind has one check in the wrapper and one schema on the wire. */
export interface ArgTypes {
  /** a domain's UUID as the Driver passes it (non-empty) */
  uuid: string;
  /** a UUID string from the caller, any case, dashes optional: canonicalised */
  uuidString: string;
  /** a domain or checkpoint name (non-empty) */
  name: string;
  /** an XML document (non-empty) */
  xml: string;
  /** an XML document or NULL; '' means NULL, as virsh treats it */
  xmlOrNull: string | null;
  /** a monitor command (non-empty) */
  command: string;
  /** guest mount points (each non-empty) */
  mountpoints: string[];
  /** a backup job id: 0 = the current job */
  jobId: number;
  /** a yes/no setting (libvirt's int autostart) */
  boolean: boolean;
  /** a disk by target ('sda') or source path (non-empty) */
  disk: string;
  /** unsigned int flags */
  flags: number;
}
export type ArgKind = keyof ArgTypes;

export interface Arg<K extends ArgKind = ArgKind> {
  readonly kind: K;
  /** libvirt's parameter name, as the wrapper's messages say it */
  readonly name: string;
}

/** What an entry point returns. */
export interface ResultTypes {
  void: void;
  domainRef: DomainRef;
  domainSummary: DomainSummary;
  domainSummaries: DomainSummary[];
  xml: string;
  name: string;
  names: string[];
  /** a non-negative count (file systems frozen) or a positive job id */
  count: number;
  /** a small status integer (backupEnd: 1 complete, 0 aborted) */
  status: number;
  jobIds: number[];
  jobStats: JobStats;
  unknownBitmaps: UnknownBitmap[];
  boolean: boolean;
  blockJobInfo: BlockJobInfo;
  diskErrors: DiskError[];
}
export type ResultKind = keyof ResultTypes;

type Pair<F extends FlagTable> = readonly [keyof F & string, keyof F & string];

export interface EntryPoint<F extends FlagTable = FlagTable> {
  /** libvirt's function (ours for virtback additions): named in every error message */
  readonly libvirt: string;
  /** the error domain of the wrapper's refusals */
  readonly errorDomain: 'DOMAIN' | 'DOMAIN_CHECKPOINT';
  /** the Driver method's parameters, in order */
  readonly args: readonly Arg[];
  readonly result: ResultKind;
  /** the flags the API accepts (a driver may still refuse some) */
  readonly flags: F;
  /** libvirt's C prefix of the flag names, for messages: 'VIR_DOMAIN_CHECKPOINT_CREATE_' */
  readonly flagPrefix: string;
  /** VIR_EXCLUSIVE_FLAGS: never both */
  readonly exclusive: readonly Pair<F>[];
  /** VIR_REQUIRE_FLAG: [flag, the flag it needs] */
  readonly requires: readonly Pair<F>[];
  /** [flag, argument that must not be NULL with it] */
  readonly needsArg: readonly (readonly [keyof F & string, string])[];
  /** refused on a read-only connection */
  readonly mutates: boolean;
  /** a getter refused on a read-only connection when this flag is set ("… with secure flag") */
  readonly secure: (keyof F & string) | null;
  /** what the libvirt name does not say, in a few words */
  readonly doc?: string;
}

const arg = <K extends ArgKind>(kind: K, name: string): Arg<K> => ({ kind, name });
const uuid = arg('uuid', 'uuid');
const domain = arg('uuid', 'domain');
const checkpoint = arg('name', 'checkpoint');
const flags = arg('flags', 'flags');

const NoFlags = {} as const;

/** The subset `keys` of a flag table (the list flags share bit 0 between two meanings). */
function pick<F extends FlagTable, K extends keyof F & string>(table: F, keys: readonly K[]): { readonly [P in K]: F[P] } {
  return Object.fromEntries(keys.map((k) => [k, table[k]])) as { readonly [P in K]: F[P] };
}

/** One row; defaults for the rules it does not have. */
function entry<const F extends FlagTable, const A extends readonly Arg[], const R extends ResultKind>(
  e: Omit<Partial<EntryPoint<F>>, 'args' | 'result' | 'flags'> &
    Pick<EntryPoint<F>, 'libvirt' | 'errorDomain' | 'mutates'> & { args: A; result: R; flags: F },
): EntryPoint<F> & { readonly args: A; readonly result: R } {
  return { flagPrefix: '', exclusive: [], requires: [], needsArg: [], secure: null, ...e };
}

export const entryPoints = {
  // ---- domains ----
  domainDefineXML: entry({
    libvirt: 'virDomainDefineXMLFlags',
    errorDomain: 'DOMAIN',
    args: [arg('xml', 'xml'), flags],
    result: 'domainRef',
    // the QEMU driver validates every definition against the schema, VALIDATE or not
    flags: DomainDefineFlags,
    flagPrefix: 'VIR_DOMAIN_DEFINE_',
    mutates: true,
  }),
  domainUndefine: entry({
    libvirt: 'virDomainUndefineFlags',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'void',
    flags: UndefineFlags,
    flagPrefix: 'VIR_DOMAIN_UNDEFINE_',
    exclusive: [['NVRAM', 'KEEP_NVRAM']],
    mutates: true,
  }),
  domainCreate: entry({
    libvirt: 'virDomainCreateWithFlags',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'void',
    // BYPASS_CACHE and FORCE_BOOT are part of the API; the QEMU driver refuses them itself.
    flags: DomainCreateFlags,
    flagPrefix: 'VIR_DOMAIN_START_',
    mutates: true,
    doc: 'AUTODESTROY: the domain dies with the connection that started it',
  }),
  domainDestroy: entry({
    libvirt: 'virDomainDestroyFlags',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'void',
    flags: DomainDestroyFlags,
    flagPrefix: 'VIR_DOMAIN_DESTROY_',
    mutates: true,
    doc: 'GRACEFUL: SIGTERM only, never SIGKILL',
  }),
  domainSuspend: entry({
    libvirt: 'virDomainSuspend',
    errorDomain: 'DOMAIN',
    args: [uuid],
    result: 'void',
    flags: NoFlags,
    mutates: true,
  }),
  domainResume: entry({
    libvirt: 'virDomainResume',
    errorDomain: 'DOMAIN',
    args: [uuid],
    result: 'void',
    flags: NoFlags,
    mutates: true,
  }),
  domainShutdown: entry({
    libvirt: 'virDomainShutdownFlags',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'void',
    // INITCTL, SIGNAL and PARAVIRT are part of the API; the QEMU driver refuses them itself.
    flags: DomainShutdownFlags,
    flagPrefix: 'VIR_DOMAIN_SHUTDOWN_',
    mutates: true,
    doc: 'asks the guest to power off (ACPI power button or guest agent) and returns; the guest may ignore it',
  }),
  domainReboot: entry({
    libvirt: 'virDomainReboot',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'void',
    flags: DomainRebootFlags,
    flagPrefix: 'VIR_DOMAIN_REBOOT_',
    mutates: true,
    doc: "asks the guest to reboot (ACPI: its power-off is turned into a reset; agent: guest-shutdown mode=reboot)",
  }),
  domainGetAutostart: entry({
    libvirt: 'virDomainGetAutostart',
    errorDomain: 'DOMAIN',
    args: [uuid],
    result: 'boolean',
    flags: NoFlags,
    mutates: false,
  }),
  domainSetAutostart: entry({
    libvirt: 'virDomainSetAutostart',
    errorDomain: 'DOMAIN',
    args: [uuid, arg('boolean', 'autostart')],
    result: 'void',
    flags: NoFlags,
    mutates: true,
    doc: 'started when virtbackd starts (once per boot)',
  }),
  domainUpdateDevice: entry({
    libvirt: 'virDomainUpdateDeviceFlags',
    errorDomain: 'DOMAIN',
    args: [uuid, arg('xml', 'xml'), flags],
    result: 'void',
    flags: DeviceModifyFlags,
    flagPrefix: 'VIR_DOMAIN_DEVICE_MODIFY_',
    mutates: true,
    doc: "a cdrom's medium: the drive's <disk> with a new <source>, or none to eject",
  }),
  domainLookupByName: entry({
    libvirt: 'virDomainLookupByName',
    errorDomain: 'DOMAIN',
    args: [arg('name', 'name')],
    result: 'domainRef',
    flags: NoFlags,
    mutates: false,
  }),
  domainLookupByUUID: entry({
    libvirt: 'virDomainLookupByUUIDString',
    errorDomain: 'DOMAIN',
    args: [arg('uuidString', 'uuidstr')],
    result: 'domainRef',
    flags: NoFlags,
    mutates: false,
  }),
  listAllDomains: entry({
    libvirt: 'virConnectListAllDomains',
    errorDomain: 'DOMAIN',
    args: [flags],
    result: 'domainSummaries',
    flags: ListDomainsFlags,
    flagPrefix: 'VIR_CONNECT_LIST_DOMAINS_',
    mutates: false,
    doc: "with each domain's summary",
  }),
  domainGetInfo: entry({
    libvirt: 'virDomainGetInfo',
    errorDomain: 'DOMAIN',
    args: [uuid],
    result: 'domainSummary',
    flags: NoFlags,
    mutates: false,
  }),
  domainGetXMLDesc: entry({
    libvirt: 'virDomainGetXMLDesc',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'xml',
    flags: DomainXMLFlags,
    flagPrefix: 'VIR_DOMAIN_XML_',
    mutates: false,
    secure: 'SECURE',
  }),
  domainGetDiskErrors: entry({
    libvirt: 'virDomainGetDiskErrors',
    errorDomain: 'DOMAIN',
    args: [uuid, flags],
    result: 'diskErrors',
    flags: NoFlags,
    mutates: false,
    doc: "every disk whose I/O error paused the guest, until it resumes (QEMU's io-status)",
  }),
  domainGetBlockJobInfo: entry({
    libvirt: 'virDomainGetBlockJobInfo',
    errorDomain: 'DOMAIN',
    args: [uuid, arg('disk', 'disk'), flags],
    result: 'blockJobInfo',
    flags: BlockJobInfoFlags,
    flagPrefix: 'VIR_DOMAIN_BLOCK_JOB_INFO_',
    mutates: false,
    doc: 'found false when the disk has no block job',
  }),
  qemuMonitorCommand: entry({
    libvirt: 'virDomainQemuMonitorCommand',
    errorDomain: 'DOMAIN',
    args: [uuid, arg('command', 'cmd'), flags],
    result: 'xml',
    flags: MonitorCommandFlags,
    flagPrefix: 'VIR_DOMAIN_QEMU_MONITOR_COMMAND_',
    mutates: true,
    doc: 'QMP JSON in and out, or HMP text with HMP',
  }),
  domainFSFreeze: entry({
    libvirt: 'virDomainFSFreeze',
    errorDomain: 'DOMAIN',
    args: [uuid, arg('mountpoints', 'mountpoints'), flags],
    result: 'count',
    flags: NoFlags,
    mutates: true,
  }),
  domainFSThaw: entry({
    libvirt: 'virDomainFSThaw',
    errorDomain: 'DOMAIN',
    args: [uuid, arg('mountpoints', 'mountpoints'), flags],
    result: 'count',
    flags: NoFlags,
    mutates: true,
  }),

  // ---- checkpoints ----
  checkpointCreateXML: entry({
    libvirt: 'virDomainCheckpointCreateXML',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, arg('xml', 'xmlDesc'), flags],
    result: 'name',
    flags: CheckpointCreateFlags,
    flagPrefix: 'VIR_DOMAIN_CHECKPOINT_CREATE_',
    exclusive: [['REDEFINE', 'QUIESCE']],
    requires: [['REDEFINE_VALIDATE', 'REDEFINE']],
    mutates: true,
    doc: "returns the checkpoint's name",
  }),
  checkpointGetXMLDesc: entry({
    libvirt: 'virDomainCheckpointGetXMLDesc',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, checkpoint, flags],
    result: 'xml',
    flags: CheckpointXMLFlags,
    flagPrefix: 'VIR_DOMAIN_CHECKPOINT_XML_',
    mutates: false,
    secure: 'SECURE',
  }),
  listAllCheckpoints: entry({
    libvirt: 'virDomainListAllCheckpoints',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, flags],
    result: 'names',
    flags: pick(CheckpointListFlags, ['ROOTS', 'TOPOLOGICAL', 'LEAVES', 'NO_LEAVES']),
    flagPrefix: 'VIR_DOMAIN_CHECKPOINT_LIST_',
    mutates: false,
    doc: 'returns names',
  }),
  checkpointListAllChildren: entry({
    libvirt: 'virDomainCheckpointListAllChildren',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, checkpoint, flags],
    result: 'names',
    flags: pick(CheckpointListFlags, ['DESCENDANTS', 'TOPOLOGICAL', 'LEAVES', 'NO_LEAVES']),
    flagPrefix: 'VIR_DOMAIN_CHECKPOINT_LIST_',
    mutates: false,
    doc: 'returns names',
  }),
  checkpointLookupByName: entry({
    libvirt: 'virDomainCheckpointLookupByName',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, arg('name', 'name'), flags],
    result: 'name',
    flags: NoFlags,
    mutates: false,
  }),
  checkpointGetParent: entry({
    libvirt: 'virDomainCheckpointGetParent',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, checkpoint, flags],
    result: 'name',
    flags: NoFlags,
    mutates: false,
    doc: "returns the parent's name",
  }),
  checkpointDelete: entry({
    libvirt: 'virDomainCheckpointDelete',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain, checkpoint, flags],
    result: 'void',
    flags: CheckpointDeleteFlags,
    flagPrefix: 'VIR_DOMAIN_CHECKPOINT_DELETE_',
    exclusive: [['CHILDREN', 'CHILDREN_ONLY']],
    mutates: true,
  }),
  listUnknownBitmaps: entry({
    libvirt: 'virtbackListUnknownBitmaps',
    errorDomain: 'DOMAIN_CHECKPOINT',
    args: [domain],
    result: 'unknownBitmaps',
    flags: NoFlags,
    mutates: false,
    doc: 'virtback: bitmaps in the images that no checkpoint knows',
  }),

  // ---- backup jobs ----
  backupBegin: entry({
    libvirt: 'virDomainBackupBegin',
    errorDomain: 'DOMAIN',
    args: [domain, arg('xmlOrNull', 'backupXml'), arg('xmlOrNull', 'checkpointXml'), flags],
    result: 'count',
    // PRESERVE_SHUTDOWN_DOMAIN is part of the API; the QEMU driver refuses it itself.
    flags: BackupBeginFlags,
    flagPrefix: 'VIR_DOMAIN_BACKUP_BEGIN_',
    needsArg: [['NO_METADATA', 'checkpointXml']],
    mutates: true,
    doc: 'returns the positive job id',
  }),
  backupGetXMLDesc: entry({
    libvirt: 'virDomainBackupGetXMLDesc',
    errorDomain: 'DOMAIN',
    args: [domain, arg('jobId', 'id'), flags],
    result: 'xml',
    flags: NoFlags,
    mutates: false,
    doc: 'id 0 = the current job',
  }),
  backupEnd: entry({
    libvirt: 'virDomainBackupEnd',
    errorDomain: 'DOMAIN',
    args: [domain, arg('jobId', 'id'), flags],
    result: 'status',
    flags: BackupEndFlags,
    flagPrefix: 'VIR_DOMAIN_BACKUP_END_',
    mutates: true,
    doc: '1 complete, 0 aborted; id 0 = the current job',
  }),
  listJobIds: entry({
    libvirt: 'virDomainListJobIds',
    errorDomain: 'DOMAIN',
    args: [domain],
    result: 'jobIds',
    flags: NoFlags,
    mutates: false,
  }),
  getJobStats: entry({
    libvirt: 'virDomainGetJobStats',
    errorDomain: 'DOMAIN',
    args: [domain, flags],
    result: 'jobStats',
    flags: JobStatsFlags,
    flagPrefix: 'VIR_DOMAIN_JOB_STATS_',
    mutates: false,
  }),
  abortJob: entry({
    libvirt: 'virDomainAbortJobFlags',
    errorDomain: 'DOMAIN',
    args: [domain, flags],
    result: 'void',
    flags: NoFlags,
    mutates: true,
  }),
} as const;

export type EntryPoints = typeof entryPoints;
export type EntryPointName = keyof EntryPoints;

/** A table shaped like ours (tests derive everything from a changed copy). */
export type EntryPointTable = { readonly [N in EntryPointName]: EntryPoint };

export const entryPointNames = Object.keys(entryPoints) as EntryPointName[];

export function isEntryPointName(name: string): name is EntryPointName {
  return Object.prototype.hasOwnProperty.call(entryPoints, name);
}

type ArgTuple<A extends readonly Arg[]> = { -readonly [I in keyof A]: A[I] extends Arg<infer K> ? ArgTypes[K] : never };

/** The Driver method's parameters of entry point N, from the table. */
export type EntryArgs<N extends EntryPointName> = ArgTuple<EntryPoints[N]['args']>;
/** What entry point N resolves to, from the table. */
export type EntryResult<N extends EntryPointName> = ResultTypes[EntryPoints[N]['result']];
/** The flag table of entry point N. */
export type EntryFlags<N extends EntryPointName> = EntryPoints[N]['flags'];
/** The methods every entry point gives a Driver. */
export type EntryMethods = { [N in EntryPointName]: (...args: Extract<EntryArgs<N>, unknown[]>) => Promise<EntryResult<N>> };

/** The position of the flags argument, or -1 for an entry point without flags. */
export function flagsIndex(e: EntryPoint): number {
  return e.args.findIndex((a) => a.kind === 'flags');
}

/** OR of every bit of a flag table. */
export function allBits(table: FlagTable): number {
  return Object.values(table).reduce((a, b) => (a | b) >>> 0, 0);
}

/** The read-only refusal of a getter called with its secure flag (libvirt's wording), else null. */
export function secureDenial(e: EntryPoint, args: readonly unknown[]): string | null {
  if (e.secure === null) return null;
  const f = args[flagsIndex(e)];
  const bit = e.flags[e.secure] ?? 0;
  return typeof f === 'number' && (f & bit) !== 0 ? `${e.libvirt} with secure flag` : null;
}

// Compile-time proof that the table and the Driver interface agree: every
// Driver method is a row with the method's parameter and result types, and
// every row is a Driver method. (remote/protocol.ts proves the same for the
// wire schemas.)
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** Driver members that are not entry points: the connection's own. */
export type DriverMethodName = Exclude<keyof Driver, 'uri' | 'close' | 'subscribe' | 'recoveredEvents' | 'openConsole'>;
type Agreement = {
  [M in DriverMethodName]: M extends EntryPointName
    ? Same<Parameters<Driver[M]>, EntryArgs<M>> extends true
      ? Same<Awaited<ReturnType<Driver[M]>>, EntryResult<M>>
      : false
    : false;
};
const agreement: { [M in DriverMethodName]: Agreement[M] extends true ? true : never } = Object.fromEntries(
  entryPointNames.map((n) => [n, true]),
) as { [M in DriverMethodName]: true };
void agreement;
const _everyRowIsAMethod: DriverMethodName = null as unknown as EntryPointName;
void _everyRowIsAMethod;
