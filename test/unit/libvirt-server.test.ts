// virtbackd's libvirt socket over a real unix socket, against the in-memory
// TestDriver, with frames built by our codecs: the handshake as virsh sends
// it, every procedure answered, read-only refusals, keepalive while a slow
// call runs, events per registration. Hostile frames and limits are in
// libvirt-server-hostile.test.ts.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TestDriver } from '../../src/api/test-driver.js';
import type { DriverEvent } from '../../src/api/driver.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { LibvirtDriver } from '../../src/libvirt/driver.js';
import { connectUnixStream } from '../../src/libvirt/transport.js';
import { silentLogger } from '../../src/log.js';
import { KeepaliveProc, MessageStatus, MessageType, Program, encodePacket } from '../../src/libvirt/packet.js';
import {
  DomainEventId,
  qemuProcedures,
  readOnlyDenial,
  remoteEvents,
  remoteProcedures,
  type ProcArgs,
  type RemoteProcedureName,
  type WireDomain,
} from '../../src/libvirt/procedures.js';
import { LIB_VERSION_NUMBER, bytesToUuid, uuidToBytes } from '../../src/libvirt/semantics.js';
import { decode, encode } from '../../src/libvirt/xdr.js';
import { refused } from '../helpers/errors.js';
import { WireClient, startLibvirtServer as setup } from '../helpers/libvirt-wire.js';

const UUID = '2aa8cd4f-b7f1-4d6a-bcdf-8e036368adf6';
const OTHER = '11111111-2222-4333-8444-555555555555';
const domXml = (name: string, uuid: string) => `<domain><name>${name}</name><uuid>${uuid}</uuid></domain>`;

async function client(t: TestContext, socket: string): Promise<WireClient> {
  const c = await WireClient.connect(socket);
  t.after(() => c.close());
  return c;
}

const wireDom = (name: string, uuid: string, id = -1): WireDomain => ({ name, uuid: uuidToBytes(uuid), id });

test('the handshake and a listing as virsh sends them', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('rpc1', UUID), 0);
  await s.driver.domainCreate(UUID, 0);
  await s.driver.domainDefineXML(domXml('off', OTHER), 0);
  const c = await client(t, s.rw);
  assert.deepEqual(await c.call('authList', undefined), { types: [0] });
  assert.deepEqual(await c.call('connectSupportsFeature', { feature: 10 }), { supported: 1 });
  assert.equal(await c.call('connectOpen', { name: 'qemu:///system', flags: 0 }), undefined);
  assert.deepEqual(await c.call('connectSupportsFeature', { feature: 14 }), { supported: 1 });
  assert.deepEqual(await c.call('connectSupportsFeature', { feature: 15 }), { supported: 1 });
  assert.deepEqual(await c.call('connectSupportsFeature', { feature: 9 }), { supported: 0 });
  await c.call('connectRegisterCloseCallback', undefined);

  const all = await c.call('connectListAllDomains', { need_results: 1, flags: 3 });
  assert.equal(all.ret, 2);
  const byName = new Map(all.domains.map((d) => [d.name, d]));
  assert.equal(bytesToUuid(byName.get('rpc1')!.uuid), UUID);
  assert.ok(byName.get('rpc1')!.id > 0, 'a running domain has its id');
  assert.equal(byName.get('off')!.id, -1);
  assert.deepEqual(await c.call('connectListAllDomains', { need_results: 0, flags: 0 }), { domains: [], ret: 2 });
  assert.deepEqual(await c.call('connectListAllDomains', { need_results: 1, flags: 1 << 8 }), { domains: [], ret: 0 }, 'MANAGEDSAVE: none');
  assert.equal((await c.call('connectListAllDomains', { need_results: 1, flags: 1 << 13 })).ret, 2, 'NO_SNAPSHOT: all');
  assert.deepEqual((await c.call('connectListAllDomains', { need_results: 1, flags: 1 })).domains.map((d) => d.name), ['rpc1']);

  const looked = await c.call('domainLookupByName', { name: 'rpc1' });
  assert.deepEqual(looked.dom, byName.get('rpc1'));
  assert.deepEqual((await c.call('domainLookupByUUID', { uuid: uuidToBytes(UUID) })).dom, looked.dom);
  assert.deepEqual((await c.call('domainLookupByID', { id: looked.dom.id })).dom, looked.dom);
  assert.deepEqual(await c.call('domainGetState', { dom: looked.dom, flags: 0 }), { state: 1, reason: 1 });
  const missing = await c.error('domainLookupByName', { name: 'x' });
  assert.equal(missing.code, 42);
  assert.equal(missing.message, "Domain not found: no domain with matching name 'x'");
  assert.equal((await c.error('domainLookupByID', { id: 4242 })).code, 42);

  await c.call('connectUnregisterCloseCallback', undefined);
  await c.call('connectClose', undefined);
  assert.equal(s.server.clientCount, 1, 'EOF, not CONNECT_CLOSE, ends the connection');
});

test('the reply bytes of AUTH_LIST and a lookup are the ones libvirtd sends', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('rpc1', UUID), 0);
  const c = await client(t, s.rw);
  const auth = await c.callRaw({ proc: 66, serial: 0 });
  assert.equal(
    encodePacket(auth.header, auth.payload).toString('hex'),
    '00000024' + '20008086' + '00000001' + '00000042' + '00000001' + '00000000' + '00000000' + '00000001' + '00000000',
  );
  await c.call('connectOpen', { name: null, flags: 0 });
  const name = Buffer.from('00000004' + '72706331', 'hex');
  const lookup = await c.callRaw({ proc: 0x17, serial: 6 }, name);
  assert.equal(
    encodePacket(lookup.header, lookup.payload).toString('hex'),
    '00000038' + '20008086' + '00000001' + '00000017' + '00000001' + '00000006' + '00000000' + '00000004' + '72706331' +
      UUID.replace(/-/g, '') + 'ffffffff',
  );
});

test('before CONNECT_OPEN only the handshake is served; unknown URIs are refused', async (t) => {
  const s = await setup(t);
  const c = await client(t, s.rw);
  const early = await c.error('connectGetType', undefined);
  assert.deepEqual([early.code, early.domain, early.message], [1, 7, 'internal error: hypervisor connection not open']);
  const bad = await c.error('connectOpen', { name: 'xen:///system', flags: 0 });
  assert.equal(bad.code, 5);
  assert.match(bad.message ?? '', /no connection driver available for xen:\/\/\/system/);
  await c.call('connectOpen', { name: 'qemu:///session', flags: 0 });
  assert.equal((await c.error('connectOpen', { name: null, flags: 0 })).code, 1, 'opened once');
  assert.deepEqual(await c.call('connectGetType', undefined), { type: 'QEMU' });
  assert.deepEqual(await c.call('connectGetVersion', undefined), { hv_ver: 7002022n });
  assert.deepEqual(await c.call('connectGetLibVersion', undefined), { lib_ver: BigInt(LIB_VERSION_NUMBER) });
  assert.deepEqual(await c.call('connectGetHostname', undefined), { hostname: 'host.example' });
  assert.deepEqual(await c.call('connectGetURI', undefined), { uri: 'qemu:///session' }, 'the URI it was opened with');
  const caps = (await c.call('connectGetCapabilities', undefined)).capabilities;
  assert.match(caps, /<os_type>hvm<\/os_type>[^]*<arch name='x86_64'>[^]*<domain type='qemu'\/>/);
  assert.equal(caps.includes("type='kvm'"), fs.existsSync('/dev/kvm'), 'kvm listed only where /dev/kvm exists');
  // libvirt's own capabilities schema (libvirt0) accepts it
  const rng = '/usr/share/libvirt/schemas/capability.rng';
  if (fs.existsSync(rng)) execFileSync('xmllint', ['--noout', '--relaxng', rng, '-'], { input: caps, stdio: ['pipe', 'ignore', 'pipe'] });
  await c.call('connectClose', undefined);
  assert.equal((await c.error('connectGetType', undefined)).code, 1, 'closed again after CONNECT_CLOSE');
});

/** Arguments for every procedure, against domain `dom` with checkpoint 'c1'. */
function sampleArgs(dom: WireDomain): { [N in RemoteProcedureName]: ProcArgs<N> } {
  const checkpoint = { name: 'c1', dom };
  return {
    connectOpen: { name: null, flags: 0 },
    connectClose: undefined,
    connectGetType: undefined,
    connectGetVersion: undefined,
    domainCreate: { dom },
    domainDefineXML: { xml: domXml('new1', '33333333-2222-4333-8444-555555555555') },
    domainDestroy: { dom },
    domainGetXMLDesc: { dom, flags: 0 },
    domainGetAutostart: { dom },
    domainGetInfo: { dom },
    domainGetOSType: { dom },
    domainLookupByID: { id: 1 },
    domainLookupByName: { name: dom.name },
    domainLookupByUUID: { uuid: dom.uuid },
    domainResume: { dom },
    domainSetAutostart: { dom, autostart: 1 },
    domainUpdateDeviceFlags: { dom, xml: "<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/></disk>", flags: 0 },
    domainSuspend: { dom },
    domainShutdown: { dom },
    domainReboot: { dom, flags: 0 },
    domainUndefine: { dom },
    connectGetHostname: undefined,
    connectGetURI: undefined,
    connectGetCapabilities: undefined,
    connectSupportsFeature: { feature: 10 },
    authList: undefined,
    domainIsActive: { dom },
    domainIsPersistent: { dom },
    connectGetLibVersion: undefined,
    domainGetJobInfo: { dom },
    domainAbortJob: { dom },
    domainHasManagedSaveImage: { dom, flags: 0 },
    domainSnapshotNum: { dom, flags: 0 },
    domainCreateWithFlags: { dom, flags: 0 },
    domainGetState: { dom, flags: 0 },
    domainUndefineFlags: { dom, flags: 0 },
    domainDestroyFlags: { dom, flags: 0 },
    domainShutdownFlags: { dom, flags: 0 },
    domainGetBlockJobInfo: { dom, path: 'vda', flags: 0 },
    domainGetDiskErrors: { dom, maxerrors: 0, flags: 0 },
    connectListAllDomains: { need_results: 1, flags: 0 },
    domainGetJobStats: { dom, flags: 0 },
    connectDomainEventCallbackRegisterAny: { eventID: 0, dom: null },
    connectDomainEventCallbackDeregisterAny: { callbackID: 0 },
    domainFSFreeze: { dom, mountpoints: [], flags: 0 },
    domainFSThaw: { dom, mountpoints: [], flags: 0 },
    domainDefineXMLFlags: { xml: domXml('new2', '44444444-2222-4333-8444-555555555555'), flags: 0 },
    connectRegisterCloseCallback: undefined,
    connectUnregisterCloseCallback: undefined,
    domainCheckpointCreateXML: { dom, xml_desc: '<domaincheckpoint><name>c2</name></domaincheckpoint>', flags: 0 },
    domainCheckpointGetXMLDesc: { checkpoint, flags: 0 },
    domainListAllCheckpoints: { dom, need_results: 1, flags: 0 },
    domainCheckpointListAllChildren: { checkpoint, need_results: 1, flags: 0 },
    domainCheckpointLookupByName: { dom, name: 'c1', flags: 0 },
    domainCheckpointGetParent: { checkpoint, flags: 0 },
    domainCheckpointDelete: { checkpoint, flags: 0 },
    domainBackupBegin: { dom, backup_xml: '<domainbackup/>', checkpoint_xml: null, flags: 0 },
    domainBackupGetXMLDesc: { dom, flags: 0 },
    domainGetMessages: { dom, flags: 0 },
    domainAbortJobFlags: { dom, flags: 0 },
  };
}

const names = Object.keys(remoteProcedures) as RemoteProcedureName[];

test('the read-only socket refuses every mutating procedure with 29 and the API name, and the secure flag', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('d', UUID), 0);
  await s.driver.domainCreate(UUID, 0);
  await s.driver.checkpointCreateXML(UUID, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  const args = sampleArgs(wireDom('d', UUID));
  const mutating = names.filter((n) => readOnlyDenial(remoteProcedures[n], 0) !== null);
  for (const n of ['domainCreate', 'domainDefineXML', 'domainUndefineFlags', 'domainCheckpointCreateXML', 'domainBackupBegin', 'domainAbortJob', 'domainSetAutostart'] as const) {
    assert.ok(mutating.includes(n), `${n} mutates`);
  }
  for (const [socket, readOnlyOpen] of [[s.ro, false], [s.rw, true]] as const) {
    const c = await client(t, socket);
    await c.handshake({ readOnly: readOnlyOpen });
    for (const n of mutating) {
      const e = await c.error(n, args[n] as never);
      assert.equal(e.code, 29, n);
      assert.equal(e.message, `operation forbidden: read only access prevents ${remoteProcedures[n].api}`, n);
      assert.equal(e.domain, n.startsWith('domainCheckpoint') ? 69 : 20, n);
    }
    for (const n of ['domainGetXMLDesc', 'domainCheckpointGetXMLDesc'] as const) {
      const e = await c.error(n, { ...args[n], flags: 1 } as never);
      assert.equal(e.code, 29);
      assert.match(e.message ?? '', /with secure flag$/);
    }
    // reading still works, and nothing changed
    assert.equal((await c.call('domainGetXMLDesc', args.domainGetXMLDesc)).xml, domXml('d', UUID));
    assert.deepEqual(await c.call('domainListAllCheckpoints', args.domainListAllCheckpoints), { checkpoints: [{ name: 'c1', dom: args.domainCreate.dom }], ret: 1 });
  }
  assert.equal((await s.driver.domainGetInfo(UUID)).state, 1, 'still running');
});

test('every procedure in the table is answered (no "unknown procedure"), with results of the right shape', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('d', UUID), 0);
  await s.driver.domainCreate(UUID, 0);
  await s.driver.checkpointCreateXML(UUID, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
  const c = await client(t, s.rw);
  await c.handshake();
  const args = sampleArgs(wireDom('d', UUID));
  for (const n of names) {
    if (n === 'connectOpen' || n === 'connectClose') continue;
    try {
      await c.call(n, args[n] as never);
    } catch (e) {
      const w = (e as { wire?: { code: number; message: string | null } }).wire;
      assert.ok(w, `${n}: ${String(e)}`);
      assert.notEqual(w.code, 39, `${n} is dispatched: ${w.message}`);
    }
  }
});

test('domain calls map onto the driver: start/destroy ids, state, info, checkpoints, backups, job stats', async (t) => {
  const s = await setup(t);
  const c = await client(t, s.rw);
  await c.handshake();
  const { dom } = await c.call('domainDefineXML', { xml: domXml('d', UUID) });
  assert.deepEqual(dom, wireDom('d', UUID));
  assert.deepEqual(await c.call('domainIsActive', { dom }), { active: 0 });
  assert.deepEqual(await c.call('domainIsPersistent', { dom }), { persistent: 1 });
  const started = await c.call('domainCreateWithFlags', { dom, flags: 0 });
  assert.ok(started.dom.id > 0);
  assert.deepEqual(await c.call('domainIsActive', { dom }), { active: 1 });
  assert.equal((await c.call('domainGetInfo', { dom })).state, 1);
  assert.deepEqual(await c.call('domainGetOSType', { dom }), { type: 'hvm' });
  assert.deepEqual(await c.call('domainHasManagedSaveImage', { dom, flags: 0 }), { result: 0 });
  assert.deepEqual(await c.call('domainSnapshotNum', { dom, flags: 0 }), { num: 0 });
  assert.deepEqual(await c.call('domainGetMessages', { dom, flags: 0 }), { msgs: [] });
  assert.equal((await c.error('domainGetOSType', { dom: wireDom('gone', OTHER) })).code, 42);

  // checkpoints: create, lookup, tree, parent of a root is 103
  const cp1 = (await c.call('domainCheckpointCreateXML', { dom, xml_desc: '<domaincheckpoint><name>c1</name></domaincheckpoint>', flags: 0 })).checkpoint;
  assert.deepEqual(cp1, { name: 'c1', dom });
  await c.call('domainCheckpointCreateXML', { dom, xml_desc: '<domaincheckpoint><name>c2</name></domaincheckpoint>', flags: 0 });
  assert.deepEqual(await c.call('domainCheckpointGetParent', { checkpoint: { name: 'c2', dom }, flags: 0 }), { parent: cp1 });
  const root = await c.error('domainCheckpointGetParent', { checkpoint: cp1, flags: 0 });
  assert.equal(root.code, 103, root.message ?? '');
  assert.deepEqual(await c.call('domainCheckpointListAllChildren', { checkpoint: cp1, need_results: 0, flags: 0 }), { children: [], ret: 1 });
  assert.deepEqual((await c.call('domainListAllCheckpoints', { dom, need_results: 1, flags: 1 })).checkpoints, [cp1], 'ROOTS');
  assert.deepEqual(await c.call('domainCheckpointLookupByName', { dom, name: 'c2', flags: 0 }), { checkpoint: { name: 'c2', dom } });
  assert.equal((await c.error('domainCheckpointLookupByName', { dom, name: 'nope', flags: 0 })).code, 103);

  // backup: shipped libvirt's flags (REUSE_EXTERNAL = 1 accepted, our bit 2 is not libvirt's), void reply, abort ends a pull
  assert.equal((await c.error('domainBackupBegin', { dom, backup_xml: '<domainbackup/>', checkpoint_xml: null, flags: 2 })).code, 8);
  await c.call('domainBackupBegin', { dom, backup_xml: "<domainbackup mode='pull'/>", checkpoint_xml: null, flags: 1 });
  assert.match((await c.call('domainBackupGetXMLDesc', { dom, flags: 0 })).xml, /mode='pull'/);
  const stats = await c.call('domainGetJobStats', { dom, flags: 0 });
  assert.equal(stats.type, 2);
  assert.deepEqual(stats.params[0], { field: 'operation', value: { type: 1, value: 9 } });
  assert.equal(stats.params[1]!.field, 'time_elapsed');
  assert.equal(stats.params[1]!.value.type, 4, 'ULLONG');
  assert.equal((await c.call('domainGetJobInfo', { dom })).type, 2);
  assert.equal((await c.error('domainAbortJobFlags', { dom, flags: 1 })).code, 8, 'abort flags must be 0');
  await c.call('domainAbortJob', { dom });
  const noJob = await c.error('domainAbortJob', { dom });
  assert.deepEqual([noJob.code, noJob.message], [55, 'Requested operation is not valid: no job is active on the domain']);
  const completed = await c.call('domainGetJobStats', { dom, flags: 1 });
  assert.equal(completed.type, 3);
  assert.ok(completed.params.some((p) => p.field === 'success' && p.value.type === 6 && p.value.value === 1));

  // monitor pass-through on the QEMU program
  const monitor = qemuProcedures.domainMonitorCommand;
  const mon = await c.callRaw({ prog: Program.QEMU, proc: monitor.proc }, encode(monitor.args, { dom, cmd: '{"execute":"query-status"}', flags: 0 }));
  assert.equal(mon.header.status, MessageStatus.OK);
  assert.match(decode(monitor.ret, mon.payload).result, /"return"/);

  await c.call('domainDestroyFlags', { dom, flags: 0 });
  assert.deepEqual((await c.call('domainLookupByUUID', { uuid: dom.uuid })).dom, dom, 'id −1 again');
  await c.call('domainUndefineFlags', { dom, flags: 16 });
  assert.equal((await c.error('domainLookupByName', { name: 'd' })).code, 42);
});

test('keepalive: PONG at once (and other calls answered) while a slow call is pending; idle clients that negotiated it are pinged, then dropped', async (t) => {
  const driver = new TestDriver();
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const slow = driver.domainGetXMLDesc.bind(driver);
  driver.domainGetXMLDesc = async (uuid, flags) => {
    await gate;
    return slow(uuid, flags);
  };
  const s = await setup(t, { keepalive: { intervalMs: 150, count: 2 } }, driver);
  await driver.domainDefineXML(domXml('d', UUID), 0);
  const c = await client(t, s.rw);
  await c.handshake();
  const pending = c.call('domainGetXMLDesc', { dom: wireDom('d', UUID), flags: 0 });
  c.ping();
  const pong = await c.waitMessages((m) => m.some((p) => p.header.prog === Program.KEEPALIVE));
  assert.deepEqual(pong[0]!.header, { prog: Program.KEEPALIVE, vers: 1, proc: KeepaliveProc.PONG, type: MessageType.MESSAGE, serial: 0, status: 0 });
  let done = false;
  void pending.then(() => (done = true));
  // calls run concurrently: a fast one overtakes the slow one, replies matched by serial
  assert.deepEqual(await c.call('connectGetType', undefined), { type: 'QEMU' });
  assert.deepEqual((await c.call('domainLookupByName', { name: 'd' })).dom, wireDom('d', UUID));
  assert.equal(done, false, 'the slow call is still pending when the PONG and the fast replies came');
  release();
  assert.equal((await pending).xml, domXml('d', UUID));

  // silent now: PINGs every interval, then dropped after `count` unanswered
  const pings = await c.waitMessages((m) => m.filter((p) => p.header.proc === KeepaliveProc.PING).length >= 2);
  assert.ok(pings.filter((p) => p.header.proc === KeepaliveProc.PING).length >= 2);
  assert.ok(await c.closedByServer(), 'dropped after unanswered PINGs');

  // a client that never asked for keepalive is never pinged
  const quiet = await client(t, s.rw);
  await quiet.call('connectOpen', { name: null, flags: 0 });
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(quiet.messages.length, 0);
  assert.equal(quiet.ended, false);
});

test('events: one MESSAGE per matching registration with its callbackID; none after deregister or EOF', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('d', UUID), 0);
  await s.driver.domainDefineXML(domXml('o', OTHER), 0);
  const c = await client(t, s.rw);
  await c.handshake();
  const dom = wireDom('d', UUID);
  const all = (await c.call('connectDomainEventCallbackRegisterAny', { eventID: DomainEventId.LIFECYCLE, dom: null })).callbackID;
  const onlyD = (await c.call('connectDomainEventCallbackRegisterAny', { eventID: DomainEventId.LIFECYCLE, dom })).callbackID;
  const jobs = (await c.call('connectDomainEventCallbackRegisterAny', { eventID: DomainEventId.JOB_COMPLETED, dom })).callbackID;
  const block2 = (await c.call('connectDomainEventCallbackRegisterAny', { eventID: DomainEventId.BLOCK_JOB_2, dom: null })).callbackID;
  const unknown = await c.call('connectDomainEventCallbackRegisterAny', { eventID: 99, dom: null });
  assert.equal(new Set([all, onlyD, jobs, block2, unknown.callbackID]).size, 5, 'distinct callbackIDs');

  // a second connection's registration for the same event gets its own message, not ours
  const other = await client(t, s.rw);
  await other.handshake();
  const theirs = (await other.call('connectDomainEventCallbackRegisterAny', { eventID: DomainEventId.LIFECYCLE, dom: null })).callbackID;

  const started = await c.call('domainCreateWithFlags', { dom, flags: 0 });
  const life = remoteEvents.lifecycle;
  const got = await c.waitMessages((m) => m.filter((p) => p.header.proc === life.proc).length >= 2);
  assert.equal(c.received.findIndex((p) => p.header.proc === life.proc) > c.received.findIndex((p) => p.header.proc === 196), true, 'the reply went first');
  const lifecycle = got.filter((p) => p.header.proc === life.proc).map((p) => decode(life.body, p.payload));
  assert.deepEqual(lifecycle.map((e) => e.callbackID).sort(), [all, onlyD].sort());
  for (const e of lifecycle) assert.deepEqual([e.event, e.detail, e.dom], [2, 0, started.dom], 'started/booted with the new id');
  assert.equal(got[0]!.header.serial, 1, 'events carry serial 1 as libvirtd');
  const theirsGot = await other.waitMessages((m) => m.length >= 1);
  assert.deepEqual(decode(life.body, theirsGot[0]!.payload).callbackID, theirs);

  // the other domain only reaches the "all domains" registration
  c.messages.length = 0;
  await s.driver.domainCreate(OTHER, 0);
  await c.waitMessages((m) => m.length >= 1);
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(c.messages.map((p) => decode(life.body, p.payload).callbackID), [all]);

  // a push backup: JOB_COMPLETED (363) with typed params, BLOCK_JOB_2 (339) with the disk target
  c.messages.length = 0;
  await c.call('domainBackupBegin', { dom, backup_xml: '<domainbackup/>', checkpoint_xml: null, flags: 0 });
  const msgs = await c.waitMessages((m) => m.length >= 2);
  const job = decode(remoteEvents.jobCompleted.body, msgs.find((p) => p.header.proc === remoteEvents.jobCompleted.proc)!.payload);
  assert.equal(job.callbackID, jobs);
  assert.ok(job.params.some((p) => p.field === 'success' && p.value.value === 1));
  const blk = decode(remoteEvents.blockJob2.body, msgs.find((p) => p.header.proc === remoteEvents.blockJob2.proc)!.payload);
  assert.deepEqual([blk.callbackID, blk.dst, blk.status], [block2, 'vda', 0]);

  // deregistered: nothing more; an unknown id is INVALID_ARG
  for (const id of [all, onlyD, jobs, block2]) await c.call('connectDomainEventCallbackDeregisterAny', { callbackID: id });
  assert.equal((await c.error('connectDomainEventCallbackDeregisterAny', { callbackID: all })).code, 8);
  c.messages.length = 0;
  await s.driver.domainDestroy(UUID, 0);
  await other.waitMessages((m) => m.length >= 3);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(c.messages.length, 0, 'no events after deregister');

  // EOF drops the registrations: the server keeps no dead connection to send to
  other.close();
  const deadline = Date.now() + 2000;
  while (s.server.clientCount > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(s.server.clientCount, 1);
  await s.driver.domainDestroy(OTHER, 0);
});

test('a payload that does not decode is an error reply, and the connection stays usable', async (t) => {
  const s = await setup(t);
  const c = await client(t, s.rw);
  await c.call('authList', undefined);
  // CONNECT_OPEN with an optional-marker of 2
  const bad = await c.callRaw({ proc: 1 }, Buffer.from('00000002' + '00000000', 'hex'));
  assert.equal(bad.header.status, MessageStatus.ERROR);
  assert.equal(bad.header.type, MessageType.REPLY);
  await c.call('connectOpen', { name: null, flags: 0 });
  assert.deepEqual(await c.call('connectGetType', undefined), { type: 'QEMU' });
});

test('suspend, resume, autostart (and the list filter on it), block job info, START_PAUSED', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('d', UUID), 0);
  await s.driver.domainDefineXML(domXml('o', OTHER), 0);
  const c = await client(t, s.rw);
  await c.handshake();
  const dom = wireDom('d', UUID);
  const paused = await c.call('domainCreateWithFlags', { dom, flags: 1 });
  assert.ok(paused.dom.id > 0);
  assert.deepEqual(await c.call('domainGetState', { dom, flags: 0 }), { state: 3, reason: 1 }, 'paused by the user');
  await c.call('domainResume', { dom });
  assert.deepEqual(await c.call('domainGetState', { dom, flags: 0 }), { state: 1, reason: 5 }, 'running, unpaused');
  await c.call('domainSuspend', { dom });
  assert.equal((await c.call('domainGetInfo', { dom })).state, 3);

  assert.deepEqual(await c.call('domainGetAutostart', { dom }), { autostart: 0 });
  await c.call('domainSetAutostart', { dom, autostart: 1 });
  assert.deepEqual(await c.call('domainGetAutostart', { dom }), { autostart: 1 });
  const list = async (flags: number) => (await c.call('connectListAllDomains', { need_results: 1, flags })).domains.map((d) => d.name).sort();
  assert.deepEqual(await list(1 << 10), ['d'], 'AUTOSTART');
  assert.deepEqual(await list(1 << 11), ['o'], 'NO_AUTOSTART');
  assert.deepEqual(await list((1 << 10) | (1 << 11)), ['d', 'o'], 'both: no filter');

  assert.deepEqual(await c.call('domainGetBlockJobInfo', { dom, path: 'vda', flags: 0 }), { found: 0, type: 0, bandwidth: 0n, cur: 0n, end: 0n });
  await c.call('domainResume', { dom });
  await c.call('domainBackupBegin', { dom, backup_xml: '<domainbackup/>', checkpoint_xml: null, flags: 0 });
  const info = await c.call('domainGetBlockJobInfo', { dom, path: 'vda', flags: 0 });
  assert.deepEqual([info.found, info.type, info.end], [1, 5, 1048576n], 'a push backup block job');
  assert.equal((await c.error('domainGetBlockJobInfo', { dom, path: 'sdz', flags: 0 })).code, 8);
});

test('START_AUTODESTROY: the domain dies with the connection that started it, at EOF without CONNECT_CLOSE', async (t) => {
  const s = await setup(t);
  await s.driver.domainDefineXML(domXml('d', UUID), 0);
  await s.driver.domainDefineXML(domXml('o', OTHER), 0);
  const starter = await client(t, s.rw);
  await starter.handshake();
  await starter.call('domainCreateWithFlags', { dom: wireDom('d', UUID), flags: 2 });
  await starter.call('domainCreateWithFlags', { dom: wireDom('o', OTHER), flags: 0 });
  const watcher = await client(t, s.rw);
  await watcher.handshake();
  const id = (await watcher.call('connectDomainEventCallbackRegisterAny', { eventID: 0, dom: null })).callbackID;
  assert.equal((await s.driver.domainGetInfo(UUID)).state, 1, 'running while its connection lives');

  starter.close();
  const msgs = await watcher.waitMessages((m) => m.length >= 1);
  const stopped = decode(remoteEvents.lifecycle.body, msgs[0]!.payload);
  assert.deepEqual([stopped.callbackID, stopped.dom.name, stopped.event, stopped.detail, stopped.dom.id], [id, 'd', 5, 1, -1], 'stopped/destroyed');
  assert.equal((await s.driver.domainGetInfo(UUID)).state, 5, 'destroyed');
  assert.equal((await s.driver.domainGetInfo(OTHER)).state, 1, 'started without the flag: still running');
});

test('virtbackd listens on libvirt-sock (0600) and libvirt-sock-ro (0666) beside its own sockets, and removes them on stop', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-lvsd-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const driver = new TestDriver();
  const daemon = await Daemon.start({
    stateDir: path.join(dir, 'state'),
    runDir: path.join(dir, 'run'),
    logger: silentLogger,
    openDriver: async () => driver,
    libvirt: { hypervisorVersion: 7002022 },
  });
  let stopped = false;
  t.after(async () => {
    if (!stopped) await daemon.stop();
  });
  assert.equal(daemon.libvirtSocketPath, path.join(dir, 'run', 'libvirt-sock'));
  assert.equal(fs.statSync(daemon.libvirtSocketPath).mode & 0o777, 0o600);
  assert.equal(fs.statSync(daemon.libvirtRoSocketPath).mode & 0o777, 0o666);
  await driver.domainDefineXML(domXml('d', UUID), 0);
  for (const socket of [daemon.libvirtSocketPath, daemon.libvirtRoSocketPath]) {
    const c = await client(t, socket);
    await c.handshake();
    assert.deepEqual(await c.call('connectGetVersion', undefined), { hv_ver: 7002022n });
    assert.equal((await c.call('domainLookupByName', { name: 'd' })).dom.name, 'd');
  }
  const ro = await client(t, daemon.libvirtRoSocketPath);
  await ro.handshake();
  assert.equal((await ro.error('domainCreate', { dom: wireDom('d', UUID) })).code, 29);
  await daemon.stop();
  stopped = true;
  assert.equal(fs.existsSync(daemon.libvirtSocketPath), false);
  assert.equal(fs.existsSync(daemon.libvirtRoSocketPath), false);
});

test("virtback's own libvirt driver drives virtbackd's libvirt socket: both halves of the protocol agree", async (t) => {
  const s = await setup(t);
  const open = async (socket: string, readOnly: boolean) => {
    const d = await LibvirtDriver.open(await connectUnixStream(socket), { uri: `qemu+unix:///system?socket=${socket}`, openName: 'qemu:///system', readOnly });
    t.after(() => d.close());
    return d;
  };
  const d = await open(s.rw, false);
  const events: DriverEvent[] = [];
  d.subscribe((e) => events.push(e));
  const ref = await d.domainDefineXML(domXml('d', UUID), 0);
  assert.deepEqual(ref, { name: 'd', uuid: UUID });
  await d.domainCreate(UUID, 0);
  const info = await d.domainGetInfo(UUID);
  assert.deepEqual([info.state, info.id > 0], [1, true]);
  assert.deepEqual((await d.listAllDomains(0)).map((x) => x.name), ['d']);
  assert.equal(await d.checkpointCreateXML(UUID, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0), 'c1');
  assert.deepEqual(await d.listAllCheckpoints(UUID, 0), ['c1']);
  await refused(d.checkpointGetParent(UUID, 'c1', 0), 103, /does not have a parent/);
  await refused(d.abortJob(UUID, 0), 55, /no job is active/);
  await d.domainDestroy(UUID, 0);
  const deadline = Date.now() + 2000;
  while (!events.some((e) => e.type === 'lifecycle' && e.event === 'stopped') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.ok(events.some((e) => e.type === 'lifecycle' && e.event === 'stopped' && e.detail === 'destroyed'), 'the stop event came through');

  const ro = await open(s.ro, true);
  assert.equal((await ro.domainGetInfo(UUID)).state, 5);
  await refused(ro.domainCreate(UUID, 0), 29, /read only access/);
});
