// Wire framing for virtbackd: every message is a 4-byte big-endian length
// followed by that many bytes of UTF-8 JSON. Pure: no sockets here; the
// decoder is fed arbitrary chunks and returns whole frames.

import { virErr } from '../errors.js';

/** Size of the length prefix. */
export const FRAME_HEADER_BYTES = 4;

/** Largest payload we send or accept (16 MiB): an XML document of 1 MiB fits many times over. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

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
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  constructor(private readonly maxFrame: number = MAX_FRAME_BYTES) {}

  /** Bytes held waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): Buffer[] {
    if (this.failed) throw virErr('RPC', 'RPC', 'frame decoder used after a framing error');
    if (chunk.length === 0) return [];
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Buffer[] = [];
    for (;;) {
      if (this.buffered < FRAME_HEADER_BYTES) break;
      const length = this.peekLength();
      if (length > this.maxFrame) {
        this.failed = true;
        this.chunks = [];
        this.buffered = 0;
        throw virErr('RPC', 'RPC', `frame of ${length} bytes exceeds the maximum frame size of ${this.maxFrame} bytes`);
      }
      if (this.buffered < FRAME_HEADER_BYTES + length) break;
      this.take(FRAME_HEADER_BYTES);
      frames.push(this.take(length));
    }
    return frames;
  }

  private peekLength(): number {
    const first = this.chunks[0]!;
    if (first.length >= FRAME_HEADER_BYTES) return first.readUInt32BE(0);
    const head = Buffer.concat(this.chunks, Math.min(this.buffered, 16)).subarray(0, FRAME_HEADER_BYTES);
    return head.readUInt32BE(0);
  }

  /** Removes and returns the next n buffered bytes (n <= buffered). */
  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      // Fast path: the bytes lie in one chunk; copy so the frame does not pin the chunk.
      const out = Buffer.from(first.subarray(0, n));
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const used = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, used);
      filled += used;
      if (used === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(used);
    }
    this.buffered -= n;
    return out;
  }
}
