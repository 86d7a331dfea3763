// The serial console of the tiny guest under virtbackd: the pty serial's log
// shows the kernel booting, and `virtback console` — a separate process
// talking to the daemon's socket, driven through pipes — types a command
// into the guest's shell, gets its output back and leaves with ^]. Then the
// same streams through the SDK's remote driver: none on the read-only
// socket, one per domain unless FORCE (which ends the other), and a console
// ends when its domain stops.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import type { CheckedDriver } from '../../src/api/checked-driver.js';
import { ConsoleFlags, type ConsoleStream } from '../../src/api/console-stream.js';
import type { Connect } from '../../src/api/public.js';
import { ErrorCode, type VirError } from '../../src/errors.js';
import { connect } from '../../src/sdk/connect.js';
import { waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml } from '../helpers/tiny-guest.js';
import { makeDaemonEnv } from './daemon-util.js';
import { programArgs } from '../helpers/entry.js';


function openConsole(conn: Connect, uuid: string, flags = 0): Promise<ConsoleStream> {
  const driver = (conn.rawDriver as CheckedDriver).inner;
  return driver.openConsole!(uuid, null, flags);
}

/** A console whose output and end are recorded. */
function record(s: ConsoleStream): { out: () => string; ended: Promise<VirError | null> } {
  let out = '';
  s.onData((d) => (out += Buffer.from(d).toString('latin1')));
  return { out: () => out, ended: new Promise((resolve) => s.onEnd(resolve)) };
}

test('virtback console over the daemon socket: a command typed runs in the guest, ^] leaves; one console per domain', { timeout: 600_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeDaemonEnv(t);
  await env.start();
  const conn = await env.connect();
  const log = path.join(env.dir, 'serial.log');
  const name = 'con1';
  const xml = `<domain type='qemu'><name>${name}</name><memory unit='MiB'>256</memory>` +
    tinyGuestOsXml(guest, 'tg.debug=1 loglevel=6') +
    `<devices><serial type='pty'><log file='${log}' append='off'/></serial><console type='pty'/></devices>` +
    '<on_reboot>destroy</on_reboot></domain>';
  const dom = await conn.defineXML(xml);
  await dom.create();

  // the kernel's boot, through the serial port's log
  await waitFor(async () => (await readFile(log, 'utf8').catch(() => '')).includes('tiny-guest: READY'), 'the guest to boot', 240_000);
  assert.match(await readFile(log, 'utf8'), /Linux version \d+\.\d+/);

  const child = spawn(process.execPath, [...programArgs('cli/virtback'), '-c', env.uri, 'console', name], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('latin1')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('latin1')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  await waitFor(() => stderr.includes('Escape character is ^]'), 'the console to connect', 120_000);
  assert.match(stderr, new RegExp(`Connected to domain '${name}'`));
  child.stdin.write('\recho marker-$((6*7))-end\r');
  await waitFor(() => stdout.includes('marker-42-end'), 'the command output on the console', 60_000);
  // while the CLI holds the console, another one is refused
  await assert.rejects(openConsole(conn, dom.uuid), (e: VirError) =>
    e.code === ErrorCode.OPERATION_FAILED && /Active console session exists for this domain/.test(e.message));
  child.stdin.write(Buffer.from([0x1d]));
  assert.equal(await exited, 0, '^] leaves');

  // the read-only socket gets no console
  const ro = await connect(env.roUri);
  t.after(() => ro.close());
  await assert.rejects(openConsole(ro, dom.uuid), (e: VirError) =>
    e.code === ErrorCode.OPERATION_DENIED && /read only/.test(e.message));

  // FORCE takes the console over: the first session ends with the reason
  const first = record(await openConsole(conn, dom.uuid));
  const other = await env.connect();
  const forced = await openConsole(other, dom.uuid, ConsoleFlags.FORCE);
  const second = record(forced);
  assert.match((await first.ended)?.message ?? '', /taken over/);
  forced.write(Buffer.from('echo second-$((7*7))\r'));
  await waitFor(() => second.out().includes('second-49'), 'output on the forced console', 60_000);

  // the console ends with its domain
  await dom.destroy();
  assert.equal(await second.ended, null);
});
