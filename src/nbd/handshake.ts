// The NBD fixed newstyle handshake, one method per step of the spec:
// greeting and client flags, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT,
// NBD_OPT_GO (with NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE). It sees the
// connection only through HandshakeIo, so the client keeps the socket and its
// failure path; what was agreed comes back as one value.

import { encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, parseInfoReply, parseMetaContextReply, type NbdMessage } from './codec.js';
import { connectionError, protocolError, type NbdError } from './errors.js';
import * as P from './protocol.js';

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
  /** False when the server did not send NBD_INFO_BLOCK_SIZE and these are the spec's defaults. */
  advertised: boolean;
}

/** The spec's block sizes for a server that does not advertise them. */
export const DEFAULT_BLOCK_SIZES: BlockSizes = { minimum: 1, preferred: 4096, maximum: P.DEFAULT_MAX_PAYLOAD, advertised: false };

/** What client and server agreed on; the transmission phase starts from it. */
export interface Negotiated {
  structuredReplies: boolean;
  /** context name -> server-chosen id */
  metaContexts: Map<string, number>;
  /** export size in bytes */
  size: number;
  /** transmission flags (NBD_FLAG_*) */
  flags: number;
  blockSizes: BlockSizes;
}

/** The handshake's view of the connection. */
export interface HandshakeIo {
  write(bytes: Buffer): void;
  /** The next decoded message; rejects once the connection failed. */
  next(): Promise<NbdMessage>;
  /** Kills the connection with `e` and returns the error that stuck (to throw). */
  fail(e: NbdError): NbdError;
  /** Present when TLS is wanted: wrap the connection once the server ACKed NBD_OPT_STARTTLS. */
  startTls?(): Promise<void>;
}

type OptionReply = NbdMessage & { kind: 'optionReply' };

function errorReplyText(msg: { reply: number; data: Buffer }): string {
  const name = P.REPLY_NAMES[msg.reply] ?? `reply type 0x${msg.reply.toString(16)}`;
  const text = msg.data.toString('utf8');
  return text ? `${name}: ${text}` : name;
}

const quoted = (names: string[]): string => names.map((c) => `'${c}'`).join(', ');

export class Handshake {
  private readonly agreed: Negotiated = {
    structuredReplies: false,
    metaContexts: new Map(),
    size: 0,
    flags: 0,
    blockSizes: DEFAULT_BLOCK_SIZES,
  };

  constructor(
    private readonly io: HandshakeIo,
    private readonly uri: string,
    private readonly exportName: string,
  ) {}

  /** The whole handshake: the export opened, with `contexts` negotiated. */
  async run(contexts: string[]): Promise<Negotiated> {
    await this.greeting();
    if (this.io.startTls) await this.optStartTls(this.io.startTls);
    await this.optStructuredReply(contexts.length > 0);
    if (contexts.length > 0) await this.optSetMetaContext(contexts);
    await this.optGo();
    return this.agreed;
  }

  /** The server's greeting (fixed newstyle required), answered with our client flags. */
  async greeting(): Promise<void> {
    const greeting = await this.io.next();
    if (greeting.kind !== 'greeting') throw this.io.fail(protocolError('handshake did not start with a greeting'));
    if (!(greeting.handshakeFlags & P.NBD_FLAG_FIXED_NEWSTYLE)) {
      throw this.io.fail(protocolError(`server ${this.uri} does not support the fixed newstyle handshake`));
    }
    let clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE;
    if (greeting.handshakeFlags & P.NBD_FLAG_NO_ZEROES) clientFlags |= P.NBD_FLAG_C_NO_ZEROES;
    this.io.write(encodeClientFlags(clientFlags));
  }

  /** NBD_OPT_STARTTLS: after its ACK everything, the remaining options included, runs over TLS. */
  async optStartTls(upgrade: () => Promise<void>): Promise<void> {
    this.io.write(encodeOption(P.NBD_OPT_STARTTLS));
    const r = await this.optionReply(P.NBD_OPT_STARTTLS);
    if (P.isRepError(r.reply)) throw this.io.fail(connectionError(`NBD server ${this.uri} refused TLS (${errorReplyText(r)} to NBD_OPT_STARTTLS)`));
    if (r.reply !== P.NBD_REP_ACK) throw this.io.fail(protocolError(`unexpected ${errorReplyText(r)} to NBD_OPT_STARTTLS`));
    await upgrade();
  }

  /** Structured replies: needed for sparse reads and for block status (`required` when contexts are wanted). */
  async optStructuredReply(required: boolean): Promise<void> {
    this.io.write(encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
    const r = await this.optionReply(P.NBD_OPT_STRUCTURED_REPLY);
    if (r.reply === P.NBD_REP_ACK) this.agreed.structuredReplies = true;
    else if (!P.isRepError(r.reply)) throw this.io.fail(protocolError(`unexpected ${errorReplyText(r)} to NBD_OPT_STRUCTURED_REPLY`));
    else if (required) {
      throw this.io.fail(connectionError(`NBD server ${this.uri} refused structured replies (${errorReplyText(r)}), so metadata contexts cannot be used`));
    }
  }

  /** Select exactly `contexts` (full names); every one must be granted. */
  async optSetMetaContext(contexts: string[]): Promise<void> {
    this.io.write(encodeMetaContextRequest(P.NBD_OPT_SET_META_CONTEXT, this.exportName, contexts));
    for (;;) {
      const r = await this.optionReply(P.NBD_OPT_SET_META_CONTEXT);
      if (r.reply === P.NBD_REP_ACK) break;
      if (r.reply === P.NBD_REP_META_CONTEXT) {
        const { id, name } = parseMetaContextReply(r.data);
        if (!contexts.includes(name)) throw this.io.fail(protocolError(`server selected metadata context '${name}' that was not asked for`));
        this.agreed.metaContexts.set(name, id);
      } else if (P.isRepError(r.reply)) {
        throw this.io.fail(connectionError(`NBD server ${this.uri} refused NBD_OPT_SET_META_CONTEXT for ${quoted(contexts)}: ${errorReplyText(r)}`));
      } else {
        throw this.io.fail(protocolError(`unexpected ${errorReplyText(r)} to NBD_OPT_SET_META_CONTEXT`));
      }
    }
    const missing = contexts.filter((c) => !this.agreed.metaContexts.has(c));
    if (missing.length > 0) {
      throw this.io.fail(connectionError(`NBD export '${this.exportName}' at ${this.uri} does not offer metadata context ${quoted(missing)}`));
    }
  }

  /** Open the export, learning its size, flags and block sizes; transmission follows the ACK. */
  async optGo(): Promise<void> {
    this.io.write(encodeInfoRequest(P.NBD_OPT_GO, this.exportName, [P.NBD_INFO_EXPORT, P.NBD_INFO_BLOCK_SIZE]));
    let haveExport = false;
    for (;;) {
      const r = await this.optionReply(P.NBD_OPT_GO);
      if (r.reply === P.NBD_REP_ACK) break;
      if (r.reply === P.NBD_REP_INFO) {
        const info = parseInfoReply(r.data);
        if (info.info === 'export') {
          this.agreed.size = info.size;
          this.agreed.flags = info.flags;
          haveExport = true;
        } else if (info.info === 'blockSize') {
          this.agreed.blockSizes = { minimum: info.minimum, preferred: info.preferred, maximum: info.maximum, advertised: true };
        }
      } else if (P.isRepError(r.reply)) {
        const hint = r.reply === P.NBD_REP_ERR_UNKNOWN ? `export '${this.exportName}' not found` : r.reply === P.NBD_REP_ERR_TLS_REQD ? 'server requires TLS' : 'refused';
        throw this.io.fail(connectionError(`NBD server ${this.uri}: ${hint} (${errorReplyText(r)} to NBD_OPT_GO)`));
      } else {
        throw this.io.fail(protocolError(`unexpected ${errorReplyText(r)} to NBD_OPT_GO`));
      }
    }
    if (!haveExport) throw this.io.fail(protocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT'));
  }

  /** The next message, which must be a reply to `option`. */
  private async optionReply(option: number): Promise<OptionReply> {
    const m = await this.io.next();
    if (m.kind !== 'optionReply') throw this.io.fail(protocolError(`expected a reply to ${P.OPTION_NAMES[option]}, got ${m.kind}`));
    if (m.option !== option) {
      throw this.io.fail(protocolError(`reply to ${P.OPTION_NAMES[m.option] ?? `option ${m.option}`} received while waiting for ${P.OPTION_NAMES[option]}`));
    }
    return m;
  }
}
