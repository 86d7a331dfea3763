// How long the built `virtback` takes to start (not a test): wall time and
// peak RSS (/usr/bin/time) of `--version`, `--help` and `list` against a
// `virtbackd --driver test` socket, next to `node -e 0` measured in the same
// run. Runs are interleaved and medians reported (the machine is noisy).
// Build first (`npm run build`). Several CLI builds may be given (e.g. a copy
// of dist/ from before a change): they are measured alternately.
//
//   flock /work/bench.lock node --import tsx bench/cli-start.ts [runs=10] [virtback.js ...]

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { median } from './timing.js';

const runs = Number(process.argv[2] ?? 10);
const clis = process.argv.length > 3 ? process.argv.slice(3) : ['dist/src/cli/virtback.js'];

/** Wall seconds and peak RSS (KiB) of one run; throws when the command fails. */
function measure(args: string[]): [number, number] {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', process.execPath, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  const [wall, rss] = r.stderr.trim().split('\n').at(-1)!.split(' ').map(Number);
  return [wall!, rss!];
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vb-clistart-'));
  const daemon = spawn(process.execPath, [path.join(path.dirname(clis[0]!), 'virtbackd.js'), '--driver', 'test',
    '--state-dir', path.join(dir, 'state'), '--run-dir', path.join(dir, 'run')], { stdio: 'ignore' });
  const sock = path.join(dir, 'run', 'virtbackd.sock');
  try {
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    const uri = `virtback+unix:///?socket=${sock}`;
    const cases: [string, string[]][] = [['--version', ['--version']], ['--help', ['--help']], ['list', ['-c', uri, 'list', '--all']]];
    const base: number[][] = [];
    const res = new Map<string, [number, number][]>();
    for (let i = 0; i < runs; i++) {
      base.push(measure(['-e', '0']));
      for (const [name, args] of cases) for (const cli of clis) {
        const key = `${cli} ${name}`;
        res.set(key, [...(res.get(key) ?? []), measure([cli, ...args])]);
      }
    }
    const b = median(base.map((x) => x[0]!));
    console.log(`load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; node -e 0: ${b.toFixed(3)} s, ${median(base.map((x) => x[1]!))} KiB`);
    for (const [key, xs] of res) {
      const wall = median(xs.map((x) => x[0]));
      console.log(`${key}: ${wall.toFixed(3)} s (${(wall / b).toFixed(2)}x node -e 0), peak RSS ${median(xs.map((x) => x[1]))} KiB`);
    }
  } finally {
    daemon.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
