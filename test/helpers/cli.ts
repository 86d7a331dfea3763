// Running the virtback CLI in-process against a daemon: `startDaemon` serves
// a driver on temp sockets (the in-memory TestDriver unless told otherwise),
// `cli.run(...args)` calls main() with -c pointing at it and returns exit
// code, stdout and stderr.

import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import type { Driver } from '../../src/api/driver.js';
import type { EntryPointTable } from '../../src/api/entry-points.js';
import { TestDriver } from '../../src/api/test-driver.js';
import { main } from '../../src/cli/virtback.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { silentLogger } from '../../src/log.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

let capturing = false;

/** main(argv) with process.stdout/stderr captured (one at a time). */
/** `main(argv)` with stdout and stderr captured; `table` as main takes it (a changed copy in the entry-point tests). */
export async function runMain(argv: string[], table?: EntryPointTable): Promise<CliResult> {
  if (capturing) throw new Error('runMain: calls must not overlap (output is captured globally)');
  capturing = true;
  let stdout = '';
  let stderr = '';
  const o = process.stdout.write.bind(process.stdout);
  const e = process.stderr.write.bind(process.stderr);
  // The CLI writes strings; the test runner's own reports (Buffers, in a --test
  // child process) pass through untouched so they are not lost.
  const grab = (append: (s: string) => void, original: typeof process.stdout.write) =>
    ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      if (typeof chunk !== 'string') return (original as (c: Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
      append(chunk);
      const cb = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      cb?.();
      return true;
    }) as typeof process.stdout.write;
  process.stdout.write = grab((s) => (stdout += s), o);
  process.stderr.write = grab((s) => (stderr += s), e);
  try {
    const code = await main(argv, table);
    return { code, stdout, stderr };
  } finally {
    process.stdout.write = o;
    process.stderr.write = e;
    capturing = false;
  }
}

export interface CliEnv<D extends Driver> {
  dir: string;
  daemon: Daemon;
  driver: D;
  socket: string;
  uri: string;
  /** virtback -c URI ARGS... */
  run(...args: string[]): Promise<CliResult>;
  /** virtback -c URI -r ARGS... */
  runRO(...args: string[]): Promise<CliResult>;
}

/** A daemon on a fresh temp dir, stopped and removed after the test. */
export async function startCliDaemon<D extends Driver = TestDriver>(
  t: TestContext,
  opts: { dir?: string; openDriver?: (dirs: { stateDir: string; runDir: string }) => Promise<D> } = {},
): Promise<CliEnv<D>> {
  const dir = opts.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'vbcli-')));
  let driver: D | null = null;
  const open = opts.openDriver ?? ((() => TestDriver.open({ pushDurationMs: 300 })) as unknown as (d: { stateDir: string; runDir: string }) => Promise<D>);
  const daemon = await Daemon.start({
    stateDir: path.join(dir, 'state'),
    runDir: path.join(dir, 'run'),
    logger: silentLogger,
    openDriver: async (d) => (driver = await open(d)),
  });
  t.after(async () => {
    await daemon.stop();
    if (opts.dir === undefined) await rm(dir, { recursive: true, force: true });
  });
  const uri = `virtback+unix:///?socket=${daemon.socketPath}`;
  return {
    dir,
    daemon,
    driver: driver!,
    socket: daemon.socketPath,
    uri,
    run: (...args) => runMain(['-c', uri, ...args]),
    runRO: (...args) => runMain(['-c', uri, '-r', ...args]),
  };
}
