// `virtback backup DOM --repo DIR`: every disk at one instant through a pull
// job with a new checkpoint of this repository, read into chunks, then one
// point record (written last: a point exists only when complete). Everything
// goes through the public Domain handle, so the flow works over any Driver
// (in-process QEMU, virtbackd, a libvirt daemon).

import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Domain } from '../api/public.js';
import type { ChunkId, ChunkRepository, PointRecord } from '../chunkstore/repo.js';
import { withDomainLease, type DomainLease, type LeaseOptions } from '../chunkstore/lease.js';
import { isVirError, toVirError, virErr } from '../errors.js';
import { errField, silentLogger, type Logger } from '../log.js';
import { NbdClient, type NbdTarget } from '../nbd/client.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_DIRTY_BITMAP } from '../nbd/protocol.js';
import { awaitedLater } from '../util/awaited-later.js';
import { parseBackupXML } from '../xml/backup.js';
import { domainDiskRefs } from '../xml/domain.js';
import { attr, firstChild, parseXml } from '../xml/tree.js';
import { backupXml, checkpointName, checkpointXml, decideLevel, type BaseCheckpointState, type LevelDecision, type RequestedLevel } from './plan.js';
import { readDisk, type DiskProgress } from './read-disk.js';
import { ChunkCodecPool, pooledChunkWriter, type ChunkWriter } from './chunk-codec-pool.js';
import { deleteRepoCheckpoints } from './checkpoints.js';
import { openForBackup } from './offline.js';
import { endStaleJobs, markRunDir, RUN_DIR_PREFIX } from './stale-jobs.js';

export const TOOL_VERSION = 'virtback 0.1.0';

export interface VmBackupOptions {
  level: RequestedLevel;
  quiesce?: boolean;
  /** disk targets not to back up */
  exclude?: readonly string[];
  /** chunks in flight per disk (default 8) */
  concurrency?: number;
  onProgress?: (disk: string, p: DiskProgress) => void;
  log?: Logger;
  /** the run's instant (tests) */
  now?: () => Date;
  /** this host's claim on the domain in the repository (docs/repository.md, "Several hosts") */
  lease?: LeaseOptions;
}

export interface VmBackupResult {
  pointId: string;
  level: 'full' | 'inc';
  reason: string;
  base: string | null;
  checkpoint: string;
  /** the domain was shut off: a paused QEMU opened its images for this run (offline.ts) */
  offline: boolean;
  bytesRead: number;
  bytesNew: number;
  durationMs: number;
  disks: Array<{ target: string; size: number; bytesRead: number; bytesNew: number; chunksRead: number }>;
}

/** The domain's disks a run backs up (writable, with a source, not excluded) and the ones it skips. */
export function selectDisks(domainXml: string, exclude: readonly string[]): { disks: string[]; skipped: string[] } {
  const refs = domainDiskRefs(parseXml(domainXml));
  for (const x of exclude) {
    if (!refs.some((r) => r.target === x)) throw virErr('INVALID_ARG', 'STORAGE', `--exclude ${x}: the domain has no disk '${x}'`);
  }
  const usable = refs.filter((r) => r.device === 'disk' && !r.readonly && r.source !== null);
  const disks = usable.filter((r) => !exclude.includes(r.target)).map((r) => r.target);
  if (disks.length === 0) throw virErr('OPERATION_INVALID', 'STORAGE', 'the domain has no disk left to back up');
  return { disks, skipped: usable.filter((r) => exclude.includes(r.target)).map((r) => r.target) };
}

/** What the domain says about checkpoint `name` (null name: nothing to ask). */
async function checkpointState(dom: Domain, name: string | null): Promise<BaseCheckpointState | null> {
  if (name === null) return null;
  // asked first, also when the checkpoint exists: on QEMU this query refreshes the checkpoints'
  // consistency from the live bitmaps, so a bitmap removed behind our back shows as inconsistent
  const unknownBitmaps = await dom.listUnknownBitmaps().then(
    (l) => l.map((b) => `${b.disk}/${b.bitmap}`),
    () => [] as string[], // a libvirt host has no such call: nothing known to be orphaned
  );
  try {
    const xml = await (await dom.checkpointLookupByName(name)).getXMLDesc({ noDomain: true });
    const mark = firstChild(parseXml(xml), 'inconsistent');
    return { exists: true, inconsistent: mark === null ? null : (attr(mark, 'reason') ?? 'marked inconsistent'), unknownBitmaps };
  } catch (e) {
    if (isVirError(e, 'NO_DOMAIN_CHECKPOINT')) return { exists: false, inconsistent: null, unknownBitmaps };
    throw e;
  }
}

/**
 * The base point's disk indexes, once the run's lease claim names them (so
 * prune keeps them and gc keeps their chunks while the run lives). No request
 * per chunk: the chunks an index names are trusted to be there (verify checks).
 */
async function baseIndexes(repo: ChunkRepository, base: PointRecord, lease: DomainLease): Promise<{ indexes: Map<string, ChunkId[]>; missing: string | null }> {
  const indexes = new Map<string, ChunkId[]>();
  if (!(await lease.setBase(base))) return { indexes, missing: `point ${base.id} was removed (pruned) meanwhile` };
  for (const d of base.disks) {
    try {
      indexes.set(d.target, (await repo.readIndex(d.index)).chunks);
    } catch (e) {
      if (isVirError(e, 'NO_STORAGE_VOL')) return { indexes, missing: `index ${d.index} of point ${base.id} is missing from the repository` };
      throw e;
    }
  }
  return { indexes, missing: null };
}

interface Decided extends LevelDecision {
  basePoint: PointRecord | null;
  baseIndexes: Map<string, ChunkId[]>;
}

async function decide(dom: Domain, repo: ChunkRepository, level: RequestedLevel, disks: string[], lease: DomainLease): Promise<Decided> {
  const points = await repo.listPoints(dom.name);
  const last = points.at(-1) ?? null;
  const cp = await checkpointState(dom, last?.checkpoint?.name ?? null);
  const basePoint = last === null ? null : { id: last.id, domainUuid: last.domain.uuid, checkpoint: last.checkpoint?.name ?? null, disks: last.disks, verifyOk: last.verify?.ok ?? null };
  const d = decideLevel(level, dom.uuid, basePoint, cp, disks.map((target) => ({ target })));
  if (d.level === 'full' || last === null) return { ...d, basePoint: null, baseIndexes: new Map() };
  const got = await baseIndexes(repo, last, lease);
  if (got.missing === null) return { ...d, basePoint: last, baseIndexes: got.indexes };
  if (level === 'inc') throw virErr('OPERATION_INVALID', 'STORAGE', `cannot back up incrementally: ${got.missing}`);
  return { level: 'full', base: null, reason: got.missing, basePoint: null, baseIndexes: new Map() };
}

/** Sortable, unique per domain: the run's instant plus a little randomness. */
function pointId(at: Date): string {
  return `${at.toISOString()}-${randomBytes(2).toString('hex')}`;
}

export async function backupDomain(dom: Domain, repo: ChunkRepository, repoId: string, opts: VmBackupOptions): Promise<VmBackupResult> {
  const log = (opts.log ?? silentLogger).child({ domain: dom.name, repo: repoId.slice(0, 8) });
  const started = Date.now();
  const at = opts.now?.() ?? new Date();
  try {
    // the lease first: a second host must not even start this domain paused for an offline run
    const r = await withDomainLease(repo, dom.name, { ...opts.lease, log }, async (lease) => {
      const open = await openForBackup(dom, log);
      try {
        return { ...(await runBackup(dom, repo, repoId, at, opts, log, lease)), offline: open.offline };
      } finally {
        await open.close();
      }
    });
    log.info({ point: r.pointId, level: r.level, reason: r.reason, offline: r.offline, bytesRead: r.bytesRead, bytesNew: r.bytesNew, durationMs: r.durationMs }, 'backup complete');
    return r;
  } catch (e) {
    log.error({ ...errField(e), durationMs: Date.now() - started }, 'backup failed');
    throw toVirError(e, 'STORAGE');
  }
}

async function runBackup(dom: Domain, repo: ChunkRepository, repoId: string, at: Date, opts: VmBackupOptions, log: Logger, lease: DomainLease): Promise<Omit<VmBackupResult, 'offline'>> {
  const started = Date.now();
  // independent reads, one round trip each through a daemon: asked together
  const [domainXml, liveXml] = await Promise.all([dom.getXMLDesc({ inactive: true }), dom.getXMLDesc(), endStaleJobs(dom, log)]);
  const { disks, skipped } = selectDisks(liveXml, opts.exclude ?? []);
  const d = await decide(dom, repo, opts.level, disks, lease);
  const name = checkpointName(repoId, at);
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), RUN_DIR_PREFIX));
  await markRunDir(tmp);
  const socket = path.join(tmp, 'nbd.sock');
  const scratch = new Map(disks.map((t) => [t, path.join(tmp, `${t}.scratch`)]));
  let jobId = 0;
  let created = false;
  let ok = false;
  let closed: Promise<void> | null = null;
  const pool = ChunkCodecPool.start(repo.codecParams());
  // chunks unsynced until writePoint syncs them all at once (a point never names a chunk not yet durable)
  const run = repo.batchedRun();
  try {
    const bxml = backupXml({ checkpoint: name, incremental: d.base?.checkpoint ?? null, socket, scratch, skipped });
    const cxml = checkpointXml(name, disks, skipped, `virtback repository ${repoId}`);
    jobId = await dom.backupBegin(bxml, cxml, { quiesce: opts.quiesce === true });
    created = true;
    // the base's chunks are known to be stored: no request for them (the lease keeps them)
    const known = new Set([...d.baseIndexes.values()].flat());
    const pulled = await pullDisks(dom, repo, jobId, d, opts, pooledChunkWriter(pool, run, known));
    // every chunk is encoded: the pool's end overlaps the job's end (a sync of the chunks here
    // too gained nothing: its fsyncs and those of the job's end queue for the same journal)
    closed = awaitedLater(pool.close());
    const ended = await dom.backupEnd(jobId);
    jobId = 0;
    if (ended !== 1) throw virErr('OPERATION_FAILED', 'STORAGE', `backup job of '${dom.name}' did not complete`);
    const cpXml = await (await dom.checkpointLookupByName(name)).getXMLDesc({ noDomain: true });
    const id = pointId(at);
    const entries = await writeIndexes(repo, dom.uuid, id, pulled.disks);
    const reason = pulled.reason;
    const durationMs = Date.now() - started;
    await run.flushChunks(); // before the lease check: the sync may take a while
    lease.check();
    await run.writePoint({
      id,
      domain: { name: dom.name, uuid: dom.uuid },
      time: at.toISOString(),
      level: pulled.level,
      base: pulled.level === 'inc' ? (d.basePoint?.id ?? null) : null,
      reason,
      checkpoint: { name, xml: cpXml },
      domainXml,
      disks: entries,
      durationMs,
      toolVersion: TOOL_VERSION,
    });
    ok = true;
    await deleteRepoCheckpoints(dom, repoId, name, log);
    const sum = (k: 'bytesRead' | 'bytesNew') => pulled.disks.reduce((n, x) => n + x[k], 0);
    return {
      pointId: id,
      level: pulled.level,
      reason,
      base: pulled.level === 'inc' ? (d.basePoint?.id ?? null) : null,
      checkpoint: name,
      bytesRead: sum('bytesRead'),
      bytesNew: sum('bytesNew'),
      durationMs,
      disks: pulled.disks.map(({ target, size, bytesRead, bytesNew, chunksRead }) => ({ target, size, bytesRead, bytesNew, chunksRead })),
    };
  } finally {
    await (closed ?? pool.close());
    // a failed run's deferred chunks are settled too, so the store it shares (a daemon's) holds no
    // pending writes or upload error of it into the next run; they are unreferenced until gc
    if (!ok) await run.flushChunks().catch((e: unknown) => log.warn(errField(e), 'settling the chunks of the failed run failed'));
    if (jobId !== 0) await dom.backupEnd(jobId).catch((e: unknown) => log.warn(errField(e), 'ending the backup job failed'));
    // a checkpoint no point refers to would only make the next run's bitmaps bigger
    if (created && !ok) await dom.checkpointLookupByName(name).then((c) => c.delete()).catch((e: unknown) => log.warn(errField(e), `deleting checkpoint ${name} of the failed run failed`));
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/** Each disk's index of point `id` (in parallel), as the point record lists them. */
async function writeIndexes(repo: ChunkRepository, uuid: string, id: string, disks: PulledDisk[]): Promise<PointRecord['disks']> {
  return Promise.all(disks.map(async (p) => {
    const index = await repo.writeIndex(uuid, id, { target: p.target, size: p.size, chunkSize: repo.chunkSize, chunks: p.chunks });
    return { target: p.target, size: p.size, index, bytesRead: p.bytesRead, bytesNew: p.bytesNew };
  }));
}

interface PulledDisk {
  target: string;
  size: number;
  chunks: ChunkId[];
  bytesRead: number;
  bytesNew: number;
  chunksRead: number;
}

/** Read every disk of the job; a disk resized since the base is read in full (its export is the whole disk). */
async function pullDisks(
  dom: Domain,
  repo: ChunkRepository,
  jobId: number,
  d: Decided,
  opts: VmBackupOptions,
  writeChunk: ChunkWriter,
): Promise<{ disks: PulledDisk[]; level: 'full' | 'inc'; reason: string }> {
  const job = parseBackupXML(await dom.backupGetXMLDesc(jobId), { internal: true });
  const server = job.server;
  if (server === null || server.socket === null) throw virErr('INTERNAL_ERROR', 'STORAGE', `backup job ${jobId} has no unix socket server`);
  const nbd: NbdTarget = { socketPath: server.socket };
  const out: PulledDisk[] = [];
  const resized: string[] = [];
  for (const jd of job.disks.filter((x) => x.backup)) {
    const bitmap = d.level === 'inc' ? jd.exportbitmap : null;
    const contexts = [CONTEXT_BASE_ALLOCATION, ...(bitmap === null ? [] : [`${CONTEXT_QEMU_DIRTY_BITMAP}${bitmap}`])];
    const client = await NbdClient.connect(nbd, { exportName: jd.exportname ?? jd.name, metaContexts: contexts });
    try {
      let base = d.baseIndexes.get(jd.name) ?? null;
      const baseSize = d.basePoint?.disks.find((x) => x.target === jd.name)?.size;
      if (base !== null && baseSize !== client.size) {
        resized.push(`${jd.name} (${baseSize} → ${client.size} bytes)`);
        base = null;
      }
      const r = await readDisk({ client, repo, chunkSize: repo.chunkSize, base, bitmap: base === null ? null : bitmap, concurrency: opts.concurrency, writeChunk, onProgress: (p) => opts.onProgress?.(jd.name, p) });
      out.push({ target: jd.name, size: client.size, ...r });
      await client.disconnect();
    } catch (e) {
      client.destroy();
      throw e;
    }
  }
  if (d.level === 'inc' && resized.length === out.length) return { disks: out, level: 'full', reason: `every disk resized since point ${d.basePoint?.id}: ${resized.join(', ')}` };
  const reason = resized.length === 0 ? d.reason : `${d.reason}; read in full, resized: ${resized.join(', ')}`;
  return { disks: out, level: d.level, reason };
}
