// The pure parts of restore onto block devices: --target-dev parsing, the
// zero ranges a device is asked to zero, and the definition's block disks.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ZERO_CHUNK } from '../../src/chunkstore/repo.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { rewriteDomainXml } from '../../src/vmbackup/domain-rewrite.js';
import { parseTargetDevs, zeroRanges } from '../../src/vmbackup/restore-device.js';

const invalid = (re: RegExp) => (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG && re.test(e.message);

test('--target-dev pairs', () => {
  assert.deepEqual([...parseTargetDevs(['vda=/dev/vg/a', 'vdb=/dev/loop3'])], [['vda', '/dev/vg/a'], ['vdb', '/dev/loop3']]);
  assert.deepEqual([...parseTargetDevs(['vda=/dev/disk/by-id/x=y'])], [['vda', '/dev/disk/by-id/x=y']], 'the first = splits');
  for (const bad of ['vda', '=/dev/x', 'vda=']) assert.throws(() => parseTargetDevs([bad]), invalid(/expected TARGET=DEVICE/));
  assert.throws(() => parseTargetDevs(['vda=/dev/a', 'vda=/dev/b']), invalid(/disk 'vda' named twice/));
  assert.throws(() => parseTargetDevs(['vda=/dev/a', 'vdb=/dev/a']), invalid(/device '\/dev\/a' named twice/));
});

test('zero chunks coalesce into ranges; the last chunk is short', () => {
  const C = 4 << 20;
  const d = 'a'.repeat(64);
  const index = { target: 'vda', size: 5 * C + 512, chunkSize: C, chunks: [ZERO_CHUNK, ZERO_CHUNK, d, ZERO_CHUNK, d, ZERO_CHUNK] };
  assert.deepEqual(zeroRanges(index), [[0, 2 * C], [3 * C, C], [5 * C, 512]]);
  assert.deepEqual(zeroRanges({ ...index, chunks: [d, d, d, d, d, d] }), []);
});

test('a disk restored onto a device becomes a raw block disk', () => {
  const xml = "<domain type='kvm'><name>a</name><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/x.qcow2'/><backingStore/><target dev='vda' bus='virtio'/></disk></devices></domain>";
  const out = rewriteDomainXml(xml, new Map([['vda', { path: '/dev/vg/a', format: 'raw', block: true }]]), null);
  assert.match(out, /<disk type='block' device='disk'>\s*<driver name='qemu' type='raw'\/>\s*<source dev='\/dev\/vg\/a'\/>\s*<target dev='vda' bus='virtio'\/>/);
  assert.doesNotMatch(out, /backingStore|file=/);
});
