// The manifest written next to every backup (`<target>.manifest.json`): who the
// backup belongs to, where it sits in its chain, and a block checksum of the
// guest-visible content of the chain at the backup point, computed by reading
// the finished target (with its backing files) back through a read-only export.

import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { virErr } from '../errors.js';
import { CHECKSUM_ALGORITHM, type BlockDigests, type ContentChecksum } from './checksum.js';
import { readDigests, type ContentProgress } from './content.js';

export interface BackupManifestInput {
  domain: { name: string; uuid: string };
  disk: string;
  target: string /*path*/;
  format: 'qcow2' | 'raw';
  checkpoint: string | null /*created with this backup*/;
  incrementalFrom: string | null /*base checkpoint*/;
  parentBackup: string | null /*path of the backing backup, if any*/;
  time: number /*epoch s of the backup instant*/;
  virtualSize: number;
  jobId: number;
  mode: 'push' | 'pull';
}

export const MANIFEST_KIND = 'virtback-backup-manifest';
export const MANIFEST_VERSION = 1;
export const MANIFEST_SUFFIX = '.manifest.json';

const checksumSchema = z.object({
  algorithm: z.literal(CHECKSUM_ALGORITHM),
  blockSize: z.number().int().positive(),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  zeroBlocks: z.array(z.tuple([z.number().int().nonnegative(), z.number().int().positive()])),
  digests: z.string(),
  computedFrom: z.string(),
});

const manifestSchema = z.object({
  kind: z.literal(MANIFEST_KIND),
  version: z.literal(MANIFEST_VERSION),
  domain: z.object({ name: z.string(), uuid: z.string() }),
  disk: z.string(),
  target: z.string(),
  format: z.enum(['qcow2', 'raw']),
  checkpoint: z.string().nullable(),
  incrementalFrom: z.string().nullable(),
  parentBackup: z.string().nullable(),
  time: z.number(),
  timeISO: z.string(),
  virtualSize: z.number().int().nonnegative(),
  jobId: z.number().int(),
  mode: z.enum(['push', 'pull']),
  /** Null when the content at the backup point cannot be read back (backing file is the live disk). */
  checksum: checksumSchema.nullable(),
});

export type BackupManifest = Omit<z.infer<typeof manifestSchema>, 'checksum'> & { checksum: (ContentChecksum & { computedFrom: string }) | null };

export function manifestPath(target: string): string {
  return `${target}${MANIFEST_SUFFIX}`;
}

/** The manifest next to `target`, or null when there is none; a malformed one is INVALID_ARG naming the file. */
export async function readManifest(target: string): Promise<BackupManifest | null> {
  const file = manifestPath(target);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot read backup manifest '${file}': ${(e as Error).message}`, e);
  }
  return parseManifest(text, file);
}

export function parseManifest(text: string, file: string): BackupManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw virErr('INVALID_ARG', 'STORAGE', `backup manifest '${file}' is not JSON: ${(e as Error).message}`, e);
  }
  const r = manifestSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw virErr('INVALID_ARG', 'STORAGE', `backup manifest '${file}' is invalid at '${issue.path.join('.') || '(root)'}': ${issue.message}`);
  }
  return r.data as BackupManifest;
}

export interface WriteManifestOptions {
  onProgress?: (p: ContentProgress) => void;
  /** The content checksum already computed while the backup was written (a full pull): no read-back. */
  digests?: BlockDigests;
}

/**
 * Checksum the finished target (read-only, with its backing chain) and write
 * `<target>.manifest.json` atomically (temp file, fsync, rename). Returns its path.
 */
export async function writeManifest(input: BackupManifestInput, opts: WriteManifestOptions = {}): Promise<string> {
  // An incremental backed by the live disk (no parent backup): its chain content at the
  // backup point is gone (and QEMU holds the disk locked), so there is nothing to checksum.
  const backedByLiveDisk = input.incrementalFrom !== null && input.parentBackup === null;
  let checksum: BackupManifest['checksum'] = null;
  if (opts.digests) {
    if (opts.digests.size !== input.virtualSize) {
      throw virErr('OPERATION_FAILED', 'STORAGE', `checksum of backup '${input.target}' of disk '${input.disk}' covers ${opts.digests.size} bytes, not the expected ${input.virtualSize}`);
    }
    checksum = { ...opts.digests.toChecksum(), computedFrom: 'data read from the NBD export while it was written (pull)' };
  } else if (!backedByLiveDisk) {
    const { digests } = await readDigests({ image: input.target, format: input.format, onProgress: opts.onProgress });
    if (digests.size !== input.virtualSize) {
      throw virErr('OPERATION_FAILED', 'STORAGE', `backup '${input.target}' of disk '${input.disk}' has virtual size ${digests.size}, not the expected ${input.virtualSize}`);
    }
    checksum = { ...digests.toChecksum(), computedFrom: 'finished target read back with its backing chain (qemu-nbd --read-only)' };
  }
  const manifest: BackupManifest = {
    kind: MANIFEST_KIND,
    version: MANIFEST_VERSION,
    domain: { name: input.domain.name, uuid: input.domain.uuid },
    disk: input.disk,
    target: input.target,
    format: input.format,
    checkpoint: input.checkpoint,
    incrementalFrom: input.incrementalFrom,
    parentBackup: input.parentBackup,
    time: input.time,
    timeISO: new Date(input.time * 1000).toISOString(),
    virtualSize: input.virtualSize,
    jobId: input.jobId,
    mode: input.mode,
    checksum,
  };
  const file = manifestPath(input.target);
  await writeFileAtomic(file, `${JSON.stringify(manifest, null, 2)}\n`);
  return file;
}

/** `.<manifest name>.<pid>.tmp`: where process `pid` writes the manifest `file` before its rename. */
function tempName(file: string, pid: number): string {
  return `.${path.basename(file)}.${pid}.tmp`;
}

/**
 * Remove what earlier writers of `file` left when SIGKILLed between write and
 * rename: the next daemon writes under its own pid's name and would never
 * touch theirs. One daemon owns a target at a time, so another pid's temp
 * file is nobody's. The pid part must be digits only: anything looser would
 * match the temp file of another target's manifest (of a target named
 * `<this manifest's name>.x`). Best effort: a leftover must not fail a backup.
 */
async function removeStaleTemps(file: string): Promise<void> {
  const dir = path.dirname(file);
  const prefix = `.${path.basename(file)}.`;
  const ours = tempName(file, process.pid);
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (name === ours || !name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    if (/^\d+$/.test(name.slice(prefix.length, -'.tmp'.length))) await fs.rm(path.join(dir, name), { force: true }).catch(() => {});
  }
}

async function writeFileAtomic(file: string, text: string): Promise<void> {
  const tmp = path.join(path.dirname(file), tempName(file, process.pid));
  try {
    // 0600 like the backups: a digest of every MiB tells a lot about the disk.
    const fh = await fs.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
    await removeStaleTemps(file);
    // The rename itself (and the removals) must survive a crash too.
    const dir = await fs.open(path.dirname(file), 'r');
    await dir.sync().finally(() => dir.close());
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw virErr('SYSTEM_ERROR', 'STORAGE', `cannot write backup manifest '${file}': ${(e as Error).message}`, e);
  }
}
