// `virtback restore --repo DIR DOM`: every disk of a point as a sparse
// standalone image, each chunk re-hashed as it is read (readChunk), written to
// a temporary name and renamed only when complete; plus the point's domain
// definition pointed at the new images (and, with a new name, defined through
// the Driver under a new UUID and MACs).

import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Connect } from '../api/public.js';
import type { ChunkRepository, DiskIndex } from '../chunkstore/repo.js';
import { ZERO_CHUNK } from '../chunkstore/repo.js';
import { toVirError, virErr } from '../errors.js';
import { nonZeroRuns } from '../nbd/copy.js';
import { CLUSTER_SIZE } from '../qcow2/layout.js';
import { Qcow2Writer } from '../qcow2/writer.js';
import { runTool } from '../repository/tools.js';
import { forEachDataChunk, withPooledFetch, type ChunkFetch } from './restore-chunks.js';
import { checkTargetDevices, writeDevice, type TargetDevices } from './restore-device.js';
import { macFromBytes, rewriteDomainXml, type RestoredDisk } from './domain-rewrite.js';
import { choosePoint } from './serve.js';
import type { DiskProgress } from './read-disk.js';

export interface VmRestoreOptions {
  domain: string;
  /** point id (default: the newest point of the domain) */
  point?: string;
  outputDir: string;
  format: 'qcow2' | 'raw';
  /** disks written onto host block devices (target → device) instead of into images */
  devices?: TargetDevices;
  /** define the restored domain under this new name (needs `conn`) */
  define?: string;
  /** chunks fetched and decoded at once (default RESTORE_CONCURRENCY, 8) */
  concurrency?: number;
  onProgress?: (disk: string, p: DiskProgress) => void;
}

export interface VmRestoreResult {
  pointId: string;
  /** `block`: written onto the block device `path` (raw) */
  disks: Array<{ target: string; path: string; format: 'qcow2' | 'raw'; size: number; block: boolean }>;
  /** the rewritten definition, also written to `xmlPath` */
  domainXml: string;
  xmlPath: string;
  /** the new domain's name and UUID when defined */
  defined: { name: string; uuid: string } | null;
}

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

/** Write the index's chunks into a new sparse raw file `file` (must not exist). */
async function writeRaw(index: DiskIndex, file: string, fetch: ChunkFetch, onProgress?: (p: DiskProgress) => void): Promise<void> {
  const fh = await fs.open(file, 'wx', 0o600);
  try {
    await fh.truncate(index.size);
    let bytesDone = index.size - index.chunks.reduce((n, id, i) => (id === ZERO_CHUNK ? n : n + Math.min(index.chunkSize, index.size - i * index.chunkSize)), 0);
    onProgress?.({ bytesDone, bytesTotal: index.size });
    await forEachDataChunk(index, fetch, async (data, offset) => {
      for (const [s, e] of nonZeroRuns(data)) await fh.write(data, s, e - s, offset + s);
      bytesDone += data.length;
      onProgress?.({ bytesDone, bytesTotal: index.size });
    });
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * Write the index's chunks as a new qcow2 `file` in one pass (the qcow2
 * writer of backup-pull): all-zero clusters are not allocated, and the file
 * is synced before and after its header goes in.
 */
async function writeQcow2(index: DiskIndex, file: string, fetch: ChunkFetch, onProgress?: (p: DiskProgress) => void): Promise<void> {
  const qcow2 = await Qcow2Writer.create(file, { size: index.size });
  try {
    let bytesDone = index.size - index.chunks.reduce((n, id, i) => (id === ZERO_CHUNK ? n : n + Math.min(index.chunkSize, index.size - i * index.chunkSize)), 0);
    onProgress?.({ bytesDone, bytesTotal: index.size });
    await forEachDataChunk(index, fetch, async (data, offset) => {
      await Promise.all(nonZeroRuns(data, CLUSTER_SIZE).map(([s, e]) => qcow2.write(offset + s, data.subarray(s, e))));
      bytesDone += data.length;
      onProgress?.({ bytesDone, bytesTotal: index.size });
    });
    await qcow2.finish();
  } finally {
    await qcow2.close();
  }
}

/** One disk into `final` via a temporary name; qcow2 directly, or converted from a sparse raw (-S keeps holes) when its size is not whole sectors. */
async function restoreDisk(index: DiskIndex, final: string, format: 'qcow2' | 'raw', fetch: ChunkFetch, onProgress?: (p: DiskProgress) => void): Promise<void> {
  const tmpRaw = `${final}.part-raw`;
  const tmpOut = `${final}.part`;
  try {
    if (format === 'qcow2' && index.size % 512 === 0) {
      await writeQcow2(index, tmpOut, fetch, onProgress);
      await fs.rename(tmpOut, final);
      return;
    }
    await writeRaw(index, tmpRaw, fetch, onProgress);
    if (format === 'raw') {
      await fs.rename(tmpRaw, final);
      return;
    }
    await runTool('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-S', '4k', tmpRaw, tmpOut], `converting restored disk ${index.target} to qcow2`);
    await fs.chmod(tmpOut, 0o600);
    await fs.rename(tmpOut, final);
  } finally {
    await fs.rm(tmpRaw, { force: true });
    await fs.rm(tmpOut, { force: true });
  }
}

export async function restoreDomain(repo: ChunkRepository, conn: Connect | null, opts: VmRestoreOptions): Promise<VmRestoreResult> {
  if (opts.define !== undefined && conn === null) throw virErr('INVALID_ARG', 'STORAGE', 'defining the restored domain needs a connection');
  const point = await choosePoint(repo, opts.domain, opts.point);
  const dir = path.resolve(opts.outputDir);
  await fs.mkdir(dir, { recursive: true });
  const base = opts.define ?? point.domain.name;
  const devices = opts.devices ?? new Map<string, string>();
  await checkTargetDevices(point, devices);
  const plan = point.disks.map((d) => {
    const dev = devices.get(d.target);
    if (dev !== undefined) return { ...d, path: dev, format: 'raw' as const, block: true };
    return { ...d, path: path.join(dir, `${base}-${d.target}.${opts.format}`), format: opts.format, block: false };
  });
  const xmlPath = path.join(dir, `${base}.xml`);
  for (const p of [...plan.filter((x) => !x.block).map((x) => x.path), xmlPath]) {
    if (await exists(p)) throw virErr('INVALID_ARG', 'STORAGE', `restore output '${p}' already exists`);
  }
  const done: string[] = [];
  try {
    await withPooledFetch(repo, opts.concurrency, async (fetch) => {
      for (const d of plan) {
        const index = await repo.readIndex(d.index);
        const progress = (p: DiskProgress) => opts.onProgress?.(d.target, p);
        // a device's old content is gone once written to: nothing to remove on failure
        if (d.block) await writeDevice(index, d.path, fetch, progress);
        else {
          await restoreDisk(index, d.path, d.format, fetch, progress);
          done.push(d.path);
        }
      }
    });
    const restored = new Map<string, RestoredDisk>(plan.map((d) => [d.target, { path: d.path, format: d.format, block: d.block }]));
    const identity = opts.define === undefined ? null : { name: opts.define, uuid: randomUUID(), mac: () => macFromBytes(randomBytes(3)) };
    const domainXml = rewriteDomainXml(point.domainXml, restored, identity);
    await fs.writeFile(`${xmlPath}.part`, domainXml, { mode: 0o600 });
    await fs.rename(`${xmlPath}.part`, xmlPath);
    done.push(xmlPath);
    let defined: VmRestoreResult['defined'] = null;
    if (identity !== null) {
      const dom = await conn!.defineXML(domainXml);
      defined = { name: dom.name, uuid: dom.uuid };
    }
    return { pointId: point.id, disks: plan.map((d) => ({ target: d.target, path: d.path, format: d.format, size: d.size, block: d.block })), domainXml, xmlPath, defined };
  } catch (e) {
    // half a VM is no restore: remove what this run wrote
    for (const f of done) await fs.rm(f, { force: true });
    await fs.rm(`${xmlPath}.part`, { force: true });
    throw toVirError(e, 'STORAGE');
  }
}
