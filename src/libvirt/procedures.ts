// libvirt's remote protocol as virtback speaks it, both as a server (virtbackd's
// libvirt sockets) and as a client (the libvirt driver): the structs of
// remote_protocol.x that the backup workflow needs, and one table of the
// procedures with their argument and result types and their access rule.
// Procedure numbers and struct layouts are libvirt's (append-only upstream);
// the array maxima are the .x file's, so a reply never carries more than a
// real client accepts. Where a procedure is one of our entry points, its
// read-only rule comes from api/entry-points.ts, not from here.

import { entryPoints, type EntryPoint, type EntryPointName } from '../api/entry-points.js';
import {
  array,
  double,
  fixedOpaque,
  hyper,
  int,
  none,
  optional,
  string,
  struct,
  uhyper,
  uint,
  union,
  type Codec,
  type Infer,
} from './xdr.js';

/** The maxima of remote_protocol.x. */
export const REMOTE = {
  /** REMOTE_STRING_MAX: every string, names and XML alike */
  STRING_MAX: 4 * 1024 * 1024,
  DOMAIN_LIST_MAX: 16384,
  CHECKPOINT_LIST_MAX: 16384,
  /** REMOTE_DOMAIN_JOB_STATS_MAX, also the job-completed event's list */
  JOB_STATS_MAX: 64,
  AUTH_TYPE_LIST_MAX: 20,
  FSFREEZE_MOUNTPOINTS_MAX: 256,
  DOMAIN_MESSAGES_MAX: 2048,
  DOMAIN_DISK_ERRORS_MAX: 256,
  UUID_BYTES: 16,
} as const;

// ---- shared structs -------------------------------------------------------

export const nonnullString = string(REMOTE.STRING_MAX);
export const remoteString = optional(nonnullString);
export const uuidBytes = fixedOpaque(REMOTE.UUID_BYTES);

/** remote_nonnull_domain: clients build their handle from all three and send all three back. */
export const domain = struct({ name: nonnullString, uuid: uuidBytes, id: int });
export type WireDomain = Infer<typeof domain>;
export const remoteDomain = optional(domain);

/** remote_nonnull_domain_checkpoint: there is no checkpoint uuid. */
export const checkpoint = struct({ name: nonnullString, dom: domain });
export type WireCheckpoint = Infer<typeof checkpoint>;

const network = struct({ name: nonnullString, uuid: uuidBytes });

/** remote_error: what every failed call replies with. */
export const remoteError = struct({
  code: int,
  domain: int,
  message: remoteString,
  level: int,
  dom: remoteDomain,
  str1: remoteString,
  str2: remoteString,
  str3: remoteString,
  int1: int,
  int2: int,
  net: optional(network),
});
export type WireError = Infer<typeof remoteError>;

/** virTypedParameterType: the discriminant of remote_typed_param_value. */
export const TypedParamType = {
  INT: 1,
  UINT: 2,
  LLONG: 3,
  ULLONG: 4,
  DOUBLE: 5,
  BOOLEAN: 6,
  STRING: 7,
} as const;

export const typedParam = struct({
  field: nonnullString,
  value: union({
    [TypedParamType.INT]: int,
    [TypedParamType.UINT]: uint,
    [TypedParamType.LLONG]: hyper,
    [TypedParamType.ULLONG]: uhyper,
    [TypedParamType.DOUBLE]: double,
    [TypedParamType.BOOLEAN]: int,
    [TypedParamType.STRING]: nonnullString,
  }),
});
export type TypedParam = Infer<typeof typedParam>;
const typedParams = array(typedParam, REMOTE.JOB_STATS_MAX);

const dom = { dom: domain };
const domFlags = struct({ dom: domain, flags: uint });
const domOnly = struct(dom);
const cpFlags = struct({ checkpoint, flags: uint });
const domainRet = struct({ dom: domain });
const checkpointList = struct({ checkpoints: array(checkpoint, REMOTE.CHECKPOINT_LIST_MAX), ret: int });
const checkpointChildren = struct({ children: array(checkpoint, REMOTE.CHECKPOINT_LIST_MAX), ret: int });
const fsMountpoints = struct({ dom: domain, mountpoints: array(nonnullString, REMOTE.FSFREEZE_MOUNTPOINTS_MAX), flags: uint });

/** remote_domain_get_job_info_ret: the legacy job info, all byte counts and milliseconds. */
const jobInfo = struct({
  type: int,
  timeElapsed: uhyper,
  timeRemaining: uhyper,
  dataTotal: uhyper,
  dataProcessed: uhyper,
  dataRemaining: uhyper,
  memTotal: uhyper,
  memProcessed: uhyper,
  memRemaining: uhyper,
  fileTotal: uhyper,
  fileProcessed: uhyper,
  fileRemaining: uhyper,
});

/** remote_domain_disk_error: a disk target and its virDomainDiskErrorCode */
const diskError = struct({ disk: nonnullString, error: int });

// ---- the procedure table --------------------------------------------------

/**
 * Who may call a procedure: 'open' before CONNECT_OPEN (handshake),
 * 'read' on any connection, 'write' never on a read-only one, or the
 * entry point whose row decides (mutating, or refused with its secure flag).
 */
export type Access = 'open' | 'read' | 'write' | { entry: EntryPointName };

export interface Procedure<A = unknown, R = unknown> {
  readonly proc: number;
  /** libvirt's public function, named in "read only access prevents …" */
  readonly api: string;
  readonly args: Codec<A>;
  readonly ret: Codec<R>;
  readonly access: Access;
}

const p = <A, R>(proc: number, api: string, args: Codec<A>, ret: Codec<R>, access: Access): Procedure<A, R> => ({
  proc,
  api,
  args,
  ret,
  access,
});
const via = (entry: EntryPointName): Access => ({ entry });

/** REMOTE_PROGRAM (0x20008086) procedures virtback answers or calls; any other number is "unsupported". */
export const remoteProcedures = {
  connectOpen: p(1, 'virConnectOpen', struct({ name: remoteString, flags: uint }), none, 'open'),
  connectClose: p(2, 'virConnectClose', none, none, 'read'),
  connectGetType: p(3, 'virConnectGetType', none, struct({ type: nonnullString }), 'read'),
  connectGetVersion: p(4, 'virConnectGetVersion', none, struct({ hv_ver: uhyper }), 'read'),
  connectGetCapabilities: p(7, 'virConnectGetCapabilities', none, struct({ capabilities: nonnullString }), 'read'),
  domainCreate: p(9, 'virDomainCreate', domOnly, none, via('domainCreate')),
  domainDefineXML: p(11, 'virDomainDefineXML', struct({ xml: nonnullString }), domainRet, via('domainDefineXML')),
  domainDestroy: p(12, 'virDomainDestroy', domOnly, none, via('domainDestroy')),
  domainGetXMLDesc: p(14, 'virDomainGetXMLDesc', domFlags, struct({ xml: nonnullString }), via('domainGetXMLDesc')),
  domainGetAutostart: p(15, 'virDomainGetAutostart', domOnly, struct({ autostart: int }), via('domainGetAutostart')),
  domainGetInfo: p(
    16,
    'virDomainGetInfo',
    domOnly,
    // u_char state and u_short nrVirtCpu are 4 bytes each on the wire
    struct({ state: uint, maxMem: uhyper, memory: uhyper, nrVirtCpu: uint, cpuTime: uhyper }),
    via('domainGetInfo'),
  ),
  domainGetOSType: p(19, 'virDomainGetOSType', domOnly, struct({ type: nonnullString }), 'read'),
  domainLookupByID: p(22, 'virDomainLookupByID', struct({ id: int }), domainRet, 'read'),
  domainLookupByName: p(23, 'virDomainLookupByName', struct({ name: nonnullString }), domainRet, via('domainLookupByName')),
  domainLookupByUUID: p(24, 'virDomainLookupByUUID', struct({ uuid: uuidBytes }), domainRet, via('domainLookupByUUID')),
  domainReboot: p(27, 'virDomainReboot', domFlags, none, via('domainReboot')),
  domainResume: p(28, 'virDomainResume', domOnly, none, via('domainResume')),
  domainSetAutostart: p(29, 'virDomainSetAutostart', struct({ dom: domain, autostart: int }), none, via('domainSetAutostart')),
  domainShutdown: p(33, 'virDomainShutdown', domOnly, none, via('domainShutdown')),
  domainUpdateDeviceFlags: p(174, 'virDomainUpdateDeviceFlags', struct({ dom: domain, xml: nonnullString, flags: uint }), none, via('domainUpdateDevice')),
  domainSuspend: p(34, 'virDomainSuspend', domOnly, none, via('domainSuspend')),
  domainUndefine: p(35, 'virDomainUndefine', domOnly, none, via('domainUndefine')),
  connectGetURI: p(110, 'virConnectGetURI', none, struct({ uri: nonnullString }), 'read'),
  connectGetHostname: p(59, 'virConnectGetHostname', none, struct({ hostname: nonnullString }), 'read'),
  connectSupportsFeature: p(60, 'virConnectSupportsFeature', struct({ feature: int }), struct({ supported: int }), 'open'),
  authList: p(66, 'virConnectOpenAuth', none, struct({ types: array(int, REMOTE.AUTH_TYPE_LIST_MAX) }), 'open'),
  domainIsActive: p(150, 'virDomainIsActive', domOnly, struct({ active: int }), 'read'),
  domainIsPersistent: p(151, 'virDomainIsPersistent', domOnly, struct({ persistent: int }), 'read'),
  connectGetLibVersion: p(157, 'virConnectGetLibVersion', none, struct({ lib_ver: uhyper }), 'read'),
  domainGetJobInfo: p(163, 'virDomainGetJobInfo', domOnly, jobInfo, 'read'),
  domainAbortJob: p(164, 'virDomainAbortJob', domOnly, none, via('abortJob')),
  domainHasManagedSaveImage: p(183, 'virDomainHasManagedSaveImage', domFlags, struct({ result: int }), 'read'),
  domainSnapshotNum: p(187, 'virDomainSnapshotNum', domFlags, struct({ num: int }), 'read'),
  domainCreateWithFlags: p(196, 'virDomainCreateWithFlags', domFlags, domainRet, via('domainCreate')),
  domainGetState: p(212, 'virDomainGetState', domFlags, struct({ state: int, reason: int }), 'read'),
  domainUndefineFlags: p(231, 'virDomainUndefineFlags', domFlags, none, via('domainUndefine')),
  domainDestroyFlags: p(234, 'virDomainDestroyFlags', domFlags, none, via('domainDestroy')),
  domainShutdownFlags: p(258, 'virDomainShutdownFlags', domFlags, none, via('domainShutdown')),
  domainGetDiskErrors: p(
    263,
    'virDomainGetDiskErrors',
    struct({ dom: domain, maxerrors: uint, flags: uint }),
    // nerrors: the errors returned, or with maxerrors 0 the size to ask for
    struct({ errors: array(diskError, REMOTE.DOMAIN_DISK_ERRORS_MAX), nerrors: int }),
    via('domainGetDiskErrors'),
  ),
  domainGetBlockJobInfo: p(
    238,
    'virDomainGetBlockJobInfo',
    struct({ dom: domain, path: nonnullString, flags: uint }),
    struct({ found: int, type: int, bandwidth: uhyper, cur: uhyper, end: uhyper }),
    via('domainGetBlockJobInfo'),
  ),
  connectListAllDomains: p(
    273,
    'virConnectListAllDomains',
    struct({ need_results: int, flags: uint }),
    struct({ domains: array(domain, REMOTE.DOMAIN_LIST_MAX), ret: uint }),
    via('listAllDomains'),
  ),
  domainGetJobStats: p(298, 'virDomainGetJobStats', domFlags, struct({ type: int, params: typedParams }), via('getJobStats')),
  connectDomainEventCallbackRegisterAny: p(
    316,
    'virConnectDomainEventRegisterAny',
    struct({ eventID: int, dom: remoteDomain }),
    struct({ callbackID: int }),
    'read',
  ),
  connectDomainEventCallbackDeregisterAny: p(317, 'virConnectDomainEventDeregisterAny', struct({ callbackID: int }), none, 'read'),
  domainFSFreeze: p(335, 'virDomainFSFreeze', fsMountpoints, struct({ filesystems: int }), via('domainFSFreeze')),
  domainFSThaw: p(336, 'virDomainFSThaw', fsMountpoints, struct({ filesystems: int }), via('domainFSThaw')),
  domainDefineXMLFlags: p(350, 'virDomainDefineXMLFlags', struct({ xml: nonnullString, flags: uint }), domainRet, via('domainDefineXML')),
  connectRegisterCloseCallback: p(360, 'virConnectRegisterCloseCallback', none, none, 'read'),
  connectUnregisterCloseCallback: p(361, 'virConnectUnregisterCloseCallback', none, none, 'read'),
  domainCheckpointCreateXML: p(
    411,
    'virDomainCheckpointCreateXML',
    struct({ dom: domain, xml_desc: nonnullString, flags: uint }),
    struct({ checkpoint }),
    via('checkpointCreateXML'),
  ),
  domainCheckpointGetXMLDesc: p(412, 'virDomainCheckpointGetXMLDesc', cpFlags, struct({ xml: nonnullString }), via('checkpointGetXMLDesc')),
  domainListAllCheckpoints: p(
    413,
    'virDomainListAllCheckpoints',
    struct({ dom: domain, need_results: int, flags: uint }),
    checkpointList,
    via('listAllCheckpoints'),
  ),
  domainCheckpointListAllChildren: p(
    414,
    'virDomainCheckpointListAllChildren',
    struct({ checkpoint, need_results: int, flags: uint }),
    checkpointChildren,
    via('checkpointListAllChildren'),
  ),
  domainCheckpointLookupByName: p(
    415,
    'virDomainCheckpointLookupByName',
    struct({ dom: domain, name: nonnullString, flags: uint }),
    struct({ checkpoint }),
    via('checkpointLookupByName'),
  ),
  domainCheckpointGetParent: p(416, 'virDomainCheckpointGetParent', cpFlags, struct({ parent: checkpoint }), via('checkpointGetParent')),
  domainCheckpointDelete: p(417, 'virDomainCheckpointDelete', cpFlags, none, via('checkpointDelete')),
  domainBackupBegin: p(
    421,
    'virDomainBackupBegin',
    struct({ dom: domain, backup_xml: nonnullString, checkpoint_xml: remoteString, flags: uint }),
    none,
    via('backupBegin'),
  ),
  domainBackupGetXMLDesc: p(422, 'virDomainBackupGetXMLDesc', domFlags, struct({ xml: nonnullString }), via('backupGetXMLDesc')),
  domainGetMessages: p(
    426,
    'virDomainGetMessages',
    domFlags,
    struct({ msgs: array(nonnullString, REMOTE.DOMAIN_MESSAGES_MAX) }),
    'read',
  ),
  domainAbortJobFlags: p(442, 'virDomainAbortJobFlags', domFlags, none, via('abortJob')),
} as const;

export type RemoteProcedureName = keyof typeof remoteProcedures;
export type ProcArgs<N extends RemoteProcedureName> = Infer<(typeof remoteProcedures)[N]['args']>;
export type ProcRet<N extends RemoteProcedureName> = Infer<(typeof remoteProcedures)[N]['ret']>;

/** QEMU_PROGRAM (0x20008087): only the monitor pass-through (`virsh qemu-monitor-command`). */
export const qemuProcedures = {
  domainMonitorCommand: p(
    1,
    'virDomainQemuMonitorCommand',
    struct({ dom: domain, cmd: nonnullString, flags: uint }),
    struct({ result: nonnullString }),
    via('qemuMonitorCommand'),
  ),
} as const;

/** Asynchronous MESSAGEs of the REMOTE program: events, in their callback form (callbackID first). */
export const remoteEvents = {
  lifecycle: { proc: 318, body: struct({ callbackID: int, dom: domain, event: int, detail: int }) },
  reboot: { proc: 319, body: struct({ callbackID: int, dom: domain }) },
  ioError: { proc: 322, body: struct({ callbackID: int, dom: domain, srcPath: nonnullString, devAlias: nonnullString, action: int }) },
  ioErrorReason: {
    proc: 324,
    body: struct({ callbackID: int, dom: domain, srcPath: nonnullString, devAlias: nonnullString, action: int, reason: nonnullString }),
  },
  blockJob: { proc: 326, body: struct({ callbackID: int, dom: domain, path: nonnullString, type: int, status: int }) },
  blockJob2: { proc: 339, body: struct({ callbackID: int, dom: domain, dst: nonnullString, type: int, status: int }) },
  connectionClosed: { proc: 362, body: struct({ reason: int }) },
  jobCompleted: { proc: 363, body: struct({ callbackID: int, dom: domain, params: typedParams }) },
} as const;

export type RemoteEventName = keyof typeof remoteEvents;
export type EventBody<N extends RemoteEventName> = Infer<(typeof remoteEvents)[N]['body']>;

/** VIR_DOMAIN_EVENT_ID_*: what a client registers for with procedure 316. */
export const DomainEventId = {
  LIFECYCLE: 0,
  REBOOT: 1,
  IO_ERROR: 4,
  IO_ERROR_REASON: 6,
  BLOCK_JOB: 8,
  BLOCK_JOB_2: 16,
  JOB_COMPLETED: 21,
} as const;

/** VIR_DRV_FEATURE_*: the features clients probe with CONNECT_SUPPORTS_FEATURE. */
export const DriverFeature = {
  TYPED_PARAM_STRING: 9,
  PROGRAM_KEEPALIVE: 10,
  REMOTE_EVENT_CALLBACK: 14,
  REMOTE_CLOSE_CALLBACK: 15,
} as const;

/** remote_auth_type */
export const AuthType = { NONE: 0, SASL: 1, POLKIT: 2 } as const;

/** VIR_CONNECT_RO in CONNECT_OPEN's flags */
export const CONNECT_RO = 1;

/** Procedures by number, for the server's dispatch and the client's sanity checks. */
export const remoteByNumber: ReadonlyMap<number, Procedure> = new Map(
  Object.values(remoteProcedures).map((row) => [row.proc, row as Procedure]),
);

/**
 * Whether a call is refused on a read-only connection: libvirt's detail of
 * the OPERATION_DENIED error ("read only access prevents virDomainXxx", or
 * "virDomainXxx with secure flag"; the message is "operation forbidden: "
 * and the detail), or null when it is allowed. `flags` is the call's flags.
 */
export function readOnlyDenial(row: Procedure, flags: number): string | null {
  const { access } = row;
  if (access === 'open' || access === 'read') return null;
  if (access === 'write') return `read only access prevents ${row.api}`;
  const entry: EntryPoint = entryPoints[access.entry];
  if (entry.mutates) return `read only access prevents ${row.api}`;
  if (entry.secure !== null && flags & (entry.flags[entry.secure] ?? 0)) return `${row.api} with secure flag`;
  return null;
}
