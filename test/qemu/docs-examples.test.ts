// Every example command in README.md and docs/*.md runs here, so none can rot.
//
// How the documents mark their examples:
//   <!-- example: NAME ... -->   right before a ``` block: a shell script, run
//                                with `bash -euo pipefail` (README's cli-session
//                                against real QEMU; others as their block says).
//   ``` blocks whose lines start with `$ `   in docs/cli.md: transcripts, run in
//                                document order against one fresh
//                                `virtbackd --driver test`; the printed output
//                                (stdout and stderr as they interleave) must
//                                equal the lines under each `$` line.
//   <!-- not run: REASON -->     right before a ``` block: a command block this
//                                test deliberately does not run (the README's
//                                Quick start: the test suite itself, and a demo
//                                that builds dist/; blocks that need a part this
//                                test does not start, such as an S3 gateway:
//                                their REASON names the test that runs them).
// Any other ``` block must not look like commands (no `$ ` prompt, not sh/bash):
// the last test enforces that, so a new example cannot be added unrun.
//
// Transcript rules (docs/cli.md says the same under "Examples"):
//   - `$ virtback ARGS` is split like a shell would (quotes, no expansions);
//     a trailing `| cat` only says "not a terminal", which is the case here.
//   - A line `...` (any indent) in the expected output matches any lines.
//   - `<!-- example: NAME -->` blocks of docs/cli.md are its setup: run with
//     bash in the transcripts' folder where they stand in the document.
//   - The transcripts' folder is printed as /tmp/demo (the test's is a temp dir).
//   - Volatile parts are normalised on both sides, and only these: local times
//     `YYYY-MM-DD HH:MM:SS[.mmm] +ZZZZ`, 10-digit UNIX times (checkpoint names
//     and <creationTime> of checkpoints made "now"), and elapsed milliseconds
//     (`Time elapsed: N ms`, `time_elapsed: N`). Domain ids are the test
//     driver's (1000, 1001, ... in start order) and UUIDs come from vm1.xml, so
//     they are compared as they are. Trailing blanks are ignored (virsh's
//     tables pad their last column; markdown editors strip them).
//   - `<!-- background: virtback ARGS -->` before a block runs that command in
//     a separate process as soon as the block's `event` command has subscribed;
//     a `^C` in the expected output is the Ctrl-C the test then sends (after
//     the background command ended and its events were printed).

import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/virtback.js';
import { onEventLoopReady } from '../../src/cli/commands/event.js';
import { killQemuFor, processesMentioning, sleep } from '../helpers/qemu-env.js';
import { programCommand, programFile } from '../helpers/entry.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TSX = import.meta.resolve('tsx');

// ------------------------------------------------------------ markdown

export interface Block {
  file: string;
  /** 1-based line of the opening fence */
  line: number;
  lang: string;
  text: string;
  /** the HTML comments between the previous block (or text) and this one */
  marks: string[];
}

/** The ``` blocks of a markdown file, with the HTML comments just before each. */
export function blocks(file: string, md: string): Block[] {
  const lines = md.split('\n');
  const out: Block[] = [];
  let marks: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    const m = /^```(\S*)\s*$/.exec(l);
    if (m) {
      const start = i;
      const body: string[] = [];
      for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
      out.push({ file, line: start + 1, lang: m[1]!, text: body.join('\n') + '\n', marks });
      marks = [];
      continue;
    }
    const c = /^<!--\s*(.*?)\s*-->\s*$/.exec(l);
    if (c) marks.push(c[1]!);
    else if (l.trim() !== '') marks = [];
  }
  return out;
}

const exampleName = (b: Block): string | null => {
  for (const m of b.marks) {
    const r = /^example:\s*([\w-]+)/.exec(m);
    if (r) return r[1]!;
  }
  return null;
};
const notRun = (b: Block): string | null => b.marks.map((m) => /^not run:\s*(.+)$/.exec(m)?.[1]).find((x) => x !== undefined) ?? null;
const isTranscript = (b: Block): boolean => b.text.startsWith('$ ');
const looksLikeCommands = (b: Block): boolean => ['sh', 'bash', 'shell', 'console'].includes(b.lang) || /^\$ /m.test(b.text);

// ------------------------------------------------------------ transcripts

/** Shell-like word splitting: '…' and "…" quoting, backslash escapes outside single quotes; no expansions. */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let cur = '';
  let has = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (ch === "'") {
      const j = line.indexOf("'", i + 1);
      if (j < 0) throw new Error(`unterminated ' in: ${line}`);
      cur += line.slice(i + 1, j);
      i = j;
      has = true;
    } else if (ch === '"') {
      i++;
      for (; i < line.length && line[i] !== '"'; i++) cur += line[i] === '\\' && /["\\$`]/.test(line[i + 1] ?? '') ? line[++i] : line[i];
      if (i >= line.length) throw new Error(`unterminated " in: ${line}`);
      has = true;
    } else if (ch === '\\') {
      cur += line[++i] ?? '';
      has = true;
    } else if (/\s/.test(ch)) {
      if (has) words.push(cur);
      cur = '';
      has = false;
    } else {
      cur += ch;
      has = true;
    }
  }
  if (has) words.push(cur);
  return words;
}

/** The volatile parts, normalised (see the header). */
export function normalise(text: string): string {
  return text
    .replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{3})? ?[+-]\d{4}/g, '<TIME>')
    .replace(/\b1\d{9}\b/g, '<EPOCH>')
    .replace(/(Time elapsed:\s+)\d+(\s+)ms/g, '$1<MS> ms')
    .replace(/(Time elapsed:\s+)<MS> ms/g, 'Time elapsed: <MS> ms')
    .replace(/time_elapsed: \d+/g, 'time_elapsed: <MS>')
    .replace(/[ \t]+$/gm, '');
}

/** Whether `actual` lines match `expected` lines, where an expected `...` line matches any lines. */
export function linesMatch(expected: string[], actual: string[]): boolean {
  const memo = new Map<string, boolean>();
  const go = (i: number, j: number): boolean => {
    const key = `${i},${j}`;
    const hit = memo.get(key);
    if (hit !== undefined) return hit;
    let r: boolean;
    if (i === expected.length) r = j === actual.length;
    else if (expected[i]!.trim() === '...') r = go(i + 1, j) || (j < actual.length && go(i, j + 1));
    else r = j < actual.length && expected[i] === actual[j] && go(i + 1, j + 1);
    memo.set(key, r);
    return r;
  };
  return go(0, 0);
}

interface Step {
  line: number;
  command: string;
  expected: string[];
}

/** A transcript's `$` commands with the output lines under each. */
export function steps(b: Block): Step[] {
  const out: Step[] = [];
  b.text
    .replace(/\n$/, '')
    .split('\n')
    .forEach((l, k) => {
      if (l.startsWith('$ ')) out.push({ line: b.line + 1 + k, command: l.slice(2), expected: [] });
      else out.at(-1)!.expected.push(l);
    });
  return out;
}

/** main(argv) with the CLI's string output (stdout and stderr, interleaved) captured; Buffers (the test runner's own reports) pass through. */
async function runCaptured(argv: string[], during?: (output: () => string) => Promise<void>): Promise<{ code: number; output: string }> {
  let output = '';
  const o = process.stdout.write;
  const e = process.stderr.write;
  const grab = (orig: typeof process.stdout.write) =>
    function (this: NodeJS.WriteStream, chunk: string | Uint8Array, ...rest: unknown[]): boolean {
      if (typeof chunk !== 'string') return (orig as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
      output += chunk;
      (rest.find((r) => typeof r === 'function') as (() => void) | undefined)?.();
      return true;
    } as typeof process.stdout.write;
  process.stdout.write = grab(o);
  process.stderr.write = grab(e);
  try {
    const run = main(argv);
    if (during) await during(() => output);
    // A command waiting for events that never come would hang the test: Ctrl-C it after 10 s.
    let hung = false;
    const t = setTimeout(() => {
      hung = true;
      process.emit('SIGINT');
    }, 10_000);
    const code = await run.finally(() => clearTimeout(t));
    return { code, output: hung ? `${output}(still running after 10 s: interrupted)\n` : output };
  } finally {
    process.stdout.write = o;
    process.stderr.write = e;
  }
}

// ------------------------------------------------------------ processes

function runProcess(
  cmd: string,
  args: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs: number },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs);
    p.once('error', reject);
    p.once('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A bin folder with `virtback` and `virtbackd` running this checkout's CLI (test/helpers/entry.ts). */
async function makeShims(dir: string): Promise<string> {
  const bin = path.join(dir, 'bin');
  await fs.mkdir(bin, { recursive: true });
  for (const name of ['virtback', 'virtbackd'] as const) {
    const script = `#!/bin/sh\nexec ${programCommand(`cli/${name}`)} "$@"\n`;
    await fs.writeFile(path.join(bin, name), script, { mode: 0o755 });
  }
  return bin;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Stop the daemon whose pid file is in `runDir` (SIGTERM, then SIGKILL) and wait until it is gone. */
async function stopDaemon(runDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await fs.readFile(path.join(runDir, 'virtbackd.pid'), 'utf8')).trim().split(/\s+/)[0]);
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1 || !alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

/**
 * Kill whatever process of ours still mentions `dir` (QEMU first) after a
 * grace period for ones already exiting (a daemon just sent SIGTERM);
 * returns what was found.
 */
async function killLeftovers(dir: string, graceMs = 5000): Promise<string[]> {
  for (let end = Date.now() + graceMs; (await processesMentioning(dir)).length > 0 && Date.now() < end; ) await sleep(100);
  const found = (await processesMentioning(dir)).map((p) => `${p.pid} ${p.argv.join(' ')}`);
  await killQemuFor(dir);
  for (const p of await processesMentioning(dir)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  return found;
}

// ------------------------------------------------------------ the tests

const docFiles = async (): Promise<string[]> => [
  path.join(REPO, 'README.md'),
  ...(await fs.readdir(path.join(REPO, 'docs'))).filter((f) => f.endsWith('.md')).sort().map((f) => path.join(REPO, 'docs', f)),
];

async function allBlocks(): Promise<Block[]> {
  const out: Block[] = [];
  for (const f of await docFiles()) out.push(...blocks(path.relative(REPO, f), await fs.readFile(f, 'utf8')));
  return out;
}

// The QEMU session, the transcripts and the other examples (one on QEMU) run side by side;
// the timeouts leave room for a loaded machine.
describe('documentation examples', { timeout: 400_000, concurrency: true }, () => {
  let all: Block[] = [];
  before(async () => {
    all = await allBlocks();
  });

  test("README's CLI session runs against a private session daemon and real QEMU", { timeout: 360_000 }, async (t) => {
    const session = all.find((b) => b.file === 'README.md' && exampleName(b) === 'cli-session');
    assert.ok(session, 'README.md has a block marked <!-- example: cli-session -->');
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-doc-'));
    const runDir = path.join(dir, 'xdg-run');
    t.after(async () => {
      await stopDaemon(path.join(runDir, 'virtback'));
      await killLeftovers(dir);
      await fs.rm(dir, { recursive: true, force: true });
    });
    const bin = await makeShims(dir);
    const work = path.join(dir, 'work');
    await fs.mkdir(work);
    await fs.mkdir(runDir, { mode: 0o700 });
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, XDG_RUNTIME_DIR: runDir, XDG_STATE_HOME: path.join(dir, 'xdg-state') };
    for (const k of ['VIRTBACK_URI', 'VIRTBACK_STATE_DIR', 'VIRTBACK_RUN_DIR']) delete env[k];
    await fs.writeFile(path.join(dir, 'session.sh'), session.text);
    const r = await runProcess('bash', ['-euo', 'pipefail', path.join(dir, 'session.sh')], { cwd: work, env, timeoutMs: 300_000 });
    const shown = `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
    assert.equal(r.code, 0, shown);

    // the daemon was started on demand, from the shims' checkout, in the private run dir
    const pidFile = path.join(runDir, 'virtback', 'virtbackd.pid');
    const daemonPid = Number((await fs.readFile(pidFile, 'utf8')).trim().split(/\s+/)[0]);
    assert.ok(alive(daemonPid), 'the session daemon is running');
    assert.ok((await fs.readFile(`/proc/${daemonPid}/cmdline`, 'utf8')).includes(programFile('cli/virtbackd')), 'the daemon runs this checkout');

    assert.match(r.stdout, /Backup job 1 completed\n/, shown);
    assert.match(r.stdout, /Backup job 2 completed\n/, shown);
    assert.match(r.stdout, /^c1\n {2}\|\n {2}\+- c2\n/m, `checkpoint-list --tree shows c1 -> c2\n${shown}`);
    // the pull export's dirty bitmap holds exactly the write made after c2
    assert.match(r.stdout, /^\s+8388608\s+65536\s+1\s+dirty$/m, shown);
    assert.match(r.stdout, /verified: 2 images match their manifests\n/, shown);
    assert.match(r.stdout, /Images are identical\.\n/, shown);
    // the full backup is backed by nothing, the incremental by the full one (relative, side by side)
    const info = JSON.parse((await runProcess('qemu-img', ['info', '--output=json', '-U', path.join(work, 'vm1-sda.qcow2.c2')], { cwd: work, env, timeoutMs: 10_000 })).stdout) as Record<string, unknown>;
    assert.match(String(info['backing-filename']), /vm1-sda\.qcow2\.c1$/);
    // the restored image holds both writes (0xab at 0, 0xcd at 4M) and not the one after c2
    const io = await runProcess('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 4M 1M', '-c', 'read -P 0 8M 64k', path.join(work, 'restored.qcow2')], { cwd: work, env, timeoutMs: 10_000 });
    assert.doesNotMatch(io.stdout + io.stderr, /Pattern verification failed|error/i, io.stdout + io.stderr);
    // undefined and destroyed: nothing of the domain remains running
    assert.deepEqual((await processesMentioning(dir)).filter((p) => /qemu-system/.test(p.argv[0] ?? '')).map((p) => p.pid), []);

    await stopDaemon(path.join(runDir, 'virtback'));
    assert.deepEqual(await killLeftovers(dir), [], 'no daemon, QEMU or helper of the session is left');
  });

  test("README's SDK example runs as written against a session daemon and real QEMU", { timeout: 120_000 }, async (t) => {
    const sdk = all.find((b) => b.file === 'README.md' && exampleName(b) === 'sdk');
    assert.ok(sdk, 'README.md has a block marked <!-- example: sdk -->');
    assert.equal(sdk.lang, 'ts');
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-sdk-'));
    const runDir = path.join(dir, 'xdg-run');
    // `import 'virtback'` resolves through package.json "exports" (the built dist/) from inside the repository only
    const snippet = path.join(REPO, 'test', `.readme-sdk-${process.pid}.ts`);
    t.after(async () => {
      await fs.rm(snippet, { force: true });
      await stopDaemon(path.join(runDir, 'virtback'));
      await killLeftovers(dir);
      await fs.rm(dir, { recursive: true, force: true });
    });
    const bin = await makeShims(dir);
    await fs.mkdir(runDir, { mode: 0o700 });
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, XDG_RUNTIME_DIR: runDir, XDG_STATE_HOME: path.join(dir, 'xdg-state') };
    for (const k of ['VIRTBACK_URI', 'VIRTBACK_STATE_DIR', 'VIRTBACK_RUN_DIR']) delete env[k];
    env.VIRTBACK_URI = 'virtback:///session';
    const disk = path.join(dir, 'vm1-sda.qcow2');
    const xml = `<domain type='qemu'><name>vm1</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>` +
      `<os><type arch='x86_64' machine='q35'>hvm</type></os><devices><disk type='file' device='disk'>` +
      `<driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='sda' bus='scsi'/></disk></devices></domain>`;
    await fs.writeFile(path.join(dir, 'vm1.xml'), xml);
    const setup = [
      `qemu-img create -q -f qcow2 ${disk} 64M`,
      'virtback define vm1.xml',
      'virtback start vm1',
      `virtback qemu-monitor-command vm1 --hmp 'qemu-io -d scsi0-0-0-0 "write -P 0xab 0 1M"'`,
    ].join('\n');
    const s1 = await runProcess('bash', ['-euo', 'pipefail', '-c', setup], { cwd: dir, env, timeoutMs: 60_000 });
    assert.equal(s1.code, 0, s1.stderr);
    await fs.writeFile(snippet, sdk.text);
    const r = await runProcess(process.execPath, ['--import', TSX, snippet], { cwd: REPO, env, timeoutMs: 60_000 });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^1 \{[^]*type: 3,[^]*operation: 9,[^]*success: true[^]*\} 1$/m, r.stdout);
    assert.match(r.stdout, /^2 \{[^]*success: true[^]*\} 1$/m, r.stdout);
    const after = await runProcess('bash', ['-euo', 'pipefail', '-c',
      'virtback checkpoint-list vm1 --name; virtback destroy vm1; virtback undefine vm1 --checkpoints-metadata; ls'],
    { cwd: dir, env, timeoutMs: 60_000 });
    assert.equal(after.code, 0, after.stderr);
    assert.match(after.stdout, /^c1\nc2\n/);
    // both backups are next to the disk, each with its manifest
    for (const f of ['vm1-sda.qcow2.c1', 'vm1-sda.qcow2.c1.manifest.json', 'vm1-sda.qcow2.c2', 'vm1-sda.qcow2.c2.manifest.json']) {
      assert.match(after.stdout, new RegExp(`^${f.replace(/\./g, '\\.')}$`, 'm'), after.stdout);
    }
    await stopDaemon(path.join(runDir, 'virtback'));
    assert.deepEqual(await killLeftovers(dir), []);
  });

  test('docs/cli.md transcripts match a fresh virtbackd --driver test', { timeout: 90_000 }, async (t) => {
    const cliBlocks = all.filter((b) => b.file === 'docs/cli.md');
    const setup = cliBlocks.find((b) => exampleName(b) === 'cli-files');
    assert.ok(setup, 'docs/cli.md has the files of its examples in a block marked <!-- example: cli-files -->');
    const transcripts = cliBlocks.filter(isTranscript);
    assert.ok(transcripts.length >= 15, `docs/cli.md has ${transcripts.length} transcripts`);

    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-doccli-'));
    const bin = await makeShims(dir);
    const cwd = process.cwd();
    const savedUri = process.env.VIRTBACK_URI;
    let daemon: ReturnType<typeof spawn> | null = null;
    t.after(async () => {
      process.chdir(cwd);
      if (savedUri === undefined) delete process.env.VIRTBACK_URI;
      else process.env.VIRTBACK_URI = savedUri;
      onEventLoopReady(null);
      if (daemon && daemon.exitCode === null) {
        daemon.kill('SIGTERM');
        await new Promise((r) => daemon!.once('exit', r));
      }
      await killLeftovers(dir);
      await fs.rm(dir, { recursive: true, force: true });
    });
    const work = path.join(dir, 'work');
    await fs.mkdir(work);
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` };

    daemon = spawn(path.join(bin, 'virtbackd'), ['--driver', 'test', '--run-dir', path.join(dir, 'run'), '--state-dir', path.join(dir, 'state')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let daemonErr = '';
    daemon.stderr!.on('data', (d: Buffer) => (daemonErr += d.toString()));
    const socket = path.join(dir, 'run', 'virtbackd.sock');
    for (let i = 0; ; i++) {
      if (await fs.stat(socket).then(() => true, () => false)) break;
      assert.ok(i < 300 && daemon.exitCode === null, `virtbackd --driver test did not start: ${daemonErr}`);
      await sleep(50);
    }
    process.env.VIRTBACK_URI = `virtback+unix:///?socket=${socket}`;
    process.chdir(work);

    const failures: string[] = [];
    for (const b of cliBlocks) {
      if (exampleName(b) !== null) {
        // a setup block (files the next transcripts use), run where it stands
        const s = await runProcess('bash', ['-euo', 'pipefail', '-c', b.text], { cwd: work, env, timeoutMs: 20_000 });
        assert.equal(s.code, 0, `docs/cli.md:${b.line} example ${exampleName(b)}: ${s.stderr}`);
        continue;
      }
      if (!isTranscript(b)) continue;
      let background = b.marks.map((m) => /^background:\s*virtback\s+(.+)$/.exec(m)?.[1]).find((x) => x !== undefined);
      for (const st of steps(b)) {
        const words = shellWords(st.command).filter((w, i, a) => !(w === '|' && a[i + 1] === 'cat') && !(w === 'cat' && a[i - 1] === '|'));
        assert.equal(words[0], 'virtback', `docs/cli.md:${st.line}: a transcript command must be virtback`);
        const argv = words.slice(1);
        let during: ((output: () => string) => Promise<void>) | undefined;
        if (background !== undefined && argv[0] === 'event') {
          const bgCommand = background;
          background = undefined; // once per block: for its first event command
          during = async (output) => {
            await new Promise<void>((r) => onEventLoopReady(r));
            onEventLoopReady(null);
            const bg = await runProcess(path.join(bin, 'virtback'), shellWords(bgCommand), { cwd: work, env: { ...env, VIRTBACK_URI: process.env.VIRTBACK_URI }, timeoutMs: 30_000 });
            if (bg.code !== 0) {
              failures.push(`docs/cli.md:${st.line}: background command 'virtback ${bgCommand}' failed (exit ${bg.code}): ${bg.stderr}`);
              process.emit('SIGINT');
              return;
            }
            if (st.expected.some((l) => l.startsWith('^C'))) {
              const want = st.expected.filter((l) => l.startsWith('event ') || /^<TIME>: event /.test(normalise(l))).length;
              for (let i = 0; i < 100 && (output().match(/event '/g) ?? []).length < want; i++) await sleep(50);
              process.emit('SIGINT');
            }
          };
        }
        const r = await runCaptured(argv, during);
        const actual = normalise(r.output.split(work).join('/tmp/demo')).replace(/\n$/, '').split('\n');
        const expected = st.expected.map((l) => normalise(l.replace(/^\^C/, '')));
        if (r.output === '') actual.length = 0;
        // an `error:` line in the transcript means a failing command, and only then
        const failed = expected.some((l) => l.startsWith('error: '));
        if (!linesMatch(expected, actual) || failed !== (r.code !== 0)) {
          failures.push(`docs/cli.md:${st.line}: $ ${st.command}  (exit ${r.code})\n--- expected\n${expected.join('\n')}\n--- actual\n${actual.join('\n')}`);
        }
      }
    }
    assert.equal(failures.length, 0, `${failures.length} transcript commands differ:\n\n${failures.join('\n\n')}`);
  });

  test('docs: the other marked examples run', { timeout: 360_000 }, async (t) => {
    const others = all.filter((b) => !(b.file === 'README.md' && ['cli-session', 'sdk'].includes(exampleName(b) ?? '')) && b.file !== 'docs/cli.md' && exampleName(b) !== null);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-docex-'));
    t.after(async () => {
      await stopDaemon(path.join(dir, 'xdg-run', 'virtback'));
      await killLeftovers(dir);
      await fs.rm(dir, { recursive: true, force: true });
    });
    const bin = await makeShims(dir);
    for (const b of others) {
      const work = path.join(dir, `${path.basename(b.file, '.md')}-${exampleName(b)}`);
      await fs.mkdir(work);
      const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, XDG_RUNTIME_DIR: path.join(dir, 'xdg-run'), XDG_STATE_HOME: path.join(dir, 'xdg-state') };
      // the transcripts' test runs alongside and sets VIRTBACK_URI in this process
      for (const k of ['VIRTBACK_URI', 'VIRTBACK_STATE_DIR', 'VIRTBACK_RUN_DIR']) delete env[k];
      const r = await runProcess('bash', ['-euo', 'pipefail', '-c', b.text], { cwd: work, env, timeoutMs: 300_000 });
      assert.equal(r.code, 0, `${b.file}:${b.line} example ${exampleName(b)}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
    }
    await stopDaemon(path.join(dir, 'xdg-run', 'virtback'));
    assert.deepEqual(await killLeftovers(dir), []);
  });

  test('every command block in README.md and docs/*.md is run above (or says why not)', () => {
    const unrun = all.filter((b) => looksLikeCommands(b) && exampleName(b) === null && !(b.file === 'docs/cli.md' && isTranscript(b)) && notRun(b) === null);
    assert.deepEqual(unrun.map((b) => `${b.file}:${b.line}`), [], 'command blocks without <!-- example: NAME --> (or <!-- not run: REASON -->)');
    const prompts = all.filter((b) => /^\$ /m.test(b.text) && !isTranscript(b));
    assert.deepEqual(prompts.map((b) => `${b.file}:${b.line}`), [], 'a transcript must start with its `$` line');
    const elsewhere = all.filter((b) => isTranscript(b) && b.file !== 'docs/cli.md');
    assert.deepEqual(elsewhere.map((b) => `${b.file}:${b.line}`), [], 'transcripts are run in docs/cli.md only');
    // Beside the Quick start, a block may stay unrun here only when it needs a
    // part this test does not start (an S3 gateway, a fixed system port) and
    // its reason names the test that runs the same commands against the real part.
    const skipped = all.filter((b) => notRun(b) !== null && b.file !== 'README.md');
    const unvouched = skipped.filter((b) => {
      const tests = (notRun(b)!.match(/test\/[\w/.-]+\.test\.ts/g) ?? []).filter((f) => f !== 'test/qemu/docs-examples.test.ts');
      return tests.length === 0 || !tests.every((f) => existsSync(path.join(REPO, f)));
    });
    assert.deepEqual(unvouched.map((b) => `${b.file}:${b.line}`), [], 'a block not run here names the existing test that runs its commands');
    assert.equal(all.filter((b) => notRun(b) !== null && b.file === 'README.md').length, 1, 'in README.md only the Quick start is not run');
  });
});
