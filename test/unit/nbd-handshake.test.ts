// The handshake steps without a socket: a scripted server answers each
// option, and we check what the client sent, what was agreed, and that every
// refusal or violation kills the connection with an error saying why.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { NbdMessage } from '../../src/nbd/codec.js';
import { NbdError } from '../../src/nbd/errors.js';
import { Handshake, type HandshakeIo } from '../../src/nbd/handshake.js';
import * as P from '../../src/nbd/protocol.js';

const greeting: NbdMessage = { kind: 'greeting', handshakeFlags: P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES };
const reply = (option: number, r: number, data = Buffer.alloc(0)): NbdMessage => ({ kind: 'optionReply', option, reply: r, data });
const ack = (option: number) => reply(option, P.NBD_REP_ACK);

function metaContext(id: number, name: string): NbdMessage {
  const d = Buffer.alloc(4);
  d.writeUInt32BE(id, 0);
  return reply(P.NBD_OPT_SET_META_CONTEXT, P.NBD_REP_META_CONTEXT, Buffer.concat([d, Buffer.from(name)]));
}

function exportInfo(size: number, flags: number): NbdMessage {
  const d = Buffer.alloc(12);
  d.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
  d.writeBigUInt64BE(BigInt(size), 2);
  d.writeUInt16BE(flags, 10);
  return reply(P.NBD_OPT_GO, P.NBD_REP_INFO, d);
}

function blockSizeInfo(min: number, pref: number, max: number): NbdMessage {
  const d = Buffer.alloc(14);
  d.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
  d.writeUInt32BE(min, 2);
  d.writeUInt32BE(pref, 6);
  d.writeUInt32BE(max, 10);
  return reply(P.NBD_OPT_GO, P.NBD_REP_INFO, d);
}

/** A server that answers with `script`, in order; records the options the client sent and the failure. */
function scripted(script: NbdMessage[]): HandshakeIo & { options: number[]; failed: NbdError[] } {
  const io = {
    options: [] as number[],
    failed: [] as NbdError[],
    write(b: Buffer) {
      // the 4-byte client flags, then options: IHAVEOPT, option, length, data
      if (b.length >= P.OPTION_HEADER_SIZE) io.options.push(b.readUInt32BE(8));
    },
    next: async () => script.shift() ?? assert.fail('the client asked for more than the server said'),
    fail(e: NbdError) {
      io.failed.push(e);
      return e;
    },
  };
  return io;
}

test('the steps in spec order; the agreement carries contexts, size, flags and block sizes', async () => {
  const io = scripted([
    greeting,
    ack(P.NBD_OPT_STRUCTURED_REPLY),
    metaContext(7, 'qemu:dirty-bitmap:b1'),
    metaContext(3, 'base:allocation'),
    ack(P.NBD_OPT_SET_META_CONTEXT),
    exportInfo(1 << 20, P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_READ_ONLY),
    blockSizeInfo(512, 4096, 1 << 25),
    ack(P.NBD_OPT_GO),
  ]);
  const agreed = await new Handshake(io, 'nbd://x', 'disk').run(['base:allocation', 'qemu:dirty-bitmap:b1']);
  assert.deepEqual(io.options, [P.NBD_OPT_STRUCTURED_REPLY, P.NBD_OPT_SET_META_CONTEXT, P.NBD_OPT_GO]);
  assert.deepEqual(agreed, {
    structuredReplies: true,
    metaContexts: new Map([['qemu:dirty-bitmap:b1', 7], ['base:allocation', 3]]),
    size: 1 << 20,
    flags: P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_READ_ONLY,
    blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 25, advertised: true },
  });
  assert.deepEqual(io.failed, []);
});

test('no contexts: no NBD_OPT_SET_META_CONTEXT; refused structured replies are fine; default block sizes', async () => {
  const io = scripted([greeting, reply(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ERR_UNSUP), exportInfo(4096, 0), ack(P.NBD_OPT_GO)]);
  const agreed = await new Handshake(io, 'nbd://x', 'disk').run([]);
  assert.deepEqual(io.options, [P.NBD_OPT_STRUCTURED_REPLY, P.NBD_OPT_GO]);
  assert.equal(agreed.structuredReplies, false);
  assert.equal(agreed.blockSizes.advertised, false);
  assert.equal(agreed.size, 4096);
});

const refusals: Array<[string, NbdMessage[], string[], RegExp]> = [
  ['not fixed newstyle', [{ kind: 'greeting', handshakeFlags: 0 }], [], /does not support the fixed newstyle handshake/],
  ['structured replies refused although contexts are wanted', [greeting, reply(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ERR_UNSUP)], ['base:allocation'], /refused structured replies .* metadata contexts cannot be used/],
  [
    'a context not asked for',
    [greeting, ack(P.NBD_OPT_STRUCTURED_REPLY), metaContext(1, 'qemu:dirty-bitmap:other')],
    ['base:allocation'],
    /protocol violation: server selected metadata context 'qemu:dirty-bitmap:other' that was not asked for/,
  ],
  [
    'a context not granted',
    [greeting, ack(P.NBD_OPT_STRUCTURED_REPLY), metaContext(1, 'base:allocation'), ack(P.NBD_OPT_SET_META_CONTEXT)],
    ['base:allocation', 'qemu:dirty-bitmap:b9'],
    /export 'disk' at nbd:\/\/x does not offer metadata context 'qemu:dirty-bitmap:b9'/,
  ],
  ['unknown export', [greeting, ack(P.NBD_OPT_STRUCTURED_REPLY), reply(P.NBD_OPT_GO, P.NBD_REP_ERR_UNKNOWN)], [], /export 'disk' not found \(NBD_REP_ERR_UNKNOWN to NBD_OPT_GO\)/],
  ['NBD_OPT_GO without NBD_INFO_EXPORT', [greeting, ack(P.NBD_OPT_STRUCTURED_REPLY), ack(P.NBD_OPT_GO)], [], /NBD_OPT_GO succeeded without NBD_INFO_EXPORT/],
  [
    'a reply to another option',
    [greeting, ack(P.NBD_OPT_GO)],
    [],
    /reply to NBD_OPT_GO received while waiting for NBD_OPT_STRUCTURED_REPLY/,
  ],
];

for (const [what, script, contexts, message] of refusals) {
  test(`handshake fails and kills the connection: ${what}`, async () => {
    const io = scripted(script);
    await assert.rejects(new Handshake(io, 'nbd://x', 'disk').run(contexts), (e: unknown) => {
      assert.ok(e instanceof NbdError);
      assert.match(e.message, message);
      assert.equal(e.usable, false);
      return true;
    });
    assert.equal(io.failed.length, 1, 'the connection was failed with the error');
  });
}
