// Honest CLI output: progress off a terminal at most every 10 % or 5 s per
// disk (not a line per percent), --json output that is JSON lines and nothing
// else (event, backup-begin --wait), and --quiet without progress.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { onEventLoopReady } from '../../src/cli/commands/event.js';
import { JsonProgress, LineProgress, type DiskProgress } from '../../src/cli/progress.js';
import { TestDriver } from '../../src/api/test-driver.js';
import { startCliDaemon } from '../helpers/cli.js';

const MiB = 1024 * 1024;
const UUID = '6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b';
const DOMAIN_XML =
  `<domain type='qemu'><name>vm1</name><uuid>${UUID}</uuid><memory unit='MiB'>128</memory><vcpu>2</vcpu>` +
  "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>" +
  "<source file='/img/vm1-sda.qcow2'/><target dev='sda' bus='scsi'/></disk></devices></domain>";

/** Every whole percent of a 100 MiB disk, then completed: what a fast poll of a long job reports. */
function everyPercent(): DiskProgress[] {
  const steps: DiskProgress[] = [];
  for (let p = 0; p <= 100; p++) steps.push({ disk: 'sda', processed: p * MiB, total: 100 * MiB, state: 'running' });
  steps.push({ disk: 'sda', processed: 100 * MiB, total: 100 * MiB, state: 'completed' });
  return steps;
}

/** JSON.parse of every line; fails on any line that is not JSON. */
function jsonLines(stdout: string): Array<Record<string, unknown>> {
  assert.ok(stdout.endsWith('\n'), 'ends with a newline');
  return stdout
    .slice(0, -1)
    .split('\n')
    .map((l) => {
      assert.doesNotThrow(() => JSON.parse(l), `not a JSON line: ${l}`);
      return JSON.parse(l) as Record<string, unknown>;
    });
}

test('off a terminal: one line per 10 %, not per percent; state changes always', () => {
  const lines: string[] = [];
  const now = 0;
  const view = new LineProgress((s) => lines.push(s.trimEnd()), () => now);
  for (const s of everyPercent()) view.update([s]);
  assert.deepEqual(lines, [
    ...Array.from({ length: 11 }, (_, k) => `sda: ${k * 10}% (${(k * 10).toFixed(1)}/100.0 MiB)`),
    'sda: completed',
  ]);
});

test('off a terminal: a slow job still reports every 5 s, and nothing when nothing changed', () => {
  const lines: string[] = [];
  let now = 0;
  const view = new LineProgress((s) => lines.push(s.trimEnd()), () => now);
  const at = (p: number) => view.update([{ disk: 'sda', processed: p * MiB, total: 100 * MiB, state: 'running' }]);
  at(0);
  now = 4999;
  at(1); // too soon
  now = 5000;
  at(2); // 5 s since the last line
  now = 20_000;
  at(2); // unchanged: nothing, however long
  at(3);
  assert.deepEqual(lines, ['sda: 0% (0.0/100.0 MiB)', 'sda: 2% (2.0/100.0 MiB)', 'sda: 3% (3.0/100.0 MiB)']);
});

test('--json progress: JSON lines, as seldom as the plain lines', () => {
  let text = '';
  const view = new JsonProgress((s) => (text += s), () => 0);
  for (const s of everyPercent()) view.update([s]);
  const lines = jsonLines(text);
  assert.equal(lines.length, 12);
  assert.deepEqual(lines[1], { type: 'progress', disk: 'sda', processed: 10 * MiB, total: 100 * MiB, state: 'running', percent: 10 });
  assert.deepEqual(lines.at(-1), { type: 'progress', disk: 'sda', processed: 100 * MiB, total: 100 * MiB, state: 'completed', percent: 100 });
});

test('event --json prints the events as JSON lines and nothing else', async (t) => {
  const env = await startCliDaemon(t);
  const file = path.join(env.dir, 'vm1.xml');
  await writeFile(file, DOMAIN_XML);
  await env.run('define', file);
  t.after(() => onEventLoopReady(null));
  onEventLoopReady(() => void env.driver.domainCreate(UUID, 0));
  const one = await env.run('event', 'vm1', '--event', 'lifecycle', '--json');
  assert.equal(one.code, 0, one.stderr);
  const [ev, ...rest] = jsonLines(one.stdout);
  assert.deepEqual(rest, []);
  assert.equal(ev!.type, 'lifecycle');
  assert.deepEqual(ev!.domain, { name: 'vm1', uuid: UUID });

  onEventLoopReady(null);
  const none = await env.run('event', '--all', '--loop', '--timeout', '1', '--json');
  assert.deepEqual(none, { code: 0, stdout: '', stderr: '' }, 'no "event loop timed out", no "events received: 0"');
});

test('backup-begin --wait: --json is JSON lines from start to end; --quiet prints no progress', async (t) => {
  const env = await startCliDaemon(t, { openDriver: () => TestDriver.open({ pushDurationMs: 1500 }) });
  const file = path.join(env.dir, 'vm1.xml');
  await writeFile(file, DOMAIN_XML);
  assert.equal((await env.run('define', file)).code, 0);
  assert.equal((await env.run('start', 'vm1')).code, 0);

  const r = await env.run('backup-begin', 'vm1', '--wait', '--json');
  assert.equal(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  assert.deepEqual(lines[0], { type: 'started', jobId: 1 });
  const last = lines.at(-1)!;
  assert.equal(last.type, 'completed');
  assert.equal(last.jobId, 1);
  assert.equal((last.stats as { success: boolean }).success, true);
  const progress = lines.slice(1, -1);
  assert.ok(progress.length >= 1 && progress.every((l) => l.type === 'progress'), r.stdout);
  assert.ok(progress.length <= 12, `${progress.length} progress lines`);
  assert.equal(progress.at(-1)!.state, 'completed');
  assert.equal((await env.run('backup-end', 'vm1')).code, 0);

  const q = await env.run('backup-begin', 'vm1', '--wait', '--quiet');
  assert.deepEqual(q, { code: 0, stdout: 'Backup started, job id 2\nBackup job 2 completed\n', stderr: '' });
});
