// Walking the extents of a range window by window: block status may describe
// less than asked, and huge disks must never be asked about in one request.

import type { Extent, NbdClient } from './client.js';
import { protocolError } from './errors.js';

export interface ExtentsOptions {
  offset?: number;
  /** Default: to the end of the export. */
  length?: number;
  /** Most bytes asked about per BLOCK_STATUS request (default 1 GiB). */
  chunk?: number;
}

/**
 * Extents of `context` covering exactly [offset, offset + length), in order,
 * with neighbours of equal flags merged (also across request windows).
 */
export async function* extents(client: NbdClient, context: string, opts: ExtentsOptions = {}): AsyncGenerator<Extent> {
  const offset = opts.offset ?? 0;
  const end = offset + (opts.length ?? client.size - offset);
  const min = client.blockSizes.minimum;
  let chunk = opts.chunk ?? 1 << 30;
  chunk = Math.max(min, chunk - (chunk % min));
  let held: Extent | undefined;
  let at = offset;
  while (at < end) {
    const got = await client.blockStatus(at, Math.min(chunk, end - at), context);
    if (got.length === 0) throw protocolError(`block status for context '${context}' at offset ${at} described nothing`);
    for (const e of got) {
      if (held && held.flags === e.flags && held.offset + held.length === e.offset) {
        held.length += e.length;
      } else {
        if (held) yield held;
        held = { ...e };
      }
    }
    const last = got[got.length - 1]!;
    at = last.offset + last.length;
  }
  if (held) yield held;
}

/** Merge touching extents with equal flags; input must be sorted and non-overlapping. */
export function mergeExtents(list: Iterable<Extent>): Extent[] {
  const out: Extent[] = [];
  for (const e of list) {
    const prev = out[out.length - 1];
    if (prev && prev.flags === e.flags && prev.offset + prev.length === e.offset) prev.length += e.length;
    else out.push({ ...e });
  }
  return out;
}
