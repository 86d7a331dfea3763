// Pure NBD codec, server side: a decoder fed arbitrary byte chunks that hands
// back the client's flags, options and transmission requests, and encoders for
// everything a read-only server sends. Bounded: an option or a request that a
// hostile client makes too large poisons the decoder (the connection closes)
// before its payload is buffered. The client's side lives in codec.ts.

import { virErr } from '../errors.js';
import { ByteQueue } from '../util/byte-queue.js';
import * as P from './protocol.js';

// ---------------------------------------------------------------- decoder

export type ClientMessage =
  | { kind: 'clientFlags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer }
  | { kind: 'request'; flags: number; type: number; cookie: bigint; offset: number; length: number };

export interface ServerDecoderLimits {
  /** Largest option payload accepted (the spec's strings are ≤ 4096 bytes; a few of them fit). */
  maxOption?: number;
  /** Largest WRITE payload the decoder skips to stay in frame; larger ones close the connection. */
  maxPayload?: number;
}

type Phase = 'clientFlags' | 'options' | 'transmission';

/** A frame the server cannot answer; the connection that sent it is closed. */
export function badFrame(message: string): Error {
  return virErr('RPC', 'NBD', `NBD client broke the protocol: ${message}`);
}

/**
 * Incremental decoder for the client's half of the conversation. `feed()` bytes,
 * then `next()` until undefined. The server switches to transmission with
 * `startTransmission()` after a successful NBD_OPT_GO / EXPORT_NAME. A WRITE's
 * payload is discarded as it arrives (the server is read-only) rather than
 * buffered. A violation throws and every later `next()` throws the same error.
 */
export class ServerDecoder {
  private readonly bytes = new ByteQueue();
  private phase: Phase = 'clientFlags';
  private failed: Error | undefined;
  private pendingOption: { option: number; length: number } | undefined;
  private skip = 0;
  private readonly maxOption: number;
  private readonly maxPayload: number;

  constructor(limits: ServerDecoderLimits = {}) {
    this.maxOption = limits.maxOption ?? 16 * 1024;
    this.maxPayload = limits.maxPayload ?? P.DEFAULT_MAX_PAYLOAD;
  }

  /** Bytes received and not yet decoded (a bound the caller can watch). */
  get buffered(): number {
    return this.bytes.length;
  }

  feed(chunk: Buffer): void {
    if (this.skip > 0) {
      const n = Math.min(this.skip, chunk.length);
      this.skip -= n;
      chunk = chunk.subarray(n);
    }
    this.bytes.push(chunk);
  }

  startTransmission(): void {
    if (this.phase !== 'options') throw virErr('INTERNAL_ERROR', 'NBD', `NBD server decoder cannot start transmission in phase '${this.phase}'`);
    this.phase = 'transmission';
  }

  next(): ClientMessage | undefined {
    if (this.failed) throw this.failed;
    try {
      return this.decodeOne();
    } catch (e) {
      this.failed = e as Error;
      throw e;
    }
  }

  private decodeOne(): ClientMessage | undefined {
    switch (this.phase) {
      case 'clientFlags': {
        const b = this.bytes.take(4);
        if (!b) return undefined;
        this.phase = 'options';
        return { kind: 'clientFlags', flags: b.readUInt32BE(0) };
      }
      case 'options':
        return this.decodeOption();
      case 'transmission':
        return this.decodeRequest();
    }
  }

  private decodeOption(): ClientMessage | undefined {
    if (!this.pendingOption) {
      const h = this.bytes.take(P.OPTION_HEADER_SIZE);
      if (!h) return undefined;
      const magic = h.readBigUInt64BE(0);
      if (magic !== P.NBD_NEW_VERSION) throw badFrame(`option starts with 0x${magic.toString(16)}, not IHAVEOPT`);
      const option = h.readUInt32BE(8);
      const length = h.readUInt32BE(12);
      if (length > this.maxOption) {
        throw badFrame(`${P.OPTION_NAMES[option] ?? `option ${option}`} carries ${length} bytes, more than the ${this.maxOption} accepted`);
      }
      this.pendingOption = { option, length };
    }
    const { option, length } = this.pendingOption;
    const data = this.bytes.takeCopy(length);
    if (!data) return undefined;
    this.pendingOption = undefined;
    return { kind: 'option', option, data };
  }

  private decodeRequest(): ClientMessage | undefined {
    const h = this.bytes.take(P.REQUEST_SIZE);
    if (!h) return undefined;
    const magic = h.readUInt32BE(0);
    if (magic !== P.NBD_REQUEST_MAGIC) throw badFrame(`request magic is 0x${magic.toString(16).padStart(8, '0')}`);
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const cookie = h.readBigUInt64BE(8);
    const offset64 = h.readBigUInt64BE(16);
    const length = h.readUInt32BE(24);
    // Offsets beyond 2^53 are past any export; the server answers EINVAL for them.
    const offset = offset64 > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset64);
    if (type === P.NBD_CMD_WRITE) {
      // The payload follows the header; drop it to stay in frame (the reply is EPERM).
      if (length > this.maxPayload) throw badFrame(`NBD_CMD_WRITE of ${length} bytes, more than ${this.maxPayload}`);
      const held = Math.min(length, this.bytes.length);
      this.bytes.take(held);
      this.skip = length - held;
    }
    return { kind: 'request', flags, type, cookie, offset, length };
  }
}

// ---------------------------------------------------------------- option payload parsers

/** Parse errors in an option's payload: the option is answered NBD_REP_ERR_INVALID, the connection stays. */
export class OptionPayloadError extends Error {}

function readString(data: Buffer, at: number, what: string): { value: string; end: number } {
  if (at + 4 > data.length) throw new OptionPayloadError(`${what} length is missing`);
  const n = data.readUInt32BE(at);
  if (n > P.NBD_MAX_STRING) throw new OptionPayloadError(`${what} is ${n} bytes, longer than ${P.NBD_MAX_STRING}`);
  if (at + 4 + n > data.length) throw new OptionPayloadError(`${what} of ${n} bytes overruns the option`);
  return { value: data.subarray(at + 4, at + 4 + n).toString('utf8'), end: at + 4 + n };
}

/** NBD_OPT_INFO / NBD_OPT_GO: export name and the information types asked for. */
export function parseInfoRequest(data: Buffer): { name: string; infos: number[] } {
  const { value: name, end } = readString(data, 0, 'export name');
  if (end + 2 > data.length) throw new OptionPayloadError('information request count is missing');
  const count = data.readUInt16BE(end);
  if (end + 2 + 2 * count !== data.length) throw new OptionPayloadError(`${count} information requests do not fill the ${data.length}-byte option`);
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(end + 2 + 2 * i));
  return { name, infos };
}

/** NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT: export name and context queries. */
export function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } {
  const { value: name, end } = readString(data, 0, 'export name');
  if (end + 4 > data.length) throw new OptionPayloadError('query count is missing');
  const count = data.readUInt32BE(end);
  const queries: string[] = [];
  let at = end + 4;
  for (let i = 0; i < count; i++) {
    const q = readString(data, at, `query ${i}`);
    queries.push(q.value);
    at = q.end;
  }
  if (at !== data.length) throw new OptionPayloadError(`${data.length - at} bytes follow the last query`);
  return { name, queries };
}

// ---------------------------------------------------------------- encoders

/** The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(P.GREETING_SIZE);
  b.writeBigUInt64BE(P.NBD_MAGIC, 0);
  b.writeBigUInt64BE(P.NBD_NEW_VERSION, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export function encodeOptionReply(option: number, reply: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(P.OPTION_REPLY_HEADER_SIZE);
  h.writeBigUInt64BE(P.NBD_REP_MAGIC, 0);
  h.writeUInt32BE(option >>> 0, 8);
  h.writeUInt32BE(reply >>> 0, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}

/** NBD_REP_SERVER payload for NBD_OPT_LIST: one export name. */
export function encodeServerName(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n.length, 0);
  return Buffer.concat([b, n]);
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(P.NBD_INFO_NAME, 0);
  return Buffer.concat([b, Buffer.from(name, 'utf8')]);
}

/** NBD_REP_META_CONTEXT payload: the id this server gives a context, and its name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(id, 0);
  return Buffer.concat([b, Buffer.from(name, 'utf8')]);
}

/** The reply to the old NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** A simple reply header; a successful READ's data follows it. */
export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.alloc(P.SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

function chunkHeader(cookie: bigint, type: number, length: number, done: boolean, extra: number): Buffer {
  const b = Buffer.alloc(P.STRUCTURED_REPLY_HEADER_SIZE + extra);
  b.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? P.NBD_REPLY_FLAG_DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** NBD_REPLY_TYPE_NONE with DONE: ends a reply whose chunks said it all (or a bodiless success). */
export function encodeDoneChunk(cookie: bigint): Buffer {
  return chunkHeader(cookie, P.NBD_REPLY_TYPE_NONE, 0, true, 0);
}

/** Header + offset of an OFFSET_DATA chunk; the caller writes the `dataLength` bytes right after it. */
export function encodeOffsetDataHeader(cookie: bigint, offset: number, dataLength: number, done: boolean): Buffer {
  const b = chunkHeader(cookie, P.NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataLength, done, 8);
  b.writeBigUInt64BE(BigInt(offset), P.STRUCTURED_REPLY_HEADER_SIZE);
  return b;
}

export function encodeOffsetHole(cookie: bigint, offset: number, length: number, done: boolean): Buffer {
  const b = chunkHeader(cookie, P.NBD_REPLY_TYPE_OFFSET_HOLE, 12, done, 12);
  b.writeBigUInt64BE(BigInt(offset), P.STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(length, P.STRUCTURED_REPLY_HEADER_SIZE + 8);
  return b;
}

export function encodeBlockStatus(cookie: bigint, contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>, done: boolean): Buffer {
  const n = 4 + 8 * extents.length;
  const b = chunkHeader(cookie, P.NBD_REPLY_TYPE_BLOCK_STATUS, n, done, n);
  let at = P.STRUCTURED_REPLY_HEADER_SIZE;
  b.writeUInt32BE(contextId, at);
  for (const e of extents) {
    b.writeUInt32BE(e.length, at + 4);
    b.writeUInt32BE(e.flags, at + 8);
    at += 8;
  }
  return b;
}

/** NBD_REPLY_TYPE_ERROR, always the last chunk of its reply here. */
export function encodeErrorChunk(cookie: bigint, error: number, message: string): Buffer {
  const m = Buffer.from(message, 'utf8').subarray(0, 1024);
  const b = chunkHeader(cookie, P.NBD_REPLY_TYPE_ERROR, 6 + m.length, true, 6);
  b.writeUInt32BE(error, P.STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(m.length, P.STRUCTURED_REPLY_HEADER_SIZE + 4);
  return Buffer.concat([b, m]);
}
