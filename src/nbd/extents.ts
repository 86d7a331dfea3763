// Walking the extents of a range window by window: block status may describe
// less than asked, and huge disks must never be asked about in one request.
// Windows are queried several at a time (a 1 TiB disk is 256 windows of 4 GiB
// minus a block): the cost of finding dirty data is round trips, not bytes.

import type { Extent, NbdClient } from './client.js';
import { protocolError } from './errors.js';

export interface ExtentsOptions {
  offset?: number;
  /** Default: to the end of the export. */
  length?: number;
  /** Most bytes asked about per BLOCK_STATUS request (default: the most one request can ask, 4 GiB less one block). */
  chunk?: number;
  /** Windows queried at once (default 8). */
  parallel?: number;
}

/** Every extent of one window, looping while the server describes less than asked. */
async function windowExtents(client: NbdClient, context: string, start: number, end: number): Promise<Extent[]> {
  const out: Extent[] = [];
  let at = start;
  while (at < end) {
    const got = await client.blockStatus(at, end - at, context);
    if (got.length === 0) throw protocolError(`block status for context '${context}' at offset ${at} described nothing`);
    out.push(...got);
    const last = got[got.length - 1]!;
    at = last.offset + last.length;
  }
  return out;
}

/**
 * Extents of `context` covering exactly [offset, offset + length), in order,
 * with neighbours of equal flags merged (also across request windows).
 */
export async function* extents(client: NbdClient, context: string, opts: ExtentsOptions = {}): AsyncGenerator<Extent> {
  const offset = opts.offset ?? 0;
  const end = offset + (opts.length ?? client.size - offset);
  const min = client.blockSizes.minimum;
  let chunk = opts.chunk ?? 0xffffffff;
  chunk = Math.max(min, chunk - (chunk % min));
  const parallel = Math.max(1, opts.parallel ?? 8);
  const windows: Array<Promise<Extent[]>> = [];
  let next = offset;
  const refill = () => {
    while (windows.length < parallel && next < end) {
      const w = windowExtents(client, context, next, Math.min(end, next + chunk));
      w.catch(() => undefined); // awaited in order below; a later window's failure must not go unhandled meanwhile
      windows.push(w);
      next = Math.min(end, next + chunk);
    }
  };
  let held: Extent | undefined;
  refill();
  while (windows.length > 0) {
    const got = await windows.shift()!;
    refill();
    for (const e of got) {
      if (held && held.flags === e.flags && held.offset + held.length === e.offset) {
        held.length += e.length;
      } else {
        if (held) yield held;
        held = { ...e };
      }
    }
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
