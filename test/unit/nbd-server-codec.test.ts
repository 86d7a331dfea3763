import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { NbdDecoder, encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest, parseInfoReply, parseMetaContextReply, type NbdMessage } from '../../src/nbd/codec.js';
import * as P from '../../src/nbd/protocol.js';
import {
  OptionPayloadError,
  ServerDecoder,
  encodeBlockStatus,
  encodeDoneChunk,
  encodeErrorChunk,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionReply,
  encodeSimpleReply,
  parseInfoRequest,
  parseMetaContextRequest,
  type ClientMessage,
} from '../../src/nbd/server-codec.js';
import { EXPORT_FLAGS, OptionNegotiation } from '../../src/nbd/server-options.js';

// The client's half of a session recorded between our NBD client and qemu-nbd (the
// same bytes test/unit/nbd-codec.test.ts replays): client flags, STRUCTURED_REPLY,
// SET_META_CONTEXT (two queries), GO, then READ ×3, BLOCK_STATUS and DISC.
const CLIENT_TO_SERVER = Buffer.from(
  '0000000349484156454f5054000000080000000049484156454f50540000000a0000003300000000000000020000000f626173653a616c6c' +
    '6f636174696f6e0000001471656d753a64697274792d6269746d61703a623149484156454f5054000000070000000a000000000002000000' +
    '0325609513000000000000000000000001000000000010000000000010256095130000000000000000000000020000000000000000000000' +
    '10256095130000000000000000000000030000000000a0fff800000010256095130000000700000000000000040000000000000000004000' +
    '0025609513000000020000000000000005000000000000000000000000',
  'hex',
);

function norm(m: ClientMessage): unknown {
  return m.kind === 'option' ? { ...m, data: m.data.toString('hex') } : m;
}

/** Drive the decoder the way the server does: transmission starts right after GO. */
function decodeAll(pieces: Buffer[], dec = new ServerDecoder()): unknown[] {
  const out: unknown[] = [];
  for (const p of pieces) {
    dec.feed(p);
    for (let m = dec.next(); m; m = dec.next()) {
      out.push(norm(m));
      if (m.kind === 'option' && m.option === P.NBD_OPT_GO) dec.startTransmission();
    }
  }
  assert.equal(dec.buffered, 0, 'all bytes consumed');
  return out;
}

const whole = decodeAll([CLIENT_TO_SERVER]);

test('the recorded client session decodes to its flags, options and requests', () => {
  const req = (type: number, cookie: bigint, offset: number, length: number) => ({ kind: 'request', flags: 0, type, cookie, offset, length });
  assert.deepEqual(whole[0], { kind: 'clientFlags', flags: P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES });
  assert.deepEqual(whole.slice(1, 4).map((m) => (m as { option: number }).option), [P.NBD_OPT_STRUCTURED_REPLY, P.NBD_OPT_SET_META_CONTEXT, P.NBD_OPT_GO]);
  const meta = Buffer.from((whole[2] as { data: string }).data, 'hex');
  assert.deepEqual(parseMetaContextRequest(meta), { name: '', queries: ['base:allocation', 'qemu:dirty-bitmap:b1'] });
  assert.deepEqual(parseInfoRequest(Buffer.from((whole[3] as { data: string }).data, 'hex')), { name: '', infos: [P.NBD_INFO_EXPORT, P.NBD_INFO_BLOCK_SIZE] });
  assert.deepEqual(whole.slice(4), [
    req(P.NBD_CMD_READ, 1n, 1 << 20, 16),
    req(P.NBD_CMD_READ, 2n, 0, 16),
    req(P.NBD_CMD_READ, 3n, 10551288, 16),
    req(P.NBD_CMD_BLOCK_STATUS, 4n, 0, 4 << 20),
    req(P.NBD_CMD_DISC, 5n, 0, 0),
  ]);
});

test('split at every byte boundary gives the same messages', () => {
  for (let i = 0; i <= CLIENT_TO_SERVER.length; i++) {
    assert.deepEqual(decodeAll([CLIENT_TO_SERVER.subarray(0, i), CLIENT_TO_SERVER.subarray(i)]), whole, `split at ${i}`);
  }
  const bytes = Array.from(CLIENT_TO_SERVER, (_b, i) => CLIENT_TO_SERVER.subarray(i, i + 1));
  assert.deepEqual(decodeAll(bytes), whole, 'one byte at a time');
});

test("a WRITE's payload is skipped wherever the input is split, and the next request decodes", () => {
  const payload = Buffer.alloc(300, 0xab);
  const stream = Buffer.concat([
    encodeRequest({ flags: 0, type: P.NBD_CMD_WRITE, cookie: 7n, offset: 4096, length: payload.length }),
    payload,
    encodeRequest({ flags: 0, type: P.NBD_CMD_READ, cookie: 8n, offset: 0, length: 512 }),
  ]);
  const run = (pieces: Buffer[]) => {
    const dec = new ServerDecoder();
    dec.feed(Buffer.concat([Buffer.alloc(4), encodeOption(P.NBD_OPT_GO, Buffer.alloc(6))]));
    dec.next();
    dec.next();
    dec.startTransmission();
    return decodeAll(pieces, dec);
  };
  const expected = [
    { kind: 'request', flags: 0, type: P.NBD_CMD_WRITE, cookie: 7n, offset: 4096, length: 300 },
    { kind: 'request', flags: 0, type: P.NBD_CMD_READ, cookie: 8n, offset: 0, length: 512 },
  ];
  for (let i = 0; i <= stream.length; i++) assert.deepEqual(run([stream.subarray(0, i), stream.subarray(i)]), expected, `split at ${i}`);
  fc.assert(
    fc.property(fc.uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 20 }), (cuts) => {
      const at = [0, ...cuts.sort((a, b) => a - b), stream.length];
      assert.deepEqual(run(at.slice(1).map((e, k) => stream.subarray(at[k], e))), expected);
    }),
    { numRuns: 200 },
  );
});

test('hostile frames poison the decoder before their payload is buffered', () => {
  const inOptions = () => {
    const d = new ServerDecoder({ maxOption: 1024, maxPayload: 1 << 20 });
    d.feed(Buffer.alloc(4));
    d.next();
    return d;
  };
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(P.NBD_NEW_VERSION, 0);
  header.writeUInt32BE(P.NBD_OPT_GO, 8);
  header.writeUInt32BE(0xfffffff0, 12);
  let d = inOptions();
  d.feed(header);
  assert.throws(() => d.next(), /NBD_OPT_GO carries 4294967280 bytes, more than the 1024/);
  assert.throws(() => d.next(), /more than the 1024/, 'poisoned: the same error again');

  d = inOptions();
  d.feed(Buffer.from('0123456789abcdef'));
  assert.throws(() => d.next(), /not IHAVEOPT/);

  d = inOptions();
  d.feed(encodeOption(P.NBD_OPT_GO, Buffer.alloc(6)));
  d.next();
  d.startTransmission();
  const bad = encodeRequest({ flags: 0, type: P.NBD_CMD_READ, cookie: 1n, offset: 0, length: 1 });
  bad.writeUInt32BE(0xdeadbeef, 0);
  d.feed(bad);
  assert.throws(() => d.next(), /request magic is 0xdeadbeef/);

  d = inOptions();
  d.feed(encodeOption(P.NBD_OPT_GO, Buffer.alloc(6)));
  d.next();
  d.startTransmission();
  d.feed(encodeRequest({ flags: 0, type: P.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: (1 << 20) + 1 }));
  assert.throws(() => d.next(), /NBD_CMD_WRITE of 1048577 bytes, more than 1048576/);
});

test('option payloads the client encodes parse back; inconsistent ones are refused', () => {
  const data = (opt: Buffer) => opt.subarray(16);
  assert.deepEqual(parseInfoRequest(data(encodeInfoRequest(P.NBD_OPT_GO, 'sdb', [P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE]))), {
    name: 'sdb',
    infos: [P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE],
  });
  assert.deepEqual(parseMetaContextRequest(data(encodeMetaContextRequest(P.NBD_OPT_LIST_META_CONTEXT, 'vda', []))), { name: 'vda', queries: [] });
  const good = data(encodeInfoRequest(P.NBD_OPT_GO, 'vda', [1]));
  assert.throws(() => parseInfoRequest(good.subarray(0, good.length - 1)), OptionPayloadError);
  assert.throws(() => parseInfoRequest(Buffer.concat([good, Buffer.alloc(1)])), OptionPayloadError);
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(5000, 0);
  assert.throws(() => parseInfoRequest(huge), /5000 bytes, longer than 4096/);
  const meta = data(encodeMetaContextRequest(P.NBD_OPT_SET_META_CONTEXT, 'vda', ['base:allocation']));
  meta.writeUInt32BE(2, 7); // claims two queries, carries one
  assert.throws(() => parseMetaContextRequest(meta), OptionPayloadError);
});

test("the server's encoders decode with the client's decoder", () => {
  const dec = new NbdDecoder();
  const cookieLen = new Map<bigint, number>([[9n, 4]]);
  const data = Buffer.from('abcd');
  dec.feed(encodeGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES));
  dec.feed(encodeOptionReply(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ACK));
  const out: NbdMessage[] = [];
  for (let m = dec.next(); m; m = dec.next()) out.push(m);
  dec.startTransmission({ structuredReplies: true, simpleReplyLength: (c) => cookieLen.get(c) });
  dec.feed(Buffer.concat([
    encodeOffsetDataHeader(1n, 4096, data.length, false), data,
    encodeOffsetHole(1n, 0, 4096, true),
    encodeBlockStatus(2n, 1, [{ length: 512, flags: 3 }, { length: 1024, flags: 0 }], true),
    encodeErrorChunk(3n, P.NBD_EINVAL, 'past the end'),
    encodeDoneChunk(4n),
    encodeSimpleReply(9n, 0), data,
  ]));
  for (let m = dec.next(); m; m = dec.next()) out.push(m);
  assert.deepEqual(out[0], { kind: 'greeting', handshakeFlags: 3 });
  assert.equal(out[1]!.kind === 'optionReply' && out[1]!.reply, P.NBD_REP_ACK);
  const chunks = out.slice(2).map((m) => (m.kind === 'chunk' ? { cookie: m.cookie, done: m.done, chunk: m.chunk } : m));
  assert.deepEqual(chunks, [
    { cookie: 1n, done: false, chunk: { type: 'offsetData', offset: 4096, data } },
    { cookie: 1n, done: true, chunk: { type: 'offsetHole', offset: 0, length: 4096 } },
    { cookie: 2n, done: true, chunk: { type: 'blockStatus', contextId: 1, descriptors: [{ length: 512, flags: 3 }, { length: 1024, flags: 0 }] } },
    { cookie: 3n, done: true, chunk: { type: 'error', replyType: P.NBD_REPLY_TYPE_ERROR, error: P.NBD_EINVAL, message: 'past the end' } },
    { cookie: 4n, done: true, chunk: { type: 'none' } },
    { kind: 'simpleReply', cookie: 9n, error: 0, data },
  ]);
});

test('negotiation: LIST, unknown options, meta contexts, INFO and GO', () => {
  const neg = new OptionNegotiation(new Map([['vda', { size: 1 << 20, preferredBlockSize: 4 << 20 }], ['sdb', { size: 512, preferredBlockSize: 4096 }]]));
  assert.equal(neg.clientFlags(0x4), false, 'unknown client flag bits');
  assert.equal(neg.clientFlags(P.NBD_FLAG_C_NO_ZEROES), false, 'not fixed newstyle');
  assert.equal(neg.clientFlags(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES), true);
  const replies = (option: number, data: Buffer = Buffer.alloc(0)) => {
    const out = neg.option(option, data);
    const dec = new NbdDecoder();
    dec.feed(encodeGreeting(0));
    dec.next();
    dec.feed(Buffer.concat(out.reply));
    const msgs: Array<{ reply: number; data: Buffer }> = [];
    for (let m = dec.next(); m; m = dec.next()) if (m.kind === 'optionReply') msgs.push({ reply: m.reply, data: m.data });
    return { out, msgs };
  };
  const list = replies(P.NBD_OPT_LIST).msgs;
  assert.deepEqual(list.map((m) => m.reply), [P.NBD_REP_SERVER, P.NBD_REP_SERVER, P.NBD_REP_ACK]);
  assert.deepEqual(list.slice(0, 2).map((m) => m.data.subarray(4).toString()), ['vda', 'sdb']);
  assert.equal(replies(42).msgs[0]!.reply, P.NBD_REP_ERR_UNSUP);
  assert.equal(replies(P.NBD_OPT_STARTTLS).msgs[0]!.reply, P.NBD_REP_ERR_UNSUP);
  const setMeta = (name: string, q: string[]) => encodeMetaContextRequest(P.NBD_OPT_SET_META_CONTEXT, name, q).subarray(16);
  assert.equal(replies(P.NBD_OPT_SET_META_CONTEXT, setMeta('vda', ['base:allocation'])).msgs[0]!.reply, P.NBD_REP_ERR_INVALID, 'before structured replies');
  assert.equal(replies(P.NBD_OPT_STRUCTURED_REPLY).msgs[0]!.reply, P.NBD_REP_ACK);
  const meta = replies(P.NBD_OPT_SET_META_CONTEXT, setMeta('vda', ['qemu:dirty-bitmap:x', 'base:allocation'])).msgs;
  assert.deepEqual(meta.map((m) => m.reply), [P.NBD_REP_META_CONTEXT, P.NBD_REP_ACK]);
  assert.deepEqual(parseMetaContextReply(meta[0]!.data), { id: 1, name: 'base:allocation' });
  assert.equal(replies(P.NBD_OPT_GO, encodeInfoRequest(P.NBD_OPT_GO, 'nope', []).subarray(16)).msgs[0]!.reply, P.NBD_REP_ERR_UNKNOWN);
  assert.equal(replies(P.NBD_OPT_GO, Buffer.from([0, 0, 0, 9])).msgs[0]!.reply, P.NBD_REP_ERR_INVALID, 'truncated GO');
  const info = replies(P.NBD_OPT_INFO, encodeInfoRequest(P.NBD_OPT_INFO, 'vda', []).subarray(16));
  assert.ok(!('go' in info.out), 'INFO does not end the handshake');
  const go = replies(P.NBD_OPT_GO, encodeInfoRequest(P.NBD_OPT_GO, 'vda', [P.NBD_INFO_BLOCK_SIZE]).subarray(16));
  assert.deepEqual(go.msgs.filter((m) => m.reply === P.NBD_REP_INFO).map((m) => parseInfoReply(m.data)), [
    { info: 'export', size: 1 << 20, flags: EXPORT_FLAGS },
    { info: 'blockSize', minimum: 1, preferred: 4 << 20, maximum: 32 << 20 },
  ]);
  assert.equal(EXPORT_FLAGS & P.NBD_FLAG_READ_ONLY, P.NBD_FLAG_READ_ONLY);
  assert.deepEqual('go' in go.out && go.out.go, { exportName: 'vda', structuredReplies: true, baseAllocation: true });
  assert.ok('close' in neg.option(P.NBD_OPT_ABORT, Buffer.alloc(0)));
});
