// XDR (RFC 4506) as rpcgen writes it for libvirt's protocol files: a reader
// and a writer over Buffer, and typed codecs composed like the .x structs
// (int, hyper, string<N>, opaque[N], T *, T x<N>, struct, union). Pure: bytes
// in, values out. Every length read from the wire is checked against its
// maximum and against the bytes that remain before anything is allocated,
// so a hostile 28-byte frame cannot make us reserve gigabytes.

import { virErr } from '../errors.js';

/** A decoding or encoding failure: libvirt's "Unable to decode message payload" is code RPC. */
export function xdrError(message: string): Error {
  return virErr('RPC', 'RPC', `XDR: ${message}`);
}

const pad = (n: number): number => (4 - (n % 4)) % 4;

export class XdrReader {
  private offset: number;

  constructor(
    private readonly buf: Buffer,
    start = 0,
  ) {
    this.offset = start;
  }

  get remaining(): number {
    return this.buf.length - this.offset;
  }

  private need(n: number, what: string): void {
    if (n > this.remaining) throw xdrError(`${what} needs ${n} bytes, ${this.remaining} left`);
  }

  i32(): number {
    this.need(4, 'int');
    const v = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }

  u32(): number {
    this.need(4, 'unsigned int');
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }

  i64(): bigint {
    this.need(8, 'hyper');
    const v = this.buf.readBigInt64BE(this.offset);
    this.offset += 8;
    return v;
  }

  u64(): bigint {
    this.need(8, 'unsigned hyper');
    const v = this.buf.readBigUInt64BE(this.offset);
    this.offset += 8;
    return v;
  }

  f64(): number {
    this.need(8, 'double');
    const v = this.buf.readDoubleBE(this.offset);
    this.offset += 8;
    return v;
  }

  /** `n` bytes and their padding; a view, not a copy (callers copy what they keep). */
  fixed(n: number, what: string): Buffer {
    this.need(n + pad(n), what);
    const v = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n + pad(n);
    return v;
  }

  /** A u32 length, checked against `max` before the bytes are touched, then the bytes. */
  variable(max: number, what: string): Buffer {
    const n = this.u32();
    if (n > max) throw xdrError(`${what} of ${n} bytes exceeds its maximum of ${max}`);
    return this.fixed(n, what);
  }

  /** Throws unless every byte was consumed: a payload with trailing bytes is malformed. */
  end(what: string): void {
    if (this.remaining !== 0) throw xdrError(`${this.remaining} trailing bytes after ${what}`);
  }
}

export class XdrWriter {
  private buf: Buffer;
  private length = 0;

  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  private room(n: number): number {
    if (this.length + n > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + n));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  i32(v: number): void {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw xdrError(`int out of range: ${v}`);
    const at = this.room(4); // grows (replaces) buf first
    this.buf.writeInt32BE(v, at);
  }

  u32(v: number): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw xdrError(`unsigned int out of range: ${v}`);
    const at = this.room(4);
    this.buf.writeUInt32BE(v, at);
  }

  i64(v: bigint): void {
    const at = this.room(8);
    this.buf.writeBigInt64BE(BigInt.asIntN(64, v), at);
  }

  u64(v: bigint): void {
    if (v < 0n) throw xdrError(`unsigned hyper out of range: ${v}`);
    const at = this.room(8);
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), at);
  }

  f64(v: number): void {
    const at = this.room(8);
    this.buf.writeDoubleBE(v, at);
  }

  fixed(bytes: Uint8Array): void {
    const at = this.room(bytes.length + pad(bytes.length));
    this.buf.set(bytes, at);
    this.buf.fill(0, at + bytes.length, this.length);
  }

  variable(bytes: Uint8Array, max: number, what: string): void {
    if (bytes.length > max) throw xdrError(`${what} of ${bytes.length} bytes exceeds its maximum of ${max}`);
    this.u32(bytes.length);
    this.fixed(bytes);
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

// ---- codecs ---------------------------------------------------------------

/** One XDR type: how to read and write it, and the fewest bytes it can take on the wire. */
// read/write are methods so a Codec<string> is a Codec<unknown> (method
// parameters are bivariant), which lets struct() and union() take any fields.
export interface Codec<T> {
  read(r: XdrReader): T;
  write(w: XdrWriter, v: T): void;
  /** lower bound of the encoded size: an array count is checked against remaining / minBytes */
  readonly minBytes: number;
}

export type Infer<C> = C extends Codec<infer T> ? T : never;

const codec = <T>(minBytes: number, read: (r: XdrReader) => T, write: (w: XdrWriter, v: T) => void): Codec<T> => ({
  read,
  write,
  minBytes,
});

/** `int`, `enum`, and rpcgen's `char`/`short` (4 bytes each on the wire). */
export const int: Codec<number> = codec(4, (r) => r.i32(), (w, v) => w.i32(v));
/** `unsigned int`, and rpcgen's `unsigned char`/`unsigned short` (4 bytes each). */
export const uint: Codec<number> = codec(4, (r) => r.u32(), (w, v) => w.u32(v));
export const hyper: Codec<bigint> = codec(8, (r) => r.i64(), (w, v) => w.i64(v));
export const uhyper: Codec<bigint> = codec(8, (r) => r.u64(), (w, v) => w.u64(v));
export const double: Codec<number> = codec(8, (r) => r.f64(), (w, v) => w.f64(v));
/** libvirt's `int` used as a boolean (active, persistent, autostart): any non-zero reads as true. */
export const intBool: Codec<boolean> = codec(4, (r) => r.i32() !== 0, (w, v) => w.i32(v ? 1 : 0));
/** An empty payload (`void` arguments or results). */
export const none: Codec<void> = codec(0, () => undefined, () => undefined);

/** `string<max>`: length + UTF-8 bytes + padding, no terminator. */
export function string(max: number): Codec<string> {
  return codec(
    4,
    (r) => r.variable(max, 'string').toString('utf8'),
    (w, v) => w.variable(Buffer.from(v, 'utf8'), max, 'string'),
  );
}

/** `opaque[n]`: exactly n bytes and padding, no length word (remote_uuid). */
export function fixedOpaque(n: number): Codec<Buffer> {
  return codec(
    n + pad(n),
    (r) => Buffer.from(r.fixed(n, `opaque[${n}]`)),
    (w, v) => {
      if (v.length !== n) throw xdrError(`opaque[${n}] given ${v.length} bytes`);
      w.fixed(v);
    },
  );
}

/** `opaque<max>`: length + bytes + padding. */
export function opaque(max: number): Codec<Buffer> {
  return codec(
    4,
    (r) => Buffer.from(r.variable(max, 'opaque')),
    (w, v) => w.variable(v, max, 'opaque'),
  );
}

/** `T *`: a u32 0 (absent, null) or 1 followed by T; any other marker is malformed. */
export function optional<T>(inner: Codec<T>): Codec<T | null> {
  return codec(
    4,
    (r) => {
      const present = r.u32();
      if (present === 0) return null;
      if (present !== 1) throw xdrError(`optional marker ${present} is neither 0 nor 1`);
      return inner.read(r);
    },
    (w, v) => {
      if (v === null) return w.u32(0);
      w.u32(1);
      inner.write(w, v);
    },
  );
}

/** `T x<max>`: a count checked against max and against the bytes left, then the items. */
export function array<T>(inner: Codec<T>, max: number): Codec<T[]> {
  return codec(
    4,
    (r) => {
      const n = r.u32();
      if (n > max) throw xdrError(`array of ${n} items exceeds its maximum of ${max}`);
      if (n * inner.minBytes > r.remaining) throw xdrError(`array of ${n} items cannot fit in ${r.remaining} bytes`);
      const items = new Array<T>(n);
      for (let i = 0; i < n; i++) items[i] = inner.read(r);
      return items;
    },
    (w, v) => {
      if (v.length > max) throw xdrError(`array of ${v.length} items exceeds its maximum of ${max}`);
      w.u32(v.length);
      for (const item of v) inner.write(w, item);
    },
  );
}

/** `T x[n]`: exactly n items, no count. */
export function fixedArray<T>(inner: Codec<T>, n: number): Codec<T[]> {
  return codec(
    inner.minBytes * n,
    (r) => Array.from({ length: n }, () => inner.read(r)),
    (w, v) => {
      if (v.length !== n) throw xdrError(`fixed array of ${n} given ${v.length} items`);
      for (const item of v) inner.write(w, item);
    },
  );
}

type Fields = Record<string, Codec<unknown>>;
export type StructOf<F extends Fields> = { [K in keyof F]: Infer<F[K]> };

/** A struct: its fields in declaration order (object key order), flat on the wire. */
export function struct<F extends Fields>(fields: F): Codec<StructOf<F>> {
  const entries = Object.entries(fields);
  return codec(
    entries.reduce((sum, [, c]) => sum + c.minBytes, 0),
    (r) => {
      const out: Record<string, unknown> = {};
      for (const [name, c] of entries) out[name] = c.read(r);
      return out as StructOf<F>;
    },
    (w, v) => {
      for (const [name, c] of entries) c.write(w, (v as Record<string, unknown>)[name]);
    },
  );
}

/** The value of a union arm: its discriminant and the arm's value. */
export type UnionOf<A extends Record<number, Codec<unknown>>> = {
  [K in keyof A & number]: { type: K; value: Infer<A[K]> };
}[keyof A & number];

/** `union switch (int type)`: the discriminant, then the arm it names; an unknown discriminant is malformed. */
export function union<A extends Record<number, Codec<unknown>>>(arms: A): Codec<UnionOf<A>> {
  const minArm = Math.min(...Object.values(arms).map((c) => c.minBytes));
  return codec(
    4 + minArm,
    (r) => {
      const type = r.i32();
      const arm = arms[type];
      if (!arm) throw xdrError(`union discriminant ${type} is not one of ${Object.keys(arms).join(', ')}`);
      return { type, value: arm.read(r) } as UnionOf<A>;
    },
    (w, v) => {
      const arm = arms[v.type];
      if (!arm) throw xdrError(`union discriminant ${v.type} is not one of ${Object.keys(arms).join(', ')}`);
      w.i32(v.type);
      arm.write(w, v.value);
    },
  );
}

/** Encodes one value to its own buffer. */
export function encode<T>(c: Codec<T>, value: T): Buffer {
  const w = new XdrWriter();
  c.write(w, value);
  return w.finish();
}

/** Decodes a whole payload; trailing bytes are an error, as in libvirt's decoder. */
export function decode<T>(c: Codec<T>, payload: Buffer, what = 'payload'): T {
  const r = new XdrReader(payload);
  const v = c.read(r);
  r.end(what);
  return v;
}
