// virtbackd's pino logger in-process: JSON lines with level names, fields,
// child bindings and errors; the level filter; readable lines when pretty;
// nothing written after close.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isLogLevel, openDaemonLogger } from '../../src/daemon/logger.js';
import { errField } from '../../src/log.js';

function tmpFile(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vb-log-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'virtbackd.log');
}

const lines = (file: string): Array<Record<string, unknown>> =>
  fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

test('JSON lines: level names, fields, child bindings, errors; below the level dropped', (t) => {
  const file = tmpFile(t);
  const log = openDaemonLogger({ level: 'warn', file });
  log.debug('not written');
  log.info({ domain: 'vm1' }, 'not written either');
  log.child({ domain: 'vm1', job: 3 }).warn({ disks: ['vda'] }, 'backup job failed');
  log.error(errField(new Error('boom')), 'closing the driver failed');
  log.close();
  log.error('after close');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  const got = lines(file);
  assert.deepEqual(
    got.map((l) => [l.level, l.msg]),
    [
      ['warn', 'backup job failed'],
      ['error', 'closing the driver failed'],
    ],
  );
  assert.equal(got[0]!.domain, 'vm1');
  assert.equal(got[0]!.job, 3);
  assert.deepEqual(got[0]!.disks, ['vda']);
  assert.equal(got[0]!.pid, process.pid);
  assert.ok(!Number.isNaN(Date.parse(String(got[0]!.time))));
  assert.equal((got[1]!.err as { message: string }).message, 'boom');
  assert.match((got[1]!.err as { stack: string }).stack, /Error: boom/);
});

test('debug writes every level', (t) => {
  const file = tmpFile(t);
  const log = openDaemonLogger({ level: 'debug', file });
  for (const l of ['debug', 'info', 'warn', 'error'] as const) log[l](l);
  log.close();
  assert.deepEqual(lines(file).map((l) => l.level), ['debug', 'info', 'warn', 'error']);
});

test('pretty: readable lines, not JSON', (t) => {
  const file = tmpFile(t);
  const log = openDaemonLogger({ level: 'info', file, pretty: true });
  log.info({ domain: 'vm1' }, 'domain started');
  log.close();
  const text = fs.readFileSync(file, 'utf8');
  assert.match(text, /INFO.*domain started.*"domain":"vm1"/);
  assert.throws(() => JSON.parse(text.trim()));
});

test('the accepted levels', () => {
  for (const l of ['error', 'warn', 'info', 'debug']) assert.ok(isLogLevel(l));
  assert.equal(isLogLevel('loud'), false);
});
