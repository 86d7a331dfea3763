// Restore: turn a push backup (full, or the last incremental of a chain) into a
// standalone image, or write it over an existing image or block device. The
// chain is checked first (chain.ts); then its content is copied from a
// read-only export to a writable one, every block checked against the target's
// manifest before it is written (restore-copy.ts). A new output is written
// under a temporary name, 0600, and gets its name only when every block matched.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { toVirError, virErr } from '../errors.js';
import { NbdClient } from '../nbd/client.js';
import { CONTEXT_BASE_ALLOCATION } from '../nbd/protocol.js';
import { resolveChain, type ChainLink } from './chain.js';
import { decodeChecksum } from './checksum.js';
import { manifestPath } from './manifest.js';
import { copyChecked } from './restore-copy.js';
import { imageInfo, runTool, startExport, type NbdExport } from './tools.js';
import type { BadRange } from './verify.js';

export interface RestoreProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface RestoreOptions {
  /** The backup to restore: a full backup, or the newest incremental of a chain. */
  target: string;
  output: string;
  format: 'qcow2' | 'raw';
  /** Write onto an existing image of at least the backup's size, instead of creating `output` (a block device always is). */
  inPlace?: boolean;
  onProgress?: (p: RestoreProgress) => void;
}

export interface RestoreResult {
  output: string;
  format: 'qcow2' | 'raw';
  virtualSize: number;
  /** The chain that was restored, target first. */
  chain: string[];
  /** The manifest every written block was checked against; null when the target has none (nothing was checked). */
  checkedAgainst: string | null;
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
  // A block device cannot be created nor renamed into place: it is always written in place
  // (never truncated nor unlinked), and must hold the whole backup.
  const inPlace = opts.inPlace === true || st?.isBlockDevice() === true;
  if (inPlace) {
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

  const want = expectedBlocks(top);
  const copy = { top, format: opts.format, want, onProgress: opts.onProgress };
  const checkedAgainst = want === null ? null : manifestPath(top.file);
  const damaged = (bad: BadRange, outcome: string) =>
    virErr(
      'OPERATION_FAILED',
      'STORAGE',
      `backup '${top.file}' does not match its manifest '${checkedAgainst}': first bad range offset ${bad.offset} length ${bad.length}; ${outcome} ` +
        `(backup-verify names the damaged image)`,
    );
  if (inPlace) {
    const bad = await writeChecked({ ...copy, output, zeroFill: true });
    if (bad) throw damaged(bad, `'${output}' was partly overwritten and does not hold the backup`);
  } else {
    // A new output reads as zeroes, so zero areas are not written and stay sparse.
    // unique per call: two restores to one name in one process must not share it
    const tmp = path.join(path.dirname(output), `.${path.basename(output)}.restore-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
    await removeDeadRestoreTemps(output);
    try {
      await createImage(tmp, opts.format, top.virtualSize);
      const bad = await writeChecked({ ...copy, output: tmp, zeroFill: false });
      if (bad) throw damaged(bad, `nothing was restored to '${output}'`);
      await fs.link(tmp, output).catch((e: unknown) => {
        throw virErr('OPERATION_FAILED', 'STORAGE', `cannot name the restored image '${output}': ${(e as Error).message}`, e);
      });
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
  return { output, format: opts.format, virtualSize: top.virtualSize, chain: links.map((l: ChainLink) => l.file), checkedAgainst };
}

/**
 * Remove the temp images that restores to `output` left when SIGKILLed (a whole
 * disk each, hidden): `.<name>.restore-<pid>-<8 hex>.tmp` of a pid that is gone.
 * Restores to one name may run side by side in several processes, so a live
 * pid's is kept (and one whose pid was reused, until it ends). Best effort:
 * a leftover must not fail the restore.
 */
async function removeDeadRestoreTemps(output: string): Promise<void> {
  const dir = path.dirname(output);
  const prefix = `.${path.basename(output)}.restore-`;
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)-[0-9a-f]{8}\.tmp$/.exec(name.slice(prefix.length));
    if (m && !processExists(Number(m[1]))) await fs.rm(path.join(dir, name), { force: true }).catch(() => {});
  }
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // someone else's
  }
}

/** Every block's entry from the target's manifest, or null when it has none. */
function expectedBlocks(top: ChainLink): Buffer[] | null {
  const m = top.manifest;
  if (m === null) return null;
  const where = `manifest '${manifestPath(top.file)}'`;
  // checkChain refuses a chain on the live disk, the only kind without a checksum
  if (m.checksum === null) throw virErr('OPERATION_INVALID', 'STORAGE', `${where} has no checksum to check the restore against`);
  if (m.checksum.size !== top.virtualSize) throw virErr('OPERATION_INVALID', 'STORAGE', `${where} checksums ${m.checksum.size} bytes, but '${top.file}' has ${top.virtualSize}`);
  return decodeChecksum(m.checksum, where);
}

/** An empty image only we can read: the backup's data goes in it. */
async function createImage(file: string, format: 'qcow2' | 'raw', size: number): Promise<void> {
  // Created 0600 first: qemu-img keeps the mode of a file that exists.
  try {
    await (await fs.open(file, 'wx', 0o600)).close();
  } catch (e) {
    throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot create restore output '${file}': ${(e as Error).message}`, e);
  }
  await runTool('qemu-img', ['create', '-q', '-f', format, file, String(size)], `creating restore output '${file}'`);
  await fs.chmod(file, 0o600);
}

interface WriteCheckedOptions {
  top: ChainLink;
  output: string;
  format: 'qcow2' | 'raw';
  want: Buffer[] | null;
  zeroFill: boolean;
  onProgress?: (p: RestoreProgress) => void;
}

/** Serve the chain and the output with qemu-nbd and copy with checks; the first bad range, or null. */
async function writeChecked(o: WriteCheckedOptions): Promise<BadRange | null> {
  const from = await startExport({ image: o.top.file, format: o.top.format, readOnly: true });
  let to: NbdExport | undefined;
  let source: NbdClient | undefined;
  let sink: NbdClient | undefined;
  try {
    to = await startExport({ image: o.output, format: o.format, readOnly: false });
    source = await NbdClient.connect({ socketPath: from.socketPath }, { exportName: from.exportName, metaContexts: [CONTEXT_BASE_ALLOCATION] });
    sink = await NbdClient.connect({ socketPath: to.socketPath }, { exportName: to.exportName });
    const bad = await copyChecked({ source, sink, want: o.want, zeroFill: o.zeroFill, onProgress: o.onProgress });
    await sink.disconnect();
    await source.disconnect();
    sink = source = undefined;
    await to.close(); // qemu-nbd closes the image cleanly; a failure here is a failed restore
    return bad;
  } catch (e) {
    throw toVirError(e, 'STORAGE');
  } finally {
    sink?.destroy();
    source?.destroy();
    await to?.close().catch(() => undefined);
    await from.close().catch(() => undefined);
  }
}
