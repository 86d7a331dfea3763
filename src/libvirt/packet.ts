// libvirt's RPC framing (virnetprotocol.x): a 4-byte big-endian length that
// counts itself, a 24-byte header (program, version, procedure, type, serial,
// status), then the XDR payload. Pure: the decoder is fed arbitrary chunks and
// returns whole packets; it refuses an impossible length as soon as the
// length word has arrived, before buffering its body.

import { virErr } from '../errors.js';
import { ByteQueue } from '../util/byte-queue.js';

export const Program = {
  REMOTE: 0x20008086,
  QEMU: 0x20008087,
  KEEPALIVE: 0x6b656570,
} as const;

/** Every program we speak is version 1. */
export const PROGRAM_VERSION = 1;

export const MessageType = {
  CALL: 0,
  REPLY: 1,
  /** asynchronous, either way: events, keepalive */
  MESSAGE: 2,
  STREAM: 3,
  CALL_WITH_FDS: 4,
  REPLY_WITH_FDS: 5,
  STREAM_HOLE: 6,
} as const;

export const MessageStatus = {
  OK: 0,
  ERROR: 1,
  CONTINUE: 2,
} as const;

export const KeepaliveProc = {
  PING: 1,
  PONG: 2,
} as const;

export const LENGTH_WORD_BYTES = 4;
export const HEADER_BYTES = 24;
/** The smallest message: length word and header, no payload. */
export const MIN_MESSAGE_BYTES = LENGTH_WORD_BYTES + HEADER_BYTES;
/** VIR_NET_MESSAGE_MAX of libvirt 9.0 (32 MiB) plus the length word, which counts itself. */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024 + LENGTH_WORD_BYTES;

export interface Header {
  prog: number;
  vers: number;
  /** signed on the wire */
  proc: number;
  type: number;
  serial: number;
  status: number;
}

export interface Packet {
  header: Header;
  /** the XDR payload, a copy owned by the packet */
  payload: Buffer;
}

/** One whole message: length word, header, payload. Throws RPC when it would exceed `max`. */
export function encodePacket(header: Header, payload: Buffer, max: number = MAX_MESSAGE_BYTES): Buffer {
  const length = MIN_MESSAGE_BYTES + payload.length;
  if (length > max) throw virErr('RPC', 'RPC', `message of ${length} bytes exceeds the maximum of ${max} bytes`);
  const out = Buffer.allocUnsafe(length);
  out.writeUInt32BE(length, 0);
  out.writeUInt32BE(header.prog >>> 0, 4);
  out.writeUInt32BE(header.vers >>> 0, 8);
  out.writeInt32BE(header.proc, 12);
  out.writeUInt32BE(header.type >>> 0, 16);
  out.writeUInt32BE(header.serial >>> 0, 20);
  out.writeUInt32BE(header.status >>> 0, 24);
  payload.copy(out, MIN_MESSAGE_BYTES);
  return out;
}

/** The header of a whole message (length word included), e.g. for logs and tests. */
export function decodeHeader(message: Buffer): Header {
  return {
    prog: message.readUInt32BE(4),
    vers: message.readUInt32BE(8),
    proc: message.readInt32BE(12),
    type: message.readUInt32BE(16),
    serial: message.readUInt32BE(20),
    status: message.readUInt32BE(24),
  };
}

/**
 * Splits a byte stream into packets. Memory stays bounded by one message of
 * at most `max` bytes; a length word below the minimum or above `max` fails
 * the stream (libvirtd closes such a connection without a reply). After an
 * error the decoder is unusable: the stream has lost its framing.
 */
export class PacketDecoder {
  private readonly bytes = new ByteQueue();
  private failed = false;

  constructor(private readonly max: number = MAX_MESSAGE_BYTES) {}

  /** Bytes held waiting for the rest of a message. */
  get pendingBytes(): number {
    return this.bytes.length;
  }

  push(chunk: Buffer): Packet[] {
    if (this.failed) throw virErr('RPC', 'RPC', 'packet decoder used after a framing error');
    this.bytes.push(chunk);
    const packets: Packet[] = [];
    for (;;) {
      const word = this.bytes.peek(LENGTH_WORD_BYTES);
      if (!word) break;
      const length = word.readUInt32BE(0);
      if (length < MIN_MESSAGE_BYTES || length > this.max) {
        this.failed = true;
        this.bytes.clear();
        throw virErr('RPC', 'RPC', `packet length ${length} is outside ${MIN_MESSAGE_BYTES}..${this.max}`);
      }
      if (this.bytes.length < length) break;
      // A copy, so a small message does not pin the socket's large read chunk.
      const message = this.bytes.takeCopy(length)!;
      packets.push({ header: decodeHeader(message), payload: message.subarray(MIN_MESSAGE_BYTES) });
    }
    return packets;
  }
}
