import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  QmpDecoder,
  QmpDecodeError,
  encodeCommand,
  isEvent,
  isGreeting,
  isReturn,
  isErrorReply,
  type QmpMessage,
} from '../../src/qemu/qmp/codec.js';

// A stream as QEMU 7.2 sends it (compact, CRLF), plus a pretty-printed reply
// (as from a pretty=on monitor), bare-LF framing, strings holding braces,
// quotes and backslashes, and multi-byte UTF-8 (2-, 3- and 4-byte sequences).
const recorded = [
  '{"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u16"}, "capabilities": ["oob"]}}\r\n',
  '{"return": {}, "id": "vb-1"}\r\n',
  '{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "backup-sda-libvirt-1-format"}}\r\n',
  '{"timestamp": {"seconds": 1700000000, "microseconds": 123999}, "event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "backup-sda-libvirt-1-format"}}\r\n',
  '{"return": {}, "id": "vb-2"}\r\n',
  '{"id": "vb-3", "error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}}\r\n',
  '{\n    "return": [\n        {\n            "node-name": "disk-{format}",\n            "file": "/tmp/d\\u00e9j\\u00e0 \\"vu\\"\\\\ {[x]}.qcow2",\n            "dirty-bitmaps": []\n        }\n    ],\n    "id": "vb-4"\n}\n',
  '{"return": "Caf\u00e9 \u2014 \u65e5\u672c\u8a9e \ud83d\udcbe }{ \\" \\\\", "id": "vb-5"}\n',
  '{"timestamp": {"seconds": 1700000001, "microseconds": 5}, "event": "STOP"}\r\n',
  '  \r\n{"error": {"class": "GenericError", "desc": "Failed to find node with node-name=\'n\u00f8de\'"}, "id": "vb-6"}\r\n',
].join('');
const bytes = Buffer.from(recorded, 'utf8');

function decodeChunks(chunks: Buffer[]): QmpMessage[] {
  const d = new QmpDecoder();
  const out: QmpMessage[] = [];
  for (const c of chunks) out.push(...d.push(c));
  assert.equal(d.buffered, 0);
  return out;
}

const expected = decodeChunks([bytes]);

test('the whole stream decodes to the expected messages', () => {
  assert.equal(expected.length, 10);
  const [greeting, ret1, ev1, , , err3, nodes, utf, stop, err6] = expected.map((m) => m);
  assert.ok(greeting && ret1 && ev1 && err3 && nodes && utf && stop && err6);
  assert.ok(isGreeting(greeting));
  assert.equal((greeting as { QMP: { version: { qemu: { major: number } } } }).QMP.version.qemu.major, 7);
  assert.deepEqual(ret1, { return: {}, id: 'vb-1' });
  assert.ok(isEvent(ev1));
  assert.deepEqual(ev1, {
    timestamp: { seconds: 1700000000, microseconds: 123456 },
    event: 'JOB_STATUS_CHANGE',
    data: { status: 'created', id: 'backup-sda-libvirt-1-format' },
  });
  assert.ok(isErrorReply(err3));
  assert.deepEqual(err3, { id: 'vb-3', error: { class: 'CommandNotFound', desc: 'The command no-such-command has not been found' } });
  assert.ok(isReturn(nodes));
  assert.deepEqual(nodes, {
    return: [{ 'node-name': 'disk-{format}', file: '/tmp/déjà "vu"\\ {[x]}.qcow2', 'dirty-bitmaps': [] }],
    id: 'vb-4',
  });
  assert.deepEqual(utf, { return: 'Café — 日本語 💾 }{ " \\', id: 'vb-5' });
  // An event without data gets data: {}.
  assert.deepEqual(stop, { timestamp: { seconds: 1700000001, microseconds: 5 }, event: 'STOP', data: {} });
  assert.deepEqual(err6, { error: { class: 'GenericError', desc: "Failed to find node with node-name='nøde'" }, id: 'vb-6' });
});

test('split at every byte boundary (two chunks) gives the same messages', () => {
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(decodeChunks([bytes.subarray(0, i), bytes.subarray(i)]), expected, `split at ${i}`);
  }
});

test('one byte at a time gives the same messages', () => {
  const chunks = [...bytes].map((b) => Buffer.from([b]));
  assert.deepEqual(decodeChunks(chunks), expected);
});

test('random chunkings give the same messages', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: bytes.length }), { maxLength: 40 }), (cuts) => {
      const points = [...new Set([0, ...cuts, bytes.length])].sort((a, b) => a - b);
      const chunks = points.slice(1).map((end, i) => bytes.subarray(points[i], end));
      assert.deepEqual(decodeChunks(chunks), expected);
    }),
    { numRuns: 500 },
  );
});

test('a reused chunk buffer does not corrupt a message held across chunks', () => {
  const d = new QmpDecoder();
  const msg = Buffer.from('{"return": "abcdef", "id": "x"}\r\n');
  const scratch = Buffer.alloc(10);
  const out = [];
  for (let i = 0; i < msg.length; i += 10) {
    const n = msg.copy(scratch, 0, i, i + 10);
    out.push(...d.push(scratch.subarray(0, n)));
    scratch.fill(0x41);
  }
  assert.deepEqual(out, [{ return: 'abcdef', id: 'x' }]);
});

test('a message over maxBuffer is rejected, also when it arrives in pieces', () => {
  const big = Buffer.from(JSON.stringify({ return: 'x'.repeat(200), id: 'a' }));
  assert.throws(() => new QmpDecoder({ maxBuffer: 100 }).push(big), (e: unknown) => {
    assert.ok(e instanceof QmpDecodeError);
    assert.match(e.message, /exceeds the limit of 100 bytes/);
    return true;
  });
  // Never completed: rejected as soon as the held bytes pass the limit.
  const d = new QmpDecoder({ maxBuffer: 100 });
  assert.deepEqual(d.push(Buffer.from('{"return": "')), []);
  assert.throws(() => d.push(Buffer.from('y'.repeat(100))), /exceeds the limit/);
  // The decoder stays failed.
  assert.throws(() => d.push(Buffer.from('{}')), /exceeds the limit/);
  // Exactly at the limit is fine.
  const exact = Buffer.from('{"return":1}');
  assert.equal(new QmpDecoder({ maxBuffer: exact.length }).push(exact).length, 1);
});

test('messages before a failure are handed over on the error', () => {
  const d = new QmpDecoder();
  try {
    d.push(Buffer.from('{"return": 1, "id": "a"}\r\n{"return": oops}\r\n'));
    assert.fail('no error');
  } catch (e) {
    assert.ok(e instanceof QmpDecodeError);
    assert.match(e.message, /malformed JSON/);
    assert.deepEqual(e.messages, [{ return: 1, id: 'a' }]);
  }
});

test('bad input is rejected', () => {
  assert.throws(() => new QmpDecoder().push(Buffer.from('[1,2]')), /unexpected byte 0x5b/);
  assert.throws(() => new QmpDecoder().push(Buffer.from('{"foo": 1}')), /unknown QMP message with keys foo/);
  assert.throws(() => new QmpDecoder().push(Buffer.from('{"error": {"class": "X"}}')), /lacks class or desc/);
  assert.throws(() => new QmpDecoder().push(Buffer.from('{"event": 5}')), /event name is not a string/);
  assert.throws(() => new QmpDecoder().push(Buffer.from('\xff{"return": 1}', 'latin1')), /unexpected byte 0xff/);
});

test('guest-agent streams: 0xFF delimiters between messages are skipped when asked', () => {
  const d = new QmpDecoder({ syncDelimiter: true });
  const stream = Buffer.concat([
    Buffer.from('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\ufffd\'"}}\n'),
    Buffer.from([0xff]),
    Buffer.from('{"return": 42}\n'),
  ]);
  assert.deepEqual(d.push(stream), [
    { error: { class: 'GenericError', desc: "JSON parse error, stray '\ufffd'" } },
    { return: 42 },
  ]);
});

test('encodeCommand writes compact JSON with arguments and id, CRLF-terminated', () => {
  assert.equal(
    encodeCommand('blockdev-del', { 'node-name': 'nøde' }, 'vb-7').toString('utf8'),
    '{"execute":"blockdev-del","arguments":{"node-name":"nøde"},"id":"vb-7"}\r\n',
  );
  assert.equal(encodeCommand('query-jobs', undefined, '1').toString(), '{"execute":"query-jobs","id":"1"}\r\n');
  // Round trip through the decoder's framing (a command is a JSON object too).
  const enc = encodeCommand('x', { s: '}{"\\' }, 'i');
  assert.deepEqual(JSON.parse(enc.toString()), { execute: 'x', arguments: { s: '}{"\\' }, id: 'i' });
});
