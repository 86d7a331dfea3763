// `virtback restore … --target-dev sda=/dev/vg/lv`: a disk of a point written
// onto a host block device instead of into a new image. A device holds old
// content, so every range must be written, but zeros need not be written as
// data: whole zero chunks are coalesced into ranges that the device zeroes
// itself (fallocate: punch a hole, i.e. discard/unmap where the device
// supports write-zeroes with unmap, such as thin LVs and loop devices; else
// zero-range, i.e. the kernel's write-zeroes with its own fallback; pwrite of
// zeros only when neither works, e.g. an unaligned tail). Chunks holding data
// are written whole after their hash is checked (readChunk). The device is
// opened exclusively (O_EXCL: a mounted or otherwise claimed device is
// refused), and every device's size is checked before anything is written.

import { constants } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import type { DiskIndex, PointRecord } from '../chunkstore/repo.js';
import { ZERO_CHUNK } from '../chunkstore/repo.js';
import { virErr } from '../errors.js';
import { runTool } from '../repository/tools.js';
import { forEachDataChunk, type ChunkFetch } from './restore-chunks.js';
import type { DiskProgress } from './read-disk.js';

/** What `--target-dev` says: the point's disk target → the host block device it goes to. */
export type TargetDevices = ReadonlyMap<string, string>;

/** `sda=/dev/loop3` pairs; a target named twice or a device used twice is an error. */
export function parseTargetDevs(specs: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const s of specs) {
    const eq = s.indexOf('=');
    if (eq <= 0 || eq === s.length - 1) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev '${s}': expected TARGET=DEVICE, e.g. vda=/dev/vg/vm-vda`);
    const [target, dev] = [s.slice(0, eq), s.slice(eq + 1)];
    if (out.has(target)) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev: disk '${target}' named twice`);
    if ([...out.values()].includes(dev)) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev: device '${dev}' named twice`);
    out.set(target, dev);
  }
  return out;
}

/** The size of block device `dev` in bytes; refuses anything else. */
async function deviceSize(dev: string): Promise<number> {
  const st = await fs.stat(dev).catch(() => null);
  if (st === null) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev: '${dev}' does not exist`);
  if (!st.isBlockDevice()) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev: '${dev}' is not a block device`);
  return Number((await runTool('blockdev', ['--getsize64', dev], `reading the size of '${dev}'`)).trim());
}

/** Before anything is written: every named disk is in the point and fits its device. */
export async function checkTargetDevices(point: PointRecord, devices: TargetDevices): Promise<void> {
  for (const [target, dev] of devices) {
    const disk = point.disks.find((d) => d.target === target);
    if (disk === undefined) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev: point ${point.id} has no disk '${target}' (it has ${point.disks.map((d) => d.target).join(', ')})`);
    const size = await deviceSize(dev);
    if (size < disk.size) throw virErr('INVALID_ARG', 'STORAGE', `--target-dev: device '${dev}' holds ${size} bytes, disk '${target}' needs ${disk.size}`);
  }
}

/** Runs of whole zero chunks as [offset, length], coalesced. */
export function zeroRanges(index: DiskIndex): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  index.chunks.forEach((id, i) => {
    if (id !== ZERO_CHUNK) return;
    const offset = i * index.chunkSize;
    const length = Math.min(index.chunkSize, index.size - offset);
    const last = runs.at(-1);
    if (last !== undefined && last[0] + last[1] === offset) last[1] += length;
    else runs.push([offset, length]);
  });
  return runs;
}

const ZERO_WRITE = 1 << 20;

/** Zero [offset, offset+length) of the device: unmap, else write-zeroes, else plain writes. */
async function zeroDeviceRange(fh: FileHandle, dev: string, offset: number, length: number): Promise<'punched' | 'zeroed' | 'written'> {
  const range = ['--offset', String(offset), '--length', String(length), dev];
  if (await runTool('fallocate', ['--punch-hole', ...range], 'punch').then(() => true, () => false)) return 'punched';
  if (await runTool('fallocate', ['--zero-range', ...range], 'zero').then(() => true, () => false)) return 'zeroed';
  const zeros = Buffer.alloc(Math.min(ZERO_WRITE, length));
  for (let at = 0; at < length; at += zeros.length) await fh.write(zeros, 0, Math.min(zeros.length, length - at), offset + at);
  return 'written';
}

export interface DeviceWriteStats {
  /** bytes of data chunks written */
  bytesWritten: number;
  /** bytes of zero chunks zeroed by the device (unmapped or write-zeroes) */
  bytesZeroedByDevice: number;
  /** bytes of zero chunks written as zeros (the device could not zero them) */
  bytesZeroWritten: number;
}

/** Write disk `index` onto block device `dev` (checked beforehand by checkTargetDevices). */
export async function writeDevice(index: DiskIndex, dev: string, fetch: ChunkFetch, onProgress?: (p: DiskProgress) => void): Promise<DeviceWriteStats> {
  // O_EXCL on a block device: refused (EBUSY) while mounted or claimed by another exclusive opener
  const fh = await fs.open(dev, constants.O_WRONLY | constants.O_EXCL).catch((e: NodeJS.ErrnoException) => {
    throw virErr(e.code === 'EBUSY' ? 'OPERATION_INVALID' : 'SYSTEM_ERROR', 'STORAGE', `cannot open '${dev}' exclusively for the restore of disk '${index.target}': ${e.message}`, e);
  });
  const stats: DeviceWriteStats = { bytesWritten: 0, bytesZeroedByDevice: 0, bytesZeroWritten: 0 };
  try {
    const bytesTotal = index.size;
    let bytesDone = 0;
    onProgress?.({ bytesDone, bytesTotal });
    for (const [offset, length] of zeroRanges(index)) {
      const how = await zeroDeviceRange(fh, dev, offset, length);
      if (how === 'written') stats.bytesZeroWritten += length;
      else stats.bytesZeroedByDevice += length;
      bytesDone += length;
      onProgress?.({ bytesDone, bytesTotal });
    }
    await forEachDataChunk(index, fetch, async (data, offset) => {
      await fh.write(data, 0, data.length, offset);
      stats.bytesWritten += data.length;
      bytesDone += data.length;
      onProgress?.({ bytesDone, bytesTotal });
    });
    await fh.datasync();
    return stats;
  } finally {
    await fh.close();
  }
}
