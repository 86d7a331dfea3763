// Which chunks a bucket holds, from one listing instead of one request per
// chunk (docs/object-storage.md, "Requests"). A backup claims each chunk it
// stores (ChunkRepository.claimChunk: a touch, one COPY on S3) and uploads
// it when the claim finds nothing; for a chunk the bucket never had, that
// COPY is a wasted request. The census lists the chunk keys page by page and
// answers "absent" for keys the listing has passed without seeing them, so
// such a chunk costs its PUT alone. A chunk the listing saw is still claimed
// by its COPY: that touch is what keeps another host's gc from deleting it
// (gc.ts), and the census changes nothing about it.
//
// Being wrong is harmless either way: a chunk written by another host after
// the listing passed it is uploaded again (same content, same key); one
// deleted since is claimed, found missing and uploaded. Memory: 4 bytes per
// listed chunk, and a set entry per chunk stored (the first 32 bits of its
// id: a prefix shared with another chunk only costs that chunk a COPY that
// finds nothing).
//
// Cost: the listing goes on only while it has made fewer LIST requests than
// chunks were asked about (so a run never pays more than twice what probing
// every chunk costs), and a chunk whose key it has not reached yet is probed
// as before rather than waiting for it. A repository with fewer chunks than
// 1000 × the chunks a run stores is listed whole after a few probes.

import { isChunkId } from './chunk-codec.js';
import { chunkKey } from './repo.js';

export const CENSUS_PREFIX = 'chunks/';
/** A census older than this is dropped and begun again (another host's chunks written since would be uploaded again). */
export const CENSUS_MAX_AGE_MS = 15 * 60_000;

export interface CensusPage {
  /** keys in ascending order, relative to the store (as list() yields them) */
  keys: string[];
  /** the token of the next page; undefined on the last */
  next: string | undefined;
}

/** The 32-bit prefix of a chunk key's id, or null when the key is not a chunk's. */
function idPrefix(key: string): number | null {
  const id = key.slice(key.lastIndexOf('/') + 1);
  if (!isChunkId(id) || key !== chunkKey(id)) return null;
  return Number.parseInt(id.slice(0, 8), 16);
}

export class ChunkCensus {
  readonly startedMs = Date.now();
  /** id prefixes listed so far, ascending (keys come in order, and their order is their ids') */
  private seen = new Uint32Array(1024);
  private count = 0;
  /** the last key listed: a chunk key at or below it was seen if present */
  private cursor = '';
  private token: string | undefined = undefined;
  private done = false;
  private pages = 0;
  private asked = 0;
  private fetching: Promise<void> | null = null;
  /** id prefixes of chunks this process stored (the listing may have passed them before) */
  private readonly added = new Set<number>();

  constructor(private readonly fetchPage: (token: string | undefined) => Promise<CensusPage>) {}

  get stale(): boolean {
    return Date.now() - this.startedMs > CENSUS_MAX_AGE_MS;
  }

  /** Whether `key` is a chunk key this census is about. */
  static covers(key: string): boolean {
    return key.startsWith(CENSUS_PREFIX) && idPrefix(key) !== null;
  }

  /**
   * 'absent' when the listing passed the key without it, 'listed' when it saw
   * its id prefix, null when it has not got there (ask the bucket). Each call
   * may advance the listing by a page, in the background.
   */
  lookup(key: string): 'absent' | 'listed' | null {
    const p = idPrefix(key);
    if (p === null) return null;
    this.asked++;
    this.advance();
    if (this.added.has(p)) return 'listed';
    if (!this.done && key > this.cursor) return null;
    return this.has(p) ? 'listed' : 'absent';
  }

  /** The key was stored (by this process): later lookups say 'listed'. */
  noteStored(key: string): void {
    const p = ChunkCensus.covers(key) ? idPrefix(key) : null;
    if (p !== null) this.added.add(p);
  }

  /** Wait for the page being listed (tests; a lookup never waits). */
  async settle(): Promise<void> {
    while (this.fetching) await this.fetching;
  }

  private advance(): void {
    if (this.done || this.fetching || this.pages >= this.asked) return;
    this.pages++;
    this.fetching = this.fetchPage(this.token).then(
      (page) => {
        for (const k of page.keys) {
          const p = idPrefix(k);
          if (p !== null) this.push(p);
        }
        if (page.keys.length > 0) this.cursor = page.keys.at(-1)!;
        this.token = page.next;
        this.done = page.next === undefined;
        this.fetching = null;
      },
      () => {
        // a failed page ends the census where it stands: the rest is probed as without one
        this.done = false;
        this.pages = Number.POSITIVE_INFINITY;
        this.fetching = null;
      },
    );
  }

  private push(p: number): void {
    if (this.count === this.seen.length) {
      const grown = new Uint32Array(this.seen.length * 2);
      grown.set(this.seen);
      this.seen = grown;
    }
    this.seen[this.count++] = p;
  }

  private has(p: number): boolean {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.seen[mid]! < p) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.count && this.seen[lo] === p;
  }
}
