// The reboot event on libvirt's wire (remote_protocol.x): a registration for
// VIR_DOMAIN_EVENT_ID_REBOOT (1) gets REMOTE_PROC_DOMAIN_EVENT_CALLBACK_REBOOT
// (319) carrying its callbackID and the domain, and nothing else does.

import assert from 'node:assert/strict';
import test from 'node:test';
import { MIN_MESSAGE_BYTES, MessageType, decodeHeader } from '../../src/libvirt/packet.js';
import { DomainEventId, remoteEvents } from '../../src/libvirt/procedures.js';
import { EventRegistrations, toWireEvent } from '../../src/libvirt/server-events.js';
import { decode } from '../../src/libvirt/xdr.js';

const uuid = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

test('a reboot event is procedure 319 with the callbackID and the domain, for REBOOT registrations only', () => {
  let next = 40;
  const regs = new EventRegistrations(() => next++);
  const lifecycle = regs.register(DomainEventId.LIFECYCLE, null);
  const reboot = regs.register(DomainEventId.REBOOT, uuid);
  const otherDomain = regs.register(DomainEventId.REBOOT, '11111111-2222-3333-4444-555555555555');
  assert.deepEqual([lifecycle, reboot, otherDomain], [40, 41, 42]);

  const ev = toWireEvent({ type: 'reboot', domain: { name: 'vm1', uuid } });
  assert.equal(regs.wants(ev), true);
  const dom = { name: 'vm1', uuid: Buffer.from(uuid.replace(/-/g, ''), 'hex'), id: 7 };
  const msgs = regs.messages(ev, dom);
  assert.equal(msgs.length, 1, 'one registration matches: REBOOT for this domain');
  const header = decodeHeader(msgs[0]!);
  assert.deepEqual([header.proc, header.type], [319, MessageType.MESSAGE]);
  const body = decode(remoteEvents.reboot.body, msgs[0]!.subarray(MIN_MESSAGE_BYTES), 'reboot event');
  assert.deepEqual({ ...body, dom: { ...body.dom, uuid: Buffer.from(body.dom.uuid).toString('hex') } },
    { callbackID: 41, dom: { name: 'vm1', uuid: uuid.replace(/-/g, ''), id: 7 } });
  // the payload is exactly callbackID + remote_nonnull_domain: int, string "vm1" (4 + 4 padded), 16 bytes, int
  assert.equal(msgs[0]!.length - MIN_MESSAGE_BYTES, 4 + 8 + 16 + 4);
});
