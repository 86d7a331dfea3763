// Soak benchmark (not a test; hardening issue "proof at scale"): ≥ 1000
// randomized cycles of guest writes, full/incremental/differential push and
// pull backups from random older checkpoints and checkpoint deletions, with
// faults injected at random (daemon SIGKILL, also a few ms into backupBegin;
// QEMU SIGKILL; a full target filesystem; a checkpoint's bitmap removed behind
// our back; state files deleted). Every backup reported successful is restored
// and compared with the disk rebuilt from the write log. Prints cycles, faults
// by kind, restores and bytes compared, and the count of backups lost,
// unrestorable, things left behind and drifts of the live disk (compared
// through QEMU after every restart); exits 1 unless all four are 0.
//
//   node --import tsx bench/soak.ts [--seed N] [--cycles N] [--max-seconds S]
//        [--disk-mib M] [--fault-rate P] [--faults KIND,…] [--keep] [--quiet]
//
// A run is replayed by its seed (printed first): the same choices in the same
// order, as long as each fault lands the same way (a SIGKILL a few ms into a
// call races with the daemon, so a loaded machine may take another branch). The target-full fault needs
// root (it mounts a tiny tmpfs) and is skipped with a note otherwise.

import { parseArgs } from 'node:util';
import { FAULT_KINDS, type FaultKind } from './soak-model.js';
import { runSoak } from './soak-run.js';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    cycles: { type: 'string', default: '1000' },
    'max-seconds': { type: 'string', default: '5400' },
    'disk-mib': { type: 'string', default: '32' },
    'fault-rate': { type: 'string', default: '0.3' },
    faults: { type: 'string' },
    keep: { type: 'boolean', default: false },
    quiet: { type: 'boolean', default: false },
  },
});

const t0 = Date.now();
const say = (msg: string): void => {
  process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
};
const faults = values.faults?.split(',').map((k) => k.trim()) as FaultKind[] | undefined;
const unknown = faults?.filter((k) => !FAULT_KINDS.includes(k)) ?? [];
if (unknown.length > 0) {
  process.stderr.write(`unknown fault kind(s) ${unknown.join(', ')}; known: ${FAULT_KINDS.join(', ')}\n`);
  process.exit(2);
}
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);

// Ctrl-C: finish the cycle, sweep, clean up (the tmpfs is unmounted); a second one exits at once
let interrupted = false;
process.on('SIGINT', () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  say('SIGINT: stopping after this cycle (again to exit at once, leaving the temp dir behind)');
});

// A promise rejected with nobody listening would end the run and lose its
// evidence; it is counted as an anomaly instead (the run must report 0).
const unhandled: string[] = [];
process.on('unhandledRejection', (e) => {
  const text = e instanceof Error ? (e.stack ?? e.message) : String(e);
  unhandled.push(text);
  say(`ANOMALY: unhandled rejection: ${text}`);
});

const result = await runSoak({
  stopRequested: () => interrupted,
  seed,
  cycles: Number(values.cycles),
  maxSeconds: Number(values['max-seconds']),
  diskMiB: Number(values['disk-mib']),
  faultRate: Number(values['fault-rate']),
  ...(faults ? { faults } : {}),
  keep: values.keep,
  say: values.quiet ? (m) => (m.startsWith('cycle') || m.startsWith('  ') ? undefined : say(m)) : say,
});
for (const text of unhandled) result.tally.find({ what: 'anomaly', cycle: -1, detail: `unhandled rejection: ${text.split('\n')[0]}` });
for (const line of result.tally.report(seed, result.seconds)) process.stdout.write(`${line}\n`);
if (result.unswept > 0) process.stdout.write(`not compared for lack of time: ${result.unswept} backups\n`);
const more = `${values['fault-rate'] !== '0.3' ? ` --fault-rate ${values['fault-rate']}` : ''}${faults ? ` --faults ${faults.join(',')}` : ''}`;
process.stdout.write(`replay: node --import tsx bench/soak.ts --seed ${seed} --cycles ${values.cycles}${more}\n`);
process.exitCode = result.tally.failed ? 1 : 0;
