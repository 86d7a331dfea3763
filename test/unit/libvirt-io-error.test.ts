// libvirt's disk I/O-error reporting on its wire (remote_protocol.x): one
// driver 'io-error' event is REMOTE_PROC_DOMAIN_EVENT_CALLBACK_IO_ERROR (322)
// for VIR_DOMAIN_EVENT_ID_IO_ERROR (4) registrations and
// ..._IO_ERROR_REASON (324) for IO_ERROR_REASON (6) ones, byte for byte as
// remote_domain_event_callback_io_error(_reason)_msg lays them out; and
// REMOTE_PROC_DOMAIN_GET_DISK_ERRORS (263) as libvirt's daemon answers it
// (maxerrors 0: how many to ask for; over 256: refused), with virtback's own
// libvirt driver on the other end of both.

import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { DiskError, DriverEvent, IoErrorEvent } from '../../src/api/driver.js';
import { TestDriver } from '../../src/api/test-driver.js';
import { DiskErrorCode, IoErrorAction } from '../../src/flags.js';
import { LibvirtDriver } from '../../src/libvirt/driver.js';
import { MIN_MESSAGE_BYTES, MessageType, decodeHeader } from '../../src/libvirt/packet.js';
import { DomainEventId, remoteEvents, type WireDomain } from '../../src/libvirt/procedures.js';
import { uuidToBytes } from '../../src/libvirt/semantics.js';
import { EventRegistrations, toWireEvent } from '../../src/libvirt/server-events.js';
import { connectUnixStream } from '../../src/libvirt/transport.js';
import { decode, encode } from '../../src/libvirt/xdr.js';
import { WireClient, startLibvirtServer } from '../helpers/libvirt-wire.js';

const UUID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
const dom: WireDomain = { name: 'vm1', uuid: uuidToBytes(UUID), id: 7 };
const ev: IoErrorEvent = {
  type: 'io-error',
  domain: { name: 'vm1', uuid: UUID },
  disk: 'vda',
  srcPath: '/var/lib/vm/vm1-vda.qcow2',
  devAlias: 'virtio-disk0',
  action: IoErrorAction.PAUSE,
  reason: 'enospc',
};

// ---- hand-written XDR (RFC 4506): big-endian ints, strings padded to 4 bytes

function xdrInt(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

function xdrString(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  return Buffer.concat([xdrInt(bytes.length), bytes, Buffer.alloc((4 - (bytes.length % 4)) % 4)]);
}

/** remote_domain_event_callback_io_error_msg: callbackID, then remote_domain_event_io_error_msg { dom, srcPath, devAlias, action } */
function ioErrorLayout(callbackID: number, reason?: string): Buffer {
  const parts = [
    xdrInt(callbackID),
    xdrString('vm1'), Buffer.from(UUID.replace(/-/g, ''), 'hex'), xdrInt(7),
    xdrString('/var/lib/vm/vm1-vda.qcow2'),
    xdrString('virtio-disk0'),
    xdrInt(1),
  ];
  if (reason !== undefined) parts.push(xdrString(reason));
  return Buffer.concat(parts);
}

test('an io-error is procedure 322 for IO_ERROR (4) and 324 for IO_ERROR_REASON (6), byte for byte libvirt\'s layout', () => {
  let next = 40;
  const regs = new EventRegistrations(() => next++);
  const lifecycle = regs.register(DomainEventId.LIFECYCLE, null);
  const io = regs.register(DomainEventId.IO_ERROR, UUID);
  const reason = regs.register(DomainEventId.IO_ERROR_REASON, null);
  regs.register(DomainEventId.IO_ERROR_REASON, '11111111-2222-3333-4444-555555555555');
  assert.deepEqual([DomainEventId.IO_ERROR, DomainEventId.IO_ERROR_REASON], [4, 6], "libvirt's event IDs (GRAPHICS is 5)");
  assert.deepEqual([lifecycle, io, reason], [40, 41, 42]);

  const wire = toWireEvent(ev);
  assert.equal(regs.wants(wire), true);
  const msgs = regs.messages(wire, dom);
  assert.equal(msgs.length, 2, 'the IO_ERROR registration of this domain and the IO_ERROR_REASON one of every domain');
  const headers = msgs.map((m) => decodeHeader(m));
  assert.deepEqual(headers.map((h) => [h.proc, h.type]), [[322, MessageType.MESSAGE], [324, MessageType.MESSAGE]]);
  assert.deepEqual(msgs[0]!.subarray(MIN_MESSAGE_BYTES), ioErrorLayout(41), 'IO_ERROR: no reason');
  assert.deepEqual(msgs[1]!.subarray(MIN_MESSAGE_BYTES), ioErrorLayout(42, 'enospc'), 'IO_ERROR_REASON: the reason last');
});

test('both io-error messages decode to what was encoded, an empty reason and alias included', () => {
  const base = { callbackID: 3, dom, srcPath: '/d/ü.qcow2', devAlias: '', action: IoErrorAction.REPORT };
  const one = decode(remoteEvents.ioError.body, encode(remoteEvents.ioError.body, base), 'io-error');
  assert.deepEqual({ ...one, dom: { ...one.dom, uuid: Buffer.from(one.dom.uuid) } }, base);
  const withReason = { ...base, reason: '' };
  const two = decode(remoteEvents.ioErrorReason.body, encode(remoteEvents.ioErrorReason.body, withReason), 'io-error-reason');
  assert.deepEqual({ ...two, dom: { ...two.dom, uuid: Buffer.from(two.dom.uuid) } }, withReason);
  // an IO_ERROR body is a prefix of the IO_ERROR_REASON one: decoding it as the latter fails, not misreads
  assert.throws(() => decode(remoteEvents.ioErrorReason.body, encode(remoteEvents.ioError.body, base), 'io-error-reason'));
});

/** A test driver whose running domain has disk errors. */
class ErrorsDriver extends TestDriver {
  errors: DiskError[] = [];
  override async domainGetDiskErrors(uuid: string, flags: number): Promise<DiskError[]> {
    await super.domainGetDiskErrors(uuid, flags);
    return this.errors;
  }
}

async function withDomain(t: TestContext): Promise<{ driver: ErrorsDriver; rw: string }> {
  const driver = new ErrorsDriver({ pushDurationMs: 20 });
  const s = await startLibvirtServer(t, {}, driver);
  await driver.domainDefineXML(`<domain><name>vm1</name><uuid>${UUID}</uuid></domain>`, 0);
  return { driver, rw: s.rw };
}

test('GET_DISK_ERRORS (263) as libvirtd answers it: how many to ask for, then at most maxerrors; not running and too many refused', async (t) => {
  const { driver, rw } = await withDomain(t);
  const c = await WireClient.connect(rw);
  t.after(() => c.close());
  await c.handshake();
  const d = { ...dom, id: -1 };
  assert.equal((await c.error('domainGetDiskErrors', { dom: d, maxerrors: 0, flags: 0 })).code, 55, 'shut off: OPERATION_INVALID');
  await driver.domainCreate(UUID, 0);
  assert.deepEqual(await c.call('domainGetDiskErrors', { dom: d, maxerrors: 0, flags: 0 }), { errors: [], nerrors: 0 });
  driver.errors = [{ disk: 'vda', error: DiskErrorCode.NO_SPACE }, { disk: 'sdb', error: DiskErrorCode.UNSPEC }];
  assert.deepEqual(await c.call('domainGetDiskErrors', { dom: d, maxerrors: 0, flags: 0 }), { errors: [], nerrors: 2 }, 'no list with maxerrors 0');
  assert.deepEqual(await c.call('domainGetDiskErrors', { dom: d, maxerrors: 2, flags: 0 }), { errors: driver.errors, nerrors: 2 });
  assert.deepEqual(await c.call('domainGetDiskErrors', { dom: d, maxerrors: 1, flags: 0 }), { errors: [driver.errors[0]], nerrors: 1 });
  const tooMany = await c.error('domainGetDiskErrors', { dom: d, maxerrors: 257, flags: 0 });
  assert.deepEqual([tooMany.code, tooMany.domain, tooMany.message], [39, 7, 'maxerrors too large']);
  assert.equal((await c.error('domainGetDiskErrors', { dom: d, maxerrors: 1, flags: 1 })).code, 8, 'unknown flags: INVALID_ARG');
});

test("virtback's libvirt driver: io-error events from IO_ERROR_REASON (target unknown there), disk errors in two calls", async (t) => {
  const { driver, rw } = await withDomain(t);
  const ld = await LibvirtDriver.open(await connectUnixStream(rw), { uri: `qemu+unix:///system?socket=${rw}`, openName: 'qemu:///system' });
  t.after(() => ld.close());
  const events: DriverEvent[] = [];
  ld.subscribe((e) => events.push(e));
  await driver.domainCreate(UUID, 0);
  assert.deepEqual(await ld.domainGetDiskErrors(UUID, 0), []);
  driver.errors = [{ disk: 'vda', error: DiskErrorCode.NO_SPACE }, { disk: 'sdb', error: DiskErrorCode.UNSPEC }];
  assert.deepEqual(await ld.domainGetDiskErrors(UUID, 0), driver.errors);

  driver.emit(ev);
  const deadline = Date.now() + 3000;
  while (!events.some((e) => e.type === 'io-error') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(events.filter((e) => e.type === 'io-error'), [{ ...ev, disk: '' }], 'one event per error, though libvirt sends two messages');
});
