import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCode, ErrorDomain } from '../../src/errors.js';
import {
  NbdDecoder,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  parseInfoReply,
  parseMetaContextReply,
  type NbdMessage,
} from '../../src/nbd/codec.js';
import { nonZeroRuns } from '../../src/nbd/copy.js';
import { NbdError } from '../../src/nbd/errors.js';
import * as P from '../../src/nbd/protocol.js';

// Recorded through a proxy between our client and `qemu-nbd --read-only --bitmap=b1` (QEMU 7.2)
// exporting a 64 MiB qcow2: handshake with structured replies, two meta contexts, GO; then
// read 16@1M (data 0xef), read 16@0 (hole), read 16@(10M+64k-8) (hole + data 0xcd),
// block status 4M@0, and NBD_CMD_DISC.
const SERVER_TO_CLIENT = Buffer.from(
  '4e42444d4147494349484156454f505400030003e889045565a90000000800000001000000000003e889045565a90000000a000000040000' +
    '001300000000626173653a616c6c6f636174696f6e0003e889045565a90000000a00000004000000180000000271656d753a64697274792d' +
    '6269746d61703a62310003e889045565a90000000a00000001000000000003e889045565a900000007000000030000000e00030000000100' +
    '001000020000000003e889045565a900000007000000030000000c00000000000004000000058f0003e889045565a9000000070000000100' +
    '000000668e33ef000100010000000000000001000000180000000000100000efefefefefefefefefefefefefefefef668e33ef0001000200' +
    '000000000000020000000c000000000000000000000010668e33ef0000000200000000000000030000000c0000000000a0fff80000000866' +
    '8e33ef000100010000000000000003000000100000000000a10000cdcdcdcdcdcdcdcd668e33ef0000000500000000000000040000001c00' +
    '00000000100000000000030001000000000000002f000000000003668e33ef0001000500000000000000040000001c000000020010000000' +
    '0000000001000000000001002f000000000000',
  'hex',
);

const CLIENT_TO_SERVER = Buffer.from(
  '0000000349484156454f5054000000080000000049484156454f50540000000a0000003300000000000000020000000f626173653a616c6c' +
    '6f636174696f6e0000001471656d753a64697274792d6269746d61703a623149484156454f5054000000070000000a000000000002000000' +
    '0325609513000000000000000000000001000000000010000000000010256095130000000000000000000000020000000000000000000000' +
    '10256095130000000000000000000000030000000000a0fff800000010256095130000000700000000000000040000000000000000004000' +
    '0025609513000000020000000000000005000000000000000000000000',
  'hex',
);

/** JSON-friendly form so deepEqual compares bytes, not Buffer identities. */
function norm(m: NbdMessage): unknown {
  return JSON.parse(
    JSON.stringify(m, (_k, v: unknown) => {
      if (typeof v === 'bigint') return `${v}n`;
      if (v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer') {
        return Buffer.from((v as { data: number[] }).data).toString('hex');
      }
      return v;
    }),
  );
}

/** Drive a decoder the way the client does: switch to transmission right after GO's ACK. */
/**
 * `reused`: each piece is fed from one scratch buffer that is overwritten after
 * the messages were taken and ownBuffered() was called (as the client reads its socket).
 */
function decodeAll(pieces: Buffer[], dec = new NbdDecoder(), reused = false): unknown[] {
  const out: unknown[] = [];
  const scratch = Buffer.alloc(reused ? Math.max(0, ...pieces.map((p) => p.length)) : 0);
  for (const p of pieces) {
    dec.feed(reused ? scratch.subarray(0, p.copy(scratch)) : p);
    for (let m = dec.next(); m; m = dec.next()) {
      out.push(norm(m));
      if (m.kind === 'optionReply' && m.option === P.NBD_OPT_GO && m.reply === P.NBD_REP_ACK) {
        dec.startTransmission({ structuredReplies: true, simpleReplyLength: () => 0 });
      }
    }
    if (reused) {
      dec.ownBuffered();
      scratch.fill(0xa5);
    }
  }
  assert.equal(dec.buffered, 0, 'all bytes consumed');
  return out;
}

const whole = decodeAll([SERVER_TO_CLIENT]);

test('recorded qemu-nbd session decodes to the expected messages', () => {
  const opt = (option: number, reply: number, dataHex: string) => ({ kind: 'optionReply', option, reply, data: dataHex });
  assert.deepEqual(whole.slice(0, 8), [
    { kind: 'greeting', handshakeFlags: P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES },
    opt(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ACK, ''),
    opt(P.NBD_OPT_SET_META_CONTEXT, P.NBD_REP_META_CONTEXT, '00000000' + Buffer.from('base:allocation').toString('hex')),
    opt(P.NBD_OPT_SET_META_CONTEXT, P.NBD_REP_META_CONTEXT, '00000002' + Buffer.from('qemu:dirty-bitmap:b1').toString('hex')),
    opt(P.NBD_OPT_SET_META_CONTEXT, P.NBD_REP_ACK, ''),
    opt(P.NBD_OPT_GO, P.NBD_REP_INFO, '0003000000010000100002000000'),
    opt(P.NBD_OPT_GO, P.NBD_REP_INFO, '000000000000040000000' + '58f'),
    opt(P.NBD_OPT_GO, P.NBD_REP_ACK, ''),
  ]);
  assert.deepEqual(whole.slice(8), [
    { kind: 'chunk', cookie: '1n', flags: 1, done: true, chunk: { type: 'offsetData', offset: 1 << 20, data: 'ef'.repeat(16) } },
    { kind: 'chunk', cookie: '2n', flags: 1, done: true, chunk: { type: 'offsetHole', offset: 0, length: 16 } },
    { kind: 'chunk', cookie: '3n', flags: 0, done: false, chunk: { type: 'offsetHole', offset: 10551288, length: 8 } },
    { kind: 'chunk', cookie: '3n', flags: 1, done: true, chunk: { type: 'offsetData', offset: 10551296, data: 'cd'.repeat(8) } },
    {
      kind: 'chunk', cookie: '4n', flags: 0, done: false,
      chunk: { type: 'blockStatus', contextId: 0, descriptors: [{ length: 1 << 20, flags: 3 }, { length: 65536, flags: 0 }, { length: 3080192, flags: 3 }] },
    },
    {
      kind: 'chunk', cookie: '4n', flags: 1, done: true,
      chunk: { type: 'blockStatus', contextId: 2, descriptors: [{ length: 1 << 20, flags: 0 }, { length: 65536, flags: 1 }, { length: 3080192, flags: 0 }] },
    },
  ]);
  const infos = (whole.slice(5, 7) as Array<{ data: string }>).map((m) => parseInfoReply(Buffer.from(m.data, 'hex')));
  assert.deepEqual(infos, [
    { info: 'blockSize', minimum: 1, preferred: 4096, maximum: 32 << 20 },
    { info: 'export', size: 64 << 20, flags: 0x58f },
  ]);
  assert.deepEqual(parseMetaContextReply(Buffer.from((whole[3] as { data: string }).data, 'hex')), { id: 2, name: 'qemu:dirty-bitmap:b1' });
});

test('split at every byte boundary gives the same messages', () => {
  for (let i = 0; i <= SERVER_TO_CLIENT.length; i++) {
    const got = decodeAll([SERVER_TO_CLIENT.subarray(0, i), SERVER_TO_CLIENT.subarray(i)]);
    assert.deepEqual(got, whole, `split at ${i}`);
  }
});

test('fed from one reused buffer (ownBuffered after each read), every split gives the same messages', () => {
  for (let i = 0; i <= SERVER_TO_CLIENT.length; i++) {
    assert.deepEqual(decodeAll([SERVER_TO_CLIENT.subarray(0, i), SERVER_TO_CLIENT.subarray(i)], new NbdDecoder(), true), whole, `split at ${i}`);
  }
  const pieces = Array.from(SERVER_TO_CLIENT, (_b, i) => SERVER_TO_CLIENT.subarray(i, i + 1));
  assert.deepEqual(decodeAll(pieces, new NbdDecoder(), true), whole, 'one byte at a time');
});

test('one byte at a time gives the same messages', () => {
  const pieces = Array.from(SERVER_TO_CLIENT, (_b, i) => SERVER_TO_CLIENT.subarray(i, i + 1));
  assert.deepEqual(decodeAll(pieces), whole);
});

test('random splits into many pieces give the same messages', () => {
  fc.assert(
    fc.property(fc.uniqueArray(fc.integer({ min: 1, max: SERVER_TO_CLIENT.length - 1 }), { maxLength: 40 }), (cuts) => {
      const at = [0, ...cuts.sort((a, b) => a - b), SERVER_TO_CLIENT.length];
      const pieces = at.slice(1).map((e, k) => SERVER_TO_CLIENT.subarray(at[k], e));
      assert.deepEqual(decodeAll(pieces), whole);
    }),
    { numRuns: 300 },
  );
});

test('encoders reproduce the recorded client bytes exactly', () => {
  const ctx = ['base:allocation', 'qemu:dirty-bitmap:b1'];
  const req = (type: number, cookie: bigint, offset: number, length: number) => encodeRequest({ flags: 0, type, cookie, offset, length });
  const bytes = Buffer.concat([
    encodeClientFlags(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES),
    encodeOption(P.NBD_OPT_STRUCTURED_REPLY),
    encodeMetaContextRequest(P.NBD_OPT_SET_META_CONTEXT, '', ctx),
    encodeInfoRequest(P.NBD_OPT_GO, '', [P.NBD_INFO_EXPORT, P.NBD_INFO_BLOCK_SIZE]),
    req(P.NBD_CMD_READ, 1n, 1 << 20, 16),
    req(P.NBD_CMD_READ, 2n, 0, 16),
    req(P.NBD_CMD_READ, 3n, 10551288, 16),
    req(P.NBD_CMD_BLOCK_STATUS, 4n, 0, 4 << 20),
    req(P.NBD_CMD_DISC, 5n, 0, 0),
  ]);
  assert.equal(bytes.toString('hex'), CLIENT_TO_SERVER.toString('hex'));
});

test('export and context names longer than 4096 bytes are refused', () => {
  assert.throws(() => encodeInfoRequest(P.NBD_OPT_GO, 'x'.repeat(4097), []), (e: NbdError) => e.code === ErrorCode.INVALID_ARG && /export name/.test(e.message));
  assert.throws(
    () => encodeMetaContextRequest(P.NBD_OPT_SET_META_CONTEXT, '', ['q'.repeat(5000)]),
    (e: NbdError) => e.code === ErrorCode.INVALID_ARG && /metadata context/.test(e.message),
  );
});

// ---------------------------------------------------------------- transmission helpers

function structured(flags: number, type: number, cookie: bigint, payload: Buffer, lengthOverride?: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(lengthOverride ?? payload.length, 16);
  return Buffer.concat([h, payload]);
}

function simple(error: number, cookie: bigint, data = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, 0);
  h.writeUInt32BE(error, 4);
  h.writeBigUInt64BE(cookie, 8);
  return Buffer.concat([h, data]);
}

function errorPayload(error: number, message: string, offset?: bigint): Buffer {
  const m = Buffer.from(message);
  const b = Buffer.alloc(6 + m.length + (offset === undefined ? 0 : 8));
  b.writeUInt32BE(error, 0);
  b.writeUInt16BE(m.length, 4);
  m.copy(b, 6);
  if (offset !== undefined) b.writeBigUInt64BE(offset, 6 + m.length);
  return b;
}

/** A decoder already in transmission phase (greeting + one GO ACK consumed). */
function transmissionDecoder(opts: { structured?: boolean; lengths?: Map<bigint, number>; maxData?: number } = {}): NbdDecoder {
  const dec = new NbdDecoder({ maxData: opts.maxData });
  dec.feed(SERVER_TO_CLIENT.subarray(0, 18));
  assert.equal(dec.next()?.kind, 'greeting');
  dec.feed(Buffer.from('0003e889045565a9000000070000000100000000', 'hex'));
  assert.equal(dec.next()?.kind, 'optionReply');
  dec.startTransmission({ structuredReplies: opts.structured ?? true, simpleReplyLength: (c) => opts.lengths?.get(c) });
  return dec;
}

function drain(dec: NbdDecoder, bytes: Buffer): unknown[] {
  dec.feed(bytes);
  const out: unknown[] = [];
  for (let m = dec.next(); m; m = dec.next()) out.push(norm(m));
  return out;
}

test('error chunks decode with message and offset; unknown error types are errors', () => {
  const dec = transmissionDecoder();
  const got = drain(
    dec,
    Buffer.concat([
      structured(0, P.NBD_REPLY_TYPE_ERROR_OFFSET, 7n, errorPayload(P.NBD_EIO, 'bad sector', 4096n)),
      structured(0, P.NBD_REPLY_TYPE_ERROR, 7n, errorPayload(P.NBD_EINVAL, '')),
      structured(1, P.NBD_REPLY_TYPE_ERR_BIT | 9, 7n, Buffer.concat([errorPayload(P.NBD_ENOTSUP, 'future'), Buffer.alloc(5)])),
    ]),
  );
  assert.deepEqual(got, [
    { kind: 'chunk', cookie: '7n', flags: 0, done: false, chunk: { type: 'errorOffset', error: 5, message: 'bad sector', offset: 4096 } },
    { kind: 'chunk', cookie: '7n', flags: 0, done: false, chunk: { type: 'error', replyType: P.NBD_REPLY_TYPE_ERROR, error: 22, message: '' } },
    { kind: 'chunk', cookie: '7n', flags: 1, done: true, chunk: { type: 'error', replyType: 0x8009, error: 95, message: 'future' } },
  ]);
});

test('simple replies carry read data only when error is 0, framed by the cookie', () => {
  const lengths = new Map([[1n, 8], [2n, 0]]);
  const bytes = Buffer.concat([simple(0, 1n, Buffer.from('0102030405060708', 'hex')), simple(P.NBD_EIO, 1n), simple(0, 2n)]);
  const want = [
    { kind: 'simpleReply', cookie: '1n', error: 0, data: '0102030405060708' },
    { kind: 'simpleReply', cookie: '1n', error: 5 },
    { kind: 'simpleReply', cookie: '2n', error: 0 },
  ];
  for (let i = 0; i <= bytes.length; i++) {
    const dec = transmissionDecoder({ structured: false, lengths });
    assert.deepEqual([...drain(dec, bytes.subarray(0, i)), ...drain(dec, bytes.subarray(i))], want, `split at ${i}`);
  }
});

// ---------------------------------------------------------------- malformed input

function assertViolation(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof NbdError, `expected NbdError, got ${String(e)}`);
    assert.equal(e.code, ErrorCode.INTERNAL_ERROR);
    assert.equal(e.domain, ErrorDomain.NBD);
    assert.equal(e.usable, false);
    assert.match(e.message, re);
    assert.match(e.message, /no longer usable/);
    return true;
  });
}

test('bad greetings are rejected', () => {
  const bad = Buffer.from(SERVER_TO_CLIENT.subarray(0, 18));
  bad[0] = 0x4f;
  assertViolation(() => drain(new NbdDecoder(), bad), /not NBDMAGIC/);
  const old = Buffer.alloc(18);
  old.writeBigUInt64BE(P.NBD_MAGIC, 0);
  old.writeBigUInt64BE(P.NBD_OLD_VERSION, 8);
  assertViolation(() => drain(new NbdDecoder(), old), /oldstyle/);
  const weird = Buffer.from(old);
  weird.writeBigUInt64BE(0x1234n, 8);
  assertViolation(() => drain(new NbdDecoder(), weird), /not IHAVEOPT/);
});

test('option replies: bad magic, and oversized payloads before they are buffered', () => {
  const start = () => {
    const d = new NbdDecoder({ maxOptionReply: 1024 });
    drain(d, SERVER_TO_CLIENT.subarray(0, 18));
    return d;
  };
  assertViolation(() => drain(start(), Buffer.from('0003e889045565aa000000070000000100000000', 'hex')), /option reply magic/);
  // Header claims 1 MiB; the decoder must refuse at the header, holding only 20 bytes.
  assertViolation(() => drain(start(), Buffer.from('0003e889045565a9000000070000000300100000', 'hex')), /NBD_OPT_GO has a 1048576-byte payload/);
});

test('transmission violations are rejected with clear messages', () => {
  const cases: Array<[string, Buffer, RegExp, { structured?: boolean; maxData?: number }?]> = [
    ['bad magic', Buffer.from('deadbeef000000000000000000000000', 'hex'), /reply magic is 0xdeadbeef/],
    ['structured not negotiated', structured(1, P.NBD_REPLY_TYPE_NONE, 1n, Buffer.alloc(0)), /not negotiated/, { structured: false }],
    ['NONE without DONE', structured(0, P.NBD_REPLY_TYPE_NONE, 1n, Buffer.alloc(0)), /NBD_REPLY_FLAG_DONE missing/],
    ['NONE with payload', structured(1, P.NBD_REPLY_TYPE_NONE, 1n, Buffer.alloc(4)), /payload length 4 in NBD_REPLY_TYPE_NONE/],
    ['empty OFFSET_DATA', structured(1, P.NBD_REPLY_TYPE_OFFSET_DATA, 1n, Buffer.alloc(8)), /must exceed 8/],
    ['short OFFSET_HOLE', structured(1, P.NBD_REPLY_TYPE_OFFSET_HOLE, 1n, Buffer.alloc(8)), /must be 12/],
    ['zero hole', structured(1, P.NBD_REPLY_TYPE_OFFSET_HOLE, 1n, Buffer.alloc(12)), /zero hole size/],
    ['BLOCK_STATUS 4+7', structured(1, P.NBD_REPLY_TYPE_BLOCK_STATUS, 1n, Buffer.alloc(11)), /4 \+ a positive multiple of 8/],
    ['zero extent', structured(1, P.NBD_REPLY_TYPE_BLOCK_STATUS, 1n, Buffer.alloc(12)), /zero-length extent 0/],
    ['unknown type', structured(1, 42, 1n, Buffer.alloc(0)), /unknown reply type 42/],
    ['short error', structured(1, P.NBD_REPLY_TYPE_ERROR, 1n, Buffer.alloc(4)), /at least 6/],
    ['error value 0', structured(1, P.NBD_REPLY_TYPE_ERROR, 1n, errorPayload(0, 'x')), /error value 0/],
    [
      'message too long',
      structured(1, P.NBD_REPLY_TYPE_ERROR, 1n, Buffer.concat([Buffer.from('0000000500ff', 'hex'), Buffer.alloc(4)])),
      /message length 255 does not fit/,
    ],
    [
      'ERROR_OFFSET missing offset',
      structured(1, P.NBD_REPLY_TYPE_ERROR_OFFSET, 1n, Buffer.concat([errorPayload(5, 'abcdefgh')])),
      /message length 8 does not fit/,
    ],
    // Only the 20-byte header is fed: the oversized payload is refused before it is buffered.
    ['oversized data', structured(1, P.NBD_REPLY_TYPE_OFFSET_DATA, 1n, Buffer.alloc(0), 8 + 4097), /4097 data bytes/, { maxData: 4096 }],
    ['simple reply, unknown cookie', simple(0, 99n), /cookie 99, which is not in flight/, { structured: false }],
  ];
  for (const [name, bytes, re, opts] of cases) {
    const dec = transmissionDecoder(opts);
    assertViolation(() => drain(dec, bytes), re);
    // A failed decoder stays failed.
    assertViolation(() => dec.next(), re);
    assert.ok(name);
  }
});

test('parseInfoReply validates sizes and ignores unknown info types', () => {
  assertViolation(() => parseInfoReply(Buffer.from('0000000000000400', 'hex')), /NBD_INFO_EXPORT reply has length 8/);
  assertViolation(() => parseInfoReply(Buffer.from('0003000000030000100002000000', 'hex')), /inconsistent sizes minimum=3/);
  assert.deepEqual(parseInfoReply(Buffer.from('0009abcd', 'hex')), { info: 'unknown', type: 9 });
  assert.deepEqual(parseInfoReply(Buffer.from('0001' + Buffer.from('sda').toString('hex'), 'hex')), { info: 'name', name: 'sda' });
});

test('startTransmission is refused before the handshake is over', () => {
  assert.throws(() => new NbdDecoder().startTransmission({ structuredReplies: true, simpleReplyLength: () => 0 }), /cannot start transmission in phase 'greeting'/);
});

test('nonZeroRuns finds the non-zero blocks and joins touching ones', () => {
  const b = Buffer.alloc(5 * 4096 + 100);
  b[4096 + 7] = 1; // block 1
  b[2 * 4096] = 2; // block 2, touching block 1
  b[4 * 4096 + 4095] = 3; // block 4
  b[5 * 4096 + 99] = 4; // short tail block
  assert.deepEqual(nonZeroRuns(b), [[4096, 3 * 4096], [4 * 4096, 5 * 4096 + 100]]);
  assert.deepEqual(nonZeroRuns(Buffer.alloc(10000)), []);
  assert.deepEqual(nonZeroRuns(Buffer.from([0, 0, 9]), 2), [[2, 3]]);
});

test('dataSink: OFFSET_DATA payloads land in the given buffer at every split, others decode as before', () => {
  // The recorded session with a sink for cookie 1 only (read 16@1M): its data is copied
  // into the sink buffer and marked in place; cookie 3's data chunk decodes as usual.
  for (let i = 0; i <= SERVER_TO_CLIENT.length; i += 7) {
    const sink = Buffer.alloc(16);
    const asked: Array<[bigint, number, number]> = [];
    const dec = new NbdDecoder();
    const out: unknown[] = [];
    for (const p of [SERVER_TO_CLIENT.subarray(0, i), SERVER_TO_CLIENT.subarray(i)]) {
      dec.feed(p);
      for (let m = dec.next(); m; m = dec.next()) {
        if (m.kind === 'chunk' && m.chunk.type === 'offsetData' && m.cookie === 1n) {
          assert.equal(m.chunk.inPlace, true);
          assert.equal(m.chunk.data.buffer, sink.buffer, 'the sink buffer itself, not a copy');
        }
        const n = norm(m) as { chunk?: { inPlace?: boolean } };
        delete n.chunk?.inPlace; // the only difference from the decoding without a sink
        out.push(n);
        if (m.kind === 'optionReply' && m.option === P.NBD_OPT_GO && m.reply === P.NBD_REP_ACK) {
          dec.startTransmission({
            structuredReplies: true,
            simpleReplyLength: () => 0,
            dataSink: (cookie, offset, length) => {
              asked.push([cookie, offset, length]);
              return cookie === 1n ? sink : undefined;
            },
          });
        }
      }
    }
    assert.equal(dec.buffered, 0, `split at ${i}: all bytes consumed`);
    assert.deepEqual(out, whole, `split at ${i}: same messages`);
    assert.equal(sink.toString('hex'), 'ef'.repeat(16), `split at ${i}: data in the sink`);
    assert.deepEqual(asked.find((a) => a[0] === 1n), [1n, 1 << 20, 16]);
  }
  // A sink of the wrong size is a bug on our side, not the server's.
  const dec = new NbdDecoder();
  dec.feed(SERVER_TO_CLIENT);
  assert.throws(() => {
    for (let m = dec.next(); m; m = dec.next()) {
      if (m.kind === 'optionReply' && m.option === P.NBD_OPT_GO && m.reply === P.NBD_REP_ACK) {
        dec.startTransmission({ structuredReplies: true, simpleReplyLength: () => 0, dataSink: () => Buffer.alloc(3) });
      }
    }
  }, (e: unknown) => e instanceof Error && /data sink gave 3 bytes for a 16-byte payload/.test(e.message));
});

test('a large reply arriving over many reads from one reused buffer is copied once, not once per read', () => {
  // A BLOCK_STATUS reply of 2^18 extents (2 MiB + 4), as qemu-nbd sends for a fragmented
  // bitmap, read 64 KiB at a time into one overwritten buffer (as the client reads its socket).
  const n = 1 << 18;
  const payload = Buffer.alloc(4 + 8 * n);
  payload.writeUInt32BE(2, 0);
  for (let i = 0; i < n; i++) {
    payload.writeUInt32BE(512 * (1 + (i % 7)), 4 + 8 * i);
    payload.writeUInt32BE(i % 4, 8 + 8 * i);
  }
  const wire = Buffer.concat([structured(1, P.NBD_REPLY_TYPE_BLOCK_STATUS, 9n, payload), structured(1, P.NBD_REPLY_TYPE_NONE, 10n, Buffer.alloc(0))]);
  const dec = transmissionDecoder();
  const read = 64 * 1024;
  const scratch = Buffer.alloc(read);
  const got: NbdMessage[] = [];
  let copied = 0;
  let reads = 0;
  for (let at = 0; at < wire.length; at += read, reads++) {
    dec.feed(scratch.subarray(0, wire.copy(scratch, 0, at, at + read)));
    for (let m = dec.next(); m; m = dec.next()) got.push(m);
    copied += dec.ownBuffered();
    scratch.fill(0xa5);
  }
  assert.ok(reads >= 32, `${reads} reads`);
  // Before the fix every read re-copied all that was queued: ~reads/2 times the reply.
  assert.ok(copied <= wire.length, `${copied} bytes copied for a ${wire.length}-byte reply`);
  assert.equal(dec.buffered, 0);
  assert.equal(got.length, 2);
  const bs = got[0]!;
  assert.ok(bs.kind === 'chunk' && bs.chunk.type === 'blockStatus' && bs.cookie === 9n);
  assert.equal(bs.chunk.contextId, 2);
  assert.equal(bs.chunk.descriptors.length, n);
  for (const i of [0, 1, 6, 7, n - 1]) assert.deepEqual(bs.chunk.descriptors[i], { length: 512 * (1 + (i % 7)), flags: i % 4 }, `extent ${i}`);
  assert.ok(got[1]!.kind === 'chunk' && got[1]!.cookie === 10n && got[1]!.done);
});

test('in-place reads: a data payload read straight into its sink, the header read alone before it', () => {
  const sink = Buffer.alloc(4096);
  const dec = new NbdDecoder();
  dec.feed(SERVER_TO_CLIENT.subarray(0, 18));
  assert.equal(dec.next()?.kind, 'greeting');
  dec.feed(Buffer.from('0003e889045565a9000000070000000100000000', 'hex'));
  assert.equal(dec.next()?.kind, 'optionReply');
  dec.startTransmission({ structuredReplies: true, simpleReplyLength: () => 0, dataSink: (_c, offset, length) => (offset === 8192 && length === 4096 ? sink : undefined) });
  const payload = randomPayload(4096);
  const offset = Buffer.alloc(8);
  offset.writeBigUInt64BE(8192n);
  const wire = structured(1, P.NBD_REPLY_TYPE_OFFSET_DATA, 5n, Buffer.concat([offset, payload]));
  assert.equal(dec.inPlaceTarget(), undefined, 'no payload under way');
  assert.equal(dec.expectsDataHeader, false, 'no data chunk seen yet');
  dec.feed(wire.subarray(0, 28 + 1000)); // header, offset and 1000 payload bytes through the queue
  assert.equal(dec.next(), undefined);
  const rest = dec.inPlaceTarget()!;
  assert.equal(rest.length, 3096);
  assert.equal(rest.buffer, sink.buffer, 'the sink itself');
  wire.copy(rest, 0, 28 + 1000, 28 + 2000); // "the kernel" writes 1000 bytes in place
  dec.filledInPlace(1000);
  assert.equal(dec.next(), undefined);
  assert.throws(() => dec.filledInPlace(2097), /told of 2097 bytes read in place with 2096 expected/);
  wire.copy(dec.inPlaceTarget()!, 0, 28 + 2000);
  dec.filledInPlace(2096);
  const m = dec.next()!;
  assert.ok(m.kind === 'chunk' && m.chunk.type === 'offsetData' && m.chunk.inPlace && m.done);
  assert.deepEqual(sink, payload);
  assert.equal(dec.expectsDataHeader, true, 'after a streamed data chunk, the next header is read alone');
  dec.feed(structured(1, P.NBD_REPLY_TYPE_NONE, 6n, Buffer.alloc(0)));
  assert.equal(dec.next()?.kind, 'chunk');
  assert.equal(dec.expectsDataHeader, false);
});

function randomPayload(n: number): Buffer {
  return Buffer.from(Array.from({ length: n }, (_v, i) => (i * 131 + 7) & 0xff));
}
