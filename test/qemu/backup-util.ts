// Helpers for the backup tests.
//
// "The disk as it was at the backup's instant" is known independently of
// QEMU and of the code under test: every byte the tests write goes through
// HMP qemu-io with a known pattern, and a DiskModel replays those writes onto
// a zeroed buffer. Writes whose HMP reply arrived before backupBegin was called
// are in the backup's instant; the writes that hammer the disk while the job
// runs start after backupBegin returned, so they must not be in it (the QMP
// monitor serialises them after the backup's transaction). The expected image
// is written as a raw file and compared with `qemu-img compare`, which follows
// the backup's backing chain.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { DriverEvent, JobCompletedEvent } from '../../src/api/driver.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { hmpWrite, waitFor } from '../helpers/qemu-env.js';

export const run = promisify(execFile);
export const K64 = 65536;
export const MiB = 1024 * 1024;

export class DiskModel {
  readonly buf: Buffer;
  /** 64 KiB clusters written since the model was last marked */
  dirty = new Set<number>();

  constructor(readonly target: string, size: number) {
    this.buf = Buffer.alloc(size);
  }

  apply(off: number, len: number, pattern: number): void {
    this.buf.fill(pattern, off, off + len);
    for (let c = Math.floor(off / K64); c * K64 < off + len; c++) this.dirty.add(c);
  }

  snapshot(): Buffer {
    return Buffer.from(this.buf);
  }

  markClean(): void {
    this.dirty = new Set();
  }
}

/** Write through HMP and record it in the model. */
export async function write(driver: QemuDriver, uuid: string, m: DiskModel, off: number, len: number, pattern: number): Promise<void> {
  await hmpWrite(driver, uuid, m.target, pattern, off, len);
  m.apply(off, len, pattern);
}

/** Deterministic pseudo-random writes of 64 KiB. */
export async function scatter(driver: QemuDriver, uuid: string, m: DiskModel, n: number, seed: number): Promise<void> {
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const cluster = x % (m.buf.length / K64);
    await write(driver, uuid, m, cluster * K64, K64, 1 + (x % 250));
  }
}

/** Keep writing into the disks until stop() is called; returns how many writes were made. */
export function hammer(driver: QemuDriver, uuid: string, models: DiskModel[], seed: number): { stop(): Promise<number> } {
  let running = true;
  let count = 0;
  const loop = (async () => {
    let x = seed;
    while (running) {
      for (const m of models) {
        x = (x * 1103515245 + 12345) & 0x7fffffff;
        const cluster = x % (m.buf.length / K64);
        await write(driver, uuid, m, cluster * K64, K64, 1 + (x % 250));
        count++;
      }
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return count;
    },
  };
}

/** Write the expected image and qemu-img compare it with `image` (following its backing chain). */
export async function assertSameContent(expected: Buffer, image: string, scratchFile: string): Promise<void> {
  await writeFile(scratchFile, expected);
  try {
    await run('qemu-img', ['compare', '-q', '-f', 'raw', scratchFile, image]);
  } catch (e) {
    const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', scratchFile, image]).catch((x: { stdout: string }) => x);
    assert.fail(`${image} differs from the disk at the backup instant: ${stdout || (e as Error).message}`);
  }
}

export function jobCompleted(events: DriverEvent[], uuid: string, id: number): JobCompletedEvent | undefined {
  return events.find((e): e is JobCompletedEvent => e.type === 'job-completed' && e.domain.uuid === uuid && e.jobId === id);
}

export function waitJobCompleted(events: DriverEvent[], uuid: string, id: number, timeoutMs = 60_000): Promise<JobCompletedEvent> {
  return waitFor(() => jobCompleted(events, uuid, id), `job-completed of backup job ${id}`, timeoutMs);
}

/** Raw QMP through the driver; throws on an error reply. */
export async function qmp(driver: QemuDriver, uuid: string, execute: string, args?: object): Promise<unknown> {
  const out = JSON.parse(await driver.qemuMonitorCommand(uuid, JSON.stringify({ execute, arguments: args }), 0)) as {
    return?: unknown; error?: { desc: string };
  };
  if (out.error) throw new Error(`${execute}: ${out.error.desc}`);
  return out.return;
}

/** What QEMU holds besides the domain's own disks: node names, bitmaps per node, exports, jobs. */
export async function qemuState(driver: QemuDriver, uuid: string): Promise<{ nodes: string[]; bitmaps: string[]; exports: string[]; jobs: string[] }> {
  const nodes = (await qmp(driver, uuid, 'query-named-block-nodes', { flat: true })) as {
    'node-name': string; 'dirty-bitmaps'?: { name: string }[];
  }[];
  const exports = (await qmp(driver, uuid, 'query-block-exports')) as { id: string }[];
  const jobs = (await qmp(driver, uuid, 'query-jobs')) as { id: string }[];
  return {
    nodes: nodes.map((n) => n['node-name']).sort(),
    bitmaps: nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => `${n['node-name']}/${b.name}`)).sort(),
    exports: exports.map((x) => x.id).sort(),
    jobs: jobs.map((j) => j.id).sort(),
  };
}

/** Slow a running backup job down (QEMU's rate limit), so writes land while it copies. */
export async function setSpeed(driver: QemuDriver, uuid: string, jobId: string, bytesPerSec: number): Promise<void> {
  await qmp(driver, uuid, 'block-job-set-speed', { device: jobId, speed: bytesPerSec }).catch(() => {
    // the job may be done already
  });
}

export async function backingFile(image: string): Promise<string | null> {
  const { stdout } = await run('qemu-img', ['info', '-U', '--output=json', image]);
  return (JSON.parse(stdout) as { 'backing-filename'?: string })['backing-filename'] ?? null;
}
