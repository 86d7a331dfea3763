// What a `virtback backup` run will do, decided before any byte is read (pure):
// the level (auto picks a full read whenever the base is not usable, and says
// why), this repository's checkpoint names, the backup and checkpoint XML of the
// pull job, the chunks a dirty bitmap touches, and which of this repository's
// checkpoints a finished run may delete.

import { createHash } from 'node:crypto';
import { virErr } from '../errors.js';
import { element, formatXml, type XmlElement } from '../xml/tree.js';

export type RequestedLevel = 'full' | 'inc' | 'auto';

/** A disk the run backs up (writable, with a source, not excluded). */
export interface PlanDisk {
  target: string;
}

/** The base point as the level decision needs it. */
export interface BasePoint {
  id: string;
  domainUuid: string;
  checkpoint: string | null;
  disks: Array<{ target: string }>;
  /** ok=false: the point failed verify */
  verifyOk: boolean | null;
}

/** What the domain says about the base point's checkpoint. */
export interface BaseCheckpointState {
  /** the checkpoint exists on the domain */
  exists: boolean;
  /** its <inconsistent reason=…> (null when consistent) */
  inconsistent: string | null;
  /** bitmaps in the images that no checkpoint describes ("disk/bitmap") */
  unknownBitmaps: string[];
}

export interface LevelDecision {
  level: 'full' | 'inc';
  /** the base point's id and checkpoint, for an incremental run */
  base: { id: string; checkpoint: string } | null;
  /** why: the reason a full read was taken, or what the incremental builds on */
  reason: string;
}

/**
 * The level of this run. `inc` refuses when there is no usable base (naming why);
 * `auto` then takes a full read with that reason.
 */
export function decideLevel(
  requested: RequestedLevel,
  domainUuid: string,
  last: BasePoint | null,
  checkpoint: BaseCheckpointState | null,
  disks: readonly PlanDisk[],
): LevelDecision {
  if (requested === 'full') return { level: 'full', base: null, reason: 'full backup requested' };
  const why = unusableBase(domainUuid, last, checkpoint, disks);
  if (why === null) {
    const base = { id: last!.id, checkpoint: last!.checkpoint! };
    return { level: 'inc', base, reason: `incremental from point ${base.id} (checkpoint ${base.checkpoint})` };
  }
  if (requested === 'inc') throw virErr('OPERATION_INVALID', 'STORAGE', `cannot back up incrementally: ${why}`);
  return { level: 'full', base: null, reason: why };
}

function unusableBase(domainUuid: string, last: BasePoint | null, cp: BaseCheckpointState | null, disks: readonly PlanDisk[]): string | null {
  if (last === null) return 'no previous point of this domain in this repository';
  if (last.domainUuid !== domainUuid) return `previous point ${last.id} is of another domain of the same name (uuid ${last.domainUuid})`;
  if (last.verifyOk === false) return `previous point ${last.id} failed verification`;
  if (last.checkpoint === null) return `previous point ${last.id} has no checkpoint`;
  if (cp === null || !cp.exists) {
    const orphan = cp?.unknownBitmaps.filter((b) => b.endsWith(`/${last.checkpoint}`)) ?? [];
    const extra = orphan.length > 0 ? ` (its bitmaps remain without metadata: ${orphan.join(', ')})` : '';
    return `checkpoint ${last.checkpoint} of previous point ${last.id} no longer exists on the domain${extra}`;
  }
  if (cp.inconsistent !== null) return `checkpoint ${last.checkpoint} of previous point ${last.id} is inconsistent: ${cp.inconsistent}`;
  const before = new Set(last.disks.map((d) => d.target));
  const added = disks.filter((d) => !before.has(d.target)).map((d) => d.target);
  if (added.length > 0) return `disk${added.length > 1 ? 's' : ''} ${added.join(', ')} not in previous point ${last.id}`;
  return null;
}

// ---------------------------------------------------------------- checkpoint names

/**
 * A repository's id: a hash of its config object, which is written once at
 * init and holds its creation time (and, when encrypted, a random salt).
 */
export function repositoryId(config: unknown): string {
  return createHash('sha256').update(JSON.stringify(config)).digest('hex');
}

/** This repository's checkpoints start with this: chains of different repositories never meet. */
export function checkpointPrefix(repoId: string): string {
  return `vb-${repoId.slice(0, 8)}-`;
}

/** A new checkpoint name of this repository, sortable by time: vb-<repo8>-20261206T030000123Z. */
export function checkpointName(repoId: string, at: Date): string {
  return `${checkpointPrefix(repoId)}${at.toISOString().replace(/[-:.]/g, '')}`;
}

/**
 * This repository's checkpoints that no kept point needs: every one but the
 * newest point's (the only base a run builds on). Deleting a checkpoint merges
 * its bitmap into its parent, so the kept one stays complete.
 */
export function unneededCheckpoints(repoId: string, domainCheckpoints: readonly string[], keep: string | null): string[] {
  const prefix = checkpointPrefix(repoId);
  return domainCheckpoints.filter((n) => n.startsWith(prefix) && n !== keep).sort();
}

// ---------------------------------------------------------------- job XML

export interface JobXmlInput {
  checkpoint: string;
  /** base checkpoint of an incremental run */
  incremental: string | null;
  socket: string;
  /** scratch file per disk target */
  scratch: ReadonlyMap<string, string>;
  /** disks of the domain not backed up */
  skipped: readonly string[];
}

/** The pull job's <domainbackup>: a unix-socket NBD server, a scratch file per disk. */
export function backupXml(j: JobXmlInput): string {
  const disks: XmlElement[] = [];
  for (const [target, file] of j.scratch) {
    disks.push(element('disk', [['name', target], ['backup', 'yes'], ['type', 'file']], [element('scratch', [['file', file]])]));
  }
  for (const target of j.skipped) disks.push(element('disk', [['name', target], ['backup', 'no']]));
  const children: XmlElement[] = [];
  if (j.incremental !== null) children.push(element('incremental', [], [j.incremental]));
  children.push(element('server', [['transport', 'unix'], ['socket', j.socket]]));
  children.push(element('disks', [], disks));
  return formatXml(element('domainbackup', [['mode', 'pull']], children));
}

/** The run's new checkpoint: a bitmap for each backed-up disk, none for the others. */
export function checkpointXml(name: string, disks: readonly string[], skipped: readonly string[], description: string): string {
  const list = [
    ...disks.map((d) => element('disk', [['name', d], ['checkpoint', 'bitmap']])),
    ...skipped.map((d) => element('disk', [['name', d], ['checkpoint', 'no']])),
  ];
  return formatXml(element('domaincheckpoint', [], [element('name', [], [name]), element('description', [], [description]), element('disks', [], list)]));
}

// ---------------------------------------------------------------- chunks

/** Indexes of the chunks of `chunkSize` that the ranges touch, ascending, each once. */
export function chunksTouched(ranges: Iterable<{ offset: number; length: number }>, chunkSize: number): number[] {
  const set = new Set<number>();
  for (const r of ranges) {
    if (r.length <= 0) continue;
    const last = Math.floor((r.offset + r.length - 1) / chunkSize);
    for (let c = Math.floor(r.offset / chunkSize); c <= last; c++) set.add(c);
  }
  return [...set].sort((a, b) => a - b);
}
