// The pure parts of `virtback backup` / `restore`: the level decision and its
// reasons, per-repository checkpoint names and which of them a run deletes,
// the chunks a dirty bitmap touches, the job XML (validated by the same
// parsers the drivers use), and the domain definition rewritten for a restore.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, VirError } from '../../src/errors.js';
import { parseBackupXML } from '../../src/xml/backup.js';
import { parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { attr, childElements, childText, firstChild, parseXml } from '../../src/xml/tree.js';
import { backupXml, checkpointName, checkpointPrefix, checkpointXml, chunksTouched, decideLevel, repositoryId, unneededCheckpoints, type BasePoint } from '../../src/vmbackup/plan.js';
import { macFromBytes, rewriteDomainXml } from '../../src/vmbackup/domain-rewrite.js';

const UUID = '11111111-2222-3333-4444-555555555555';
const MiB = 1 << 20;
const last: BasePoint = { id: 'p1', domainUuid: UUID, checkpoint: 'vb-abcdef01-1', disks: [{ target: 'vda' }], verifyOk: null };
const good = { exists: true, inconsistent: null, unknownBitmaps: [] };
const vda = [{ target: 'vda' }];

test('auto is incremental from a usable base and full, with the reason, otherwise', () => {
  assert.deepEqual(decideLevel('auto', UUID, last, good, vda), { level: 'inc', base: { id: 'p1', checkpoint: 'vb-abcdef01-1' }, reason: 'incremental from point p1 (checkpoint vb-abcdef01-1)' });
  const reason = (...a: Parameters<typeof decideLevel> extends [unknown, ...infer R] ? R : never) => {
    const d = decideLevel('auto', ...a);
    assert.equal(d.level, 'full');
    assert.equal(d.base, null);
    return d.reason;
  };
  assert.match(reason(UUID, null, null, vda), /no previous point/);
  assert.match(reason(UUID, { ...last, domainUuid: 'other' }, good, vda), /another domain of the same name/);
  assert.match(reason(UUID, { ...last, verifyOk: false }, good, vda), /p1 failed verification/);
  assert.match(reason(UUID, { ...last, checkpoint: null }, good, vda), /has no checkpoint/);
  assert.match(reason(UUID, last, { ...good, exists: false }, vda), /checkpoint vb-abcdef01-1 of previous point p1 no longer exists on the domain$/);
  assert.match(reason(UUID, last, { exists: false, inconsistent: null, unknownBitmaps: ['vda/vb-abcdef01-1', 'vda/other'] }, vda), /its bitmaps remain without metadata: vda\/vb-abcdef01-1\)$/);
  assert.match(reason(UUID, last, { ...good, inconsistent: 'bitmap missing' }, vda), /is inconsistent: bitmap missing/);
  assert.match(reason(UUID, last, good, [{ target: 'vda' }, { target: 'vdb' }]), /disk vdb not in previous point p1/);
  // a disk removed since is not a reason: the others are still incremental
  assert.equal(decideLevel('auto', UUID, { ...last, disks: [{ target: 'vda' }, { target: 'vdb' }] }, good, vda).level, 'inc');
});

test('full is always full; inc without a usable base is refused naming why', () => {
  assert.deepEqual(decideLevel('full', UUID, last, good, vda), { level: 'full', base: null, reason: 'full backup requested' });
  assert.throws(
    () => decideLevel('inc', UUID, last, { ...good, exists: false }, vda),
    (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_INVALID && /^cannot back up incrementally: checkpoint vb-abcdef01-1/.test(e.message),
  );
});

test('checkpoint names carry the repository id; a run deletes only its own repository\'s older ones', () => {
  const a = repositoryId({ created: '2026-12-06T03:00:00.000Z', salt: null });
  const b = repositoryId({ created: '2026-12-06T03:00:00.001Z', salt: null });
  assert.match(a, /^[0-9a-f]{64}$/);
  assert.notEqual(a.slice(0, 8), b.slice(0, 8));
  const n = checkpointName(a, new Date('2026-12-06T03:04:05.678Z'));
  assert.equal(n, `vb-${a.slice(0, 8)}-20261206T030405678Z`);
  assert.ok(n.startsWith(checkpointPrefix(a)));
  const mine = [checkpointName(a, new Date(1000)), checkpointName(a, new Date(2000)), checkpointName(a, new Date(3000))];
  const theirs = [checkpointName(b, new Date(1500)), 'user-checkpoint'];
  assert.deepEqual(unneededCheckpoints(a, [...theirs, ...mine], mine[2]!), mine.slice(0, 2));
  assert.deepEqual(unneededCheckpoints(a, [...theirs, ...mine], null), mine);
  assert.deepEqual(unneededCheckpoints(b, [...theirs, ...mine], null), [theirs[0]]);
});

test('chunks touched by dirty ranges: each once, ascending, boundaries exact', () => {
  const C = 4 * MiB;
  assert.deepEqual(chunksTouched([], C), []);
  assert.deepEqual(chunksTouched([{ offset: 0, length: 1 }], C), [0]);
  assert.deepEqual(chunksTouched([{ offset: C - 1, length: 2 }], C), [0, 1]);
  assert.deepEqual(chunksTouched([{ offset: C, length: C }], C), [1]);
  assert.deepEqual(chunksTouched([{ offset: 9 * C, length: 64 * 1024 }, { offset: 2 * C + 5, length: 3 * C }, { offset: 0, length: 0 }], C), [2, 3, 4, 5, 9]);
});

test('the job XML parses as a pull backup with scratch files, and the checkpoint XML with a bitmap per disk', () => {
  const scratch = new Map([['vda', '/tmp/x/vda.scratch'], ['vdb', '/tmp/x/vdb.scratch']]);
  const inc = parseBackupXML(backupXml({ checkpoint: 'c2', incremental: 'c1', socket: '/tmp/x/nbd.sock', scratch, skipped: ['vdc'] }));
  assert.equal(inc.mode, 'pull');
  assert.equal(inc.incremental, 'c1');
  assert.deepEqual([inc.server?.transport, inc.server?.socket], ['unix', '/tmp/x/nbd.sock']);
  assert.deepEqual(inc.disks.map((d) => [d.name, d.backup, d.path]), [['vda', true, '/tmp/x/vda.scratch'], ['vdb', true, '/tmp/x/vdb.scratch'], ['vdc', false, null]]);
  assert.equal(parseBackupXML(backupXml({ checkpoint: 'c2', incremental: null, socket: '/s', scratch, skipped: [] })).incremental, null);
  const cp = parseCheckpointXML(checkpointXml('c2', ['vda', 'vdb'], ['vdc'], 'virtback repository r'), { redefine: false });
  assert.equal(cp.name, 'c2');
  assert.equal(cp.description, 'virtback repository r');
  assert.deepEqual(cp.disks.map((d) => [d.name, d.checkpoint]), [['vda', 'bitmap'], ['vdb', 'bitmap'], ['vdc', 'no']]);
});

const DOMAIN = `<domain type='kvm' id='3'>
  <name>vm1</name>
  <uuid>${UUID}</uuid>
  <devices>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/vm1'/><backingStore/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/data.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
    <channel type='unix'><source mode='bind' path='/run/vm1.agent'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>`;

test('restore rewrites restored disks to their new files, drops writable disks not restored, keeps the rest', () => {
  const xml = rewriteDomainXml(DOMAIN, new Map([['vda', { path: '/out/vm1-vda.qcow2', format: 'qcow2' as const }]]), null);
  const root = parseXml(xml);
  assert.equal(childText(root, 'name'), 'vm1');
  assert.equal(childText(root, 'uuid'), UUID);
  const disks = childElements(firstChild(root, 'devices')!, 'disk');
  assert.deepEqual(disks.map((d) => attr(firstChild(d, 'target')!, 'dev')), ['vda', 'sda']);
  const vdaEl = disks[0]!;
  assert.equal(attr(vdaEl, 'type'), 'file');
  assert.equal(attr(firstChild(vdaEl, 'driver')!, 'type'), 'qcow2');
  assert.deepEqual(firstChild(vdaEl, 'source')!.attrs, [['file', '/out/vm1-vda.qcow2']]);
  assert.equal(firstChild(vdaEl, 'backingStore'), null);
  assert.match(xml, /<mac address='52:54:00:aa:bb:cc'\/>/);
  assert.match(xml, /path='\/run\/vm1.agent'/);
});

test('restore under a new name: new name and uuid, every MAC new, unix channel paths left to the driver, no id', () => {
  let n = 0;
  const macs = ['52:54:00:00:00:01'];
  const xml = rewriteDomainXml(DOMAIN, new Map([['vda', { path: '/o/a.raw', format: 'raw' as const }], ['vdb', { path: '/o/b.raw', format: 'raw' as const }]]), {
    name: 'vm1-copy',
    uuid: '99999999-2222-3333-4444-555555555555',
    mac: () => macs[n++]!,
  });
  const root = parseXml(xml);
  assert.equal(attr(root, 'id'), null);
  assert.equal(childText(root, 'name'), 'vm1-copy');
  assert.equal(childText(root, 'uuid'), '99999999-2222-3333-4444-555555555555');
  assert.doesNotMatch(xml, /aa:bb:cc|\/run\/vm1\.agent|\/img\/data|\/dev\/vg/);
  assert.match(xml, /<mac address='52:54:00:00:00:01'\/>/);
  assert.match(xml, /<source mode='bind'\/>/);
  assert.equal(macFromBytes(Uint8Array.from([1, 0xab, 255, 7])), '52:54:00:01:ab:ff');
});
