// `virtback backup-serve`: the disks of one point of the chunk repository as
// read-only NBD exports named by their targets (vda, sdb), sparse (zero chunks
// are holes) and with base:allocation block status, for qemu-img, nbdcopy,
// nbdfuse/guestmount, or as the backing files of an instant restore.

import type { PointRecord } from '../chunkstore/repo.js';
import type { ChunkRepository } from '../chunkstore/repo.js';
import { pointDiskSource } from '../chunkstore/source.js';
import { virErr } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { BlockSource } from '../nbd/block-source.js';
import { ChunkCodecPool, pooledChunkReader } from './chunk-codec-pool.js';
import { NbdServer, type NbdListen, type NbdServerLimits, type ServedExport } from '../nbd/server.js';

export interface ServePointOptions {
  domain: string;
  /** point id (default: the newest point of the domain) */
  point?: string;
  listen: NbdListen;
  limits?: NbdServerLimits;
  log?: Logger;
}

export interface ServedDisk {
  target: string;
  size: number;
  /** the NBD URI a client opens, e.g. nbd+unix:///vda?socket=/run/x.sock */
  uri: string;
}

export interface ServingPoint {
  point: PointRecord;
  disks: ServedDisk[];
  server: NbdServer;
  close(): Promise<void>;
}

/** The point `id` of `domain`, or its newest. */
export async function choosePoint(repo: ChunkRepository, domain: string, id: string | undefined): Promise<PointRecord> {
  if (id !== undefined) return repo.readPoint(domain, id);
  const last = (await repo.listPoints(domain)).at(-1);
  if (last === undefined) throw virErr('NO_DOMAIN', 'STORAGE', `the repository has no point of domain '${domain}'`);
  return last;
}

/** The NBD URI of export `name` at a listening address (the syntax of the NBD URI spec, which QEMU and libnbd read). */
export function nbdUri(at: { socket: string } | { host: string; port: number }, name: string): string {
  const exp = encodeURIComponent(name);
  if ('socket' in at) return `nbd+unix:///${exp}?socket=${encodeURI(at.socket)}`;
  const host = at.host.includes(':') ? `[${at.host}]` : at.host;
  return `nbd://${host}:${at.port}/${exp}`;
}

/** Serves every disk of the point until close(). */
export async function servePoint(repo: ChunkRepository, opts: ServePointOptions): Promise<ServingPoint> {
  const point = await choosePoint(repo, opts.domain, opts.point);
  const exports = new Map<string, ServedExport>();
  const opened: BlockSource[] = [];
  // decoding (zstd, AES-GCM, the re-hash) on every core, a few chunks ahead of a sequential
  // reader: memory stays bounded by each export's cache (at least 2 × read-ahead + 2 chunks)
  const pool = ChunkCodecPool.start(repo.codecParams());
  const readChunk = pooledChunkReader(pool, repo);
  try {
    for (const d of point.disks) {
      const source = await pointDiskSource(repo, point, d.target, { readChunk, readAhead: pool.size + 1 });
      opened.push(source);
      // The chunk is the unit a read decodes; a client that reads in chunks reads each once.
      const cs = source.index.chunkSize;
      exports.set(d.target, { source, preferredBlockSize: cs >= 512 && cs <= 1 << 25 && (cs & (cs - 1)) === 0 ? cs : 4096 });
    }
    const server = new NbdServer(exports, opts.limits ?? {}, (opts.log ?? silentLogger).child({ domain: opts.domain, point: point.id }));
    const at = await server.listen(opts.listen);
    return {
      point,
      disks: point.disks.map((d) => ({ target: d.target, size: d.size, uri: nbdUri(at, d.target) })),
      server,
      close: () => server.close().finally(() => pool.close()),
    };
  } catch (e) {
    for (const s of opened) await s.close?.();
    await pool.close();
    throw e;
  }
}
