// The NBD server's handshake as a pure state machine: each option the client
// sends is answered with the bytes to write back, and NBD_OPT_GO (or the old
// NBD_OPT_EXPORT_NAME) ends it with the export chosen and what was agreed.
// The socket edge (server.ts) only moves bytes; this file decides.

import * as P from './protocol.js';
import {
  OptionPayloadError,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerName,
  parseInfoRequest,
  parseMetaContextRequest,
} from './server-codec.js';

/** What the handshake needs to know of an export. */
export interface ExportInfo {
  readonly size: number;
  /** NBD_INFO_BLOCK_SIZE's preferred size (a power of two ≥ 512), e.g. the chunk size of a repository. */
  readonly preferredBlockSize: number;
}

/** Every export is read-only; several connections see the same bytes, so MULTI_CONN is safe. */
export const EXPORT_FLAGS = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_READ_ONLY | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_CAN_MULTI_CONN;
export const HANDSHAKE_FLAGS = P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES;
/** The one metadata context served. */
export const BASE_ALLOCATION_ID = 1;
export const MIN_BLOCK = 1;

/** The outcome of the handshake for one connection. */
export interface Agreed {
  exportName: string;
  structuredReplies: boolean;
  /** True when base:allocation was selected for this export. */
  baseAllocation: boolean;
}

export type OptionOutcome =
  | { reply: Buffer[] }
  | { reply: Buffer[]; go: Agreed }
  | { reply: Buffer[]; close: true };

export class OptionNegotiation {
  private structured = false;
  private noZeroes = false;
  /** The export SET_META_CONTEXT selected base:allocation for, if any. */
  private metaFor: string | undefined;

  constructor(
    private readonly exports: ReadonlyMap<string, ExportInfo>,
    private readonly maxPayload: number = P.DEFAULT_MAX_PAYLOAD,
  ) {}

  /** The client's 32-bit flags; false when they must close the connection (unknown bits, or not fixed newstyle). */
  clientFlags(flags: number): boolean {
    const known = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES;
    if ((flags & ~known) !== 0 || (flags & P.NBD_FLAG_C_FIXED_NEWSTYLE) === 0) return false;
    this.noZeroes = (flags & P.NBD_FLAG_C_NO_ZEROES) !== 0;
    return true;
  }

  option(option: number, data: Buffer): OptionOutcome {
    try {
      return this.answer(option, data);
    } catch (e) {
      if (!(e instanceof OptionPayloadError)) throw e;
      return { reply: [encodeOptionReply(option, P.NBD_REP_ERR_INVALID, Buffer.from(e.message))] };
    }
  }

  private answer(option: number, data: Buffer): OptionOutcome {
    const ack = encodeOptionReply(option, P.NBD_REP_ACK);
    switch (option) {
      case P.NBD_OPT_ABORT:
        return { reply: [ack], close: true };
      case P.NBD_OPT_LIST:
        if (data.length !== 0) throw new OptionPayloadError('NBD_OPT_LIST carries no data');
        return { reply: [...[...this.exports.keys()].map((n) => encodeOptionReply(option, P.NBD_REP_SERVER, encodeServerName(n))), ack] };
      case P.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) throw new OptionPayloadError('NBD_OPT_STRUCTURED_REPLY carries no data');
        this.structured = true;
        return { reply: [ack] };
      case P.NBD_OPT_LIST_META_CONTEXT:
      case P.NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      case P.NBD_OPT_INFO:
      case P.NBD_OPT_GO:
        return this.infoOrGo(option, data);
      case P.NBD_OPT_EXPORT_NAME: {
        // No way to report an error here: an unknown name closes the connection.
        const name = data.toString('utf8');
        const e = this.exports.get(name);
        if (!e) return { reply: [], close: true };
        return { reply: [encodeExportNameReply(e.size, EXPORT_FLAGS, this.noZeroes)], go: this.agreed(name) };
      }
      default:
        return { reply: [encodeOptionReply(option, P.NBD_REP_ERR_UNSUP, Buffer.from(`option ${option} is not supported`))] };
    }
  }

  private metaContext(option: number, data: Buffer): OptionOutcome {
    if (!this.structured) {
      return { reply: [encodeOptionReply(option, P.NBD_REP_ERR_INVALID, Buffer.from('metadata contexts need structured replies first'))] };
    }
    const { name, queries } = parseMetaContextRequest(data);
    const set = option === P.NBD_OPT_SET_META_CONTEXT;
    if (!this.exports.has(name)) {
      return { reply: [encodeOptionReply(option, P.NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${name}'`))] };
    }
    // LIST with no queries lists everything; 'base:' matches the whole namespace.
    const match = (q: string) => q === P.CONTEXT_BASE_ALLOCATION || q === 'base:';
    const selected = queries.some(match) || (!set && queries.length === 0);
    if (set) this.metaFor = selected ? name : undefined;
    const reply = selected ? [encodeOptionReply(option, P.NBD_REP_META_CONTEXT, encodeMetaContext(set ? BASE_ALLOCATION_ID : 0, P.CONTEXT_BASE_ALLOCATION))] : [];
    return { reply: [...reply, encodeOptionReply(option, P.NBD_REP_ACK)] };
  }

  private infoOrGo(option: number, data: Buffer): OptionOutcome {
    const { name, infos } = parseInfoRequest(data);
    const e = this.exports.get(name);
    if (!e) return { reply: [encodeOptionReply(option, P.NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${name}'`))] };
    const reply = [encodeOptionReply(option, P.NBD_REP_INFO, encodeInfoExport(e.size, EXPORT_FLAGS))];
    // Block sizes are always sent: the maximum is a limit this server enforces.
    reply.push(encodeOptionReply(option, P.NBD_REP_INFO, encodeInfoBlockSize(MIN_BLOCK, e.preferredBlockSize, this.maxPayload)));
    if (infos.includes(P.NBD_INFO_NAME)) reply.push(encodeOptionReply(option, P.NBD_REP_INFO, encodeInfoName(name)));
    reply.push(encodeOptionReply(option, P.NBD_REP_ACK));
    if (option === P.NBD_OPT_INFO) return { reply };
    return { reply, go: this.agreed(name) };
  }

  private agreed(name: string): Agreed {
    return { exportName: name, structuredReplies: this.structured, baseAllocation: this.structured && this.metaFor === name };
  }
}
