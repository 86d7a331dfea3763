// The chunk repositories the console shows and backs up into (`--web-repo`,
// repeatable), and their point listings, cached: listing reads every point
// record, so it is refreshed when something may have changed it (a job or a
// console task ended), not on every page view.

import path from 'node:path';
import { ChunkRepository, type PointRecord } from '../chunkstore/index.js';
import { openObjectStore, parseS3Url } from '../chunkstore/store-url.js';
import { virErr } from '../errors.js';

export interface RepoInfo {
  /** its index in the --web-repo order, as a string: the id in URLs (the name is accepted too) */
  id: string;
  name: string;
  url: string;
}

interface Entry extends RepoInfo {
  /** the folder, or the s3:// URL */
  dir: string;
  repo: Promise<ChunkRepository> | null;
  points: Promise<PointRecord[]> | null;
}

export class RepoSet {
  private readonly entries: Entry[];

  constructor(locations: readonly string[]) {
    this.entries = locations.map((loc, i) => {
      const s3 = parseS3Url(loc);
      if (s3 !== null) {
        // endpoint and credentials as the CLI takes them (environment, AWS config files)
        return { id: String(i), name: (s3.prefix || s3.bucket).split('/').filter(Boolean).pop() ?? s3.bucket, url: loc, dir: loc, repo: null, points: null };
      }
      if (/^[a-z][a-z0-9+.-]*:\/\//i.test(loc) && !loc.startsWith('file://')) {
        throw virErr('CONFIG_UNSUPPORTED', 'STORAGE', `--web-repo '${loc}': a folder or s3://BUCKET/PREFIX`);
      }
      const dir = path.resolve(loc.replace(/^file:\/\//, ''));
      return { id: String(i), name: path.basename(dir), url: dir, dir, repo: null, points: null };
    });
  }

  list(): RepoInfo[] {
    return this.entries.map(({ id, name, url }) => ({ id, name, url }));
  }

  /** By index or, when unambiguous, by name. */
  find(ref: string): RepoInfo & { dir: string } {
    const e = this.entry(ref);
    return { id: e.id, name: e.name, url: e.url, dir: e.dir };
  }

  async open(ref: string): Promise<ChunkRepository> {
    const e = this.entry(ref);
    e.repo ??= openObjectStore(e.dir).then((s) => ChunkRepository.open(s));
    try {
      return await e.repo;
    } catch (err) {
      e.repo = null; // a repository initialised later is picked up at the next try
      throw err;
    }
  }

  /** Every point of the repository, oldest first, from the cache when it is current. */
  async points(ref: string): Promise<PointRecord[]> {
    const e = this.entry(ref);
    e.points ??= this.open(ref).then((r) => r.listPoints());
    try {
      return await e.points;
    } catch (err) {
      e.points = null;
      throw err;
    }
  }

  /** Forget the listings (of one repository, or all): the next read lists again. */
  invalidate(ref?: string): void {
    for (const e of ref === undefined ? this.entries : [this.entry(ref)]) e.points = null;
  }

  private entry(ref: string): Entry {
    const byIndex = /^\d+$/.test(ref) ? this.entries[Number(ref)] : undefined;
    if (byIndex) return byIndex;
    const named = this.entries.filter((e) => e.name === ref);
    if (named.length === 1) return named[0]!;
    throw virErr(named.length > 1 ? 'INVALID_ARG' : 'NO_STORAGE_VOL', 'STORAGE', named.length > 1 ? `repository name '${ref}' is ambiguous: use its index` : `no repository '${ref}' is configured (--web-repo)`);
  }
}
