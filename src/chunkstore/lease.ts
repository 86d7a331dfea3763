// A backup run's lease on its domain, which is also its in-flight record
// (docs/repository.md, "Several hosts, one repository"). The store has no
// locks and no conditional writes, so each run writes its own claim object
// (a key naming its host and run: no two writers share it), then lists the
// domain's claims: any other live claim and it withdraws. Two runs that start
// together may both withdraw; they never both proceed, because one that saw
// no rival wrote its claim before the rival listed.
//
// The claim also tells gc and prune what the run relies on: the base point's
// index keys (prune keeps them, gc marks their chunks) and the store's time
// of the claim's first write (gc removes nothing younger while it lives).

import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { isVirError, virErr, type VirError } from '../errors.js';
import { errField, silentLogger, type Logger } from '../log.js';
import type { ObjectStore } from './object-store.js';
import { domainSegment, pointKey, type ChunkRepository, type PointRecord } from './repo.js';

export const LEASES_PREFIX = 'leases/';
export const DEFAULT_LEASE_RENEW_MS = 30_000;
export const DEFAULT_LEASE_TIMEOUT_MS = 5 * 60_000;

const claimSchema = z.object({
  host: z.string(),
  pid: z.number(),
  domain: z.string(),
  run: z.string(),
  started: z.string(),
  /** the store's modification time of the claim's first write (epoch ms) */
  firstWriteMs: z.number(),
  /** how long after its last renewal others may take the claim for dead */
  timeoutMs: z.number(),
  base: z.object({ point: z.string(), indexes: z.array(z.string()) }).nullable(),
}).passthrough();
export type Claim = z.infer<typeof claimSchema>;

export interface ListedClaim {
  key: string;
  claim: Claim | null;
  /** store time of the last (re)write */
  mtimeMs: number;
  live: boolean;
}

export interface LeaseOptions {
  /** who this host is in the fleet (default: $VIRTBACK_HOST_ID, else the host name) */
  hostId?: string;
  renewMs?: number;
  timeoutMs?: number;
  log?: Logger;
  /** Tests inject interleavings: after the first write, before the listing. */
  afterClaim?: () => Promise<void>;
  /** Tests: after the claim names the base, before the base's record is checked. */
  afterBase?: () => Promise<void>;
}

/** One key segment for a host id (any string). */
function hostSegment(host: string): string {
  if (host.length === 0) throw virErr('INVALID_ARG', 'STORAGE', 'empty host id');
  return encodeURIComponent(host).replace(/^\./, '%2E').replace(/~/g, '%7E');
}

export function claimsPrefix(domain?: string): string {
  return domain === undefined ? LEASES_PREFIX : `${LEASES_PREFIX}${domainSegment(domain)}/`;
}

/** Every claim (of one domain, or all), read (but `own`: listed only), with whether it is live at `nowMs` (the reader's clock). */
export async function listClaims(store: ObjectStore, domain?: string, nowMs = Date.now(), own?: string): Promise<ListedClaim[]> {
  const out: ListedClaim[] = [];
  for await (const o of store.list(claimsPrefix(domain))) {
    if (!o.key.endsWith('.json')) continue;
    if (o.key === own) {
      out.push({ key: o.key, claim: null, mtimeMs: o.mtimeMs, live: true });
      continue;
    }
    let claim: Claim | null;
    try {
      claim = claimSchema.parse(JSON.parse((await store.get(o.key)).toString('utf8')));
    } catch (e) {
      if (isVirError(e, 'NO_STORAGE_VOL')) continue; // released while listing
      claim = null; // unreadable: judged by age alone, with the default timeout
    }
    const timeout = claim?.timeoutMs ?? DEFAULT_LEASE_TIMEOUT_MS;
    out.push({ key: o.key, claim, mtimeMs: o.mtimeMs, live: o.mtimeMs >= nowMs - timeout });
  }
  return out;
}

/** Claims this process holds now: one of this host and pid not among them is a finished run's that could not remove it. */
const held = new Set<string>();

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A live-looking claim of this very host whose run is known to be over (its process is gone, or it is ours and released). */
function deadHere(c: ListedClaim, host: string): boolean {
  if (!c.claim || c.claim.host !== host) return false;
  return c.claim.pid === process.pid ? !held.has(c.key) : !pidAlive(c.claim.pid);
}

function describe(c: ListedClaim): string {
  if (!c.claim) return `an unreadable claim '${c.key}'`;
  return `host '${c.claim.host}' (pid ${c.claim.pid}, started ${c.claim.started})`;
}

export class DomainLease {
  private timer: NodeJS.Timeout | null = null;
  private lastRenewed: number;
  private lostError: VirError | null = null;
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly store: ObjectStore,
    readonly key: string,
    private claim: Claim,
    private readonly opts: LeaseOptions,
    private readonly log: Logger,
  ) {
    this.lastRenewed = Date.now();
  }

  /**
   * Claim `domain` in the repository: write this run's claim, then look for
   * any other live one (then withdraw and fail naming its holder). Stale
   * claims (holders that stopped renewing) are removed: the lease is taken over.
   */
  static async acquire(repo: ChunkRepository, domain: string, opts: LeaseOptions = {}): Promise<DomainLease> {
    const store = repo.store;
    const host = opts.hostId ?? process.env.VIRTBACK_HOST_ID ?? os.hostname();
    const run = `${process.pid}-${randomBytes(4).toString('hex')}`;
    const key = `${claimsPrefix(domain)}${hostSegment(host)}~${run}.json`;
    const log = (opts.log ?? silentLogger).child({ lease: key });
    const claim: Claim = {
      host,
      pid: process.pid,
      domain,
      run,
      started: new Date().toISOString(),
      firstWriteMs: 0,
      timeoutMs: opts.timeoutMs ?? DEFAULT_LEASE_TIMEOUT_MS,
      base: null,
    };
    await store.put(key, Buffer.from(JSON.stringify(claim)));
    const lease = new DomainLease(store, key, claim, opts, log);
    try {
      await opts.afterClaim?.();
      for (const c of await listClaims(store, domain, Date.now(), key)) {
        if (c.key === key) {
          // the store's time of the first write, carried by later rewrites (until then gc reads it off the object)
          claim.firstWriteMs = c.mtimeMs;
          continue;
        }
        if (c.live && !deadHere(c, host)) throw virErr('OPERATION_INVALID', 'STORAGE', `domain '${domain}' is being backed up into this repository by ${describe(c)}: its lease is live`);
        await store.delete(c.key);
        log.warn({ stale: c.key, holder: c.claim?.host, pid: c.claim?.pid }, 'took over the lease of a backup run that ended without removing it');
      }
    } catch (e) {
      await store.delete(key).catch(() => undefined);
      throw e;
    }
    held.add(key);
    lease.timer = setInterval(() => void lease.renew(), opts.renewMs ?? DEFAULT_LEASE_RENEW_MS);
    lease.timer.unref();
    return lease;
  }

  get record(): Readonly<Claim> {
    return this.claim;
  }

  /**
   * Name the base point whose chunks the run reuses, then check that its
   * record still exists: if it does, a prune that deletes it later sees this
   * claim and keeps its indexes. Returns false when the base is gone.
   */
  async setBase(point: PointRecord): Promise<boolean> {
    this.claim = { ...this.claim, base: { point: point.id, indexes: point.disks.map((d) => d.index) } };
    await this.write();
    await this.opts.afterBase?.();
    return (await this.store.stat(pointKey(point.domain.name, point.id))) !== null;
  }

  /** Throws when the lease could not be renewed for a whole timeout: another host may hold it now. */
  check(): void {
    if (this.lostError) throw this.lostError;
    if (Date.now() - this.lastRenewed > this.claim.timeoutMs) {
      this.lostError = virErr('OPERATION_FAILED', 'STORAGE', `the lease on domain '${this.claim.domain}' was not renewed for ${this.claim.timeoutMs} ms: another host may have taken it over`);
      throw this.lostError;
    }
  }

  /** Rewrite the claim (refreshes its store time); a failure is logged, and fatal only after a whole timeout. */
  async renew(): Promise<void> {
    try {
      this.check();
      await this.write();
    } catch (e) {
      this.log.warn(errField(e), 'renewing the backup lease failed');
    }
  }

  /** Stop renewing and remove the claim (when the store cannot, the next run of this host takes it over at once). */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    held.delete(this.key);
    await this.writing.catch(() => undefined);
    await this.store.delete(this.key);
  }

  /** Stop renewing without removing the claim (a crash, in tests: the claim still counts as held by this process). */
  abandon(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private write(): Promise<void> {
    // one write at a time, in order: a renewal never overwrites a newer base with an older one
    const next = this.writing.catch(() => undefined).then(async () => {
      await this.store.put(this.key, Buffer.from(JSON.stringify(this.claim)));
      this.lastRenewed = Date.now();
    });
    this.writing = next;
    return next;
  }
}

/** Run `fn` holding the domain's lease; released however `fn` ends. */
export async function withDomainLease<T>(repo: ChunkRepository, domain: string, opts: LeaseOptions, fn: (lease: DomainLease) => Promise<T>): Promise<T> {
  const lease = await DomainLease.acquire(repo, domain, opts);
  try {
    return await fn(lease);
  } finally {
    await lease.release().catch((e: unknown) => (opts.log ?? silentLogger).warn(errField(e), 'removing the backup lease failed'));
  }
}
