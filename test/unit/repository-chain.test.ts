// checkChain on synthetic chains: every kind of mismatched link is named.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, VirError } from '../../src/errors.js';
import { checkChain, type ChainLink } from '../../src/repository/chain.js';
import type { BackupManifest } from '../../src/repository/manifest.js';

const SIZE = 64 << 20;

function manifest(over: Partial<BackupManifest>): BackupManifest {
  return {
    kind: 'virtback-backup-manifest',
    version: 1,
    domain: { name: 'vm1', uuid: 'u1' },
    disk: 'vda',
    target: '',
    format: 'qcow2',
    checkpoint: null,
    incrementalFrom: null,
    parentBackup: null,
    time: 0,
    timeISO: '',
    virtualSize: SIZE,
    jobId: 1,
    mode: 'push',
    checksum: { algorithm: 'sha256-blocks-1MiB', blockSize: 1 << 20, size: SIZE, sha256: '0'.repeat(64), zeroBlocks: [], digests: '', computedFrom: '' },
    ...over,
  };
}

/** /b/full <- /b/inc1 <- /b/inc2, consistent. Returned target first. */
function chain(): ChainLink[] {
  return [
    { file: '/b/inc2', format: 'qcow2', virtualSize: SIZE, backing: '/b/inc1', backingFormat: 'qcow2', manifest: manifest({ checkpoint: 'c3', incrementalFrom: 'c2', parentBackup: '/b/inc1' }) },
    { file: '/b/inc1', format: 'qcow2', virtualSize: SIZE, backing: '/b/full', backingFormat: 'qcow2', manifest: manifest({ checkpoint: 'c2', incrementalFrom: 'c1', parentBackup: '/b/full' }) },
    { file: '/b/full', format: 'qcow2', virtualSize: SIZE, backing: null, backingFormat: null, manifest: manifest({ checkpoint: 'c1' }) },
  ];
}

function broken(links: ChainLink[], re: RegExp) {
  assert.throws(() => checkChain(links), (e) => e instanceof VirError && e.code === ErrorCode.OPERATION_INVALID && re.test(e.message));
}

test('a consistent chain passes, with or without manifests', () => {
  checkChain(chain());
  checkChain(chain().map((l) => ({ ...l, manifest: null })));
});

test('mismatched links are named', () => {
  let c = chain();
  c[2]!.virtualSize = SIZE * 2;
  broken(c, /'\/b\/full' has virtual size 134217728, but '\/b\/inc2' has 67108864/);

  c = chain();
  c[1]!.manifest!.virtualSize = 1;
  broken(c, /manifest '\/b\/inc1\.manifest\.json' says virtual size 1, but '\/b\/inc1' has 67108864/);

  c = chain();
  c[2]!.manifest!.domain = { name: 'other', uuid: 'u2' };
  broken(c, /'\/b\/full' belongs to disk 'vda' of domain 'other' \(u2\), not to disk 'vda' of domain 'vm1' \(u1\)/);

  c = chain();
  c[1]!.manifest!.checkpoint = 'c9';
  broken(c, /backing file '\/b\/inc1' of '\/b\/inc2' is the backup of checkpoint 'c9', but '\/b\/inc2' is incremental from checkpoint 'c2'/);

  c = chain();
  c[1]!.manifest = null;
  broken(c, /backing file '\/b\/inc1' of '\/b\/inc2' has no manifest '\/b\/inc1\.manifest\.json'/);

  c = chain();
  c[0]!.manifest!.parentBackup = null;
  broken(c, /incremental backup '\/b\/inc2' is backed by '\/b\/inc1', which is not a backup .*live disk/);

  c = chain();
  c[2]!.manifest!.incrementalFrom = 'c0';
  broken(c, /'\/b\/full' has no backing file, but its manifest .* incremental from checkpoint 'c0'/);

  c = chain();
  c[1]!.manifest!.incrementalFrom = null;
  broken(c, /'\/b\/inc1' has backing file '\/b\/full', but its manifest .* says it is a full backup/);

  c = chain();
  c[0]!.manifest!.format = 'raw';
  broken(c, /manifest '\/b\/inc2\.manifest\.json' says format 'raw', but '\/b\/inc2' is 'qcow2'/);
});
