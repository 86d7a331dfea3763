// <domain>: parse into DomainDef, format back in libvirt's order, semantic errors.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, VirError } from '../../src/errors.js';
import { formatDomainXML, parseDomainXML } from '../../src/xml/domain.js';
import { readFixture } from './xml-helpers.js';

const TINY = `<domain type='kvm'>
  <name>tiny</name>
  <uuid>C7A5FDBDEDAF9455926AD65C16DB1809</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os>
    <kernel>/guest/vmlinuz</kernel>
    <initrd>/guest/initrd</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/images/a.qcow2'/>
      <target dev='sda' bus='scsi'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='block' device='cdrom'>
      <target dev='sdb' bus='sata'/>
      <alias name='sata0-0-1'/>
    </disk>
    <disk type='file'>
      <source file='/images/b.raw'/>
      <target dev='vdb'/>
      <readonly/>
      <serial>XYZ</serial>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/run/tiny/agent.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='scsi' index='0' model='virtio-scsi'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
  </devices>
  <on_crash>destroy</on_crash>
</domain>
`;

function code(fn: () => unknown, expected: number, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof VirError, `not a VirError: ${String(e)}`);
    assert.equal(e.code, expected, e.message);
    assert.match(e.message, re);
    return true;
  });
}

test('parse: the fields virtback interprets', () => {
  const d = parseDomainXML(TINY);
  assert.equal(d.type, 'kvm');
  assert.equal(d.name, 'tiny');
  assert.equal(d.uuid, 'c7a5fdbd-edaf-9455-926a-d65c16db1809');
  assert.equal(d.memoryKiB, 65536);
  assert.equal(d.vcpu, 2);
  assert.deepEqual([d.os.kernel, d.os.initrd, d.os.cmdline], ['/guest/vmlinuz', '/guest/initrd', 'console=ttyS0 quiet']);
  assert.deepEqual(
    d.disks.map((x) => [x.type, x.device, x.format, x.source, x.target, x.bus, x.readonly]),
    [
      ['file', 'disk', 'qcow2', '/images/a.qcow2', 'sda', 'scsi', false],
      ['block', 'cdrom', 'raw', null, 'sdb', 'sata', true],
      ['file', 'disk', 'raw', '/images/b.raw', 'vdb', 'virtio', true],
    ],
  );
  assert.deepEqual(d.disks[2]?.extra.map((e) => e.name), ['serial']);
  assert.deepEqual(d.agent, { path: '/run/tiny/agent.sock' });
  assert.deepEqual(d.extra.map((e) => e.name), ['on_crash']);
});

test('format: libvirt order and defaults; <address>/<alias> dropped; round trip is a fixed point', () => {
  const d = parseDomainXML(TINY);
  const out = formatDomainXML(d);
  assert.equal(
    out,
    `<domain type='kvm'>
  <name>tiny</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <memory unit='KiB'>65536</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/guest/vmlinuz</kernel>
    <initrd>/guest/initrd</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/images/a.qcow2'/>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='block' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/images/b.raw'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
      <serial>XYZ</serial>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <channel type='unix'>
      <source mode='bind' path='/run/tiny/agent.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>
`,
  );
  assert.doesNotMatch(formatDomainXML(d, { secure: true }), /<address|<alias/);
  assert.equal(formatDomainXML(parseDomainXML(out)), out);
});

test("a libvirt host's domain (redefined-with-domain.xml) is refused element by element until it asks only for what runs", () => {
  const fixture = readFixture('checkpoint/out/redefined-with-domain.xml');
  let xml = fixture.slice(fixture.indexOf('  <domain '), fixture.indexOf('</domain>') + '</domain>\n'.length).replace(/^ {2}/gm, '');
  // each edit a user must make, after the refusal that names it
  const edits: [RegExp, RegExp, string][] = [
    // machine 'pc' with its IDE controller, pci-root and an ide disk runs (issue 13)
    [/<controller type='usb' index='0' model='piix3-uhci'> \(devices\/controller\).*model='piix3-uhci'/, /model='piix3-uhci'/, "model='none'"],
  ];
  for (const [refusal, from, to] of edits) {
    code(() => parseDomainXML(xml), ErrorCode.CONFIG_UNSUPPORTED, refusal);
    xml = xml.replace(from, to);
  }
  // what remains runs; <address> elements are dropped, not echoed as if applied
  const expected = xml.replace(/ *<address [^>]*\/>\n/g, '')
    .replace(/\n( *)<controller type='usb' index='0' model='none'>\n *<\/controller>/, "\n$1<controller type='usb' index='0' model='none'/>")
    .replace(/\n( *)<controller type='ide' index='0'>\n *<\/controller>/, "\n$1<controller type='ide' index='0'/>");
  assert.equal(formatDomainXML(parseDomainXML(xml)), expected);
});

test('<os> without <type> gets the machine virtback runs (libvirt fills it in too); a given <type> is kept', () => {
  const out = formatDomainXML(parseDomainXML(TINY));
  assert.match(out, /<os>\n {4}<type arch='x86_64' machine='q35'>hvm<\/type>\n {4}<kernel>/);
  const given = TINY.replace('<os>', "<os>\n    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>");
  const again = formatDomainXML(parseDomainXML(given));
  assert.equal(again.match(/<type /g)?.length, 1);
  assert.match(again, /machine='pc-q35-7.2'/);
});

test('uuid is generated when missing', () => {
  const xml = TINY.replace(/ {2}<uuid>.*<\/uuid>\n/, '');
  const a = parseDomainXML(xml);
  const b = parseDomainXML(xml);
  assert.match(a.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.notEqual(a.uuid, b.uuid);
  assert.equal(parseDomainXML(xml, { generateUUID: () => 'fixed' }).uuid, 'fixed');
});

test('memory units are libvirt scaled integers, rounded up to KiB', () => {
  const mem = (m: string) => parseDomainXML(TINY.replace("<memory unit='MiB'>64</memory>", m)).memoryKiB;
  assert.equal(mem('<memory>1000</memory>'), 1000);
  assert.equal(mem("<memory unit='b'>1025</memory>"), 2);
  assert.equal(mem("<memory unit='KB'>1000</memory>"), 977);
  assert.equal(mem("<memory unit='G'>1</memory>"), 1048576);
  assert.equal(mem("<memory unit='GB'>1</memory>"), 976563);
  code(() => mem("<memory unit='E'>99999</memory>"), ErrorCode.XML_ERROR, /too large/);
  code(() => mem('<memory>0</memory>'), ErrorCode.XML_ERROR, /Memory size must be specified/);
  code(() => mem(''), ErrorCode.XML_ERROR, /Memory size must be specified/);
});

test('semantic errors carry libvirt codes and name the thing', () => {
  code(() => parseDomainXML(TINY.replace("type='kvm'", "type='xen'")), ErrorCode.CONFIG_UNSUPPORTED, /unexpected domain type xen/);
  code(() => parseDomainXML(TINY.replace('<name>tiny</name>', '<name>a/b</name>')), ErrorCode.XML_ERROR, /name 'a\/b' cannot contain '\/'/);
  code(() => parseDomainXML(TINY.replace("dev='vdb'", "dev='sda'")), ErrorCode.XML_ERROR, /target 'sda' duplicated for disk sources '\/images\/a.qcow2' and '\/images\/b.raw'/);
  code(() => parseDomainXML(TINY.replace("type='qcow2'", "type='vmdk'")), ErrorCode.CONFIG_UNSUPPORTED, /format 'vmdk' for disk 'sda'/);
  code(() => parseDomainXML(TINY.replace("bus='scsi'", "bus='usb'")), ErrorCode.CONFIG_UNSUPPORTED, /bus 'usb' for disk 'sda'/);
  code(() => parseDomainXML(TINY.replace("<disk type='block' device='cdrom'>", "<disk type='network' device='cdrom'>")), ErrorCode.CONFIG_UNSUPPORTED, /disk type 'network' for disk 'sdb'/);
  code(() => parseDomainXML(TINY.replace("<source file='/images/a.qcow2'/>", '')), ErrorCode.XML_ERROR, /missing source for disk 'sda'/);
  code(() => parseDomainXML(TINY.replace('<vcpu>2</vcpu>', '<vcpu>0</vcpu>')), ErrorCode.XML_ERROR, /vCPU/);
  code(() => parseDomainXML(TINY.replace("mode='bind'", "mode='connect'")), ErrorCode.CONFIG_UNSUPPORTED, /mode must be 'bind'/);
  // schema first: no <name>, bad uuid, bad target names
  code(() => parseDomainXML(TINY.replace('<name>tiny</name>', '')), ErrorCode.XML_INVALID_SCHEMA, /domain\.rng/);
  code(() => parseDomainXML(TINY.replace('C7A5', 'ZZZZ')), ErrorCode.XML_INVALID_SCHEMA, /uuid/);
  code(() => parseDomainXML(TINY.replace("dev='sda'", "dev='xyz'")), ErrorCode.XML_INVALID_SCHEMA, /element devices/);
  code(() => parseDomainXML('<domaincheckpoint/>'), ErrorCode.XML_ERROR, /expecting root element of 'domain', not 'domaincheckpoint'/);
});
