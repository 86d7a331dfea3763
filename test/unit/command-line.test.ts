import assert from 'node:assert/strict';
import test from 'node:test';
import { isVirError } from '../../src/errors.js';
import {
  assignDiskNodes,
  buildCommandLine,
  diskNameToIndex,
  escapeOptValue,
  nextNodeIndex,
  qdevIdForDisk,
  type CommandLineInput,
} from '../../src/qemu/command-line.js';
import { parseDomainXML, type DiskDef, type DomainDef } from '../../src/xml/domain.js';

function disk(target: string, bus: DiskDef['bus'], more: Partial<DiskDef> = {}): DiskDef {
  return {
    type: 'file', device: 'disk', format: 'qcow2', source: `/img/${target}.qcow2`,
    target, bus, readonly: false, extra: [], ...more,
  };
}

function domain(disks: DiskDef[], more: Partial<DomainDef> = {}): DomainDef {
  return {
    type: 'qemu', name: 'vm1', uuid: '6f2a3c9e-1b7d-4e5f-8a9b-0c1d2e3f4a5b', memoryKiB: 131072, vcpu: 2,
    os: { kernel: null, initrd: null, cmdline: null }, disks, agent: null, extra: [], ...more,
  };
}

function input(def: DomainDef, more: Partial<CommandLineInput> = {}): CommandLineInput {
  return {
    def, accel: 'tcg', qmpSocket: '/run/vb/u/qmp.sock', pidFile: '/run/vb/u/qemu.pid',
    agentSocket: null, consoleLog: null, ...more,
  };
}

/** The values following each occurrence of `opt`. */
function values(args: string[], opt: string): string[] {
  return args.flatMap((a, i) => (a === opt ? [args[i + 1]!] : []));
}

function jsonValues(args: string[], opt: string): Record<string, unknown>[] {
  return values(args, opt).map((v) => JSON.parse(v) as Record<string, unknown>);
}

function throwsVir(fn: () => unknown, code: Parameters<typeof isVirError>[1], re: RegExp): void {
  assert.throws(fn, (e: unknown) => isVirError(e, code) && re.test((e as Error).message));
}

test('diskNameToIndex follows libvirt (sda=0, sdz=25, sdaa=26, vdb=1)', () => {
  assert.equal(diskNameToIndex('sda'), 0);
  assert.equal(diskNameToIndex('sdz'), 25);
  assert.equal(diskNameToIndex('sdaa'), 26);
  assert.equal(diskNameToIndex('sdab'), 27);
  assert.equal(diskNameToIndex('vdb'), 1);
  assert.equal(diskNameToIndex('hdc'), 2);
  assert.equal(diskNameToIndex('sd'), -1);
  assert.equal(diskNameToIndex('nvme0n1'), -1);
  assert.equal(diskNameToIndex('sdA'), -1);
});

test('qdev ids are libvirt aliases derived from the target', () => {
  const def = domain([disk('sda', 'scsi'), disk('sdc', 'scsi'), disk('sdb', 'sata'), disk('vdb', 'virtio')]);
  assert.equal(qdevIdForDisk(def, 'sda'), 'scsi0-0-0-0');
  assert.equal(qdevIdForDisk(def, 'sdc'), 'scsi0-0-0-2');
  assert.equal(qdevIdForDisk(def, 'sdb'), 'sata0-0-1');
  assert.equal(qdevIdForDisk(def, 'vdb'), 'virtio-disk1');
  throwsVir(() => qdevIdForDisk(def, 'sdz'), 'INVALID_ARG', /no disk named 'sdz'/);
});

test('node names count down over disks with a source; an empty cdrom gets none', () => {
  const def = domain([
    disk('sda', 'scsi'),
    disk('sdb', 'scsi', { device: 'cdrom', source: null, format: 'raw' }),
    disk('sdc', 'sata'),
    disk('vda', 'virtio'),
  ]);
  const nodes = assignDiskNodes(def);
  assert.deepEqual(nodes.map((n) => [n.target, n.storageNode, n.formatNode, n.nodeIndex]), [
    ['sda', 'libvirt-3-storage', 'libvirt-3-format', 3],
    ['sdb', null, null, null],
    ['sdc', 'libvirt-2-storage', 'libvirt-2-format', 2],
    ['vda', 'libvirt-1-storage', 'libvirt-1-format', 1],
  ]);
  assert.equal(nextNodeIndex(nodes), 4);
  assert.equal(nextNodeIndex(nodes, [7, 5]), 8);
  assert.equal(nextNodeIndex([]), 1);
});

test('argv: machine, accel, memory, smp, name, uuid, monitor, daemonize', () => {
  const def = domain([disk('sda', 'scsi')], { name: 'a,b' });
  const { args, binary } = buildCommandLine(input(def, { accel: 'kvm' }));
  assert.equal(binary, 'qemu-system-x86_64');
  assert.deepEqual(values(args, '-machine'), ['q35']);
  assert.deepEqual(values(args, '-accel'), ['kvm']);
  assert.deepEqual(values(args, '-m'), ['size=131072k']);
  assert.deepEqual(values(args, '-smp'), ['2']);
  assert.deepEqual(values(args, '-name'), ['guest=a,,b,debug-threads=on']);
  assert.deepEqual(values(args, '-uuid'), ['6f2a3c9e-1b7d-4e5f-8a9b-0c1d2e3f4a5b']);
  assert.deepEqual(values(args, '-pidfile'), ['/run/vb/u/qemu.pid']);
  for (const flag of ['-nodefaults', '-no-user-config', '-daemonize']) assert.ok(args.includes(flag), flag);
  assert.deepEqual(values(args, '-display'), ['none']);
  assert.deepEqual(values(args, '-chardev'), ['socket,id=charmonitor,path=/run/vb/u/qmp.sock,server=on,wait=off']);
  assert.deepEqual(values(args, '-mon'), ['chardev=charmonitor,id=monitor,mode=control']);
  assert.ok(!args.includes('-kernel') && !args.includes('-no-reboot') && !args.includes('-serial'));
  assert.deepEqual(values(buildCommandLine(input(def)).args, '-accel'), ['tcg']);
});

test('argv: scsi, sata and virtio disks with blockdev node pairs and libvirt qdev ids', () => {
  const def = domain([disk('sda', 'scsi'), disk('sdb', 'sata'), disk('vda', 'virtio', { format: 'raw' })]);
  const { args, disks } = buildCommandLine(input(def));
  assert.deepEqual(jsonValues(args, '-blockdev'), [
    { driver: 'file', filename: '/img/sda.qcow2', 'node-name': 'libvirt-3-storage', 'auto-read-only': true, discard: 'unmap' },
    { 'node-name': 'libvirt-3-format', 'read-only': false, driver: 'qcow2', file: 'libvirt-3-storage' },
    { driver: 'file', filename: '/img/sdb.qcow2', 'node-name': 'libvirt-2-storage', 'auto-read-only': true, discard: 'unmap' },
    { 'node-name': 'libvirt-2-format', 'read-only': false, driver: 'qcow2', file: 'libvirt-2-storage' },
    { driver: 'file', filename: '/img/vda.qcow2', 'node-name': 'libvirt-1-storage', 'auto-read-only': true, discard: 'unmap' },
    { 'node-name': 'libvirt-1-format', 'read-only': false, driver: 'raw', file: 'libvirt-1-storage' },
  ]);
  assert.deepEqual(jsonValues(args, '-device'), [
    { driver: 'virtio-scsi-pci', id: 'scsi0' },
    { driver: 'scsi-hd', bus: 'scsi0.0', channel: 0, 'scsi-id': 0, lun: 0, drive: 'libvirt-3-format', id: 'scsi0-0-0-0' },
    { driver: 'ide-hd', bus: 'ide.1', drive: 'libvirt-2-format', id: 'sata0-0-1' },
    { driver: 'virtio-blk-pci', drive: 'libvirt-1-format', id: 'virtio-disk0' },
  ]);
  assert.deepEqual(disks.map((d) => d.qdevId), ['scsi0-0-0-0', 'sata0-0-1', 'virtio-disk0']);
});

test('argv: no scsi controller without scsi disks; block disks use host_device', () => {
  const def = domain([disk('vda', 'virtio', { type: 'block', source: '/dev/vg/lv' })]);
  const { args } = buildCommandLine(input(def));
  const devs = jsonValues(args, '-device');
  assert.ok(!devs.some((d) => d.driver === 'virtio-scsi-pci'));
  assert.equal(jsonValues(args, '-blockdev')[0]!.driver, 'host_device');
});

test('argv: readonly disks and cdroms are read-only; an empty cdrom has no drive', () => {
  const def = domain([
    disk('sda', 'scsi', { readonly: true }),
    disk('sdb', 'scsi', { device: 'cdrom', source: null, format: 'raw' }),
    disk('sdc', 'sata', { device: 'cdrom', source: '/img/x.iso', format: 'raw' }),
  ]);
  const { args } = buildCommandLine(input(def));
  const formats = jsonValues(args, '-blockdev').filter((b) => typeof b.file === 'string');
  assert.deepEqual(formats.map((b) => [b['node-name'], b['read-only']]), [
    ['libvirt-2-format', true],
    ['libvirt-1-format', true],
  ]);
  const devs = jsonValues(args, '-device');
  assert.deepEqual(devs[2], { driver: 'scsi-cd', bus: 'scsi0.0', channel: 0, 'scsi-id': 0, lun: 1, id: 'scsi0-0-0-1' });
  assert.deepEqual(devs[3], { driver: 'ide-cd', bus: 'ide.2', drive: 'libvirt-1-format', id: 'sata0-0-2' });
});

test('argv: disk <serial> becomes the device serial', () => {
  const def = domain([disk('vda', 'virtio', { extra: [{ name: 'serial', attrs: [], children: ['data'] }] })]);
  assert.equal(jsonValues(buildCommandLine(input(def)).args, '-device')[0]!.serial, 'data');
});

test('argv: direct kernel boot, serial console, -no-reboot, guest agent channel', () => {
  const def = domain([], {
    os: { kernel: '/k/vmlinuz', initrd: '/k/initrd.img', cmdline: 'console=ttyS0 quiet' },
    agent: { path: null },
    extra: [{ name: 'on_reboot', attrs: [], children: ['destroy'] }],
  });
  const { args } = buildCommandLine(input(def, { agentSocket: '/run/vb/u/qga,1.sock', consoleLog: '/run/vb/u/console.log' }));
  assert.deepEqual(values(args, '-kernel'), ['/k/vmlinuz']);
  assert.deepEqual(values(args, '-initrd'), ['/k/initrd.img']);
  assert.deepEqual(values(args, '-append'), ['console=ttyS0 quiet']);
  assert.ok(args.includes('-no-reboot'));
  assert.deepEqual(values(args, '-serial'), ['chardev:charserial0']);
  assert.deepEqual(values(args, '-chardev').slice(1), [
    'file,id=charserial0,path=/run/vb/u/console.log',
    'socket,id=charchannel0,path=/run/vb/u/qga,,1.sock,server=on,wait=off',
  ]);
  assert.deepEqual(jsonValues(args, '-device'), [
    { driver: 'virtio-serial-pci', id: 'virtio-serial0' },
    { driver: 'virtserialport', bus: 'virtio-serial0.0', nr: 1, chardev: 'charchannel0', id: 'channel0', name: 'org.qemu.guest_agent.0' },
  ]);
});

test('argv: paths with commas in -blockdev need no escaping (JSON)', () => {
  const def = domain([disk('sda', 'scsi', { source: '/img/a,b.qcow2' })]);
  assert.equal(jsonValues(buildCommandLine(input(def)).args, '-blockdev')[0]!.filename, '/img/a,b.qcow2');
  assert.equal(escapeOptValue('a,b,,c'), 'a,,b,,,,c');
});

test('unsupported layouts fail with a message naming the disk', () => {
  throwsVir(() => buildCommandLine(input(domain([disk('sdg', 'sata')]))), 'CONFIG_UNSUPPORTED', /'sdg'.*ports 0\.\.5/);
  throwsVir(() => buildCommandLine(input(domain([disk('sda', 'sata', { readonly: true })]))),
    'CONFIG_UNSUPPORTED', /'sda': readonly ide disks are not supported/);
  throwsVir(() => buildCommandLine(input(domain([disk('vda', 'virtio', { device: 'cdrom' })]))),
    'CONFIG_UNSUPPORTED', /'vda': cdrom on bus virtio/);
  throwsVir(() => buildCommandLine(input(domain([disk('xyz', 'scsi')]))), 'CONFIG_UNSUPPORTED', /invalid disk target 'xyz'/);
  throwsVir(() => buildCommandLine(input(domain([disk('sda', 'scsi'), disk('sda', 'sata')]))), 'XML_ERROR', /'sda' duplicated/);
  throwsVir(() => buildCommandLine(input(domain([disk('sda', 'scsi', { source: null })]))), 'XML_ERROR', /'sda' has no source/);
  throwsVir(() => buildCommandLine(input(domain([], { agent: { path: null } }))), 'INTERNAL_ERROR', /agent channel has no socket/);
});

test('the builder is pure: same input, same argv', () => {
  const def = domain([disk('sda', 'scsi'), disk('vda', 'virtio')]);
  assert.deepEqual(buildCommandLine(input(def)), buildCommandLine(input(def)));
});

test("type='kvm' runs -accel kvm or not at all (libvirt's error); the machine of <os><type> is run", () => {
  const kvm = domain([disk('sda', 'scsi')], { type: 'kvm' });
  assert.deepEqual(values(buildCommandLine(input(kvm, { accel: 'kvm' })).args, '-accel'), ['kvm']);
  throwsVir(() => buildCommandLine(input(kvm)), 'CONFIG_UNSUPPORTED',
    /^Domain requires KVM, but it is not available\. Check that virtualization is enabled in the host BIOS, and host configuration is setup to load the kvm modules\.$/);
  const machine = (extra: DomainDef['os']['extra']) =>
    values(buildCommandLine(input(domain([], { os: { kernel: null, initrd: null, cmdline: null, extra } }))).args, '-machine');
  assert.deepEqual(machine(undefined), ['q35']);
  assert.deepEqual(machine([{ name: 'type', attrs: [['machine', 'pc-q35-7.2']], children: ['hvm'] }]), ['pc-q35-7.2']);
  assert.deepEqual(machine([{ name: 'type', attrs: [['arch', 'x86_64']], children: ['hvm'] }]), ['q35']);
});

test('<cpu> runs as -cpu and its topology as -smp; host-model is max under TCG and host under KVM; <on_poweroff>restart pauses QEMU', () => {
  const cpu = (xml: string, vcpu: number, accel: 'kvm' | 'tcg' = 'tcg', type: 'kvm' | 'qemu' = 'qemu') => {
    const def = parseDomainXML(`<domain type='${type}'><name>c</name><memory unit='MiB'>64</memory><vcpu>${vcpu}</vcpu>${xml}</domain>`);
    const args = buildCommandLine(input(def, { accel })).args;
    return { cpu: values(args, '-cpu'), smp: values(args, '-smp'), action: values(args, '-action') };
  };
  assert.deepEqual(cpu('', 2), { cpu: [], smp: ['2'], action: [] });
  assert.deepEqual(cpu("<cpu mode='custom' match='exact'><model>Skylake-Client</model><feature policy='require' name='pcid'/><feature policy='disable' name='vmx'/></cpu>", 1).cpu,
    ['Skylake-Client,pcid=on,vmx=off']);
  assert.deepEqual(cpu("<cpu mode='host-model'/>", 1).cpu, ['max']);
  assert.deepEqual(cpu("<cpu mode='host-model'/>", 1, 'kvm', 'kvm').cpu, ['host']);
  assert.deepEqual(cpu("<cpu mode='host-passthrough'/>", 1, 'kvm', 'kvm').cpu, ['host']);
  assert.deepEqual(cpu("<cpu><topology sockets='2' dies='1' cores='2' threads='1'/></cpu>", 4).smp, ['4,sockets=2,dies=1,cores=2,threads=1']);
  assert.deepEqual(cpu('<on_poweroff>restart</on_poweroff>', 1).action, ['shutdown=pause']);
  assert.deepEqual(cpu('<on_poweroff>destroy</on_poweroff>', 1).action, []);
});
