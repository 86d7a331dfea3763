// The virtbackd wire protocol: message kinds and the procedure table. Each
// procedure's arguments and result are typed once, here, as zod schemas with
// a size limit on every string and array; client and server both validate
// against them. Arguments travel as a JSON array in the Driver method's
// parameter order, so the server calls `driver[proc](...args)`.
// docs/protocol.md describes the same table for people.

import { z } from 'zod';
import type { Driver, DriverEvent } from '../api/driver.js';
import { CheckpointXMLFlags, DomainXMLFlags } from '../flags.js';

/** Bumped on any incompatible change of the table or the message shapes. */
export const PROTOCOL_VERSION = 1;

export const LIMITS = {
  /** domain, checkpoint and backup XML documents, monitor commands and replies */
  xmlChars: 1024 * 1024,
  /** domain and checkpoint names, disk targets */
  nameChars: 256,
  /** UUID strings (36 with dashes; some slack for the undashed or braced forms) */
  uuidChars: 64,
  /** file paths in events and mount points */
  pathChars: 4096,
  /** error messages */
  messageChars: 64 * 1024,
  /** mount points passed to fsFreeze/fsThaw */
  mountpoints: 256,
  /** entries of a domain or checkpoint listing, job ids */
  listEntries: 100_000,
  /** procedure names */
  procChars: 64,
} as const;

// ---- field schemas -------------------------------------------------------

const Xml = z.string().max(LIMITS.xmlChars);
const Name = z.string().max(LIMITS.nameChars);
const Uuid = z.string().max(LIMITS.uuidChars);
const Path = z.string().max(LIMITS.pathChars);
/** unsigned int flags, as in libvirt */
const Flags = z.number().int().min(0).max(0xffffffff);
/** backup job ids: 0 = current job, else positive */
const JobId = z.number().int().min(0).max(0x7fffffff);
const Int = z.number().int().min(-0x80000000).max(0x7fffffff);
/** byte counts and milliseconds: JSON numbers are exact up to 2^53 */
const Count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const Void = z.undefined();

export const DomainRefSchema = z.object({ name: Name, uuid: Uuid });

export const DomainSummarySchema = DomainRefSchema.extend({
  id: Int,
  state: Int,
  reason: Int,
  persistent: z.boolean(),
  checkpoints: Count,
  hasBackupJob: z.boolean(),
});

export const JobStatsSchema = z.object({
  type: Int,
  operation: Int.optional(),
  id: Count.optional(),
  time_elapsed: Count.optional(),
  disk_total: Count.optional(),
  disk_processed: Count.optional(),
  disk_remaining: Count.optional(),
  disk_temp_used: Count.optional(),
  disk_temp_total: Count.optional(),
  success: z.boolean().optional(),
  errmsg: z.string().max(LIMITS.messageChars).optional(),
});

export const DriverEventSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('job-completed'), domain: DomainRefSchema, jobId: Count, stats: JobStatsSchema }),
  z.object({
    type: z.literal('block-job'),
    domain: DomainRefSchema,
    jobId: Count,
    disk: Name,
    path: Path,
    blockJobType: Int,
    status: Int,
  }),
  z.object({ type: z.literal('lifecycle'), domain: DomainRefSchema, event: Name, detail: Name }),
]);

export const VirErrorSchema = z.object({
  code: Int,
  domain: Int,
  message: z.string().max(LIMITS.messageChars),
});

// ---- messages ------------------------------------------------------------

/** Serials are chosen by the client, unique among its calls in flight; 0 marks an error not tied to a call. */
const Serial = z.number().int().min(0).max(0x7fffffff);

export const CallMessageSchema = z.object({
  type: z.literal('call'),
  serial: Serial,
  proc: z.string().max(LIMITS.procChars),
  args: z.array(z.unknown()).max(16),
});

// A void result travels as a reply without the result key.
export const ReplyMessageSchema = z.object({ type: z.literal('reply'), serial: Serial, result: z.unknown().optional() });
export const ErrorMessageSchema = z.object({ type: z.literal('error'), serial: Serial, error: VirErrorSchema });
export const EventMessageSchema = z.object({ type: z.literal('event'), event: z.unknown() });

/** What a client may receive. */
export const ServerMessageSchema = z.discriminatedUnion('type', [
  ReplyMessageSchema,
  ErrorMessageSchema,
  EventMessageSchema,
]);

export type CallMessage = z.infer<typeof CallMessageSchema>;
export type ReplyMessage = z.infer<typeof ReplyMessageSchema>;
export type ErrorMessage = z.infer<typeof ErrorMessageSchema>;
export type EventMessage = { type: 'event'; event: DriverEvent };
export type ServerMessage = ReplyMessage | ErrorMessage | EventMessage;

// ---- procedures ----------------------------------------------------------

export interface Procedure<A extends z.ZodTuple = z.ZodTuple, R extends z.ZodType = z.ZodType> {
  args: A;
  result: R;
  /** Refused on the read-only socket with OPERATION_DENIED, whatever the client claims. */
  mutating: boolean;
  /**
   * For a getter that is mutating only with certain flags (libvirt's "with
   * secure flag" rule): the denial message when these arguments are refused
   * on a read-only connection, else null.
   */
  deniedReadOnly?: (args: z.infer<A>) => string | null;
  /** One line for docs/protocol.md. */
  doc: string;
}

function proc<A extends z.ZodTuple, R extends z.ZodType>(p: Procedure<A, R>): Procedure<A, R> {
  return p;
}

export const HelloArgsSchema = z.object({
  version: Int,
  /** free text for the daemon's log, e.g. 'virtback-cli/0.1.0' */
  client: z.string().max(LIMITS.nameChars).optional(),
});

export const HelloResultSchema = z.object({
  version: Int,
  /** The URI of the driver the daemon serves. */
  uri: z.string().max(LIMITS.pathChars),
  /** True on the read-only socket. */
  readOnly: z.boolean(),
});

export const procedures = {
  hello: proc({
    args: z.tuple([HelloArgsSchema]),
    result: HelloResultSchema,
    mutating: false,
    doc: 'protocol version check; tells the client whether its socket is read-only',
  }),
  subscribe: proc({
    args: z.tuple([]),
    result: Void,
    mutating: false,
    doc: 'start receiving event messages on this connection',
  }),
  unsubscribe: proc({
    args: z.tuple([]),
    result: Void,
    mutating: false,
    doc: 'stop receiving event messages on this connection',
  }),

  // domains
  domainDefineXML: proc({
    args: z.tuple([Xml, Flags]),
    result: DomainRefSchema,
    mutating: true,
    doc: 'virDomainDefineXMLFlags',
  }),
  domainUndefine: proc({ args: z.tuple([Uuid, Flags]), result: Void, mutating: true, doc: 'virDomainUndefineFlags' }),
  domainCreate: proc({ args: z.tuple([Uuid, Flags]), result: Void, mutating: true, doc: 'virDomainCreateWithFlags' }),
  domainDestroy: proc({ args: z.tuple([Uuid, Flags]), result: Void, mutating: true, doc: 'virDomainDestroyFlags' }),
  domainLookupByName: proc({
    args: z.tuple([Name]),
    result: DomainRefSchema,
    mutating: false,
    doc: 'virDomainLookupByName',
  }),
  domainLookupByUUID: proc({
    args: z.tuple([Uuid]),
    result: DomainRefSchema,
    mutating: false,
    doc: 'virDomainLookupByUUIDString',
  }),
  listAllDomains: proc({
    args: z.tuple([Flags]),
    result: z.array(DomainSummarySchema).max(LIMITS.listEntries),
    mutating: false,
    doc: 'virConnectListAllDomains, with each domain\'s summary',
  }),
  domainGetInfo: proc({ args: z.tuple([Uuid]), result: DomainSummarySchema, mutating: false, doc: 'virDomainGetInfo' }),
  domainGetXMLDesc: proc({
    args: z.tuple([Uuid, Flags]),
    result: Xml,
    mutating: false,
    deniedReadOnly: ([, flags]) => ((flags & DomainXMLFlags.SECURE) !== 0 ? 'virDomainGetXMLDesc with secure flag' : null),
    doc: 'virDomainGetXMLDesc',
  }),
  qemuMonitorCommand: proc({
    args: z.tuple([Uuid, Xml, Flags]),
    result: Xml,
    mutating: true,
    doc: 'virDomainQemuMonitorCommand (QMP JSON, or HMP text with the HMP flag)',
  }),
  domainFSFreeze: proc({
    args: z.tuple([Uuid, z.array(Path).max(LIMITS.mountpoints), Flags]),
    result: Count,
    mutating: true,
    doc: 'virDomainFSFreeze',
  }),
  domainFSThaw: proc({
    args: z.tuple([Uuid, z.array(Path).max(LIMITS.mountpoints), Flags]),
    result: Count,
    mutating: true,
    doc: 'virDomainFSThaw',
  }),

  // checkpoints
  checkpointCreateXML: proc({
    args: z.tuple([Uuid, Xml, Flags]),
    result: Name,
    mutating: true,
    doc: 'virDomainCheckpointCreateXML; returns the checkpoint name',
  }),
  checkpointGetXMLDesc: proc({
    args: z.tuple([Uuid, Name, Flags]),
    result: Xml,
    mutating: false,
    deniedReadOnly: ([, , flags]) =>
      (flags & CheckpointXMLFlags.SECURE) !== 0 ? 'virDomainCheckpointGetXMLDesc with secure flag' : null,
    doc: 'virDomainCheckpointGetXMLDesc',
  }),
  listAllCheckpoints: proc({
    args: z.tuple([Uuid, Flags]),
    result: z.array(Name).max(LIMITS.listEntries),
    mutating: false,
    doc: 'virDomainListAllCheckpoints; returns names',
  }),
  checkpointListAllChildren: proc({
    args: z.tuple([Uuid, Name, Flags]),
    result: z.array(Name).max(LIMITS.listEntries),
    mutating: false,
    doc: 'virDomainCheckpointListAllChildren; returns names',
  }),
  checkpointLookupByName: proc({
    args: z.tuple([Uuid, Name, Flags]),
    result: Name,
    mutating: false,
    doc: 'virDomainCheckpointLookupByName',
  }),
  checkpointGetParent: proc({
    args: z.tuple([Uuid, Name, Flags]),
    result: Name,
    mutating: false,
    doc: 'virDomainCheckpointGetParent; returns the parent\'s name',
  }),
  checkpointDelete: proc({
    args: z.tuple([Uuid, Name, Flags]),
    result: Void,
    mutating: true,
    doc: 'virDomainCheckpointDelete',
  }),
  listUnknownBitmaps: proc({
    args: z.tuple([Uuid]),
    result: z.array(z.object({ disk: Name, bitmap: Name })).max(LIMITS.listEntries),
    mutating: false,
    doc: 'virtback: bitmaps in the images that no checkpoint knows',
  }),

  // backup jobs
  backupBegin: proc({
    args: z.tuple([Uuid, Xml.nullable(), Xml.nullable(), Flags]),
    result: Count,
    mutating: true,
    doc: 'virDomainBackupBegin; returns the positive job id',
  }),
  backupGetXMLDesc: proc({
    args: z.tuple([Uuid, JobId, Flags]),
    result: Xml,
    mutating: false,
    doc: 'virDomainBackupGetXMLDesc (id 0 = current job)',
  }),
  backupEnd: proc({
    args: z.tuple([Uuid, JobId, Flags]),
    result: Int,
    mutating: true,
    doc: 'virDomainBackupEnd: 1 complete, 0 aborted',
  }),
  listJobIds: proc({
    args: z.tuple([Uuid]),
    result: z.array(Count).max(LIMITS.listEntries),
    mutating: false,
    doc: 'virDomainListJobIds',
  }),
  getJobStats: proc({ args: z.tuple([Uuid, Flags]), result: JobStatsSchema, mutating: false, doc: 'virDomainGetJobStats' }),
  abortJob: proc({ args: z.tuple([Uuid, Flags]), result: Void, mutating: true, doc: 'virDomainAbortJobFlags' }),
} as const;

export type ProcName = keyof typeof procedures;
export type ProcArgs<P extends ProcName> = z.infer<(typeof procedures)[P]['args']>;
export type ProcResult<P extends ProcName> = z.infer<(typeof procedures)[P]['result']>;

/** The procedures that are Driver methods (everything but the connection-level ones). */
export type DriverProcName = Exclude<ProcName, 'hello' | 'subscribe' | 'unsubscribe'>;

export const driverProcNames = (Object.keys(procedures) as ProcName[]).filter(
  (p): p is DriverProcName => p !== 'hello' && p !== 'subscribe' && p !== 'unsubscribe',
);

export function isProcName(name: string): name is ProcName {
  return Object.prototype.hasOwnProperty.call(procedures, name);
}

// Compile-time proof that the table and the Driver interface agree: every
// Driver method has a procedure whose argument and result types are the
// method's, and no procedure names a method that does not exist.
// recoveredEvents is a local driver's capability, used by the daemon that hosts it, never called over the wire
type MethodNames = Exclude<keyof Driver, 'uri' | 'close' | 'subscribe' | 'recoveredEvents'>;
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type ResultOf<P extends DriverProcName> = ProcResult<P> extends undefined ? void : ProcResult<P>;
type Agreement = {
  [M in MethodNames]: M extends DriverProcName
    ? Same<Parameters<Driver[M]>, ProcArgs<M>> extends true
      ? Same<Awaited<ReturnType<Driver[M]>>, ResultOf<M>>
      : false
    : false;
};
const agreement: { [M in keyof Agreement]: Agreement[M] } = {
  domainDefineXML: true,
  domainUndefine: true,
  domainCreate: true,
  domainDestroy: true,
  domainLookupByName: true,
  domainLookupByUUID: true,
  listAllDomains: true,
  domainGetInfo: true,
  domainGetXMLDesc: true,
  qemuMonitorCommand: true,
  domainFSFreeze: true,
  domainFSThaw: true,
  checkpointCreateXML: true,
  checkpointGetXMLDesc: true,
  listAllCheckpoints: true,
  checkpointListAllChildren: true,
  checkpointLookupByName: true,
  checkpointGetParent: true,
  checkpointDelete: true,
  listUnknownBitmaps: true,
  backupBegin: true,
  backupGetXMLDesc: true,
  backupEnd: true,
  listJobIds: true,
  getJobStats: true,
  abortJob: true,
};
void agreement;
const _noExtraProcs: MethodNames = null as unknown as DriverProcName;
void _noExtraProcs;
