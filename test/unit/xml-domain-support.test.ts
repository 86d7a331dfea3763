// The table of what virtback's QEMU runtime runs (src/xml/domain-support.ts),
// walked row by row: every refused element is refused with CONFIG_UNSUPPORTED
// naming its path; every default-only element is accepted in its default form
// (and echoed) and refused in another; metadata is echoed; <address>/<alias>
// are dropped. A row added without examples here fails the walk.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCode, VirError } from '../../src/errors.js';
import { formatDomainXML, parseDomainXML } from '../../src/xml/domain.js';
import { DEVICE_ELEMENTS, DOMAIN_ELEMENTS, type Handling } from '../../src/xml/domain-support.js';

const DISK = "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2'/><target dev='sda' bus='scsi'/></disk>";
const AGENT = "<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>";

const domain = (top = '', devices = '', disk = DISK): string =>
  `<domain type='qemu'><name>t</name><memory unit='MiB'>64</memory>${top}<devices>${disk}${devices}</devices></domain>`;

function refused(xml: string, path: string, re?: RegExp): void {
  assert.throws(() => parseDomainXML(xml), (e: unknown) => {
    assert.ok(e instanceof VirError, String(e));
    assert.equal(e.code, ErrorCode.CONFIG_UNSUPPORTED, e.message);
    assert.ok(e.message.includes(`(${path})`), `names ${path}: ${e.message}`);
    assert.match(e.message, /is not supported by virtback's QEMU runtime/);
    if (re) assert.match(e.message, re);
    return true;
  }, xml);
}

function rows(table: typeof DOMAIN_ELEMENTS, handling: Handling): string[] {
  return Object.entries(table).filter(([, r]) => r.handling === handling).map(([k]) => k).sort();
}

// [accepted (the default), refused (asks for something else)]
const TOP_DEFAULTS: Record<string, [string, string]> = {
  on_crash: ['<on_crash>destroy</on_crash>', '<on_crash>coredump-restart</on_crash>'],
  clock: ["<clock offset='utc'/>", "<clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>"],
  features: ['<features><acpi/><apic/><pae/></features>', "<features><acpi/><hyperv mode='custom'/></features>"],
  seclabel: ["<seclabel type='none'/>", "<seclabel type='dynamic' model='dac' relabel='yes'/>"],
};

const DEVICE_DEFAULTS: Record<string, [string, string]> = {
  controller: ["<controller type='pci' index='0' model='pcie-root'/>", "<controller type='pci' index='1' model='pcie-root-port'/>"],
  input: ["<input type='mouse' bus='ps2'/>", "<input type='tablet' bus='usb'/>"],
  memballoon: ["<memballoon model='none'/>", "<memballoon model='virtio'/>"],
  audio: ["<audio id='1' type='none'/>", "<audio id='1' type='spice'/>"],
};

// what the runtime interprets itself; a row moving here must come with the code that runs it
const TOP_HONOURED = ['cpu', 'currentMemory', 'devices', 'memory', 'name', 'on_poweroff', 'on_reboot', 'os', 'uuid', 'vcpu'];
const DEVICE_HONOURED = ['channel', 'console', 'disk', 'emulator', 'graphics', 'interface', 'serial', 'video'];

test('the table: honoured and default rows are the ones this test knows', () => {
  assert.deepEqual(rows(DOMAIN_ELEMENTS, 'honoured'), TOP_HONOURED);
  assert.deepEqual(rows(DEVICE_ELEMENTS, 'honoured'), DEVICE_HONOURED);
  assert.deepEqual(rows(DOMAIN_ELEMENTS, 'default'), Object.keys(TOP_DEFAULTS).sort());
  assert.deepEqual(rows(DEVICE_ELEMENTS, 'default'), Object.keys(DEVICE_DEFAULTS).sort());
  assert.deepEqual(rows(DOMAIN_ELEMENTS, 'metadata'), ['description', 'metadata', 'title']);
});

test('every refused top-level element is refused with CONFIG_UNSUPPORTED naming it; nothing is echoed', () => {
  const names = rows(DOMAIN_ELEMENTS, 'refused');
  assert.ok(names.includes('resource') && names.includes('memoryBacking') && names.includes('pm'));
  for (const name of names) refused(domain(`<${name}/>`), name);
  refused(domain("<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-s'/></qemu:commandline>"), 'qemu:commandline');
});

test('every refused device is refused with CONFIG_UNSUPPORTED naming devices/<name>', () => {
  const names = rows(DEVICE_ELEMENTS, 'refused');
  for (const n of ['parallel', 'sound', 'hostdev', 'rng', 'tpm', 'watchdog']) assert.ok(names.includes(n), n);
  for (const name of names) refused(domain('', `<${name}/>`), `devices/${name}`);
  // interface, serial, console, graphics and video run now (domain-net/serial/graphics.ts): the forms they do not run are refused
  refused(domain('', "<interface type='network'><source network='default'/></interface>"), 'devices/interface', /^<interface type='network'> .*network driver/);
  refused(domain('', "<interface type='user'><backend type='passt'/></interface>"), 'devices/interface/backend', /^<backend type='passt'>/);
  refused(domain('', "<graphics type='spice' autoport='yes'/>"), 'devices/graphics', /<graphics type='spice'/);
  refused(domain('', "<serial type='tcp'/>"), 'devices/serial', /<serial type='tcp'>/);
  refused(domain('', "<console type='pty'><target type='virtio'/></console>"), 'devices/console/target', /type='virtio' is not supported/);
  refused(domain('', "<video><model type='qxl'/></video>"), 'devices/video/model', /type='qxl' is not supported/);
});

test('every default-only element is accepted (and echoed) in its default form, refused in another', () => {
  for (const [name, [ok, bad]] of Object.entries(TOP_DEFAULTS)) {
    const out = formatDomainXML(parseDomainXML(domain(ok)));
    assert.ok(out.includes(`<${name}`), `${name} echoed: ${out}`);
    refused(domain(bad), name);
  }
  for (const [name, [ok, bad]] of Object.entries(DEVICE_DEFAULTS)) {
    const out = formatDomainXML(parseDomainXML(domain('', ok)));
    assert.ok(out.includes(`<${name} `), `${name} echoed: ${out}`);
    refused(domain('', bad), `devices/${name}`);
  }
});

test('the defaults in detail: lifecycle actions, features, controllers the runtime creates, inputs', () => {
  const accepted = (top: string, devices = '', disk = DISK): string => formatDomainXML(parseDomainXML(domain(top, devices, disk)));
  assert.match(accepted('<on_reboot>destroy</on_reboot>'), /<on_reboot>destroy<\/on_reboot>/);
  assert.match(accepted('<on_reboot>restart</on_reboot>'), /<on_reboot>restart<\/on_reboot>/);
  refused(domain('<on_reboot>preserve</on_reboot>'), 'on_reboot', /'preserve' is not supported \(only restart, destroy\)/);
  refused(domain("<clock offset='localtime'/>"), 'clock', /offset='localtime'/);
  refused(domain("<features><apic eoi='on'/></features>"), 'features', /eoi/);
  assert.match(accepted('<on_poweroff>restart</on_poweroff>'), /<on_poweroff>restart<\/on_poweroff>/);
  refused(domain('<on_poweroff>preserve</on_poweroff>'), 'on_poweroff', /'preserve' is not supported \(only destroy, restart\)/);
  refused(domain('<on_crash>restart</on_crash>'), 'on_crash', /'restart' is not supported \(only destroy\)/);
  // the controllers q35 or the runtime provide by themselves
  accepted('', "<controller type='sata' index='0'/><controller type='usb' index='0' model='none'/>");
  accepted('', "<controller type='scsi' index='0' model='virtio-scsi'/>");
  refused(domain('', "<controller type='scsi' index='0' model='virtio-scsi'/>", DISK.replace("bus='scsi'", "bus='sata'")), 'devices/controller', /only with a disk on bus scsi/);
  refused(domain('', "<controller type='scsi' index='0' model='lsilogic'/>"), 'devices/controller', /lsilogic/);
  refused(domain('', "<controller type='sata' index='1'/>"), 'devices/controller', /index='1'/);
  refused(domain('', "<controller type='usb' index='0' model='qemu-xhci'/>"), 'devices/controller', /qemu-xhci/);
  refused(domain('', "<controller type='usb' index='0'/>"), 'devices/controller', /model='none' is required/);
  parseDomainXML(domain('', "<controller type='ide' index='0'/>"));
  refused(domain('', "<controller type='ide' index='1'/>"), 'devices/controller', /index='1'/);
  accepted('', `${AGENT}<controller type='virtio-serial' index='0'/>`);
  refused(domain('', "<controller type='virtio-serial' index='0'/>"), 'devices/controller', /guest-agent channel/);
  accepted('', "<input type='keyboard' bus='ps2'/><input type='mouse'/>");
  refused(domain('', "<input type='mouse' bus='usb'/>"), 'devices/input', /bus='usb'/);
  refused(domain('', '<memballoon/>'), 'devices/memballoon', /model='none' is required/);
  refused(domain('', "<memballoon model='none' autodeflate='on'/>"), 'devices/memballoon', /autodeflate/);
});

test('metadata is kept and echoed as given', () => {
  const meta = "<metadata><app:x xmlns:app='http://example.org/app'>1</app:x></metadata>";
  const out = formatDomainXML(parseDomainXML(domain(`<title>T</title><description>D &amp; more</description>${meta}`)));
  assert.match(out, /<title>T<\/title>\n {2}<description>D &amp; more<\/description>\n {2}<metadata>\n {4}<app:x xmlns:app='http:\/\/example.org\/app'>1<\/app:x>\n {2}<\/metadata>/);
});

test('<address> and <alias> of any device are dropped, not echoed as if applied', () => {
  const addr = "<address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>";
  const disk = DISK.replace('</disk>', `${addr}<alias name='ua-root'/></disk>`);
  const xml = domain('', `<controller type='sata' index='0'>${addr}<alias name='sata0'/></controller>` +
    `<memballoon model='none'><alias name='balloon0'/></memballoon>` +
    AGENT.replace('</channel>', "<alias name='channel0'/><address type='virtio-serial' controller='0' bus='0' port='1'/></channel>"), disk);
  const out = formatDomainXML(parseDomainXML(xml));
  assert.doesNotMatch(out, /<address|<alias/);
  assert.match(out, /<controller type='sata' index='0'\/>/);
  assert.match(out, /<memballoon model='none'\/>/);
  assert.match(out, /<channel type='unix'>/);
});

test('inside honoured elements: what runs is accepted, the rest refused by its path', () => {
  const d = (o: { top?: string; devices?: string; disk?: string; root?: string }): string =>
    domain(o.top ?? '', o.devices ?? '', o.disk ?? DISK).replace("<domain type='qemu'>", `<domain type='qemu'${o.root ?? ''}>`);
  // <domain> attributes: type, id (dropped) and namespace declarations only
  assert.doesNotMatch(formatDomainXML(parseDomainXML(d({ root: " id='7'" }))), /id=/);
  refused(d({ root: " colour='red'" }), 'domain', /colour/);
  // <vcpu>: static placement, all online
  parseDomainXML(d({ top: "<vcpu placement='static' current='2'>2</vcpu>" }));
  refused(d({ top: "<vcpu current='1'>2</vcpu>" }), 'vcpu', /current='1'/);
  refused(d({ top: "<vcpu cpuset='0-1'>2</vcpu>" }), 'vcpu', /cpuset/);
  refused(d({ top: "<vcpu placement='auto'>2</vcpu>" }), 'vcpu', /placement='auto'/);
  // <currentMemory>: no balloon, so equal to <memory>; a larger one is clamped as libvirt does
  assert.match(formatDomainXML(parseDomainXML(d({ top: "<currentMemory unit='MiB'>64</currentMemory>" }))), /<currentMemory unit='KiB'>65536<\/currentMemory>/);
  assert.match(formatDomainXML(parseDomainXML(d({ top: "<currentMemory unit='MiB'>96</currentMemory>" }))), /<currentMemory unit='KiB'>65536<\/currentMemory>/);
  refused(d({ top: "<currentMemory unit='MiB'>32</currentMemory>" }), 'currentMemory', /no balloon/);
  // <os>: hvm on q35 (versioned or not), BIOS booting the first disk, or a kernel
  const os = (inner: string, attrs = ''): string => d({ top: `<os${attrs}>${inner}</os>` });
  parseDomainXML(os("<type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/><bootmenu enable='no'/>", " firmware='bios'"));
  parseDomainXML(os("<type machine='pc-i440fx-7.2'>hvm</type>"));
  refused(os("<type machine='microvm'>hvm</type>"), 'os/type', /microvm/);
  refused(os("<type arch='aarch64'>hvm</type>"), 'os/type', /aarch64/);
  refused(os('<type>xen</type>'), 'os/type', /'xen'/);
  // boot order and UEFI (issue 13): what runs is accepted
  parseDomainXML(os("<boot dev='cdrom'/><boot dev='hd'/><bootmenu enable='yes'/>"));
  parseDomainXML(os('', " firmware='efi'"));
  parseDomainXML(os("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"));
  parseDomainXML(os("<boot dev='hd'/><boot dev='network'/>"));
  refused(os("<boot dev='hd'/><boot dev='fd'/>"), 'os/boot', /fd/);
  refused(os("<loader type='rom'>/usr/share/seabios/bios.bin</loader>"), 'os/loader', /type='rom'/);
  refused(os("<loader type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"), 'os/loader', /readonly='yes' is required/);
  refused(os("<loader readonly='yes' type='pflash' secure='yes'>/usr/share/OVMF/OVMF_CODE.fd</loader>"), 'os/loader', /secure='yes'/);
  refused(os("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>", " firmware='bios'"), 'os/loader', /firmware='bios'/);
  refused(os('<nvram>/var/a_VARS.fd</nvram>'), 'os/nvram', /needs UEFI/);
  refused(os('', " firmware='xen'"), 'os', /firmware='xen'/);
  // <emulator>: the binary the runtime starts
  parseDomainXML(d({ devices: '<emulator>/usr/bin/qemu-system-x86_64</emulator>' }));
  refused(d({ devices: '<emulator>/opt/qemu/bin/qemu-system-x86_64</emulator>' }), 'devices/emulator', /\/opt\/qemu/);
  // <channel>: only the guest agent's
  refused(d({ devices: "<channel type='pty'><target type='virtio' name='org.example.0'/></channel>" }), 'devices/channel', /guest-agent channel/);
  refused(d({ devices: AGENT.replace("<source mode='bind'/>", "<source mode='bind' path='/run/a.sock' colour='red'/>") }), 'devices/channel', /colour/);
  // <disk>: what it says runs; nothing else is kept
  const disk = (from: string, to: string): string => d({ disk: DISK.replace(from, to) });
  assert.match(formatDomainXML(parseDomainXML(disk("type='qcow2'/>", "type='qcow2' discard='unmap'/>"))), /discard='unmap'/);
  assert.match(formatDomainXML(parseDomainXML(disk('</disk>', '<serial>S1</serial><backingStore/></disk>'))), /<serial>S1<\/serial>\n {4}<\/disk>/);
  refused(disk("type='qcow2'/>", "type='qcow2' cache='none'/>"), 'devices/disk/driver', /cache='none'.*disk 'sda'/);
  refused(disk("type='qcow2'/>", "type='qcow2' discard='ignore'/>"), 'devices/disk/driver', /discard='ignore'/);
  refused(disk("<disk type='file' device='disk'>", "<disk type='file' device='disk' snapshot='no'>"), 'devices/disk', /snapshot/);
  refused(disk("<source file='/img/a.qcow2'/>", "<source file='/img/a.qcow2' startupPolicy='optional'/>"), 'devices/disk/source', /startupPolicy/);
  refused(disk("bus='scsi'/>", "bus='scsi' rotation_rate='1'/>"), 'devices/disk/target', /rotation_rate/);
  assert.match(formatDomainXML(parseDomainXML(disk('</disk>', "<boot order='1'/></disk>"))), /<boot order='1'\/>/);
  refused(disk('</disk>', "<boot order='1' loadparm='x'/></disk>"), 'devices/disk/boot', /loadparm/);
  refused(disk('</disk>', '<shareable/></disk>'), 'devices/disk/shareable');
  refused(disk('</disk>', "<iotune><total_bytes_sec>1</total_bytes_sec></iotune></disk>"), 'devices/disk/iotune');
  refused(disk('</disk>', "<backingStore type='file'><format type='qcow2'/><source file='/img/base.qcow2'/></backingStore></disk>"), 'devices/disk/backingStore');
  assert.doesNotMatch(formatDomainXML(parseDomainXML(disk("<source file='/img/a.qcow2'/>", "<source file='/img/a.qcow2' index='2'/>"))), /index=/);
});

test('names that are not libvirt\'s are schema errors; libvirt\'s we do not run are CONFIG_UNSUPPORTED', () => {
  for (const xml of [domain('<teleporter/>'), domain('', '<teleporter/>')]) {
    assert.throws(() => parseDomainXML(xml), (e: unknown) => e instanceof VirError && e.code === ErrorCode.XML_INVALID_SCHEMA);
  }
  refused(domain('', "<interface type='network'><source network='default'/></interface>"), 'devices/interface');
});

test('<cpu>: custom models with features, host-model, host-passthrough only for KVM, a topology that holds <vcpu>', () => {
  const accepted = (top: string, type = 'qemu'): string =>
    formatDomainXML(parseDomainXML(domain(top).replace("<domain type='qemu'>", `<domain type='${type}'>`))).replace(/\n\s*/g, '');
  assert.match(accepted("<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>Skylake-Client</model><feature policy='disable' name='vmx'/></cpu>"),
    /<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>Skylake-Client<\/model><feature policy='disable' name='vmx'\/><\/cpu>/);
  accepted("<cpu mode='host-model' check='partial'/>");
  accepted("<cpu mode='host-passthrough' check='none' migratable='on'/>", 'kvm');
  refused(domain("<cpu mode='host-passthrough' check='none'/>"), 'cpu',
    /CPU mode 'host-passthrough' for x86_64 qemu domain on x86_64 host is not supported by hypervisor/);
  refused(domain("<cpu mode='custom'><model>qemu64</model><feature policy='optional' name='x2apic'/></cpu>"), 'cpu', /policy 'optional'/);
  refused(domain("<cpu mode='custom'><model>qemu64</model><numa/></cpu>"), 'cpu', /child <numa>/);
  refused(domain("<cpu mode='maximum'/>"), 'cpu', /mode='maximum'/);
  accepted("<vcpu>4</vcpu><cpu><topology sockets='1' dies='1' cores='2' threads='2'/></cpu>");
  assert.throws(() => parseDomainXML(domain("<vcpu>3</vcpu><cpu><topology sockets='1' cores='2' threads='2'/></cpu>")),
    (e: unknown) => e instanceof VirError && e.code === ErrorCode.XML_ERROR && e.message === "CPU topology doesn't match maximum vcpu count");
});
