// The golden frames of test/fixtures/libvirt-wire (captured between real
// virsh/python3-libvirt and a real libvirtd 9.0) prove our struct layouts:
// every payload decodes with our codecs, consumed exactly, and re-encodes to
// the same bytes. Then the captured client sides are replayed, in capture
// order, against virtbackd's libvirt server on the TestDriver: every call gets
// a reply of the same kind (procedure, serial, OK or the same error code), and
// where the answer does not depend on the driver, the same bytes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TestDriver } from '../../src/api/test-driver.js';
import { MessageStatus, MessageType, Program, decodeHeader, type Header } from '../../src/libvirt/packet.js';
import { qemuProcedures, remoteByNumber, remoteError, remoteEvents, type Procedure } from '../../src/libvirt/procedures.js';
import { decode, encode, type Codec } from '../../src/libvirt/xdr.js';
import { WireClient, startLibvirtServer } from '../helpers/libvirt-wire.js';

const DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'libvirt-wire');

interface Frame {
  conn: number;
  dir: 'c2s' | 's2c';
  hex: string;
}
interface Scenario {
  scenario: string;
  command: string;
  frames: Frame[];
}

function load(name: string): Scenario {
  return JSON.parse(fs.readFileSync(path.join(DIR, `${name}.json`), 'utf8')) as Scenario;
}

const scenarioNames = fs
  .readdirSync(DIR)
  .filter((f) => f.endsWith('.json'))
  .map((f) => f.slice(0, -5));

const eventsByProc = new Map<number, Codec<unknown>>(Object.values(remoteEvents).map((e) => [e.proc, e.body as Codec<unknown>]));

/** The codec of a captured frame's payload, from its header and direction. */
function payloadCodec(h: Header): Codec<unknown> | null {
  if (h.prog === Program.KEEPALIVE) return null;
  if (h.type === MessageType.MESSAGE) return eventsByProc.get(h.proc) ?? assert.fail(`an event we do not know: ${h.proc}`);
  const row: Procedure | undefined =
    h.prog === Program.QEMU ? Object.values(qemuProcedures).find((r) => r.proc === h.proc) : remoteByNumber.get(h.proc);
  assert.ok(row, `procedure ${h.prog.toString(16)}/${h.proc} is in our table`);
  if (h.type === MessageType.CALL) return row.args;
  return h.status === MessageStatus.OK ? row.ret : (remoteError as Codec<unknown>);
}

test('every captured frame decodes with our codecs, consumed exactly, and re-encodes to the same bytes', () => {
  assert.ok(scenarioNames.length >= 20, `${scenarioNames.length} scenarios`);
  let frames = 0;
  for (const name of scenarioNames) {
    for (const f of load(name).frames) {
      const bytes = Buffer.from(f.hex, 'hex');
      assert.equal(bytes.readUInt32BE(0), bytes.length, `${name}: the length word counts the whole frame`);
      const h = decodeHeader(bytes);
      const payload = bytes.subarray(28);
      const codec = payloadCodec(h);
      if (codec === null) {
        assert.equal(payload.length, 0, `${name}: keepalive messages are empty`);
        continue;
      }
      const value = decode(codec, payload, `${name} ${f.dir} ${h.proc}`);
      assert.deepEqual(encode(codec, value), payload, `${name} ${f.dir} ${h.proc}: re-encoded`);
      frames++;
    }
  }
  assert.ok(frames > 400, `${frames} frames checked`);
});

/** Replies whose bytes do not depend on the driver's state: handshake, close, type, version, lib version. */
const SAME_BYTES = new Set([1, 2, 3, 4, 60, 66, 157, 360, 361]);

const UUID = '5d1c2b9e-6f4a-4c8e-9b0a-3e7f1a2b4c6d';

/** The virsh scenarios in the order they ran against one domain; what happened between them, outside the capture. */
const ORDER: Array<[string, ((d: TestDriver) => Promise<void>)?]> = [
  ['version'],
  ['define'],
  ['start'],
  ['list-all'],
  ['domstate'],
  ['dumpxml'],
  [
    'checkpoint-create-as',
    async (d) => {
      await d.checkpointCreateXML(UUID, '<domaincheckpoint><name>cp2</name></domaincheckpoint>', 0);
    },
  ],
  ['checkpoint-list'],
  ['checkpoint-list-tree'],
  ['checkpoint-dumpxml'],
  ['checkpoint-parent'],
  ['checkpoint-info'],
  ['unknown-domain'],
  ['keepalive'],
  [
    'backup-begin-push',
    async (d) => {
      await new Promise((r) => setTimeout(r, 150));
      // the test driver keeps a finished push until backupEnd; the QEMU driver, like libvirt, does not
      await d.backupEnd(UUID, 0, 0);
    },
  ],
  ['domjobinfo-completed'],
  ['backup-begin-pull'],
  ['backup-dumpxml'],
  ['domjobinfo'],
  // domjobabort ran while `virsh event` waited: it made the job-completed event
  ['event-job-completed'],
  ['python-libvirt'],
  ['destroy'],
  ['undefine'],
];
const CONCURRENT: Record<string, string> = { 'event-job-completed': 'domjobabort' };

test('captured virsh and python3-libvirt sessions replayed against virtbackd get replies of the same kind', async (t) => {
  const replayed = [...ORDER.map(([n]) => n), ...Object.values(CONCURRENT)].sort();
  assert.deepEqual(replayed, [...scenarioNames].sort(), 'every captured scenario is replayed');
  const s = await startLibvirtServer(t, {}, new TestDriver({ pushDurationMs: 20 }));
  const replay = async (name: string): Promise<void> => {
    const frames = load(name).frames;
    const c = await WireClient.connect(s.rw);
    try {
      let messages363 = 0;
      for (const [i, f] of frames.entries()) {
        const bytes = Buffer.from(f.hex, 'hex');
        const h = decodeHeader(bytes);
        if (f.dir === 's2c') {
          if (h.type === MessageType.MESSAGE && h.proc === remoteEvents.jobCompleted.proc) messages363++;
          continue;
        }
        if (h.prog === Program.KEEPALIVE) {
          if (h.proc === 1) {
            c.write(bytes);
            await c.waitMessages((m) => m.some((p) => p.header.prog === Program.KEEPALIVE && p.header.proc === 2));
          }
          continue;
        }
        // an event libvirtd sent before this call: make it happen here too
        if (h.proc === 317 && messages363 > 0) {
          if (CONCURRENT[name]) await replay(CONCURRENT[name]);
          const got = await c.waitMessages((m) => m.filter((p) => p.header.proc === remoteEvents.jobCompleted.proc).length >= messages363);
          const ev = decode(remoteEvents.jobCompleted.body, got.find((p) => p.header.proc === remoteEvents.jobCompleted.proc)!.payload);
          const theirs = frames.find((x) => x.dir === 's2c' && decodeHeader(Buffer.from(x.hex, 'hex')).proc === remoteEvents.jobCompleted.proc)!;
          const expected = decode(remoteEvents.jobCompleted.body, Buffer.from(theirs.hex, 'hex').subarray(28));
          assert.deepEqual([ev.callbackID, ev.dom.name, ev.dom.uuid], [expected.callbackID, expected.dom.name, expected.dom.uuid], `${name}: the event`);
        }
        const reply = c.replyTo(h.serial);
        c.write(bytes);
        const ours = await reply;
        const theirsFrame = frames.slice(i + 1).find((x) => x.dir === 's2c' && decodeHeader(Buffer.from(x.hex, 'hex')).serial === h.serial && decodeHeader(Buffer.from(x.hex, 'hex')).type === MessageType.REPLY)!;
        const theirsBytes = Buffer.from(theirsFrame.hex, 'hex');
        const theirs = decodeHeader(theirsBytes);
        const what = `${name}: reply to ${h.proc} (serial ${h.serial})`;
        assert.deepEqual(ours.header, theirs, what);
        const codec = payloadCodec(theirs)!;
        decode(codec, ours.payload, what);
        if (theirs.status === MessageStatus.ERROR) {
          assert.equal(decode(remoteError, ours.payload).code, decode(remoteError, theirsBytes.subarray(28)).code, what);
        } else if (SAME_BYTES.has(h.proc)) {
          assert.equal(ours.payload.toString('hex'), theirsBytes.subarray(28).toString('hex'), what);
        }
      }
    } finally {
      c.close();
    }
  };
  for (const [name, after] of ORDER) {
    await replay(name);
    await after?.(s.driver);
  }
});
