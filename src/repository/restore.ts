// Restore: turn a push backup (full, or the last incremental of a chain) into a
// standalone image, or write it over an existing image or block device. The
// chain is checked first (chain.ts); qemu-img convert then reads the backups
// read-only and keeps the output sparse.

import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { virErr } from '../errors.js';
import { resolveChain, type ChainLink } from './chain.js';
import { imageInfo } from './tools.js';

export interface RestoreProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface RestoreOptions {
  /** The backup to restore: a full backup, or the newest incremental of a chain. */
  target: string;
  output: string;
  format: 'qcow2' | 'raw';
  /** Write onto an existing image or block device of at least the backup's size, instead of creating `output`. */
  inPlace?: boolean;
  onProgress?: (p: RestoreProgress) => void;
}

export interface RestoreResult {
  output: string;
  format: 'qcow2' | 'raw';
  virtualSize: number;
  /** The chain that was restored, target first. */
  chain: string[];
}

async function lstatOrNull(file: string) {
  try {
    return await fs.stat(file);
  } catch {
    return null;
  }
}

export async function restoreBackup(opts: RestoreOptions): Promise<RestoreResult> {
  if (opts.format !== 'qcow2' && opts.format !== 'raw') throw virErr('INVALID_ARG', 'STORAGE', `restore format '${String(opts.format)}' is not 'qcow2' or 'raw'`);
  const links = await resolveChain(opts.target);
  const top = links[0]!;
  const output = path.resolve(opts.output);
  const st = await lstatOrNull(output);
  if (st) {
    const real = await fs.realpath(output);
    for (const l of links) {
      if ((await fs.realpath(l.file)) === real) throw virErr('INVALID_ARG', 'STORAGE', `restore output '${output}' is backup '${l.file}' of the chain being restored`);
    }
  }
  if (opts.inPlace) {
    if (!st) throw virErr('INVALID_ARG', 'STORAGE', `in-place restore target '${output}' does not exist`);
    const info = await imageInfo(output, opts.format);
    if (info['virtual-size'] < top.virtualSize) {
      throw virErr('INVALID_ARG', 'STORAGE', `in-place restore target '${output}' has ${info['virtual-size']} bytes, less than the backup's virtual size ${top.virtualSize}`);
    }
    if (opts.format === 'qcow2' && info['backing-filename'] !== undefined) {
      throw virErr('INVALID_ARG', 'STORAGE', `in-place restore target '${output}' has backing file '${info['backing-filename']}'; its unwritten areas would not read as the backup`);
    }
  } else if (st) {
    throw virErr('INVALID_ARG', 'STORAGE', `restore output '${output}' already exists (restore in place to overwrite it)`);
  }

  // New outputs read as zeroes, so qemu-img skips zero areas; in place it must
  // write zeroes there (it does with -n, as unmap/zero requests that stay sparse).
  const args = ['convert', '-p', '-f', top.format, '-O', opts.format, ...(opts.inPlace ? ['-n'] : []), top.file, output];
  try {
    await convert(args, top.virtualSize, opts.onProgress);
  } catch (e) {
    if (!opts.inPlace) await fs.rm(output, { force: true });
    throw e;
  }
  return { output, format: opts.format, virtualSize: top.virtualSize, chain: links.map((l: ChainLink) => l.file) };
}

/** qemu-img convert with -p, its "(12.50/100%)" lines turned into byte progress. */
function convert(args: string[], total: number, onProgress?: (p: RestoreProgress) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const proc = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let last = -1;
    proc.stdout!.on('data', (b: Buffer) => {
      for (const m of b.toString().matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)) {
        const done = Math.min(total, Math.round((Number(m[1]) / 100) * total));
        if (done !== last) onProgress?.({ bytesDone: (last = done), bytesTotal: total });
      }
    });
    proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    proc.once('error', (e) => reject(virErr('OPERATION_FAILED', 'STORAGE', `cannot run qemu-img convert: ${e.message}`, e)));
    proc.once('close', (code) => {
      if (code === 0) {
        if (last !== total) onProgress?.({ bytesDone: total, bytesTotal: total });
        return resolve();
      }
      reject(virErr('OPERATION_FAILED', 'STORAGE', `restore with qemu-img convert failed: ${stderr.trim() || `exit status ${code}`}`));
    });
  });
}
