// Dirty bitmaps as QEMU reports them, and the rules that decide whether a
// checkpoint's bitmap is usable. Pure: input is query-named-block-nodes output
// (or qemu-img info for a shut-off domain), output is plain values.

import type { BlockDeviceInfo } from './qmp/commands.js';

/** One bitmap on one node, reduced to what the checks need. */
export interface BitmapState {
  name: string;
  /** dirty bytes */
  count: number;
  granularity: number;
  recording: boolean;
  persistent: boolean;
  /** stored uncleanly (QEMU killed while the image was open): unusable, only removable */
  inconsistent: boolean;
  busy: boolean;
}

/** node name -> bitmaps on it */
export type NodeBitmaps = Map<string, BitmapState[]>;

/** Names virtback uses for its own short-lived bitmaps; never reported as unknown. */
export const TEMP_BITMAP_PREFIXES = ['backup-', 'virtback-tmp-'];

export const SIZE_BITMAP = 'virtback-tmp-size-xml';

export function nodeBitmapsFromQmp(nodes: readonly BlockDeviceInfo[]): NodeBitmaps {
  const out: NodeBitmaps = new Map();
  for (const n of nodes) {
    const name = n['node-name'];
    if (name === undefined) continue;
    out.set(
      name,
      (n['dirty-bitmaps'] ?? [])
        .filter((b) => b.name !== undefined)
        .map((b) => ({
          name: b.name as string,
          count: b.count,
          granularity: b.granularity,
          recording: b.recording,
          persistent: b.persistent,
          inconsistent: b.inconsistent === true,
          busy: b.busy,
        })),
    );
  }
  return out;
}

/**
 * Bitmaps of a qcow2 image from `qemu-img info --output=json` (shut-off domain):
 * flags 'auto' = recording, 'in-use' = not stored cleanly = inconsistent.
 */
export function bitmapsFromImageInfo(info: unknown): BitmapState[] {
  const data = (info as { 'format-specific'?: { data?: { bitmaps?: unknown } } })['format-specific']?.data;
  const list = Array.isArray(data?.bitmaps) ? (data.bitmaps as { name: string; granularity: number; flags: string[] }[]) : [];
  return list.map((b) => ({
    name: b.name,
    count: 0,
    granularity: b.granularity,
    recording: b.flags.includes('auto'),
    persistent: true,
    inconsistent: b.flags.includes('in-use'),
    busy: false,
  }));
}

/** Why a checkpoint bitmap cannot be used, or null when it can. */
export function bitmapProblem(bitmap: BitmapState | undefined, expectedGranularity?: number | null): string | null {
  if (bitmap === undefined) return 'bitmap missing';
  if (bitmap.inconsistent) return 'bitmap inconsistent (not stored cleanly, e.g. QEMU was killed)';
  if (!bitmap.persistent) return 'bitmap not persistent';
  if (!bitmap.recording) return 'bitmap not recording';
  if (expectedGranularity && bitmap.granularity !== expectedGranularity) {
    return `bitmap granularity changed from ${expectedGranularity} to ${bitmap.granularity}`;
  }
  return null;
}

export function findBitmap(nodes: NodeBitmaps, node: string, name: string): BitmapState | undefined {
  return nodes.get(node)?.find((b) => b.name === name);
}

export function isTempBitmap(name: string): boolean {
  return TEMP_BITMAP_PREFIXES.some((p) => name.startsWith(p));
}
