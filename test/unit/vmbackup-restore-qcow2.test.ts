// Restore to qcow2 (restore.ts): the image is written in one pass by the qcow2
// writer (no raw file converted afterwards). What qemu-img reads back is the
// disk, qemu-img check finds nothing wrong, zero chunks and zero clusters are
// not allocated, a disk whose size is not whole sectors still restores (the
// converted path), and a bad chunk leaves no image behind.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { VirError } from '../../src/errors.js';
import { restoreDomain } from '../../src/vmbackup/restore.js';
import { pattern, pointRecord, tamperChunk, tempDir, writeDisk } from './chunkstore-fixtures.js';

const run = promisify(execFile);
const CS = 1 << 20;
const CLUSTER = 65536;
const XML = "<domain type='qemu'><name>vm1</name><uuid>11111111-2222-3333-4444-555555555555</uuid><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/old/vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>";
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** 12 chunks of 1 MiB: data, two zero chunks, a chunk zero but for its middle clusters, a short last chunk. */
function diskData(size: number): Buffer {
  const data = pattern(size, 5);
  data.fill(0, 3 * CS, 5 * CS);
  data.fill(0, 7 * CS, 7 * CS + 4 * CLUSTER);
  data.fill(0, 7 * CS + 6 * CLUSTER, 8 * CS);
  return data;
}

async function restoreQcow2(data: Buffer, dir: string): Promise<{ repo: ChunkRepository; image: string; chunks: string[] }> {
  const repo = await ChunkRepository.init(await openFolderStore(path.join(dir, 'repo')), { chunkSize: CS });
  const id = '2026-12-06T00:00:00.000Z';
  const disk = await writeDisk(repo, id, 'vda', data);
  await repo.writePoint(pointRecord(id, [disk], { domainXml: XML }));
  const r = await restoreDomain(repo, null, { domain: 'vm1', outputDir: path.join(dir, 'out'), format: 'qcow2' });
  return { repo, image: r.disks[0]!.path, chunks: (await repo.readIndex(disk.index)).chunks };
}

async function readBack(image: string, dir: string): Promise<Buffer> {
  const raw = path.join(dir, 'back.raw');
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
  return fs.readFile(raw);
}

test('restore to qcow2: one pass, exact, consistent, sparse', async () => {
  const dir = await tempDir();
  const data = diskData(11 * CS + 3 * CLUSTER + 512);
  const { image } = await restoreQcow2(data, dir);
  assert.equal(sha(await readBack(image, dir)), sha(data), 'qemu-img reads the disk back');
  await run('qemu-img', ['check', '-q', image]); // exit status 0: no leaks, no corruption
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', image])).stdout) as { format: string; 'virtual-size': number };
  assert.deepEqual([info.format, info['virtual-size']], ['qcow2', data.length]);
  const map = JSON.parse((await run('qemu-img', ['map', '--output=json', image])).stdout) as Array<{ start: number; length: number; data: boolean }>;
  const allocated = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
  // 12 chunks less two zero chunks less the 62 zero clusters of chunk 7
  assert.equal(allocated, data.length - 2 * CS - (CS - 2 * CLUSTER));
  for (const zero of [3 * CS, 4 * CS, 7 * CS]) {
    assert.ok(map.some((m) => !m.data && m.start <= zero && zero < m.start + m.length), `offset ${zero} is not allocated`);
  }
  assert.deepEqual((await fs.readdir(path.join(dir, 'out'))).sort(), ['vm1-vda.qcow2', 'vm1.xml'], 'no temporary file left');
});

test('restore to qcow2 of a disk not whole sectors long goes through a raw image and reads back padded', async () => {
  const dir = await tempDir();
  const data = pattern(2 * CS + 1000, 6);
  const { image } = await restoreQcow2(data, dir);
  const back = await readBack(image, dir);
  assert.equal(back.length, 2 * CS + 1024, 'qemu-img rounds the size up to a sector');
  assert.equal(sha(back.subarray(0, data.length)), sha(data));
  assert.ok(back.subarray(data.length).equals(Buffer.alloc(24)));
});

test('a tampered chunk fails the qcow2 restore naming the chunk; no image is left', async () => {
  const dir = await tempDir();
  const data = pattern(6 * CS, 7);
  const repo = await ChunkRepository.init(await openFolderStore(path.join(dir, 'repo')), { chunkSize: CS });
  const id = '2026-12-06T00:00:00.000Z';
  const disk = await writeDisk(repo, id, 'vda', data);
  await repo.writePoint(pointRecord(id, [disk], { domainXml: XML }));
  const bad = (await repo.readIndex(disk.index)).chunks[5]!;
  await tamperChunk(path.join(dir, 'repo'), bad);
  const out = path.join(dir, 'out');
  await assert.rejects(restoreDomain(repo, null, { domain: 'vm1', outputDir: out, format: 'qcow2' }), (e: unknown) => e instanceof VirError && e.message.includes(bad));
  assert.deepEqual(await fs.readdir(out), [], 'nothing of the failed restore remains');
});
