// Wire framing for virtbackd: every message is a 4-byte big-endian length
// followed by that many bytes of UTF-8 JSON. Pure: no sockets here; the
// decoder is fed arbitrary chunks and returns whole frames.

import { virErr } from '../errors.js';
import { ByteQueue } from '../util/byte-queue.js';

/** Size of the length prefix. */
export const FRAME_HEADER_BYTES = 4;

/** Largest payload we send or accept (16 MiB): an XML document of 1 MiB fits many times over. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

/**
 * Largest frame a read-only client may send: its calls carry names, UUIDs,
 * flags and job ids, never XML, so 64 KiB is plenty, and any local user can
 * open that socket.
 */
export const MAX_READ_ONLY_FRAME_BYTES = 64 * 1024;

/** Deepest JSON nesting a call may have (ours need 3): checked before parsing, which is recursive and slow on deep input. */
export const MAX_JSON_DEPTH = 32;

/**
 * Most values a call may hold (arrays and objects count their members): the
 * largest call, fsFreeze, names 256 mount points; everything else has under
 * a dozen. JSON.parse of 16 MiB of tiny values takes over a second, so the
 * count is checked before parsing, like the depth.
 */
export const MAX_JSON_VALUES = 4096;

/**
 * Why the JSON text in `payload` is refused before parsing — nested deeper
 * than `maxDepth` or holding more than `maxValues` values — found by one
 * pass over the bytes (brackets and commas inside strings do not count);
 * null when its shape is fine. Malformed JSON is left to JSON.parse.
 */
export function jsonShapeRefusal(payload: Buffer, maxDepth: number = MAX_JSON_DEPTH, maxValues: number = MAX_JSON_VALUES): string | null {
  let depth = 0;
  let values = 1;
  let inString = false;
  for (let i = 0; i < payload.length; i++) {
    const c = payload[i]!;
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) return `nested deeper than ${maxDepth} levels`;
    } else if (c === 0x5d || c === 0x7d) depth--;
    else if (c === 0x2c && ++values > maxValues) return `more than ${maxValues} values`;
  }
  return null;
}

/** Whether the JSON text in `payload` nests arrays/objects deeper than `max` (see jsonShapeRefusal). */
export function jsonDepthExceeds(payload: Buffer, max: number = MAX_JSON_DEPTH): boolean {
  return jsonShapeRefusal(payload, max, Infinity) !== null;
}

/** Length prefix + payload. Throws RPC if the payload is larger than `maxFrame`. */
export function encodeFrame(payload: Buffer, maxFrame: number = MAX_FRAME_BYTES): Buffer {
  if (payload.length > maxFrame) {
    throw virErr('RPC', 'RPC', `message of ${payload.length} bytes exceeds the maximum frame size of ${maxFrame} bytes`);
  }
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  payload.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

/**
 * Splits a byte stream into frames. Memory stays bounded by one frame: a
 * length prefix larger than `maxFrame` is refused as soon as the prefix has
 * arrived, before its payload is buffered. After an error the decoder is
 * unusable (the stream has lost its framing).
 */
export class FrameDecoder {
  private readonly bytes = new ByteQueue();
  private failed = false;

  constructor(private readonly maxFrame: number = MAX_FRAME_BYTES) {}

  /** Bytes held waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.bytes.length;
  }

  push(chunk: Buffer): Buffer[] {
    if (this.failed) throw virErr('RPC', 'RPC', 'frame decoder used after a framing error');
    this.bytes.push(chunk);
    const frames: Buffer[] = [];
    for (;;) {
      const head = this.bytes.peek(FRAME_HEADER_BYTES);
      if (!head) break;
      const length = head.readUInt32BE(0);
      if (length > this.maxFrame) {
        this.failed = true;
        this.bytes.clear();
        throw virErr('RPC', 'RPC', `frame of ${length} bytes exceeds the maximum frame size of ${this.maxFrame} bytes`);
      }
      if (this.bytes.length < FRAME_HEADER_BYTES + length) break;
      this.bytes.take(FRAME_HEADER_BYTES);
      // A copy, so a small frame does not pin the socket's large read chunk.
      frames.push(this.bytes.takeCopy(length)!);
    }
    return frames;
  }
}
