import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCode, VirError } from '../../src/errors.js';
import {
  array,
  decode,
  encode,
  fixedOpaque,
  int,
  optional,
  string,
  struct,
  uhyper,
  uint,
  union,
  XdrReader,
} from '../../src/libvirt/xdr.js';
import { MAX_MESSAGE_BYTES, MessageType, PacketDecoder, Program, encodePacket } from '../../src/libvirt/packet.js';
import { remoteByNumber, remoteError, remoteProcedures, typedParam, TypedParamType } from '../../src/libvirt/procedures.js';

// Frames as virsh 9.0 and libvirtd 9.0 exchanged them (observed through a
// logging proxy): AUTH_LIST call and reply, DOMAIN_LOOKUP_BY_NAME "rpc1" call
// and reply, and a keepalive PING from the server.
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const authListCall = hex('0000001c 20008086 00000001 00000042 00000000 00000000 00000000');
const authListReply = hex('00000024 20008086 00000001 00000042 00000001 00000000 00000000 00000001 00000000');
const lookupCall = hex('00000024 20008086 00000001 00000017 00000000 00000006 00000000 00000004 72706331');
const lookupReply = hex(
  '00000038 20008086 00000001 00000017 00000001 00000006 00000000 00000004 72706331' +
    '2aa8cd4f b7f14d6a bcdf8e03 6368adf6 00000001',
);
const ping = hex('0000001c 6b656570 00000001 00000001 00000002 00000000 00000000');
const stream = Buffer.concat([authListCall, authListReply, lookupCall, lookupReply, ping]);

const rpcError = (f: () => unknown): VirError => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof VirError, `expected a VirError, got ${String(e)}`);
    assert.equal(e.code, ErrorCode.RPC);
    return e;
  }
  assert.fail('expected an error');
};

test('observed frames decode to the values libvirt sent, and re-encode to the same bytes', () => {
  const packets = new PacketDecoder().push(stream);
  assert.equal(packets.length, 5);
  const [call, reply, lcall, lreply, keep] = packets;
  assert.deepEqual(call!.header, { prog: Program.REMOTE, vers: 1, proc: 66, type: 0, serial: 0, status: 0 });
  assert.deepEqual(decode(remoteProcedures.authList.ret, reply!.payload), { types: [0] });
  assert.deepEqual(decode(remoteProcedures.domainLookupByName.args, lcall!.payload), { name: 'rpc1' });
  const ret = decode(remoteProcedures.domainLookupByName.ret, lreply!.payload);
  assert.equal(ret.dom.name, 'rpc1');
  assert.equal(ret.dom.uuid.toString('hex'), '2aa8cd4fb7f14d6abcdf8e036368adf6');
  assert.equal(ret.dom.id, 1);
  assert.deepEqual(keep!.header, { prog: Program.KEEPALIVE, vers: 1, proc: 1, type: MessageType.MESSAGE, serial: 0, status: 0 });
  assert.deepEqual(encodePacket(lreply!.header, encode(remoteProcedures.domainLookupByName.ret, ret)), lookupReply);
  assert.deepEqual(encodePacket(call!.header, Buffer.alloc(0)), authListCall);
});

test('the packet decoder returns the same packets however the stream is split (every byte, every pair of cuts)', () => {
  const whole = new PacketDecoder().push(stream);
  for (let i = 0; i <= stream.length; i++) {
    const d = new PacketDecoder();
    const got = [...d.push(stream.subarray(0, i)), ...d.push(stream.subarray(i))];
    assert.deepEqual(got, whole, `split at ${i}`);
    assert.equal(d.pendingBytes, 0);
  }
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: stream.length }), { maxLength: 6 }), (cuts) => {
      const points = [0, ...[...cuts].sort((a, b) => a - b), stream.length];
      const d = new PacketDecoder();
      const got = points.slice(1).flatMap((end, i) => d.push(stream.subarray(points[i]!, end)));
      assert.deepEqual(got, whole);
    }),
  );
});

test('lengths outside 28..max fail the stream at once, before the body is buffered', () => {
  for (const length of [0, 4, 27, MAX_MESSAGE_BYTES + 1, 0xffffffff]) {
    const word = Buffer.alloc(4);
    word.writeUInt32BE(length >>> 0);
    const d = new PacketDecoder();
    rpcError(() => d.push(word));
    assert.equal(d.pendingBytes, 0);
    rpcError(() => d.push(authListCall)); // unusable after a framing error
  }
  // a server's own cap (read-only socket) is honoured the same way
  const small = new PacketDecoder(64 * 1024);
  const word = Buffer.alloc(4);
  word.writeUInt32BE(64 * 1024 + 1);
  rpcError(() => small.push(word));
  const header = { prog: Program.REMOTE, vers: 1, proc: 1, type: 0, serial: 0, status: 0 };
  assert.match(rpcError(() => encodePacket(header, Buffer.alloc(64 * 1024), 64 * 1024)).message, /exceeds the maximum/);
});

test('every bound is checked before allocating: strings, arrays, optionals, unions, trailing bytes', () => {
  const s8 = string(8);
  const w = (...words: number[]): Buffer => {
    const b = Buffer.alloc(words.length * 4);
    words.forEach((v, i) => b.writeUInt32BE(v >>> 0, i * 4));
    return b;
  };
  assert.match(rpcError(() => decode(s8, w(9, 0, 0, 0))).message, /exceeds its maximum of 8/);
  assert.match(rpcError(() => decode(s8, w(8, 0))).message, /needs 8 bytes, 4 left/);
  // a count within the maximum that the remaining bytes cannot hold is refused before the array exists
  assert.match(rpcError(() => decode(array(uhyper, 1_000_000), w(999_999, 0))).message, /cannot fit/);
  assert.match(rpcError(() => decode(array(int, 2), w(3, 1, 2, 3))).message, /exceeds its maximum of 2/);
  assert.match(rpcError(() => decode(optional(int), w(2, 7))).message, /neither 0 nor 1/);
  assert.match(rpcError(() => decode(typedParam, Buffer.concat([encode(s8, 'x'), w(8, 0)]))).message, /discriminant 8/);
  assert.match(rpcError(() => decode(int, w(1, 2))).message, /4 trailing bytes/);
  assert.match(rpcError(() => encode(s8, '123456789')).message, /exceeds its maximum/);
  assert.match(rpcError(() => encode(array(int, 1), [1, 2])).message, /exceeds its maximum/);
  assert.match(rpcError(() => encode(uint, -1)).message, /out of range/);
  assert.match(rpcError(() => encode(fixedOpaque(16), Buffer.alloc(15))).message, /given 15 bytes/);
});

test('rpcgen rules: strings are padded UTF-8 without a terminator, optionals and unions carry their markers', () => {
  assert.deepEqual(encode(string(100), 'héllo'), hex('00000006 68c3a96c 6c6f0000'));
  assert.deepEqual(encode(optional(string(10)), null), hex('00000000'));
  assert.deepEqual(encode(typedParam, { field: 'success', value: { type: TypedParamType.BOOLEAN, value: 1 } }), hex('00000007 73756363 65737300 00000006 00000001'));
  assert.deepEqual(
    decode(typedParam, encode(typedParam, { field: 'disk_total', value: { type: TypedParamType.ULLONG, value: 2n ** 40n } })),
    { field: 'disk_total', value: { type: 4, value: 2n ** 40n } },
  );
  const e = { code: 42, domain: 10, message: 'Domain not found', level: 2, dom: null, str1: null, str2: 'x', str3: null, int1: -1, int2: -1, net: null };
  assert.deepEqual(decode(remoteError, encode(remoteError, e)), e);
  // remote_domain_get_info_ret: u_char and u_short take 4 bytes each
  const info = { state: 1, maxMem: 131072n, memory: 131072n, nrVirtCpu: 1, cpuTime: 5n };
  assert.equal(encode(remoteProcedures.domainGetInfo.ret, info).length, 4 + 8 + 8 + 4 + 8);
});

test('fuzz: any bytes as any procedure payload decode or fail with an RPC error, never anything else', () => {
  const rows = [...remoteByNumber.values()];
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(rows.length - 1), fc.boolean(), (bytes, i, asRet) => {
      const row = rows[i]!;
      try {
        decode(asRet ? row.ret : row.args, Buffer.from(bytes));
      } catch (e) {
        assert.ok(e instanceof VirError && e.code === ErrorCode.RPC, String(e));
      }
    }),
    { numRuns: 5000 },
  );
  // a decoded value always re-encodes to the bytes it came from (the codec is its own inverse)
  const cp = remoteProcedures.domainCheckpointCreateXML.args;
  fc.assert(
    fc.property(fc.string(), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.integer({ min: -1, max: 1 << 30 }), fc.nat(), (name, uuid, id, flags) => {
      const v = { dom: { name, uuid: Buffer.from(uuid), id }, xml_desc: `<domaincheckpoint><name>${name}</name></domaincheckpoint>`, flags };
      const bytes = encode(cp, v);
      assert.deepEqual(decode(cp, bytes), v);
      assert.equal(bytes.length % 4, 0);
    }),
  );
  // values far past the writer's first buffer (it grows while writing numbers, strings and opaques)
  const many = array(struct({ n: int, h: uhyper, s: string(64) }), 10_000);
  const items = Array.from({ length: 3000 }, (_, n) => ({ n: n - 1500, h: BigInt(n) * 2n ** 40n, s: `item-${n}` }));
  assert.deepEqual(decode(many, encode(many, items)), items);
  assert.equal(new XdrReader(Buffer.alloc(8), 4).remaining, 4);
  assert.ok(struct({ a: int }).minBytes === 4 && union({ 1: int }).minBytes === 8);
});
