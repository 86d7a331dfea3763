// QEMU's words for a disk's I/O error in libvirt's terms (src/qemu/io-errors.ts):
// BLOCK_IO_ERROR's node and action, query-block's qdev (an id, or a
// virtio-blk's QOM path) and io-status, as QEMU 7.2 sends them.

import assert from 'node:assert/strict';
import test from 'node:test';
import type { DiskNodes } from '../../src/qemu/command-line.js';
import { diskErrorCode, diskErrorList, diskOfNode, diskOfRootNode, ioErrorEvent, ioStatusErrors } from '../../src/qemu/io-errors.js';
import type { BlockInfo } from '../../src/qemu/qmp/commands.js';
import type { DiskDef } from '../../src/xml/domain.js';
import { DiskErrorCode, IoErrorAction } from '../../src/flags.js';

const disks: DiskNodes[] = [
  { target: 'vda', qdevId: 'virtio-disk0', storageNode: 'libvirt-2-storage', formatNode: 'libvirt-2-format', nodeIndex: 2 },
  { target: 'sdb', qdevId: 'scsi0-0-0-1', storageNode: 'libvirt-1-storage', formatNode: 'libvirt-1-format', nodeIndex: 1 },
  { target: 'sdc', qdevId: 'sata0-0-2', storageNode: null, formatNode: null, nodeIndex: null },
];
const defs = [
  { target: 'vda', source: '/img/vm-vda.qcow2' },
  { target: 'sdb', source: '/dev/sdz' },
  { target: 'sdc', source: null },
] as DiskDef[];
const dom = { name: 'vm', uuid: 'u' };

function block(qdev: string, node: string | null, io?: BlockInfo['io-status']): BlockInfo {
  return {
    device: '', qdev, type: 'unknown', removable: false, locked: false,
    ...(node === null ? {} : { inserted: { 'node-name': node } as BlockInfo['inserted'] }),
    ...(io === undefined ? {} : { 'io-status': io }),
  };
}

test('the disk of an error: its format node, or whoever query-block says sits on the node (a backup filter)', () => {
  assert.equal(diskOfNode(disks, 'libvirt-1-format')?.target, 'sdb');
  assert.equal(diskOfNode(disks, 'libvirt-1-storage'), undefined, 'devices sit on the format node');
  assert.equal(diskOfNode(disks, ''), undefined);
  const blocks = [block('/machine/peripheral/virtio-disk0/virtio-backend', '#block321'), block('scsi0-0-0-1', 'libvirt-1-format')];
  assert.equal(diskOfRootNode(disks, blocks, '#block321')?.target, 'vda', "a virtio-blk's QOM path names its proxy's id");
  assert.equal(diskOfRootNode(disks, blocks, '#block999'), undefined);
  assert.equal(diskOfRootNode(disks, [block('/machine/peripheral/virtio-disk01/virtio-backend', '#b')], '#b'), undefined, 'no prefix match');
});

test("an error's event: libvirt's action and reason, the disk's source and alias, or empty strings for none", () => {
  assert.deepEqual(ioErrorEvent(dom, disks[0], defs, { device: '', 'node-name': 'libvirt-2-format', operation: 'write', action: 'stop', nospace: true, reason: 'No space left on device' }), {
    type: 'io-error', domain: dom, disk: 'vda', srcPath: '/img/vm-vda.qcow2', devAlias: 'virtio-disk0', action: IoErrorAction.PAUSE, reason: 'enospc',
  });
  assert.deepEqual(ioErrorEvent(dom, disks[1], defs, { action: 'report', nospace: false, reason: 'Input/output error' }), {
    type: 'io-error', domain: dom, disk: 'sdb', srcPath: '/dev/sdz', devAlias: 'scsi0-0-0-1', action: IoErrorAction.REPORT, reason: '',
  });
  const none = ioErrorEvent(dom, undefined, defs, { action: 'ignore' });
  assert.deepEqual([none.disk, none.srcPath, none.devAlias, none.action], ['', '', '', IoErrorAction.NONE]);
  assert.equal(ioErrorEvent(dom, disks[2], defs, {}).action, IoErrorAction.NONE, 'no action: ignore, as libvirt');
  assert.equal(ioErrorEvent(dom, disks[2], defs, { action: 'other' as 'stop' }).action, IoErrorAction.NONE);
  assert.deepEqual([diskErrorCode({ nospace: true }), diskErrorCode({ nospace: false }), diskErrorCode({})], [DiskErrorCode.NO_SPACE, DiskErrorCode.UNSPEC, DiskErrorCode.UNSPEC]);
});

test('disk errors: query-block io-status by device, listed in definition order', () => {
  const blocks = [
    block('scsi0-0-0-1', 'libvirt-1-format', 'failed'),
    block('/machine/peripheral/virtio-disk0/virtio-backend', 'libvirt-2-format', 'nospace'),
    block('sata0-0-2', null, 'ok'),
  ];
  const found = ioStatusErrors(disks, blocks);
  assert.deepEqual([...found], [['vda', DiskErrorCode.NO_SPACE], ['sdb', DiskErrorCode.UNSPEC]]);
  assert.deepEqual(diskErrorList(disks, new Map([['sdb', 1], ['vda', 2]])), [{ disk: 'vda', error: 2 }, { disk: 'sdb', error: 1 }]);
  assert.deepEqual(diskErrorList(disks, new Map()), []);
  assert.deepEqual([...ioStatusErrors(disks, [block('scsi0-0-0-1', 'x')])], [], 'no io-status: no error');
});
