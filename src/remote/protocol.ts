// The virtbackd wire protocol: message kinds and the procedure table. The
// procedures are the entry points of api/entry-points.ts plus three of the
// connection's own (hello, subscribe, unsubscribe): each entry point's
// argument kinds and result kind become zod schemas here, with a size limit
// on every string and array, and its read-only rule becomes the procedure's.
// Client and server both validate against this table. Arguments travel as a
// JSON array in the Driver method's parameter order, so the server calls
// `driver[proc](...args)`. docs/protocol.md describes the same table for people.

import { z } from 'zod';
import type { DriverEvent } from '../api/driver.js';
import {
  entryPointNames,
  entryPoints,
  secureDenial,
  type ArgKind,
  type ArgTypes,
  type EntryArgs,
  type EntryPoint,
  type EntryPointName,
  type EntryPointTable,
  type ResultKind,
  type ResultTypes,
} from '../api/entry-points.js';
import { WIRE_LIMITS } from '../xml/limits.js';

/** Bumped on any incompatible change of the table or the message shapes. */
export const PROTOCOL_VERSION = 1;

export const LIMITS = {
  /** domain, checkpoint and backup XML documents, monitor commands and replies (stored XML meets it at define) */
  xmlChars: WIRE_LIMITS.xmlChars,
  /** domain and checkpoint names, disk targets (enforced at define/create) */
  nameChars: WIRE_LIMITS.nameChars,
  /** UUID strings (36 with dashes; some slack for the undashed or braced forms) */
  uuidChars: 64,
  /** file paths in events and mount points */
  pathChars: WIRE_LIMITS.pathChars,
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
  maxMem: Count.optional(),
  memory: Count.optional(),
  nrVirtCpu: Count.optional(),
  cpuTime: Count.optional(),
});

export const BlockJobInfoSchema = z.object({
  found: z.boolean(),
  type: Int,
  bandwidth: Count,
  cur: Count,
  end: Count,
});

export const DiskErrorSchema = z.object({ disk: Name, error: Int });

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
  z.object({ type: z.literal('reboot'), domain: DomainRefSchema }),
  z.object({
    type: z.literal('io-error'),
    domain: DomainRefSchema,
    disk: Name,
    srcPath: Path,
    devAlias: Name,
    action: Int,
    reason: Name,
  }),
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

// Console streams (remote/stream.ts): bytes both ways, base64, in bounded chunks.
/** Most bytes one stream message carries. */
export const STREAM_CHUNK_BYTES = 64 * 1024;
const StreamId = z.number().int().min(1).max(0x7fffffff);
export const StreamDataSchema = z.object({
  type: z.literal('stream'),
  id: StreamId,
  data: z.string().max(Math.ceil(STREAM_CHUNK_BYTES / 3) * 4),
});
/** Either side ends a stream; the daemon says why when it was not asked to. */
export const StreamEndSchema = z.object({ type: z.literal('stream-end'), id: StreamId, error: VirErrorSchema.optional() });
/** What a client may send besides calls. */
export const StreamMessageSchema = z.discriminatedUnion('type', [StreamDataSchema, StreamEndSchema]);
export type StreamMessage = z.infer<typeof StreamMessageSchema>;

/** What a client may receive. */
export const ServerMessageSchema = z.discriminatedUnion('type', [
  ReplyMessageSchema,
  ErrorMessageSchema,
  EventMessageSchema,
  StreamDataSchema,
  StreamEndSchema,
]);

export type CallMessage = z.infer<typeof CallMessageSchema>;
export type ReplyMessage = z.infer<typeof ReplyMessageSchema>;
export type ErrorMessage = z.infer<typeof ErrorMessageSchema>;
export type EventMessage = { type: 'event'; event: DriverEvent };
export type ServerMessage = ReplyMessage | ErrorMessage | EventMessage | StreamMessage;

// ---- procedures ----------------------------------------------------------

export interface Procedure<A extends unknown[] = unknown[], R = unknown> {
  args: z.ZodType<A>;
  result: z.ZodType<R>;
  /** Refused on the read-only socket with OPERATION_DENIED, whatever the client claims. */
  mutating: boolean;
  /**
   * For a getter that is mutating only with certain flags (libvirt's "with
   * secure flag" rule): the denial message when these arguments are refused
   * on a read-only connection, else null.
   */
  deniedReadOnly?: (args: A) => string | null;
  /** One line for docs/protocol.md. */
  doc: string;
}

/** The wire schema of each kind of argument (api/entry-points.ts). */
const ARG_SCHEMAS = {
  uuid: Uuid,
  uuidString: Uuid,
  name: Name,
  xml: Xml,
  xmlOrNull: Xml.nullable(),
  command: Xml,
  mountpoints: z.array(Path).max(LIMITS.mountpoints),
  jobId: JobId,
  boolean: z.boolean(),
  disk: Path,
  flags: Flags,
} satisfies { [K in ArgKind]: z.ZodType };

/** The wire schema of each kind of result; a void result travels as no result. */
const RESULT_SCHEMAS = {
  void: Void,
  domainRef: DomainRefSchema,
  domainSummary: DomainSummarySchema,
  domainSummaries: z.array(DomainSummarySchema).max(LIMITS.listEntries),
  xml: Xml,
  name: Name,
  names: z.array(Name).max(LIMITS.listEntries),
  count: Count,
  status: Int,
  jobIds: z.array(Count).max(LIMITS.listEntries),
  jobStats: JobStatsSchema,
  unknownBitmaps: z.array(z.object({ disk: Name, bitmap: Name })).max(LIMITS.listEntries),
  boolean: z.boolean(),
  blockJobInfo: BlockJobInfoSchema,
  // one per disk at most, and a domain's disks are bounded by its XML
  diskErrors: z.array(DiskErrorSchema).max(LIMITS.listEntries),
} satisfies { [K in ResultKind]: z.ZodType };

type WireResult<K extends ResultKind> = K extends 'void' ? undefined : ResultTypes[K];

/** The procedure of one entry point: its row's arguments, result and read-only rule. */
function entryProcedure(e: EntryPoint): Procedure {
  const args = z.tuple(e.args.map((a) => ARG_SCHEMAS[a.kind]) as unknown as [z.ZodType, ...z.ZodType[]]) as unknown as z.ZodType<unknown[]>;
  const doc = e.doc === undefined ? e.libvirt : `${e.libvirt}: ${e.doc}`;
  const p: Procedure = { args, result: RESULT_SCHEMAS[e.result], mutating: e.mutates, doc };
  // Only a row with a secure flag has the rule (docs/protocol.md says "with SECURE flag" for exactly those).
  if (e.secure !== null) p.deniedReadOnly = (a) => secureDenial(e, a);
  return p;
}

export type EntryProcedures = {
  [N in EntryPointName]: Procedure<Extract<EntryArgs<N>, unknown[]>, WireResult<(typeof entryPoints)[N]['result']>>;
};

/** The procedures of every entry point of `table`. */
export function entryProcedures(table: EntryPointTable): EntryProcedures {
  return Object.fromEntries(entryPointNames.map((n) => [n, entryProcedure(table[n])])) as unknown as EntryProcedures;
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

function proc<A extends unknown[], R>(p: Procedure<A, R>): Procedure<A, R> {
  return p;
}

/** The connection's own procedures (not Driver methods). */
const connectionProcedures = {
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
  domainOpenConsole: proc({
    args: z.tuple([Uuid, Name.nullable(), Flags]),
    result: StreamId,
    // a console is a shell on the guest: never for the read-only socket
    mutating: true,
    doc: "virDomainOpenConsole: opens the domain's console as a stream on this connection; returns the stream id",
  }),
};

export const procedures = { ...connectionProcedures, ...entryProcedures(entryPoints) };

type Procedures = typeof procedures;
export type ProcName = keyof Procedures;
export type ProcArgs<P extends ProcName> = z.output<Procedures[P]['args']>;
export type ProcResult<P extends ProcName> = z.output<Procedures[P]['result']>;

/** The procedures that are Driver methods (everything but the connection-level ones). */
export type DriverProcName = EntryPointName;

export const driverProcNames: DriverProcName[] = [...entryPointNames];

export function isProcName(name: string): name is ProcName {
  return Object.prototype.hasOwnProperty.call(procedures, name);
}

// Compile-time proof that the wire schemas carry exactly the table's types
// (api/entry-points.ts proves that the table and the Driver interface agree).
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const argsAgree: { [K in ArgKind]: Same<z.infer<(typeof ARG_SCHEMAS)[K]>, ArgTypes[K]> } = {
  uuid: true,
  uuidString: true,
  name: true,
  xml: true,
  xmlOrNull: true,
  command: true,
  mountpoints: true,
  jobId: true,
  boolean: true,
  disk: true,
  flags: true,
};
const resultsAgree: { [K in ResultKind]: Same<z.infer<(typeof RESULT_SCHEMAS)[K]>, WireResult<K>> } = {
  void: true,
  domainRef: true,
  domainSummary: true,
  domainSummaries: true,
  xml: true,
  name: true,
  names: true,
  count: true,
  status: true,
  jobIds: true,
  jobStats: true,
  unknownBitmaps: true,
  boolean: true,
  blockJobInfo: true,
  diskErrors: true,
};
void argsAgree;
void resultsAgree;
