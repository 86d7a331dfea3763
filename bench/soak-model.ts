// The soak's pure parts: a seeded PRNG, the write log that rebuilds the disk
// at any instant, and the tally it prints.
//
// "The disk at a backup's instant" is the write log replayed onto zeroes up to
// the number of entries that existed when backupBegin was called: every write
// goes through QEMU's monitor one after another, and no write is in flight
// while a backup begins, so exactly those writes are in the backup.

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Rng {
  private s: number;

  constructor(readonly seed: number) {
    this.s = seed >>> 0;
  }

  /** uniform in [0, 1) */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** integer in [0, n) */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** integer in [lo, hi] */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new Error('Rng.pick: empty list');
    return xs[this.int(xs.length)]!;
  }

  /** one key of `weights`, with probability proportional to its weight */
  weighted<K extends string>(weights: Record<K, number>): K {
    const entries = Object.entries(weights) as [K, number][];
    let r = this.next() * entries.reduce((s, [, w]) => s + w, 0);
    for (const [k, w] of entries) {
      r -= w;
      if (r < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }
}

/** A guest write (pattern fill) or bytes the disk turned out to hold after QEMU died. */
export type LogEntry =
  | { kind: 'write'; offset: number; length: number; pattern: number; cycle?: number }
  | { kind: 'bytes'; offset: number; data: Buffer; cycle?: number; why?: string };

/** Every change of one disk, in order; the disk at instant n is entries [0, n) applied to zeroes. */
export class WriteLog {
  readonly entries: LogEntry[] = [];
  private cache: { at: number; buf: Buffer } | null = null;

  constructor(readonly size: number) {}

  get instant(): number {
    return this.entries.length;
  }

  /** A random write: 4 KiB aligned, 4–256 KiB, so both whole and partial 64 KiB bitmap granules are hit. */
  randomWrite(rng: Rng): { offset: number; length: number; pattern: number } {
    const length = rng.range(1, 64) * 4096;
    const offset = rng.int((this.size - length) / 4096 + 1) * 4096;
    return { offset, length, pattern: rng.range(1, 255) };
  }

  push(e: LogEntry): void {
    this.entries.push(e);
  }

  /** The disk content at `instant` (a fresh buffer). */
  contentAt(instant: number): Buffer {
    // replaying from the last rebuild when it is earlier keeps the final sweep linear
    const start = this.cache !== null && this.cache.at <= instant ? this.cache : { at: 0, buf: Buffer.alloc(this.size) };
    const buf = Buffer.from(start.buf);
    for (const e of this.entries.slice(start.at, instant)) {
      if (e.kind === 'write') buf.fill(e.pattern, e.offset, e.offset + e.length);
      else e.data.copy(buf, e.offset);
    }
    this.cache = { at: instant, buf: Buffer.from(buf) };
    return buf;
  }

  /**
   * Record what the disk really holds after a crash (QEMU keeps qcow2
   * metadata in memory, so unflushed writes may vanish, as on real hardware).
   * Returns how many bytes differed from the log.
   */
  resync(actual: Buffer, cycle?: number, why?: string): number {
    const BLOCK = 4096;
    let differing = 0;
    for (const off of this.differingBlocks(actual)) {
      const a = actual.subarray(off, off + BLOCK);
      // merge neighbouring changed blocks into one entry
      const last = this.entries[this.entries.length - 1];
      if (last?.kind === 'bytes' && last.offset + last.data.length === off && differing > 0) {
        last.data = Buffer.concat([last.data, Buffer.from(a)]);
      } else {
        this.push({ kind: 'bytes', offset: off, data: Buffer.from(a), cycle, why });
      }
      differing += BLOCK;
    }
    return differing;
  }

  /** Offsets of the 4 KiB blocks where `actual` differs from the model now. */
  differingBlocks(actual: Buffer): number[] {
    const model = this.contentAt(this.instant);
    const out: number[] = [];
    for (let off = 0; off < this.size; off += 4096) if (!actual.subarray(off, off + 4096).equals(model.subarray(off, off + 4096))) out.push(off);
    return out;
  }

  /** Whether a guest write among entries [from, to) covers the block at `off`. */
  writtenIn(off: number, from: number, to: number): boolean {
    return this.entries.slice(from, to).some((e) => e.kind === 'write' && e.offset <= off && off < e.offset + e.length);
  }

  /**
   * Where `actual` differs from the model now: up to `max` runs of differing
   * 4 KiB blocks, each with what the disk holds and the log's last entries
   * over its first byte (which write the disk shows instead, if any).
   */
  describeDiff(actual: Buffer, max = 4): string[] {
    const model = this.contentAt(this.instant);
    const BLOCK = 4096;
    const runs: [number, number][] = [];
    for (const off of this.differingBlocks(actual)) {
      const last = runs[runs.length - 1];
      if (last !== undefined && last[1] === off) last[1] = off + BLOCK;
      else runs.push([off, off + BLOCK]);
    }
    return runs.slice(0, max).map(([from, to]) => {
      const covering: string[] = [];
      for (let i = this.entries.length - 1; i >= 0 && covering.length < 4; i--) {
        const e = this.entries[i]!;
        const end = e.kind === 'write' ? e.offset + e.length : e.offset + e.data.length;
        if (e.offset > from || end <= from) continue;
        const what = e.kind === 'write' ? `write 0x${e.pattern.toString(16)} [${e.offset}, ${end})` : `${e.why ?? 'resync'} bytes [${e.offset}, ${end}) first 0x${e.data[from - e.offset]!.toString(16)}`;
        covering.push(`#${i} cycle ${e.cycle ?? '?'} ${what}`);
      }
      const held = [...new Set(actual.subarray(from, to))].slice(0, 4).map((b) => `0x${b.toString(16)}`).join(',');
      const want = [...new Set(model.subarray(from, to))].slice(0, 4).map((b) => `0x${b.toString(16)}`).join(',');
      return `[${from}, ${to}) holds ${held}, model ${want}; newest entries over ${from}: ${covering.join(' | ') || 'none'}`;
    }).concat(runs.length > max ? [`… ${runs.length - max} more runs`] : []);
  }
}

/** A backup the API reported as successful, and the instant it must restore to. */
export interface Point {
  name: string;
  mode: 'push' | 'pull';
  kind: 'full' | 'incremental' | 'differential';
  /** the checkpoint it is incremental from */
  base: string | null;
  /** the backup file restore starts from */
  file: string;
  instant: number;
  cycle: number;
}

export type FaultKind =
  | 'daemon-kill-in-begin'
  | 'daemon-kill-in-job'
  | 'daemon-kill-idle'
  | 'qemu-kill'
  | 'target-full'
  | 'bitmap-removed'
  | 'state-deleted';

export const FAULT_KINDS: readonly FaultKind[] = [
  'daemon-kill-in-begin', 'daemon-kill-in-job', 'daemon-kill-idle', 'qemu-kill', 'target-full', 'bitmap-removed', 'state-deleted',
];

/** One finding: what went wrong, where, and enough to replay it. */
export interface Finding {
  /** drift: the live disk, read through QEMU, differs from the write log (the model or the disk is wrong) */
  what: 'lost' | 'unrestorable' | 'left-behind' | 'anomaly' | 'drift';
  cycle: number;
  detail: string;
}

export class Tally {
  cycles = 0;
  readonly faults = new Map<FaultKind, number>();
  readonly skipped = new Map<FaultKind, string>();
  readonly ops = new Map<string, number>();
  backupsOk = 0;
  backupsFailed = 0;
  restoresCompared = 0;
  exportsCompared = 0;
  liveCompared = 0;
  /** bytes of guest writes that a job with a full target made fail (QEMU's copy-before-write default) */
  refusedBytes = 0;
  bytesCompared = 0;
  crashBytesLost = 0;
  readonly findings: Finding[] = [];
  /** keys of findings already counted, so a leftover seen at every audit counts once */
  private readonly seen = new Set<string>();

  count(map: Map<string, number>, key: string): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  /** Record a finding once per key; returns whether it was new. */
  find(f: Finding, key = `${f.what}:${f.detail}`): boolean {
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    this.findings.push(f);
    return true;
  }

  total(what: Finding['what']): number {
    return this.findings.filter((f) => f.what === what).length;
  }

  get failed(): boolean {
    return this.total('lost') + this.total('unrestorable') + this.total('left-behind') + this.total('drift') > 0;
  }

  report(seed: number, seconds: number): string[] {
    const faults = FAULT_KINDS.map((k) => `${k} ${this.faults.get(k) ?? 0}${this.skipped.has(k) ? ` (skipped: ${this.skipped.get(k)})` : ''}`);
    const lines = [
      `seed ${seed}, ${this.cycles} cycles in ${seconds.toFixed(0)} s`,
      `operations: ${[...this.ops].map(([k, v]) => `${k} ${v}`).join(', ')}`,
      `backups reported successful ${this.backupsOk}, failed or refused ${this.backupsFailed}`,
      `faults injected ${[...this.faults.values()].reduce((a, b) => a + b, 0)}: ${faults.join(', ')}`,
      `restores compared ${this.restoresCompared}, pull exports compared ${this.exportsCompared}, live disk compared ${this.liveCompared}, bytes compared ${this.bytesCompared}`,
      `bytes of unflushed guest writes gone with a killed QEMU (not a defect): ${this.crashBytesLost}`,
      `bytes of guest writes failed by a backup job whose target was full (QEMU's copy-before-write default): ${this.refusedBytes}`,
      `lost ${this.total('lost')}, unrestorable ${this.total('unrestorable')}, left behind ${this.total('left-behind')}, drifts ${this.total('drift')}, anomalies ${this.total('anomaly')}`,
    ];
    for (const f of this.findings) lines.push(`  ${f.what} (cycle ${f.cycle}): ${f.detail}`);
    return lines;
  }
}
