// Room for a push backup, checked before anything is created. QEMU's backup
// job copies a block's old data into the target before a guest write may
// change it (its internal copy-before-write filter, on-cbw-error
// break-guest-write in 7.2): a target that fills up while the job runs makes
// the GUEST's writes fail, and a real guest pauses on ENOSPC (docs/
// troubleshooting.md). So a push whose targets might not fit is refused up
// front, with the numbers. The estimate is an upper bound: what the disk can
// hold (full) or what its checkpoint bitmap marks dirty (incremental), plus
// qcow2 metadata; a raw file target takes every block the job copies, zeroes
// too (a full: the whole disk). Running pushes hold their room (SpaceLedger) until their
// job ends, so backups of several domains onto one store add up; the room is
// saved with the job record, so a restarted daemon holds it again.

import { lstat, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { virErr } from '../errors.js';
import { TARGET_CLUSTER_SIZE } from './backup-plan.js';
import { AsyncMutex } from './mutex.js';
import type { BlockDeviceInfo, ImageInfo } from './qmp/commands.js';

/** What the estimate needs to know of one disk pushed into a file target. */
export interface PushSpaceInput {
  disk: string;
  /** the target file (its folder's filesystem is the one checked) */
  target: string;
  format: 'qcow2' | 'raw';
  virtualSize: number;
  /** the disk's format node, as query-named-block-nodes shows it */
  node: Pick<BlockDeviceInfo, 'image' | 'dirty-bitmaps'>;
  /** incremental: the checkpoint bitmap the job copies from */
  base: { bitmap: string; granularity: number } | null;
}

/** qcow2 metadata beyond L2 and refcount blocks: header, L1 table, refcount table, slack. */
const QCOW2_FIXED = 1 << 20;
/** Data one L2 table maps (64 KiB clusters, 8-byte entries); a refcount block counts (16-bit refcounts). */
const L2_SPAN = (TARGET_CLUSTER_SIZE / 8) * TARGET_CLUSTER_SIZE;
const REFCOUNT_SPAN = (TARGET_CLUSTER_SIZE / 2) * TARGET_CLUSTER_SIZE;

/** The most data the disk can hold: the allocation of every image in its chain, at most its size. */
export function diskDataBound(image: ImageInfo, virtualSize: number): number {
  let sum = 0;
  for (let i: ImageInfo | undefined = image; i !== undefined; i = i['backing-image']) {
    const actual = i['actual-size'];
    // an image QEMU cannot measure (a block device, a network disk) may hold all of it
    if (actual === undefined) return virtualSize;
    sum += actual;
  }
  return Math.min(sum, virtualSize);
}

const ceilDiv = (a: number, b: number): number => Math.ceil(a / b);

/** Bytes an incremental's job copies: its bitmap's dirty bytes, widened to target clusters; null: a full, or a bitmap QEMU does not show. */
function copiedBound(d: PushSpaceInput): number | null {
  const bm = d.base === null ? undefined : d.node['dirty-bitmaps']?.find((b) => b.name === d.base?.bitmap);
  if (d.base === null || bm === undefined) return null;
  // a dirty bit finer than a target cluster still allocates a whole cluster
  return bm.count * Math.max(1, TARGET_CLUSTER_SIZE / d.base.granularity);
}

/** Upper bound of the bytes one push target takes on its filesystem. */
export function pushSpaceNeed(d: PushSpaceInput): number {
  const copied = copiedBound(d);
  // The job writes what it copies from an unallocated block as zeroes, which a raw
  // file allocates (write-zeroes without unmap: measured on ext4 and tmpfs, a full
  // push of 9 MiB data on a 64 MiB disk took 64 MiB), and a qcow2 one does not.
  if (d.format === 'raw') return Math.min(d.virtualSize, copied ?? d.virtualSize);
  const data = Math.min(diskDataBound(d.node.image, d.virtualSize), copied ?? Infinity);
  const clusters = ceilDiv(data, TARGET_CLUSTER_SIZE);
  // scattered data needs one L2 table per region it touches, never more than the disk has
  const l2 = Math.min(clusters, ceilDiv(d.virtualSize, L2_SPAN)) * TARGET_CLUSTER_SIZE;
  const refcounts = (ceilDiv(data + l2, REFCOUNT_SPAN) + 1) * TARGET_CLUSTER_SIZE;
  return clusters * TARGET_CLUSTER_SIZE + l2 + refcounts + QCOW2_FIXED;
}

/** One filesystem's share of a backup: the folder it was measured at, free bytes (less `taken` by running pushes), needed bytes, the disks. */
interface FsShare {
  folder: string;
  free: number;
  taken: number;
  need: number;
  disks: string[];
}

/** Bytes a reused target already holds (they are rewritten in place, so they count as room). */
async function allocatedBytes(file: string): Promise<number> {
  const st = await lstat(file).catch(() => null);
  return st !== null && st.isFile() ? st.blocks * 512 : 0;
}

/** Room a running push may still take: one target's bound on its filesystem. */
interface Reservation {
  dev: number;
  target: string;
  need: number;
}

/**
 * A reservation as the job record keeps it: no device number (the target's
 * folder is stat'ed again when a restarted daemon restores it).
 */
export interface SavedReservation {
  target: string;
  need: number;
}

/** The room one backup holds from its check until its job ends (or its begin fails). */
export class SpaceHolding {
  reservations: Reservation[] = [];

  constructor(private readonly ledger: SpaceLedger) {}

  /** What the job record keeps of it. */
  saved(): SavedReservation[] {
    return this.reservations.map((r) => ({ target: r.target, need: r.need }));
  }

  release(): void {
    this.ledger.drop(this);
  }
}

/**
 * The push backups of this daemon that hold room, so that pushes of several
 * domains onto one filesystem add up: each target counts with its bound less
 * what it holds already. Checks run one at a time, so two begins never both
 * count on the same free bytes.
 */
export class SpaceLedger {
  private readonly holdings = new Set<SpaceHolding>();
  private readonly lock = new AsyncMutex();

  /** A new, empty holding (released when its begin fails or its job ends). */
  holding(): SpaceHolding {
    const h = new SpaceHolding(this);
    this.holdings.add(h);
    return h;
  }

  drop(h: SpaceHolding): void {
    this.holdings.delete(h);
  }

  /** checkPushSpace with the others' holdings counted; what passes is held by `h`. */
  check(h: SpaceHolding, disks: PushSpaceInput[], reuseExternal: boolean): Promise<void> {
    return this.lock.run(async () => {
      h.reservations = await checkPushSpace(disks, reuseExternal, (dev) => this.pending(dev, h));
    });
  }

  /**
   * A holding of the reservations a running push saved before a daemon
   * restart (its job record's `space`), released when that job ends. Filled
   * under the checks' lock, so no check counts it half restored; each
   * target's folder is stat'ed again (a device number need not survive a
   * reboot); one whose folder is gone holds nothing (its job cannot write there).
   */
  async recovered(saved: readonly SavedReservation[]): Promise<SpaceHolding> {
    const h = this.holding();
    await this.lock.run(async () => {
      const out: Reservation[] = [];
      for (const r of saved) {
        const dev = await stat(path.dirname(path.resolve(r.target))).then((s) => s.dev, () => null);
        if (dev !== null) out.push({ dev, target: r.target, need: r.need });
      }
      h.reservations = out;
    });
    return h;
  }

  /** Bytes the other holdings' targets on `dev` may still write. */
  private async pending(dev: number, except: SpaceHolding): Promise<number> {
    let sum = 0;
    for (const h of this.holdings) {
      if (h === except) continue;
      for (const r of h.reservations) if (r.dev === dev) sum += Math.max(0, r.need - (await allocatedBytes(r.target)));
    }
    return sum;
  }
}

/**
 * Refuse (OPERATION_FAILED, nothing created) a push whose file targets may
 * not fit on their filesystems; targets sharing a filesystem add up, and
 * `held(dev)` bytes there are taken already (running pushes). A filesystem
 * that cannot be measured is not checked. Returns what the targets hold.
 */
export async function checkPushSpace(
  disks: PushSpaceInput[], reuseExternal: boolean, held: (dev: number) => Promise<number> = async () => 0,
): Promise<Reservation[]> {
  const shares = new Map<number, FsShare>();
  const out: Reservation[] = [];
  for (const d of disks) {
    const folder = path.dirname(path.resolve(d.target));
    const dev = await stat(folder).then((s) => s.dev, () => null);
    if (dev === null) continue; // the begin itself reports a missing folder
    let share = shares.get(dev);
    if (share === undefined) {
      const fs = await statfs(folder).catch(() => null);
      if (fs === null) continue;
      const taken = await held(dev);
      share = { folder, free: fs.bavail * fs.bsize - taken, taken, need: 0, disks: [] };
      shares.set(dev, share);
    }
    const need = pushSpaceNeed(d);
    share.need += need;
    if (reuseExternal) share.free += await allocatedBytes(d.target);
    share.disks.push(d.disk);
    out.push({ dev, target: d.target, need });
  }
  for (const s of shares.values()) {
    if (s.need <= s.free) continue;
    const which = s.disks.length === 1 ? `disk '${s.disks[0]}'` : `disks ${s.disks.map((x) => `'${x}'`).join(', ')}`;
    const others = s.taken > 0 ? ` after ${s.taken} that running backups may still write` : '';
    throw virErr('OPERATION_FAILED', 'QEMU',
      `not enough free space for the backup of ${which} in '${s.folder}': it may need up to ${s.need} bytes, ` +
      `${Math.max(0, s.free)} are free${others} (a target that fills up while the job runs would make the guest's writes fail)`);
  }
  return out;
}
