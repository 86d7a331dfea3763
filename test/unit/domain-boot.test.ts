// Boot order and UEFI firmware: <os> and per-device boot elements to QEMU's
// bootindex, libvirt's exclusivity rules, firmware autoselection and the
// pflash arguments (pure parts; test/qemu/domain-firmware.test.ts runs them).

import assert from 'node:assert/strict';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { buildCommandLine } from '../../src/qemu/command-line.js';
import { OVMF_CODE, OVMF_VARS, resolveFirmware } from '../../src/qemu/firmware.js';
import { parseDomainXML } from '../../src/xml/domain.js';

const dom = (os: string, disks: string, attrs = ''): string =>
  `<domain type='qemu'><name>vm</name><memory>131072</memory><os${attrs}><type>hvm</type>${os}</os><devices>${disks}</devices></domain>`;
const hd = (dev: string, boot = ''): string =>
  `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/${dev}.qcow2'/><target dev='${dev}' bus='sata'/>${boot}</disk>`;
const cd = (dev: string, boot = ''): string => `<disk type='file' device='cdrom'><source file='/img/x.iso'/><target dev='${dev}' bus='sata'/>${boot}</disk>`;

function devices(xml: string): Record<string, unknown>[] {
  const args = buildCommandLine({ def: parseDomainXML(xml), accel: 'tcg', qmpSocket: '/r/q', pidFile: '/r/p', agentSocket: null, consoleLog: null }).args;
  return args.flatMap((a, i) => (a === '-device' ? [JSON.parse(args[i + 1]!) as Record<string, unknown>] : []));
}

test('<os><boot dev> in order: the first disk of each kind gets the next bootindex', () => {
  const d = devices(dom("<boot dev='cdrom'/><boot dev='hd'/>", hd('sda') + hd('sdb') + cd('sdc')));
  assert.deepEqual(d.map((x) => [x.id, x.driver, x.bootindex]), [
    ['sata0-0-0', 'ide-hd', 2], ['sata0-0-1', 'ide-hd', undefined], ['sata0-0-2', 'ide-cd', 1],
  ]);
  // without boot elements, no bootindex: the firmware's own order (command lines of existing domains unchanged)
  assert.deepEqual(devices(dom('', hd('sda'))).map((x) => x.bootindex), [undefined]);
});

test("<boot dev='network'>: the first interface gets its place in the order, the disks theirs", () => {
  const nic = (n: number): string => `<interface type='user'><mac address='52:54:00:00:00:0${n}'/><model type='virtio'/></interface>`;
  const d = devices(dom("<boot dev='network'/><boot dev='hd'/>", hd('sda') + nic(1) + nic(2)));
  assert.deepEqual(d.map((x) => [x.id, x.driver, x.bootindex]), [
    ['net0', 'virtio-net-pci', 1], ['net1', 'virtio-net-pci', undefined], ['sata0-0-0', 'ide-hd', 2],
  ]);
  assert.deepEqual(devices(dom("<boot dev='hd'/><boot dev='network'/>", hd('sda') + nic(1))).map((x) => [x.id, x.bootindex]), [['net0', 2], ['sata0-0-0', 1]]);
  // no network boot asked for: the NIC has no bootindex (SeaBIOS never runs its ROM)
  assert.deepEqual(devices(dom("<boot dev='hd'/>", hd('sda') + nic(1))).map((x) => [x.id, x.bootindex]), [['net0', undefined], ['sata0-0-0', 1]]);
});

test('per-device <boot order>: taken as is; never together with <os><boot>; unique', () => {
  assert.deepEqual(devices(dom('', hd('sda', "<boot order='2'/>") + cd('sdb', "<boot order='1'/>"))).map((x) => x.bootindex), [2, 1]);
  assert.throws(() => parseDomainXML(dom("<boot dev='hd'/>", hd('sda', "<boot order='1'/>"))),
    { code: ErrorCode.XML_ERROR, message: 'per-device boot elements cannot be used together with os/boot elements' });
  assert.throws(() => parseDomainXML(dom('', hd('sda', "<boot order='1'/>") + hd('sdb', "<boot order='1'/>"))),
    { code: ErrorCode.XML_ERROR, message: 'boot order 1 used for more than one device' });
  assert.throws(() => parseDomainXML(dom('', hd('sda', "<boot order='0'/>"))), { code: ErrorCode.XML_ERROR, message: "incorrect boot order '0', expecting positive integer" });
});

test("firmware='efi': Debian's OVMF and NAME_VARS.fd; an explicit pair as given; pflash on the command line", () => {
  const efi = parseDomainXML(dom('', hd('sda'), " firmware='efi'"));
  assert.deepEqual(resolveFirmware(efi, '/state/nvram'), { code: OVMF_CODE, vars: '/state/nvram/vm_VARS.fd', template: OVMF_VARS });
  const given = parseDomainXML(dom("<loader readonly='yes' type='pflash'>/fw/CODE.fd</loader><nvram template='/fw/VARS.fd'>/v/my.fd</nvram>", hd('sda')));
  assert.deepEqual(resolveFirmware(given, '/state/nvram'), { code: '/fw/CODE.fd', vars: '/v/my.fd', template: '/fw/VARS.fd' });
  assert.equal(resolveFirmware(parseDomainXML(dom('', hd('sda'))), '/state/nvram'), null, 'BIOS');

  const files = resolveFirmware(efi, '/state/nvram')!;
  const args = buildCommandLine({ def: efi, accel: 'tcg', qmpSocket: '/r/q', pidFile: '/r/p', agentSocket: null, consoleLog: null, firmware: files }).args;
  assert.equal(args[args.indexOf('-machine') + 1], 'q35,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format');
  const blockdevs = args.flatMap((a, i) => (a === '-blockdev' ? [JSON.parse(args[i + 1]!) as Record<string, unknown>] : []));
  assert.deepEqual(blockdevs.filter((b) => String(b['node-name']).includes('pflash')), [
    { driver: 'file', filename: OVMF_CODE, 'node-name': 'libvirt-pflash0-storage', 'auto-read-only': true, discard: 'unmap' },
    { 'node-name': 'libvirt-pflash0-format', 'read-only': true, driver: 'raw', file: 'libvirt-pflash0-storage' },
    { driver: 'file', filename: '/state/nvram/vm_VARS.fd', 'node-name': 'libvirt-pflash1-storage', 'auto-read-only': true, discard: 'unmap' },
    { 'node-name': 'libvirt-pflash1-format', 'read-only': false, driver: 'raw', file: 'libvirt-pflash1-storage' },
  ]);
});
