// virtbackd restarted (SIGKILL) under a running guest with a pty console, a
// VNC display on an autoport and a tap on a bridge: the restarted daemon
// reconnects to all of it — `virtback console` still types into the guest,
// `vncdisplay` gives the same port (and RFB answers there), `domiflist` the
// same tap and MAC — and `destroy` afterwards removes the tap it made before
// the restart. The bridge is made by the test (root only; skipped otherwise).

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';
import { waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml } from '../helpers/tiny-guest.js';
import { makeDaemonEnv, stopVirtbackd, type DaemonEnv } from './daemon-util.js';
import { rfbGreeting } from '../helpers/net.js';
import { programArgs } from '../helpers/entry.js';

const run = promisify(execFile);

function ip(...args: string[]): Promise<string> {
  return run('ip', args).then((r) => r.stdout);
}

const notRoot = process.getuid?.() === 0 ? undefined : 'making a bridge needs root';

async function virtback(env: DaemonEnv, ...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [...programArgs('cli/virtback'), '-c', env.uri, ...args]);
  return stdout;
}

/** `virtback console NAME` in a child: type `command`, wait for `expect` in its output, leave with ^]. */
async function throughConsole(t: test.TestContext, env: DaemonEnv, name: string, command: string, expect: string): Promise<void> {
  const child = spawn(process.execPath, [...programArgs('cli/virtback'), '-c', env.uri, 'console', name], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('latin1')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('latin1')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  await waitFor(() => stderr.includes('Escape character is ^]'), 'the console to connect', 60_000);
  child.stdin.write(`\r${command}\r`);
  await waitFor(() => stdout.includes(expect), `'${expect}' on the console`, 60_000);
  child.stdin.write(Buffer.from([0x1d]));
  assert.equal(await exited, 0, '^] leaves');
}

test('a daemon restart keeps the pty console, the VNC port and the bridge tap; destroy then removes the tap', { skip: notRoot, timeout: 600_000 }, async (t) => {
  const bridge = `vbrc${Math.random().toString(16).slice(2, 8)}`;
  await ip('link', 'add', 'name', bridge, 'type', 'bridge');
  t.after(() => ip('link', 'del', 'dev', bridge).catch(() => {}));

  const guest = await tinyGuest();
  const env = await makeDaemonEnv(t);
  const first = await env.start();
  const log = path.join(env.dir, 'serial.log');
  const name = 'recon1';
  const xml = `<domain type='qemu'><name>${name}</name><memory unit='MiB'>256</memory>` +
    tinyGuestOsXml(guest, 'tg.debug=1 tg.disks=none') +
    `<devices><serial type='pty'><log file='${log}' append='off'/></serial><console type='pty'/>` +
    "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>" +
    `<interface type='bridge'><source bridge='${bridge}'/><model type='virtio'/></interface></devices>` +
    '<on_reboot>destroy</on_reboot></domain>';
  const dom = await (await env.connect()).defineXML(xml);
  await dom.create();
  await waitFor(async () => (await readFile(log, 'utf8').catch(() => '')).includes('tiny-guest: READY'), 'the guest to boot', 240_000);

  // what the first daemon ran, from its live XML
  const liveXml = await dom.getXMLDesc();
  const port = Number(/<graphics type='vnc' port='(\d+)'/.exec(liveXml)?.[1]);
  const tap = /<interface type='bridge'>[\s\S]*?<target dev='(vnet\d+)'\/>/.exec(liveXml)?.[1];
  const mac = /<mac address='([0-9a-f:]+)'\/>/.exec(liveXml)?.[1];
  const livePty = /<serial type='pty' tty='(\/dev\/pts\/\d+)'>/.exec(liveXml)?.[1];
  assert.ok(port >= 5900 && tap !== undefined && mac !== undefined && livePty !== undefined, `VNC port, tap, MAC and pty in the live XML: ${liveXml}`);
  assert.match(await ip('-o', 'link', 'show', 'dev', tap), new RegExp(`master ${bridge} `));

  // the daemon dies without a word; QEMU, its pty, its VNC server and the tap stay
  await stopVirtbackd(first, 'SIGKILL');
  await env.start();

  assert.equal((await virtback(env, 'vncdisplay', name)).trim(), `127.0.0.1:${port - 5900}`, 'the same VNC display');
  assert.equal(await rfbGreeting(port), 'RFB 003.008\n');
  assert.deepEqual((await virtback(env, 'domiflist', name)).trim().split('\n').slice(2).map((l) => l.trim().split(/\s+/)),
    [[tap, 'bridge', bridge, 'virtio', mac]], 'the same tap and MAC');
  const again = await (await env.connect()).lookupByName(name);
  assert.match(await again.getXMLDesc(), new RegExp(`<serial type='pty' tty='${livePty}'>`), 'the same pty');
  await throughConsole(t, env, name, 'echo after-restart-$((6*7))', 'after-restart-42');

  await again.destroy();
  assert.equal(existsSync(`/sys/class/net/${tap}`), false, 'the tap made before the restart is removed by destroy');
  assert.equal(existsSync(`/sys/class/net/${bridge}`), true, 'the bridge is not ours');
});
