// Pure NBD codec: encoders for handshake options and transmission requests,
// and a decoder that is fed arbitrary byte chunks and hands back whole
// messages. No sockets here; the client drives it.

import { virErr } from '../errors.js';
import { ByteQueue } from '../util/byte-queue.js';
import { protocolError } from './errors.js';
import * as P from './protocol.js';

// ---------------------------------------------------------------- encoders

function nbdString(what: string, s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > P.NBD_MAX_STRING) {
    throw virErr('INVALID_ARG', 'NBD', `${what} '${s.slice(0, 64)}…' is ${b.length} bytes, longer than the NBD limit of ${P.NBD_MAX_STRING}`);
  }
  return b;
}

/** The 32-bit client flags sent right after the server's greeting. */
export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** One fixed-newstyle option: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(P.OPTION_HEADER_SIZE);
  h.writeBigUInt64BE(P.NBD_NEW_VERSION, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** NBD_OPT_GO or NBD_OPT_INFO: export name and the information types we ask for. */
export function encodeInfoRequest(option: typeof P.NBD_OPT_GO | typeof P.NBD_OPT_INFO, exportName: string, infos: readonly number[]): Buffer {
  const name = nbdString('export name', exportName);
  const data = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  let p = 4 + name.length;
  data.writeUInt16BE(infos.length, p);
  p += 2;
  for (const i of infos) {
    data.writeUInt16BE(i, p);
    p += 2;
  }
  return encodeOption(option, data);
}

/** NBD_OPT_SET_META_CONTEXT or NBD_OPT_LIST_META_CONTEXT: export name and context queries. */
export function encodeMetaContextRequest(
  option: typeof P.NBD_OPT_SET_META_CONTEXT | typeof P.NBD_OPT_LIST_META_CONTEXT,
  exportName: string,
  queries: readonly string[],
): Buffer {
  const name = nbdString('export name', exportName);
  const qs = queries.map((q) => nbdString('metadata context', q));
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4);
  head.writeUInt32BE(name.length, 0);
  parts.push(head, name);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(qs.length, 0);
  parts.push(count);
  for (const q of qs) {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(q.length, 0);
    parts.push(len, q);
  }
  return encodeOption(option, Buffer.concat(parts));
}

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

/** A 28-byte transmission request header; a WRITE's payload follows it on the wire. */
export function encodeRequest(r: Request): Buffer {
  const b = Buffer.alloc(P.REQUEST_SIZE);
  b.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

// ---------------------------------------------------------------- handshake payload parsers

export type InfoReply =
  | { info: 'export'; size: number; flags: number }
  | { info: 'name'; name: string }
  | { info: 'description'; description: string }
  | { info: 'blockSize'; minimum: number; preferred: number; maximum: number }
  | { info: 'unknown'; type: number };

function safeOffset(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${what} ${v} is beyond 2^53`);
  return Number(v);
}

/** Payload of an NBD_REP_INFO reply. */
export function parseInfoReply(data: Buffer): InfoReply {
  if (data.length < 2) throw protocolError(`NBD_REP_INFO reply of ${data.length} bytes is too short`);
  const type = data.readUInt16BE(0);
  switch (type) {
    case P.NBD_INFO_EXPORT:
      if (data.length !== 12) throw protocolError(`NBD_INFO_EXPORT reply has length ${data.length}, expected 12`);
      return { info: 'export', size: safeOffset(data.readBigUInt64BE(2), 'export size'), flags: data.readUInt16BE(10) };
    case P.NBD_INFO_NAME:
      return { info: 'name', name: data.subarray(2).toString('utf8') };
    case P.NBD_INFO_DESCRIPTION:
      return { info: 'description', description: data.subarray(2).toString('utf8') };
    case P.NBD_INFO_BLOCK_SIZE: {
      if (data.length !== 14) throw protocolError(`NBD_INFO_BLOCK_SIZE reply has length ${data.length}, expected 14`);
      const minimum = data.readUInt32BE(2);
      const preferred = data.readUInt32BE(6);
      const maximum = data.readUInt32BE(10);
      const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
      if (!pow2(minimum) || minimum > 65536 || !pow2(preferred) || preferred < minimum || maximum < preferred) {
        throw protocolError(`NBD_INFO_BLOCK_SIZE has inconsistent sizes minimum=${minimum} preferred=${preferred} maximum=${maximum}`);
      }
      return { info: 'blockSize', minimum, preferred, maximum };
    }
    default:
      // Spec: a client must ignore information types it does not know.
      return { info: 'unknown', type };
  }
}

/** Payload of an NBD_REP_META_CONTEXT reply: the server's id for one context name. */
export function parseMetaContextReply(data: Buffer): { id: number; name: string } {
  if (data.length < 5) throw protocolError(`NBD_REP_META_CONTEXT reply of ${data.length} bytes is too short`);
  return { id: data.readUInt32BE(0), name: data.subarray(4).toString('utf8') };
}

// ---------------------------------------------------------------- decoder

export interface Extent32 {
  length: number;
  flags: number;
}

export type Chunk =
  | { type: 'none' }
  /** `inPlace`: the bytes were copied into the buffer the transmission's `dataSink` gave for them (data is that buffer). */
  | { type: 'offsetData'; offset: number; data: Buffer; inPlace?: boolean }
  | { type: 'offsetHole'; offset: number; length: number }
  | { type: 'blockStatus'; contextId: number; descriptors: Extent32[] }
  | { type: 'error'; replyType: number; error: number; message: string }
  | { type: 'errorOffset'; error: number; message: string; offset: number };

export type NbdMessage =
  | { kind: 'greeting'; handshakeFlags: number }
  | { kind: 'optionReply'; option: number; reply: number; data: Buffer }
  | { kind: 'simpleReply'; cookie: bigint; error: number; data: Buffer | undefined }
  | { kind: 'chunk'; cookie: bigint; flags: number; done: boolean; chunk: Chunk };

export interface DecoderLimits {
  /** Largest option reply payload accepted during the handshake. */
  maxOptionReply?: number;
  /** Largest data payload in one OFFSET_DATA chunk or simple read reply. */
  maxData?: number;
  /** Largest BLOCK_STATUS chunk payload (spec: servers send at most 4 + 8 * 2^20). */
  maxBlockStatus?: number;
}

export interface TransmissionSetup {
  structuredReplies: boolean;
  /**
   * For a simple reply with error 0: how many data bytes follow for this cookie
   * (the read length, 0 for other commands), or undefined if the cookie is not in flight.
   * Simple replies cannot be framed without it.
   */
  simpleReplyLength: (cookie: bigint) => number | undefined;
  /**
   * Optional: where the data of an OFFSET_DATA chunk should land. Given the
   * chunk's cookie, offset and data length, return a buffer of exactly that
   * length and the decoder copies the payload into it as it arrives (no
   * whole-payload buffering, one copy); undefined decodes as usual.
   */
  dataSink?: (cookie: bigint, offset: number, length: number) => Buffer | undefined;
}

/** An OFFSET_DATA payload being copied into a sink buffer as bytes arrive. */
interface Streaming {
  cookie: bigint;
  flags: number;
  offset: number;
  target: Buffer;
  filled: number;
}

type Phase = 'greeting' | 'options' | 'transmission';

/**
 * Incremental decoder. `feed()` bytes as they arrive, then call `next()` until it
 * returns undefined. Messages are produced one at a time so the caller can switch
 * phase (`startTransmission`) exactly at a message boundary. A protocol violation
 * throws and poisons the decoder: every later `next()` throws the same error.
 */
export class NbdDecoder {
  private readonly bytes = new ByteQueue();
  private phase: Phase = 'greeting';
  private failed: Error | undefined;
  private transmission: TransmissionSetup | undefined;
  private pendingHeader: Buffer | undefined;
  /** pendingHeader is already a copy of its own (ownBuffered ran since it was taken). */
  private headerOwned = false;
  private streaming: Streaming | undefined;
  /** The last message returned was an OFFSET_DATA chunk streamed into its sink. */
  private lastStreamed = false;
  private readonly maxOptionReply: number;
  private readonly maxData: number;
  private readonly maxBlockStatus: number;

  constructor(limits: DecoderLimits = {}) {
    this.maxOptionReply = limits.maxOptionReply ?? 64 * 1024;
    this.maxData = limits.maxData ?? P.DEFAULT_MAX_PAYLOAD;
    this.maxBlockStatus = limits.maxBlockStatus ?? 4 + 8 * (1 << 20);
  }

  /** Bytes received but not yet returned as messages. */
  get buffered(): number {
    return this.bytes.length;
  }

  feed(chunk: Buffer): void {
    const s = this.streaming;
    if (s && this.bytes.length === 0 && !this.failed) {
      // The common case while a large read streams in: straight from the socket's chunk into the sink.
      const n = Math.min(chunk.length, s.target.length - s.filled);
      chunk.copy(s.target, s.filled, 0, n);
      s.filled += n;
      chunk = chunk.subarray(n);
    }
    this.bytes.push(chunk);
  }

  /**
   * The chunks fed so far are about to be overwritten (the client reads the
   * socket into one reused buffer): copy the undecoded rest. Messages already
   * returned by next() may share memory with them; consume them first.
   * Returns the bytes copied: each received byte is copied at most once, however
   * many reads a large reply (block status: up to 8 MiB) takes to arrive.
   */
  ownBuffered(): number {
    let copied = this.bytes.own();
    // a header taken while its payload is still arriving (copied again only when it was still borrowed)
    if (this.pendingHeader && !this.headerOwned) {
      this.pendingHeader = Buffer.from(this.pendingHeader);
      copied += this.pendingHeader.length;
    }
    this.headerOwned = this.pendingHeader !== undefined;
    return copied;
  }

  /**
   * Where the next received bytes may be read straight to: the rest of the
   * OFFSET_DATA payload being copied into its sink, when nothing else is
   * queued before it (no copy at all then). Report what landed with filledInPlace().
   */
  inPlaceTarget(): Buffer | undefined {
    const s = this.streaming;
    if (!s || this.bytes.length > 0 || this.failed) return undefined;
    return s.target.subarray(s.filled);
  }

  /** `n` bytes were read straight into inPlaceTarget(). */
  filledInPlace(n: number): void {
    const s = this.streaming;
    if (!s || n > s.target.length - s.filled) throw virErr('INTERNAL_ERROR', 'NBD', `NBD decoder was told of ${n} bytes read in place with ${s ? s.target.length - s.filled : 0} expected`);
    s.filled += n;
  }

  /**
   * Nothing queued or half-decoded, and the last reply was data streamed into
   * its sink: the next bytes are most likely another data chunk's header, worth
   * reading on their own so that its payload can land in place.
   */
  get expectsDataHeader(): boolean {
    return this.lastStreamed && this.bytes.length === 0 && !this.pendingHeader && !this.streaming && !this.failed;
  }

  /** Leave the handshake: from now on bytes are replies to requests. */
  startTransmission(setup: TransmissionSetup): void {
    if (this.phase !== 'options') throw virErr('INTERNAL_ERROR', 'NBD', `NBD decoder cannot start transmission in phase '${this.phase}'`);
    this.phase = 'transmission';
    this.transmission = setup;
  }

  next(): NbdMessage | undefined {
    if (this.failed) throw this.failed;
    try {
      const m = this.decodeOne();
      if (m) this.lastStreamed = m.kind === 'chunk' && m.chunk.type === 'offsetData' && m.chunk.inPlace === true;
      return m;
    } catch (e) {
      this.failed = e as Error;
      throw e;
    }
  }

  private decodeOne(): NbdMessage | undefined {
    switch (this.phase) {
      case 'greeting': {
        const b = this.bytes.take(P.GREETING_SIZE);
        if (!b) return undefined;
        const magic = b.readBigUInt64BE(0);
        if (magic !== P.NBD_MAGIC) throw protocolError(`greeting starts with 0x${magic.toString(16)}, not NBDMAGIC`);
        const version = b.readBigUInt64BE(8);
        if (version === P.NBD_OLD_VERSION) throw protocolError('server speaks the oldstyle handshake, which is not supported');
        if (version !== P.NBD_NEW_VERSION) throw protocolError(`greeting has 0x${version.toString(16)} after NBDMAGIC, not IHAVEOPT`);
        this.phase = 'options';
        return { kind: 'greeting', handshakeFlags: b.readUInt16BE(16) };
      }
      case 'options': {
        const h = this.header(P.OPTION_REPLY_HEADER_SIZE);
        if (!h) return undefined;
        const magic = h.readBigUInt64BE(0);
        if (magic !== P.NBD_REP_MAGIC) throw protocolError(`option reply magic is 0x${magic.toString(16)}, expected 0x${P.NBD_REP_MAGIC.toString(16)}`);
        const option = h.readUInt32BE(8);
        const reply = h.readUInt32BE(12);
        const length = h.readUInt32BE(16);
        if (length > this.maxOptionReply) {
          throw protocolError(`reply to ${P.OPTION_NAMES[option] ?? `option ${option}`} has a ${length}-byte payload, more than the ${this.maxOptionReply} accepted`);
        }
        const data = this.bytes.take(length);
        if (!data) return undefined;
        this.pendingHeader = undefined;
        return { kind: 'optionReply', option, reply, data };
      }
      case 'transmission':
        return this.decodeReply();
    }
  }

  private decodeReply(): NbdMessage | undefined {
    const setup = this.transmission!;
    if (this.streaming) return this.continueStreaming();
    // Both reply kinds start with a 32-bit magic; peek it to know the header size.
    if (!this.pendingHeader) {
      const m = this.bytes.peek(4);
      if (!m) return undefined;
      const magic = m.readUInt32BE(0);
      if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
        const h = this.header(P.SIMPLE_REPLY_SIZE);
        if (!h) return undefined;
      } else if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) {
        if (!setup.structuredReplies) throw protocolError('structured reply received although structured replies were not negotiated');
        const h = this.header(P.STRUCTURED_REPLY_HEADER_SIZE);
        if (!h) return undefined;
      } else {
        throw protocolError(`reply magic is 0x${magic.toString(16).padStart(8, '0')}, neither simple nor structured`);
      }
    }
    const h = this.pendingHeader!;
    const magic = h.readUInt32BE(0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
      const error = h.readUInt32BE(4);
      const cookie = h.readBigUInt64BE(8);
      let length = 0;
      if (error === 0) {
        const n = setup.simpleReplyLength(cookie);
        if (n === undefined) throw protocolError(`simple reply for cookie ${cookie}, which is not in flight`);
        if (n > this.maxData) throw protocolError(`simple reply for cookie ${cookie} would carry ${n} bytes, more than ${this.maxData}`);
        length = n;
      }
      const data = length > 0 ? this.bytes.take(length) : undefined;
      if (length > 0 && !data) return undefined;
      this.pendingHeader = undefined;
      return { kind: 'simpleReply', cookie, error, data };
    }
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const cookie = h.readBigUInt64BE(8);
    const length = h.readUInt32BE(16);
    const done = (flags & P.NBD_REPLY_FLAG_DONE) !== 0;
    this.checkChunkLength(type, length, done, cookie);
    if (type === P.NBD_REPLY_TYPE_OFFSET_DATA && setup.dataSink) {
      const head = this.bytes.peek(8);
      if (!head) return undefined;
      const offset = safeOffset(head.readBigUInt64BE(0), `offset in ${chunkTypeName(type)} chunk for cookie ${cookie}`);
      const target = setup.dataSink(cookie, offset, length - 8);
      if (target) {
        if (target.length !== length - 8) throw virErr('INTERNAL_ERROR', 'NBD', `NBD data sink gave ${target.length} bytes for a ${length - 8}-byte payload`);
        this.bytes.take(8);
        this.pendingHeader = undefined;
        this.streaming = { cookie, flags, offset, target, filled: 0 };
        return this.continueStreaming();
      }
      // No sink for this one: decoded whole below (asking again is cheap while it arrives).
    }
    const payload = length > 0 ? this.bytes.take(length) : Buffer.alloc(0);
    if (!payload) return undefined;
    this.pendingHeader = undefined;
    return { kind: 'chunk', cookie, flags, done, chunk: parseChunk(type, payload, cookie) };
  }

  /** Move queued bytes into the sink buffer; the chunk is complete once it is full. */
  private continueStreaming(): NbdMessage | undefined {
    const s = this.streaming!;
    while (s.filled < s.target.length && this.bytes.length > 0) {
      const part = this.bytes.take(Math.min(this.bytes.length, s.target.length - s.filled))!;
      part.copy(s.target, s.filled);
      s.filled += part.length;
    }
    if (s.filled < s.target.length) return undefined;
    this.streaming = undefined;
    const done = (s.flags & P.NBD_REPLY_FLAG_DONE) !== 0;
    return { kind: 'chunk', cookie: s.cookie, flags: s.flags, done, chunk: { type: 'offsetData', offset: s.offset, data: s.target, inPlace: true } };
  }

  /** Reject impossible or oversized lengths before buffering the payload. */
  private checkChunkLength(type: number, length: number, done: boolean, cookie: bigint): void {
    const where = `in ${chunkTypeName(type)} chunk for cookie ${cookie}`;
    switch (type) {
      case P.NBD_REPLY_TYPE_NONE:
        if (length !== 0) throw protocolError(`payload length ${length} ${where}, must be 0`);
        if (!done) throw protocolError(`NBD_REPLY_FLAG_DONE missing ${where}`);
        return;
      case P.NBD_REPLY_TYPE_OFFSET_DATA:
        if (length <= 8) throw protocolError(`payload length ${length} ${where}, must exceed 8`);
        if (length - 8 > this.maxData) throw protocolError(`${length - 8} data bytes ${where}, more than ${this.maxData}`);
        return;
      case P.NBD_REPLY_TYPE_OFFSET_HOLE:
        if (length !== 12) throw protocolError(`payload length ${length} ${where}, must be 12`);
        return;
      case P.NBD_REPLY_TYPE_BLOCK_STATUS:
        if (length < 12 || (length - 4) % 8 !== 0) throw protocolError(`payload length ${length} ${where}, must be 4 + a positive multiple of 8`);
        if (length > this.maxBlockStatus) throw protocolError(`payload length ${length} ${where}, more than ${this.maxBlockStatus}`);
        return;
      default:
        if (type & P.NBD_REPLY_TYPE_ERR_BIT) {
          const min = type === P.NBD_REPLY_TYPE_ERROR_OFFSET ? 14 : 6;
          if (length < min) throw protocolError(`payload length ${length} ${where}, must be at least ${min}`);
          if (length > 6 + P.NBD_MAX_STRING + 64) throw protocolError(`payload length ${length} ${where} is implausibly large`);
          return;
        }
        throw protocolError(`unknown reply type ${type} for cookie ${cookie}`);
    }
  }

  /** Read a fixed header once and keep it until its payload has arrived too. */
  private header(size: number): Buffer | undefined {
    if (this.pendingHeader) return this.pendingHeader;
    const h = this.bytes.take(size);
    if (h) {
      this.pendingHeader = h;
      this.headerOwned = false;
    }
    return h;
  }
}

export function chunkTypeName(type: number): string {
  switch (type) {
    case P.NBD_REPLY_TYPE_NONE: return 'NBD_REPLY_TYPE_NONE';
    case P.NBD_REPLY_TYPE_OFFSET_DATA: return 'NBD_REPLY_TYPE_OFFSET_DATA';
    case P.NBD_REPLY_TYPE_OFFSET_HOLE: return 'NBD_REPLY_TYPE_OFFSET_HOLE';
    case P.NBD_REPLY_TYPE_BLOCK_STATUS: return 'NBD_REPLY_TYPE_BLOCK_STATUS';
    case P.NBD_REPLY_TYPE_ERROR: return 'NBD_REPLY_TYPE_ERROR';
    case P.NBD_REPLY_TYPE_ERROR_OFFSET: return 'NBD_REPLY_TYPE_ERROR_OFFSET';
    default: return `reply type ${type}`;
  }
}

function parseChunk(type: number, p: Buffer, cookie: bigint): Chunk {
  const where = `in ${chunkTypeName(type)} chunk for cookie ${cookie}`;
  switch (type) {
    case P.NBD_REPLY_TYPE_NONE:
      return { type: 'none' };
    case P.NBD_REPLY_TYPE_OFFSET_DATA:
      return { type: 'offsetData', offset: safeOffset(p.readBigUInt64BE(0), `offset ${where}`), data: p.subarray(8) };
    case P.NBD_REPLY_TYPE_OFFSET_HOLE: {
      const length = p.readUInt32BE(8);
      if (length === 0) throw protocolError(`zero hole size ${where}`);
      return { type: 'offsetHole', offset: safeOffset(p.readBigUInt64BE(0), `offset ${where}`), length };
    }
    case P.NBD_REPLY_TYPE_BLOCK_STATUS: {
      const contextId = p.readUInt32BE(0);
      const descriptors: Extent32[] = [];
      for (let i = 4; i < p.length; i += 8) {
        const length = p.readUInt32BE(i);
        if (length === 0) throw protocolError(`zero-length extent ${(i - 4) / 8} ${where}`);
        descriptors.push({ length, flags: p.readUInt32BE(i + 4) });
      }
      return { type: 'blockStatus', contextId, descriptors };
    }
    default: {
      // Error chunk category (bit 15); lengths were checked in checkChunkLength.
      const error = p.readUInt32BE(0);
      const msgLen = p.readUInt16BE(4);
      const fixedTail = type === P.NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
      if (msgLen > p.length - 6 - fixedTail) throw protocolError(`message length ${msgLen} does not fit payload length ${p.length} ${where}`);
      if (error === 0) throw protocolError(`error value 0 ${where}`);
      const message = p.subarray(6, 6 + msgLen).toString('utf8');
      if (type === P.NBD_REPLY_TYPE_ERROR_OFFSET) {
        if (p.length !== 14 + msgLen) throw protocolError(`payload length ${p.length} ${where}, expected ${14 + msgLen}`);
        return { type: 'errorOffset', error, message, offset: safeOffset(p.readBigUInt64BE(6 + msgLen), `offset ${where}`) };
      }
      return { type: 'error', replyType: type, error, message };
    }
  }
}
