// A backup point written straight into a chunk repository with the chunk
// store's API (chunks from raw disk images), for the backup-serve and
// instant-restore tests; independent of `virtback backup`.

import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { CHUNK_SIZE, ChunkRepository, newPointId, type PointRecord } from '../../src/chunkstore/repo.js';

export interface TestPoint {
  repoDir: string;
  repo: ChunkRepository;
  point: PointRecord;
}

export async function writeTestPoint(
  dir: string,
  domain: string,
  disks: Array<{ target: string; file: string }>,
  opts: { domainXml?: string; uuid?: string; repoDir?: string; encryptKey?: Buffer } = {},
): Promise<TestPoint> {
  const repoDir = opts.repoDir ?? path.join(dir, 'repo');
  fs.mkdirSync(repoDir, { recursive: true });
  const store = await openFolderStore(repoDir);
  const key = opts.encryptKey === undefined ? {} : { encryptKey: opts.encryptKey };
  const repo = fs.readdirSync(repoDir).length === 0 ? await ChunkRepository.init(store, key) : await ChunkRepository.open(store, key);
  const uuid = opts.uuid ?? randomUUID();
  const id = newPointId();
  const written: PointRecord['disks'] = [];
  for (const d of disks) {
    const size = fs.statSync(d.file).size;
    const fd = fs.openSync(d.file, 'r');
    const chunks: string[] = [];
    let bytesNew = 0;
    try {
      for (let at = 0; at < size; at += CHUNK_SIZE) {
        const buf = Buffer.alloc(Math.min(CHUNK_SIZE, size - at));
        fs.readSync(fd, buf, 0, buf.length, at);
        const r = await repo.writeChunk(buf);
        chunks.push(r.id);
        bytesNew += r.storedBytes;
      }
    } finally {
      fs.closeSync(fd);
    }
    const index = await repo.writeIndex(uuid, id, { target: d.target, size, chunkSize: CHUNK_SIZE, chunks });
    written.push({ target: d.target, size, index, bytesRead: size, bytesNew });
  }
  const point: PointRecord = {
    id,
    domain: { name: domain, uuid },
    time: id,
    level: 'full',
    base: null,
    reason: 'test point',
    checkpoint: null,
    domainXml: opts.domainXml ?? `<domain type='qemu'><name>${domain}</name><uuid>${uuid}</uuid></domain>`,
    disks: written,
    durationMs: 0,
    toolVersion: 'test',
  };
  await repo.writePoint(point);
  return { repoDir, repo, point };
}

/** sha256 of every object in the repository folder, by relative path (to prove it unchanged). */
export function hashTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(root, p), createHash('sha256').update(fs.readFileSync(p)).digest('hex'));
    }
  };
  walk(root);
  return out;
}
