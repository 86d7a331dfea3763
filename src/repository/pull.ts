// Pull-mode backup client: read a backup job's NBD export and write a backup
// file. A full backup becomes a sparse raw file or a qcow2 without backing; an
// incremental one becomes a qcow2 overlay on the previous backup holding exactly
// the dirty ranges, widened to whole qcow2 clusters. qcow2 files are written by
// our own writer (src/qcow2/), appending clusters as they arrive. A full
// pull also checksums the content while it streams past (the manifest's
// sha256-blocks-1MiB), so the manifest needs no second read.

import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { toVirError, virErr } from '../errors.js';
import { NbdClient, type NbdTarget, type NbdTlsOptions } from '../nbd/client.js';
import { copyToFile, copyToSink, type CopiedRange, type CopyOptions, type CopyResult } from '../nbd/copy.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_DIRTY_BITMAP, NBD_FLAG_CAN_MULTI_CONN } from '../nbd/protocol.js';
import { BlockDigests, CHECKSUM_BLOCK, blockDigest } from './checksum.js';
import { hashBlocks, type HashPool } from './hash-pool.js';
import { CLUSTER_SIZE, type Qcow2Backing } from '../qcow2/layout.js';
import { Qcow2Writer } from '../qcow2/writer.js';
import { imageInfo } from './tools.js';

export interface PullProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface PullBackupOptions {
  nbd: NbdTarget;
  /** The export speaks TLS (<server tls='yes'>): x509 credentials for NBD_OPT_STARTTLS. */
  tls?: NbdTlsOptions;
  exportName: string;
  /** Bitmap of an incremental export: its name ('backup-vda') or context ('qemu:dirty-bitmap:backup-vda'). */
  bitmap?: string;
  /** The new backup file; must not exist. */
  output: string;
  format: 'qcow2' | 'raw';
  /** The previous backup of the chain, the new overlay's backing file (incremental only, qcow2 only). */
  parentBackup?: string;
  /** Reads in flight, over all connections (default 16). */
  concurrency?: number;
  /** Connections to open when the export advertises multi-conn (default 1: more measured slower against qemu-nbd, see docs/performance.md). */
  connections?: number;
  onProgress?: (p: PullProgress) => void;
  /** Threads hashing the full pull's checksum blocks (default: the process's shared pool, or this thread on 2 cores or fewer). */
  hashPool?: Pick<HashPool, 'blockDigests'>;
}

export interface PullBackupResult {
  output: string;
  /** Export (= disk) size. */
  size: number;
  bytesRead: number;
  /** Ranges considered: the whole disk for a full backup, the dirty ranges for an incremental; zero=true ranges were not read. */
  ranges: CopiedRange[];
  /** Content checksum blocks of a full pull, computed as the data streamed past (incrementals: undefined). */
  digests?: BlockDigests;
  /** Connections the data was read over. */
  connections: number;
}

export async function pullBackup(opts: PullBackupOptions): Promise<PullBackupResult> {
  const output = path.resolve(opts.output);
  if (opts.format !== 'qcow2' && opts.format !== 'raw') throw virErr('INVALID_ARG', 'STORAGE', `pull backup format '${String(opts.format)}' is not 'qcow2' or 'raw'`);
  if (opts.bitmap !== undefined && opts.parentBackup === undefined) {
    throw virErr('INVALID_ARG', 'STORAGE', `incremental pull backup '${output}' from bitmap '${opts.bitmap}' needs parentBackup (the previous backup of the chain)`);
  }
  if (opts.parentBackup !== undefined && opts.bitmap === undefined) {
    throw virErr('INVALID_ARG', 'STORAGE', `pull backup '${output}' has parentBackup '${opts.parentBackup}' but no bitmap: a full backup has no parent`);
  }
  if (opts.parentBackup !== undefined && opts.format !== 'qcow2') {
    throw virErr('INVALID_ARG', 'STORAGE', `incremental pull backup '${output}' must be qcow2 (a raw file cannot have a backing file)`);
  }
  const concurrency = opts.concurrency ?? 16;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw virErr('INVALID_ARG', 'STORAGE', `concurrency must be a positive integer, got ${concurrency}`);
  const wantConnections = opts.connections ?? 1;
  if (!Number.isInteger(wantConnections) || wantConnections < 1) throw virErr('INVALID_ARG', 'STORAGE', `connections must be a positive integer, got ${wantConnections}`);
  const dirty = opts.bitmap === undefined ? undefined : opts.bitmap.startsWith(CONTEXT_QEMU_DIRTY_BITMAP) ? opts.bitmap : `${CONTEXT_QEMU_DIRTY_BITMAP}${opts.bitmap}`;
  const exists = await fs.lstat(output).then(
    () => true,
    () => false,
  );
  if (exists) throw virErr('INVALID_ARG', 'STORAGE', `pull backup output '${output}' already exists`);

  const connectOpts = { exportName: opts.exportName, maxInFlight: 64, metaContexts: [CONTEXT_BASE_ALLOCATION, ...(dirty ? [dirty] : [])], ...(opts.tls ? { tls: opts.tls } : {}) };
  const source = await NbdClient.connect(opts.nbd, connectOpts);
  const extra: NbdClient[] = [];
  let created = false;
  try {
    // Several connections only where the server promises they see the same data (NBD_FLAG_CAN_MULTI_CONN).
    const n = source.flags & NBD_FLAG_CAN_MULTI_CONN ? wantConnections : 1;
    for (let i = 1; i < n; i++) extra.push(await NbdClient.connect(opts.nbd, { exportName: opts.exportName, maxInFlight: 64, ...(opts.tls ? { tls: opts.tls } : {}) }));
    // 0600 like push targets; copyToFile and the qcow2 writer keep the mode of the file made here.
    await (await fs.open(output, 'wx', 0o600)).close();
    created = true;
    const digests = dirty === undefined ? new BlockDigests(source.size, CHECKSUM_BLOCK) : undefined;
    const copyOpts: CopyOptions = {
      concurrency,
      connections: extra,
      onProgress: opts.onProgress,
      ...(dirty === undefined ? {} : { onlyDirty: dirty }),
      ...(digests ? checksumHooks(digests, opts.hashPool) : {}),
    };
    const r = opts.format === 'raw' ? await copyToFile(source, output, copyOpts) : await copyToQcow2(source, output, opts, copyOpts);
    await Promise.all([source, ...extra].map((c) => c.disconnect()));
    return { output, size: source.size, bytesRead: r.bytesRead, ranges: r.ranges, connections: 1 + extra.length, ...(digests ? { digests } : {}) };
  } catch (e) {
    for (const c of [source, ...extra]) c.destroy();
    if (created) await fs.rm(output, { force: true });
    throw toVirError(e, 'STORAGE');
  }
}

/**
 * Cores at or below which a pull hashes on its own thread: on 2 cores the pool's
 * threads compete with the pull and the server, and the window, just written by
 * the socket read on this core, is read again on another. Measured here, 1 GiB
 * raw pull, alternating runs: 2.9-3.8 s and 1.9-2.1 s of CPU inline vs 4.0-4.1 s
 * and 2.3-2.7 s through the pool (the CLI's event loop serves nobody else).
 */
const INLINE_HASH_CORES = 2;

/**
 * Copy hooks that fill `d` from the 1 MiB windows as they are read (window =
 * checksum block), hashed on the pool's threads while the window is written.
 */
function checksumHooks(d: BlockDigests, pool?: Pick<HashPool, 'blockDigests'>): Pick<CopyOptions, 'onData' | 'onZero' | 'chunkSize'> {
  const hash = pool
    ? (data: Buffer) => pool.blockDigests(data, d.blockSize)
    : os.availableParallelism() <= INLINE_HASH_CORES
      ? (data: Buffer) => Promise.resolve([blockDigest(data)])
      : (data: Buffer) => hashBlocks(data, d.blockSize);
  return {
    chunkSize: d.blockSize,
    onData: async (offset, data) => d.set(offset / d.blockSize, (await hash(data))[0]!),
    onZero: (offset) => d.setZero(offset / d.blockSize),
  };
}

/**
 * A full pull's standalone qcow2, or an incremental's overlay on the parent
 * backup. An overlay's cluster hides the parent's whole cluster, so dirty
 * ranges are widened to whole clusters (the export holds the whole disk).
 */
async function copyToQcow2(source: NbdClient, output: string, opts: PullBackupOptions, copyOpts: CopyOptions): Promise<CopyResult> {
  const backing = opts.parentBackup === undefined ? undefined : await backingOf(source, output, opts.parentBackup, opts.exportName);
  const sink = await Qcow2Writer.create(output, { size: source.size, ...(backing ? { backing } : {}) });
  try {
    return await copyToSink(source, sink, { ...copyOpts, ...(backing ? { dirtyAlignment: CLUSTER_SIZE } : {}) });
  } finally {
    await sink.close();
  }
}

/** The incremental's backing file: the parent backup, checked to be the same disk size. */
async function backingOf(source: NbdClient, output: string, parentBackup: string, exportName: string): Promise<Qcow2Backing> {
  const parent = path.resolve(parentBackup);
  const info = await imageInfo(parent);
  if (info['virtual-size'] !== source.size) {
    throw virErr('INVALID_ARG', 'STORAGE', `parent backup '${parent}' has virtual size ${info['virtual-size']}, but export '${exportName}' has ${source.size}`);
  }
  // Relative when side by side, so the backup folder can move as a whole.
  return { file: path.dirname(parent) === path.dirname(output) ? path.basename(parent) : parent, format: info.format };
}
