// Shared by the chunkstore-*.test.ts files: a repository in a temp folder and
// points written the way a backup writes them (chunks, index, record last).

import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { chunkKey, ChunkRepository, type PointRecord } from '../../src/chunkstore/repo.js';

export const DOMAIN = { name: 'vm1', uuid: '11111111-2222-3333-4444-555555555555' };

/** A fresh temp folder, removed when the test file ends. */
export async function tempDir(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-chunkstore-'));
  after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

export async function newRepo(opts: { encryptKey?: Buffer; chunkSize?: number } = {}): Promise<{ dir: string; repo: ChunkRepository }> {
  const dir = await tempDir();
  return { dir, repo: await ChunkRepository.init(await openFolderStore(dir), opts) };
}

/** Flip one bit of chunk `id`'s stored blob in the folder repository at `repoDir` (byte `at`, default the last); the tampered blob. */
export async function tamperChunk(repoDir: string, id: string, at?: number): Promise<Buffer> {
  const file = path.join(repoDir, chunkKey(id));
  const blob = await fs.readFile(file);
  blob[at ?? blob.length - 1]! ^= 1;
  await fs.writeFile(file, blob);
  return blob;
}

/** Files under `dir` (relative paths), recursively, hidden ones included. */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
}

/** Write `data` as disk `target` of a point: its chunks and its index (no point record). */
export async function writeDisk(repo: ChunkRepository, pointId: string, target: string, data: Buffer, domain = DOMAIN) {
  const chunks: string[] = [];
  let bytesNew = 0;
  for (let at = 0; at < data.length; at += repo.chunkSize) {
    const w = await repo.writeChunk(data.subarray(at, at + repo.chunkSize));
    chunks.push(w.id);
    bytesNew += w.storedBytes;
  }
  const index = await repo.writeIndex(domain.uuid, pointId, { target, size: data.length, chunkSize: repo.chunkSize, chunks });
  return { target, size: data.length, index, bytesRead: data.length, bytesNew };
}

export function pointRecord(id: string, disks: PointRecord['disks'], over: Partial<PointRecord> = {}): PointRecord {
  return {
    id,
    domain: DOMAIN,
    time: id,
    level: 'full',
    base: null,
    reason: 'test',
    checkpoint: { name: `cp-${id}`, xml: '<domaincheckpoint/>' },
    domainXml: '<domain/>',
    disks,
    durationMs: 1,
    toolVersion: 'test',
    ...over,
  };
}

/** A complete point with one disk 'vda' holding `data`. */
export async function writePoint(repo: ChunkRepository, id: string, data: Buffer, domain = DOMAIN): Promise<PointRecord> {
  const p = pointRecord(id, [await writeDisk(repo, id, 'vda', data, domain)], { domain });
  await repo.writePoint(p);
  return p;
}

/** `n` bytes of a repeatable pseudo-random pattern (an LCG's high-quality words: not all-zero, barely compressible). */
export function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = (Math.imul(seed, 2654435761) + 1) >>> 0;
  for (let i = 0; i + 4 <= n; i += 4) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}
