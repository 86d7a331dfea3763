// <interface>, <serial>/<console>, <graphics>/<video>: what define keeps
// (MACs, libvirt's console pairing, the default video), what it refuses,
// the live forms a reconnect reads back, and the QEMU arguments they give.
// Then the console stream tables of remote/stream.ts against each other.

import assert from 'node:assert/strict';
import test from 'node:test';
import type { ConsoleStream } from '../../src/api/console-stream.js';
import { ErrorCode, type VirError } from '../../src/errors.js';
import { peripheralArgs } from '../../src/qemu/console-args.js';
import { ClientStreams, ServerStreams } from '../../src/remote/stream.js';
import type { StreamMessage } from '../../src/remote/protocol.js';
import type { Driver } from '../../src/api/driver.js';
import { formatDomainXML, parseDomainXML } from '../../src/xml/domain.js';
import { liveGraphics } from '../../src/xml/domain-graphics.js';
import { interfacesOf } from '../../src/xml/domain-net.js';
import { withPty } from '../../src/xml/domain-serial.js';

const domain = (devices: string): string =>
  `<domain type='qemu'><name>d</name><uuid>11111111-2222-3333-4444-555555555555</uuid><memory>65536</memory><devices>${devices}</devices></domain>`;

function refused(devices: string, re: RegExp): void {
  assert.throws(() => parseDomainXML(domain(devices)), (e: VirError) => (e.code === ErrorCode.CONFIG_UNSUPPORTED || e.code === ErrorCode.XML_ERROR) && re.test(e.message), devices);
}

test('interfaces: a MAC with the 52:54:00 prefix and the default model are written at define, and kept', () => {
  const def = parseDomainXML(domain("<interface type='user'/><interface type='bridge'><mac address='52:54:00:AA:bb:01'/><source bridge='br0'/><model type='e1000'/></interface>"));
  const xml = formatDomainXML(def);
  const ifaces = interfacesOf(def.devicesExtra ?? []);
  assert.match(ifaces[0]!.mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.equal(ifaces[0]!.model, 'rtl8139');
  assert.equal(ifaces[1]!.mac, '52:54:00:aa:bb:01');
  assert.equal(formatDomainXML(parseDomainXML(xml)), xml, 'the stored definition reads back to itself: the MAC stays');
  refused("<interface type='user'><mac address='01:00:00:00:00:01'/></interface>", /multicast/);
  refused("<interface type='user'><mac address='52:54:00:00:00:01'/></interface><interface type='user'><mac address='52:54:00:00:00:01'/></interface>", /used by more than one interface/);
  refused("<interface type='bridge'/>", /needs <source bridge/);
  refused("<interface type='user'><source bridge='br0'/></interface>", /<source> is not supported for type='user'/);
});

test('portForward runs as slirp hostfwd rules; interfaces become -netdev/-device pairs named as libvirt names them', () => {
  const def = parseDomainXML(domain(
    "<interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/>" +
    "<portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/><range start='8080' end='8081'/></portForward></interface>" +
    "<interface type='ethernet'><mac address='52:54:00:00:00:02'/><target dev='tap7' managed='no'/></interface>"));
  const args = peripheralArgs(def.devicesExtra ?? [], null);
  assert.deepEqual(args, [
    '-netdev', JSON.stringify({ type: 'user', id: 'hostnet0', hostfwd: [{ str: 'tcp:127.0.0.1:2222-:22' }, { str: 'tcp:127.0.0.1:8080-:8080' }, { str: 'tcp:127.0.0.1:8081-:8081' }] }),
    '-device', JSON.stringify({ driver: 'virtio-net-pci', netdev: 'hostnet0', id: 'net0', mac: '52:54:00:00:00:01' }),
    '-netdev', JSON.stringify({ type: 'tap', id: 'hostnet1', ifname: 'tap7', script: 'no', downscript: 'no' }),
    '-device', JSON.stringify({ driver: 'rtl8139', netdev: 'hostnet1', id: 'net1', mac: '52:54:00:00:00:02' }),
  ]);
  refused("<interface type='user'><portForward proto='sctp'><range start='1'/></portForward></interface>", /proto='sctp' is not supported/);
  refused("<interface type='user'><portForward proto='tcp'><range start='70000'/></portForward></interface>", /invalid port/);
});

test("serial and console pair as libvirt pairs them; pty, file and log become chardevs", () => {
  const alone = formatDomainXML(parseDomainXML(domain("<console type='pty'/>")));
  assert.match(alone, /<serial type='pty'>\s*<target type='isa-serial' port='0'>\s*<model name='isa-serial'\/>\s*<\/target>\s*<\/serial>\s*<console type='pty'>\s*<target type='serial' port='0'\/>/);
  const def = parseDomainXML(domain("<serial type='file'><source path='/var/log/g.log'/><log file='/var/log/copy.log' append='on'/></serial>"));
  assert.match(formatDomainXML(def), /<console type='file'>\s*<source path='\/var\/log\/g.log'\/>/);
  assert.deepEqual(peripheralArgs(def.devicesExtra ?? [], '/run/x/console.log'), [
    '-chardev', 'file,id=charserial0,path=/var/log/g.log,logfile=/var/log/copy.log,logappend=on',
    '-device', JSON.stringify({ driver: 'isa-serial', chardev: 'charserial0', id: 'serial0', index: 0 }),
  ]);
  assert.deepEqual(peripheralArgs([], '/run/x/console.log').slice(0, 2), ['-chardev', 'file,id=charserial0,path=/run/x/console.log'],
    'without a serial port of its own the runtime keeps its console log');
  refused("<serial type='pty'/><console type='file'><source path='/tmp/x'/></console>", /differs from serial port 0/);
  refused("<serial type='tcp'/>", /type='tcp' is not supported/);
  refused("<serial type='pty'><target port='4'/></serial>", /port='4' is not supported/);
});

test('graphics: autoport or a port, one listen address, libvirt default video; the live forms read back', () => {
  const def = parseDomainXML(domain("<graphics type='vnc' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics><serial type='pty'/>"));
  const devices = def.devicesExtra ?? [];
  assert.deepEqual(peripheralArgs(devices, null).slice(4), ['-vnc', '127.0.0.1:0,to=1000', '-device', JSON.stringify({ driver: 'VGA', id: 'video0' })]);
  const fixed = parseDomainXML(domain("<graphics type='vnc' port='5907' listen='0.0.0.0'/><video><model type='cirrus' vram='16384' heads='1' primary='yes'/></video>"));
  assert.deepEqual(peripheralArgs(fixed.devicesExtra ?? [], null), ['-vnc', '0.0.0.0:7', '-device', JSON.stringify({ driver: 'cirrus-vga', id: 'video0', vgamem_mb: 16 })]);
  refused("<graphics type='vnc' listen='127.0.0.1'><listen type='address' address='0.0.0.0'/></graphics>", /must match/);
  refused("<graphics type='vnc' passwd='x'/>", /passwd/);
  refused("<graphics type='spice'/>", /type='spice' is not supported/);

  // what start writes into the live XML parses back (a daemon reconnecting reads it)
  const live = { ...def, devicesExtra: devices.map((e) => e.name === 'graphics' ? liveGraphics(e, 5903, '127.0.0.1') : e.name === 'serial' || e.name === 'console' ? withPty(e, '/dev/pts/9') : e) };
  const xml = formatDomainXML(live);
  assert.match(xml, /<graphics type='vnc' port='5903' autoport='yes' listen='127.0.0.1'>/);
  assert.match(xml, /<serial type='pty' tty='\/dev\/pts\/9'>\s*<source path='\/dev\/pts\/9'\/>/);
  assert.equal(formatDomainXML(parseDomainXML(xml)), xml);
});

/** A console that records what it is given. */
function fakeConsole(): ConsoleStream & { written: Buffer[]; emit(d: string): void; finish(): void; closed: boolean; paused: boolean } {
  const data: ((d: Uint8Array) => void)[] = [];
  const ends: ((e: VirError | null) => void)[] = [];
  const c = {
    written: [] as Buffer[], closed: false, paused: false,
    onData: (l: (d: Uint8Array) => void) => void data.push(l),
    onEnd: (l: (e: VirError | null) => void) => void ends.push(l),
    write: (d: Uint8Array) => void c.written.push(Buffer.from(d)),
    pause: () => void (c.paused = true),
    resume: () => void (c.paused = false),
    close: () => { c.closed = true; for (const l of ends.splice(0)) l(null); },
    emit: (d: string) => { for (const l of data) l(Buffer.from(d)); },
    finish: () => { for (const l of ends.splice(0)) l(null); },
  };
  return c;
}

test('console streams: bytes both ways, early output kept, ends either way, paused while the client lags', async () => {
  const guest = fakeConsole();
  let queued = 0;
  let drain: (() => void) | null = null;
  const toClient: StreamMessage[] = [];
  const server = new ServerStreams({ send: (m) => void toClient.push(m), get queuedBytes() { return queued; }, onDrain: (fn) => void (drain = fn) });
  const driver = { openConsole: async () => guest } as unknown as Driver;
  const id = await server.openConsole(driver, 'u', null, 0);
  guest.emit('boot text');
  const client = new ClientStreams((m) => server.receive(m));
  for (const m of toClient.splice(0)) client.receive(m);
  const stream = client.attach(id);
  let got = '';
  stream.onData((d) => (got += Buffer.from(d).toString()));
  assert.equal(got, 'boot text', 'output that came before attach is delivered');
  stream.write(Buffer.from('ls\r'));
  assert.equal(Buffer.concat(guest.written).toString(), 'ls\r');

  queued = 1 << 20;
  guest.emit('x');
  assert.equal(guest.paused, true, 'a client that does not read pauses the console');
  drain!();
  assert.equal(guest.paused, false);

  let ended: VirError | null | undefined;
  stream.onEnd((e) => (ended = e));
  stream.close();
  assert.equal(guest.closed, true, 'the client ending the stream closes the console');
  assert.equal(ended, null);
  assert.equal(toClient.filter((m) => m.type === 'stream-end').length, 0, 'no end echoed back for a stream the client ended');

  const g2 = fakeConsole();
  const id2 = await server.openConsole({ openConsole: async () => g2 } as unknown as Driver, 'u', null, 0);
  g2.finish();
  assert.deepEqual(toClient.at(-1), { type: 'stream-end', id: id2 });
  await assert.rejects(server.openConsole({} as Driver, 'u', null, 0), (e: VirError) => e.code === ErrorCode.NO_SUPPORT);
});
