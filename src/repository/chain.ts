// A backup's chain: the target and the backing files it names, down to the full
// backup. gatherChain walks it one image at a time (so a missing link or a loop
// is named, not just "could not open"); checkChain is the pure consistency
// check against sizes and manifests that restore and verify both rely on.

import fs from 'node:fs/promises';
import path from 'node:path';
import { virErr, type VirError } from '../errors.js';
import { manifestPath, readManifest, type BackupManifest } from './manifest.js';
import { imageInfo } from './tools.js';

export interface ChainLink {
  /** Absolute path as the chain names it. */
  file: string;
  format: string;
  virtualSize: number;
  /** Absolute path of the backing file, or null for the bottom of the chain. */
  backing: string | null;
  backingFormat: string | null;
  manifest: BackupManifest | null;
}

const broken = (message: string): VirError => virErr('OPERATION_INVALID', 'STORAGE', message);

async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * The chain from `target` (index 0) down to the image without a backing file.
 * Throws OPERATION_INVALID naming the file for a missing link or a loop, and
 * INVALID_ARG when `target` itself does not exist.
 */
export async function gatherChain(target: string): Promise<ChainLink[]> {
  const top = path.resolve(target);
  if (!(await exists(top))) throw virErr('INVALID_ARG', 'STORAGE', `backup '${top}' does not exist`);
  const links: ChainLink[] = [];
  const seen = new Set<string>();
  let file = top;
  let format: string | undefined;
  for (;;) {
    const real = await fs.realpath(file);
    seen.add(real);
    const manifest = await readManifest(file);
    const info = await imageInfo(file, format ?? manifest?.format);
    const name = info['backing-filename'];
    const backing = name === undefined ? null : (info['full-backing-filename'] ?? path.resolve(path.dirname(file), name));
    const link: ChainLink = {
      file,
      format: info.format,
      virtualSize: info['virtual-size'],
      backing,
      backingFormat: info['backing-filename-format'] ?? null,
      manifest,
    };
    links.push(link);
    if (backing === null) return links;
    if (!(await exists(backing))) throw broken(`backup chain of '${top}' is broken: backing file '${backing}' of '${file}' does not exist`);
    if (seen.has(await fs.realpath(backing))) throw broken(`backup chain of '${top}' is broken: backing file '${backing}' of '${file}' creates a loop`);
    file = backing;
    format = link.backingFormat ?? undefined;
  }
}

/**
 * Throws OPERATION_INVALID naming the first link that does not fit: a size that
 * differs from the target's, a manifest that disagrees with its image or belongs
 * to another disk or domain, or an incremental whose backing file is not the
 * previous backup (e.g. the live disk).
 */
export function checkChain(links: readonly ChainLink[]): void {
  const top = links[0]!;
  const owner = top.manifest;
  for (let i = 0; i < links.length; i++) {
    const link = links[i]!;
    const m = link.manifest;
    const mfile = manifestPath(link.file);
    if (link.virtualSize !== top.virtualSize) {
      throw broken(`backup chain of '${top.file}' is broken: '${link.file}' has virtual size ${link.virtualSize}, but '${top.file}' has ${top.virtualSize}`);
    }
    if (m) {
      if (m.virtualSize !== link.virtualSize) throw broken(`manifest '${mfile}' says virtual size ${m.virtualSize}, but '${link.file}' has ${link.virtualSize}`);
      if (m.format !== link.format) throw broken(`manifest '${mfile}' says format '${m.format}', but '${link.file}' is '${link.format}'`);
      if (owner && (m.domain.uuid !== owner.domain.uuid || m.disk !== owner.disk)) {
        throw broken(
          `backup chain of '${top.file}' is broken: '${link.file}' belongs to disk '${m.disk}' of domain '${m.domain.name}' (${m.domain.uuid}), ` +
            `not to disk '${owner.disk}' of domain '${owner.domain.name}' (${owner.domain.uuid})`,
        );
      }
      if (link.backing === null && (m.incrementalFrom !== null || m.parentBackup !== null)) {
        throw broken(`'${link.file}' has no backing file, but its manifest '${mfile}' says it is incremental from checkpoint '${m.incrementalFrom ?? '?'}'`);
      }
      if (link.backing !== null && m.incrementalFrom === null) {
        throw broken(`'${link.file}' has backing file '${link.backing}', but its manifest '${mfile}' says it is a full backup`);
      }
    }
    const parent = links[i + 1];
    if (!parent || !m) continue;
    if (m.parentBackup === null) {
      throw broken(
        `incremental backup '${link.file}' is backed by '${parent.file}', which is not a backup (its manifest '${mfile}' names no parent backup, so the chain ends at the live disk); ` +
          `restore needs a chain of backups down to a full one`,
      );
    }
    const pm = parent.manifest;
    if (!pm) throw broken(`backing file '${parent.file}' of '${link.file}' has no manifest '${manifestPath(parent.file)}': it is not a backup of this chain (the live disk?)`);
    if (pm.checkpoint !== m.incrementalFrom) {
      throw broken(
        `backing file '${parent.file}' of '${link.file}' is the backup of checkpoint ${pm.checkpoint === null ? '(none)' : `'${pm.checkpoint}'`}, ` +
          `but '${link.file}' is incremental from checkpoint '${m.incrementalFrom}'`,
      );
    }
  }
}

/** gatherChain then checkChain. */
export async function resolveChain(target: string): Promise<ChainLink[]> {
  const links = await gatherChain(target);
  checkChain(links);
  return links;
}
