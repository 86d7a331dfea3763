// Shared by the repository tests: tool runners, the checksum definition
// recomputed independently from raw bytes, and file fingerprints.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import type { BackupManifestInput } from '../../src/repository/index.js';

export const run = promisify(execFile);
export const MiB = 1 << 20;

export async function img(...args: string[]): Promise<string> {
  return (await run('qemu-img', args)).stdout;
}

export async function qemuIo(format: string, file: string, ...cmds: string[]): Promise<void> {
  await run('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), file]);
}

export const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The guest content of an image (any chain) as raw bytes, via qemu-img convert. */
export async function rawContent(file: string, dir: string): Promise<Buffer> {
  const out = `${dir}/.content-${Math.random().toString(36).slice(2)}.raw`;
  await img('convert', '-U', '-O', 'raw', file, out);
  try {
    return await fs.readFile(out);
  } finally {
    await fs.rm(out, { force: true });
  }
}

/** The manifest checksum definition, from the bytes: sha256 per MiB, 32 zero bytes for an all-zero block. */
export function referenceChecksum(content: Buffer): string {
  const top = createHash('sha256');
  for (let o = 0; o < content.length; o += MiB) {
    const b = content.subarray(o, Math.min(content.length, o + MiB));
    top.update(b.every((x) => x === 0) ? Buffer.alloc(32) : createHash('sha256').update(b).digest());
  }
  return top.digest('hex');
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export async function map(file: string, format?: string): Promise<MapEntry[]> {
  return JSON.parse(await img('map', '--output=json', '-U', ...(format ? ['-f', format] : []), file)) as MapEntry[];
}

/** Bytes of [start, end) that `map` reports as data. */
export function dataBytesIn(entries: MapEntry[], start: number, end: number): number {
  let n = 0;
  for (const e of entries) {
    if (!e.data) continue;
    n += Math.max(0, Math.min(end, e.start + e.length) - Math.max(start, e.start));
  }
  return n;
}

/** sha256 and mtime of each file, to prove backups were not modified. */
export async function fingerprint(files: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of files) {
    const st = await fs.stat(f);
    out[f] = `${sha(await fs.readFile(f))} ${st.mtimeMs}`;
  }
  return out;
}

/** A manifest input for a test chain of disk 'sda' of domain vm1 (`over` sets what differs per link). */
export function manifestInput(target: string, virtualSize: number, over: Partial<BackupManifestInput> = {}): BackupManifestInput {
  return {
    domain: { name: 'vm1', uuid: 'c7a5fdbd-cdaf-9455-926a-d65c16db1809' },
    disk: 'sda',
    target,
    format: 'qcow2',
    checkpoint: null,
    incrementalFrom: null,
    parentBackup: null,
    time: 1_700_000_000,
    virtualSize,
    jobId: 1,
    mode: 'push',
    ...over,
  };
}

/** Copy the files of `dir` whose names match `pattern` into a fresh folder `dir/name` (backing names are relative). */
export async function copyChain(dir: string, name: string, pattern: RegExp): Promise<string> {
  const d = path.join(dir, name);
  await fs.mkdir(d);
  for (const f of await fs.readdir(dir)) if (pattern.test(f)) await fs.copyFile(path.join(dir, f), path.join(d, f));
  return d;
}

export interface Server {
  proc: ChildProcess;
  socket: string;
  exited: Promise<unknown>;
}

/** A read-only qemu-nbd serving `image` (optionally a bitmap's dirty context) on DIR/NAME.sock, once it listens. */
export async function serve(dir: string, image: string, name: string, bitmap?: string): Promise<Server> {
  const socket = path.join(dir, `${name}.sock`);
  const proc = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=4', '--format=qcow2', `--socket=${socket}`, ...(bitmap ? [`--bitmap=${bitmap}`] : []), image], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise((r) => proc.once('exit', r));
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error('qemu-nbd exited');
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.createConnection(socket);
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) break;
    if (i > 200) throw new Error('qemu-nbd did not listen');
    await new Promise((r) => setTimeout(r, 25));
  }
  return { proc, socket, exited };
}
