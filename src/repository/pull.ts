// Pull-mode backup client: read a backup job's NBD export and write a backup
// file. A full backup becomes a sparse raw file or a qcow2 without backing; an
// incremental one becomes a qcow2 overlay on the previous backup holding exactly
// the dirty ranges. qcow2 files are written through a writable qemu-nbd export
// of the new image, so QEMU lays out the format and we only speak NBD.

import fs from 'node:fs/promises';
import path from 'node:path';
import { toVirError, virErr } from '../errors.js';
import { NbdClient, type NbdTarget } from '../nbd/client.js';
import { copyToFile, nonZeroRuns, planCopy, type CopiedRange } from '../nbd/copy.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_DIRTY_BITMAP } from '../nbd/protocol.js';
import { imageInfo, runTool, startExport } from './tools.js';

export interface PullProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface PullBackupOptions {
  nbd: NbdTarget;
  exportName: string;
  /** Bitmap of an incremental export: its name ('backup-vda') or context ('qemu:dirty-bitmap:backup-vda'). */
  bitmap?: string;
  /** The new backup file; must not exist. */
  output: string;
  format: 'qcow2' | 'raw';
  /** The previous backup of the chain, the new overlay's backing file (incremental only, qcow2 only). */
  parentBackup?: string;
  /** Reads in flight (default 4). */
  concurrency?: number;
  onProgress?: (p: PullProgress) => void;
}

export interface PullBackupResult {
  output: string;
  /** Export (= disk) size. */
  size: number;
  bytesRead: number;
  /** Ranges considered: the whole disk for a full backup, the dirty ranges for an incremental; zero=true ranges were not read. */
  ranges: CopiedRange[];
}

const CHUNK = 1 << 20;

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
  const concurrency = opts.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw virErr('INVALID_ARG', 'STORAGE', `concurrency must be a positive integer, got ${concurrency}`);
  const dirty = opts.bitmap === undefined ? undefined : opts.bitmap.startsWith(CONTEXT_QEMU_DIRTY_BITMAP) ? opts.bitmap : `${CONTEXT_QEMU_DIRTY_BITMAP}${opts.bitmap}`;
  const exists = await fs.lstat(output).then(
    () => true,
    () => false,
  );
  if (exists) throw virErr('INVALID_ARG', 'STORAGE', `pull backup output '${output}' already exists`);

  const source = await NbdClient.connect(opts.nbd, { exportName: opts.exportName, metaContexts: [CONTEXT_BASE_ALLOCATION, ...(dirty ? [dirty] : [])] });
  let created = false;
  try {
    // 0600 like push targets; qemu-img create and copyToFile keep the mode of the file made here.
    await (await fs.open(output, 'wx', 0o600)).close();
    created = true;
    if (opts.format === 'raw') {
      const r = await copyToFile(source, output, { concurrency, onProgress: opts.onProgress });
      await source.disconnect();
      return { output, size: r.size, bytesRead: r.bytesRead, ranges: r.ranges };
    }
    const createArgs = ['create', '-q', '-f', 'qcow2'];
    if (opts.parentBackup !== undefined) {
      const parent = path.resolve(opts.parentBackup);
      const info = await imageInfo(parent);
      if (info['virtual-size'] !== source.size) {
        throw virErr('INVALID_ARG', 'STORAGE', `parent backup '${parent}' has virtual size ${info['virtual-size']}, but export '${opts.exportName}' has ${source.size}`);
      }
      // Relative when side by side, so the backup folder can move as a whole.
      const backing = path.dirname(parent) === path.dirname(output) ? path.basename(parent) : parent;
      createArgs.push('-b', backing, '-F', info.format);
    }
    createArgs.push(output, String(source.size));
    await runTool('qemu-img', createArgs, `creating pull backup '${output}'`);
    const r = await copyIntoImage(source, output, dirty, concurrency, opts.onProgress);
    await source.disconnect();
    return { output, size: source.size, ...r };
  } catch (e) {
    source.destroy();
    if (created) await fs.rm(output, { force: true });
    throw toVirError(e, 'STORAGE');
  }
}

/**
 * Copy the export's data (or its dirty ranges) into the new qcow2 `image`. In an
 * incremental overlay every dirty byte must be written, zeroes included, or the
 * parent's old data would show through; a full image already reads as zeroes.
 */
async function copyIntoImage(
  source: NbdClient,
  image: string,
  dirty: string | undefined,
  concurrency: number,
  onProgress?: (p: PullProgress) => void,
): Promise<{ bytesRead: number; ranges: CopiedRange[] }> {
  const exp = await startExport({ image, format: 'qcow2', readOnly: false });
  let sink: NbdClient | undefined;
  try {
    sink = await NbdClient.connect({ socketPath: exp.socketPath }, { exportName: exp.exportName });
    const writer = sink;
    const zeroFill = dirty !== undefined;
    const ranges = await planCopy(source, { onlyDirty: dirty });
    const bytesTotal = ranges.reduce((n, r) => n + (r.zero ? 0 : r.length), 0);
    const jobs: Array<() => Promise<void>> = [];
    let bytesDone = 0;
    for (const r of ranges) {
      if (r.zero) {
        if (zeroFill) jobs.push(() => writer.writeZeroes(r.offset, r.length));
        continue;
      }
      for (let o = r.offset; o < r.offset + r.length; o += CHUNK) {
        const offset = o;
        const length = Math.min(CHUNK, r.offset + r.length - o);
        jobs.push(async () => {
          const buf = await source.read(offset, length);
          const writes: Promise<void>[] = [];
          let at = 0;
          for (const [s, e] of nonZeroRuns(buf)) {
            if (zeroFill && s > at) writes.push(writer.writeZeroes(offset + at, s - at));
            writes.push(writer.write(offset + s, buf.subarray(s, e)));
            at = e;
          }
          if (zeroFill && at < length) writes.push(writer.writeZeroes(offset + at, length - at));
          await Promise.all(writes);
          bytesDone += length;
          onProgress?.({ bytesDone, bytesTotal });
        });
      }
    }
    onProgress?.({ bytesDone, bytesTotal });
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) await jobs[next++]!();
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    await writer.flush();
    await writer.disconnect();
    sink = undefined;
    await exp.close();
    return { bytesRead: bytesDone, ranges };
  } finally {
    sink?.destroy();
    await exp.close().catch(() => undefined);
  }
}
