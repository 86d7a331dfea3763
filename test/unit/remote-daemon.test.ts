// virtbackd as a child process, serving the in-memory test driver: sockets
// and modes, pid file and lock, a second daemon refused, clean SIGTERM,
// --daemon detaching, and connect() URIs including session autostart.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect } from '../../src/sdk/connect.js';
import { VirError } from '../../src/errors.js';
import { programArgs } from '../helpers/entry.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const nodeArgs = programArgs('cli/virtbackd');

function tmp(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtbackd-test-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(cond: () => boolean, what: string, ms = 15000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function answers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection(socket, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** Every line of a --log-file log, parsed (each must be one JSON object). */
function logLines(file: string): Array<Record<string, unknown>> {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

interface Running {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

function startDaemon(t: TestContext, args: string[]): Running {
  const child = spawn(process.execPath, [...nodeArgs, '--driver', 'test', ...args], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, stderr: () => err, exited };
}

async function startReady(t: TestContext, dir: string, extra: string[] = []): Promise<Running & { run: string; state: string }> {
  const run = path.join(dir, 'run');
  const state = path.join(dir, 'state');
  const d = startDaemon(t, ['--state-dir', state, '--run-dir', run, ...extra]);
  // Socket files may be leftovers of a killed daemon: wait until this one answers.
  const deadline = Date.now() + 15000;
  while (d.child.exitCode === null && !(await answers(path.join(run, 'virtbackd-ro.sock')))) {
    if (Date.now() > deadline) throw new Error(`daemon not ready: ${d.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(d.child.exitCode, null, d.stderr());
  return { ...d, run, state };
}

test('foreground daemon: sockets with modes 0600/0666, pid file, clean SIGTERM', async (t) => {
  const dir = tmp(t);
  const d = await startReady(t, dir, ['--log-level', 'debug']);
  const sock = path.join(d.run, 'virtbackd.sock');
  const ro = path.join(d.run, 'virtbackd-ro.sock');
  assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
  assert.equal(fs.statSync(ro).mode & 0o777, 0o666);
  assert.equal(fs.readFileSync(path.join(d.run, 'virtbackd.pid'), 'utf8').split(' ')[0], String(d.child.pid));
  assert.ok(fs.existsSync(path.join(d.state, 'virtbackd.lock')));

  const conn = await connect(`virtback+unix:///?socket=${sock}`);
  assert.equal(conn.getURI(), `virtback+unix:///?socket=${sock}`);
  assert.equal(conn.isReadOnly(), false);
  const dom = await conn.defineXML('<domain><name>vm1</name></domain>');
  await dom.create();
  const roConn = await connect(`virtback+unix:///?socket=${sock}&readonly`);
  assert.equal(roConn.isReadOnly(), true);
  assert.deepEqual((await roConn.listAllDomains()).map((x) => x.name), ['vm1']);
  await assert.rejects((await roConn.lookupByName('vm1')).destroy(), (e: unknown) => e instanceof VirError && e.code === 29);
  // A read-only URI on a socket of another name is read-only on our side.
  const roExplicit = await connect(`virtback+unix:///?socket=${ro}`);
  assert.equal(roExplicit.isReadOnly(), true, 'the daemon told us the socket is read-only');

  // A client in the middle of a backup: SIGTERM leaves the domain alone (the test driver lives in the daemon, so we
  // can only observe a clean exit here; domain survival across restarts is a real-QEMU test).
  d.child.kill('SIGTERM');
  assert.equal(await d.exited, 0, d.stderr());
  assert.match(d.stderr(), /SIGTERM received/);
  assert.match(d.stderr(), /stopped/);
  assert.equal(fs.existsSync(sock), false);
  assert.equal(fs.existsSync(ro), false);
  assert.equal(fs.existsSync(path.join(d.run, 'virtbackd.pid')), false);
  assert.equal(fs.existsSync(path.join(d.state, 'virtbackd.lock')), false);
  await assert.rejects(conn.listAllDomains(), VirError);
  await conn.close();
  await roConn.close();
  await roExplicit.close();
});

test('a second daemon on the same state directory refuses to start; a stale lock is taken over', async (t) => {
  const dir = tmp(t);
  const first = await startReady(t, dir);
  const second = spawnSync(
    process.execPath,
    [...nodeArgs, '--driver', 'test', '--state-dir', first.state, '--run-dir', path.join(dir, 'other-run')],
    { cwd: root, encoding: 'utf8', timeout: 30000 },
  );
  assert.equal(second.status, 1);
  assert.match(second.stderr, new RegExp(`already running on state directory .*\\(pid ${first.child.pid}\\)`));
  // The first one is unharmed.
  const c = await connect(`virtback+unix:///?socket=${path.join(first.run, 'virtbackd.sock')}`);
  assert.deepEqual(await c.listAllDomains(), []);
  await c.close();
  first.child.kill('SIGKILL');
  await first.exited;

  // SIGKILL left the lock, the pid file and the sockets behind: the next daemon takes them over.
  assert.ok(fs.existsSync(path.join(first.state, 'virtbackd.lock')));
  const third = await startReady(t, dir);
  const c3 = await connect(`virtback+unix:///?socket=${path.join(third.run, 'virtbackd.sock')}`);
  assert.deepEqual(await c3.listAllDomains(), []);
  await c3.close();
  third.child.kill('SIGINT');
  assert.equal(await third.exited, 0);
});

test('a lock naming a live process of another start time (reused pid) is stale', async (t) => {
  const dir = tmp(t);
  const state = path.join(dir, 'state');
  fs.mkdirSync(state, { recursive: true });
  // pid 1 is alive, but its start time is not 12345.
  fs.writeFileSync(path.join(state, 'virtbackd.lock'), '1 12345\n');
  const d = await startReady(t, dir);
  d.child.kill('SIGTERM');
  assert.equal(await d.exited, 0);
});

test('--daemon detaches once the sockets listen and logs to a file', async (t) => {
  const dir = tmp(t);
  const run = path.join(dir, 'run');
  const log = path.join(dir, 'd.log');
  const r = spawnSync(
    process.execPath,
    [...nodeArgs, '--driver', 'test', '--daemon', '--state-dir', path.join(dir, 'state'), '--run-dir', run, '--log-file', log],
    { cwd: root, encoding: 'utf8', timeout: 30000 },
  );
  const pidFile = path.join(run, 'virtbackd.pid');
  const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').split(' ')[0]) : 0;
  t.after(() => {
    if (pid > 0 && alive(pid)) process.kill(pid, 'SIGKILL');
  });
  assert.equal(r.status, 0, r.stderr);
  // The parent returned only after the sockets were listening.
  assert.ok(fs.existsSync(path.join(run, 'virtbackd.sock')));
  assert.ok(pid > 0 && alive(pid));
  const c = await connect(`virtback+unix:///?socket=${path.join(run, 'virtbackd.sock')}`);
  assert.deepEqual(await c.listAllDomains(), []);
  await c.close();
  process.kill(pid, 'SIGTERM');
  await until(() => !alive(pid), 'the daemon to exit');
  const lines = logLines(log);
  assert.ok(lines.some((l) => l.level === 'info' && l.msg === 'virtbackd ready'), JSON.stringify(lines));
  assert.ok(lines.some((l) => l.level === 'info' && l.msg === 'SIGTERM received'));
  assert.equal(fs.existsSync(pidFile), false);
});

test('--log-file: JSON lines in a 0600 file, appended, with the level filter applied', async (t) => {
  const dir = tmp(t);
  const log = path.join(dir, 'logs', 'virtbackd.log');
  const session = async (level: string): Promise<void> => {
    const d = await startReady(t, dir, ['--log-level', level, '--log-file', log]);
    const c = await connect(`virtback+unix:///?socket=${path.join(d.run, 'virtbackd.sock')}`);
    await c.listAllDomains();
    await c.close();
    d.child.kill('SIGTERM');
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(d.stderr(), '', 'nothing on stderr when logging to a file');
  };

  await session('info');
  assert.equal(fs.statSync(log).mode & 0o777, 0o600);
  const info = logLines(log);
  assert.deepEqual([...new Set(info.map((l) => l.level))].sort(), ['info'], 'no debug lines at info');
  for (const l of info) {
    assert.equal(l.pid, info[0]!.pid);
    assert.ok(!Number.isNaN(Date.parse(String(l.time))), `ISO time in ${JSON.stringify(l)}`);
  }
  const ready = info.find((l) => l.msg === 'virtbackd ready');
  assert.equal(ready?.driver, 'test:///default');
  assert.deepEqual(info.map((l) => l.msg).slice(-3), ['SIGTERM received', 'shutting down', 'stopped'], 'the last lines before the exit are there');

  // The same file again at debug: appended, and now the client's connect and disconnect are logged.
  await session('debug');
  const all = logLines(log);
  assert.deepEqual(all.slice(0, info.length), info, 'appended, not truncated');
  const debug = all.slice(info.length);
  // (startReady's probes connect to the read-only socket)
  const connected = debug.filter((l) => l.level === 'debug' && l.msg === 'client connected' && l.readOnly === false);
  assert.equal(connected.length, 1);
  assert.equal(typeof connected[0]!.client, 'number');
  assert.ok(debug.some((l) => l.level === 'debug' && l.msg === 'client disconnected' && l.client === connected[0]!.client));

  // error: a clean run writes nothing at all
  await session('error');
  assert.equal(logLines(log).length, all.length);
});

test('--daemon reports a start failure and exits 1', async (t) => {
  const dir = tmp(t);
  const first = await startReady(t, dir);
  const r = spawnSync(
    process.execPath,
    [...nodeArgs, '--driver', 'test', '--daemon', '--state-dir', first.state, '--run-dir', path.join(dir, 'run2')],
    { cwd: root, encoding: 'utf8', timeout: 30000 },
  );
  assert.equal(r.status, 1);
  assert.match(r.stderr, /already running/);
});

test('bad usage exits 2; TCP without TLS is refused', () => {
  const r = spawnSync(process.execPath, [...nodeArgs, '--listen-tcp', '127.0.0.1:16599'], { cwd: root, encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /needs --tls-cert, --tls-key and --tls-ca/);
  const bad = spawnSync(process.execPath, [...nodeArgs, '--log-level', 'loud'], { cwd: root, encoding: 'utf8' });
  assert.equal(bad.status, 2);
});

test('virtback:///session starts the per-user daemon on demand', async (t) => {
  const dir = tmp(t);
  const saved = { ...process.env };
  process.env.XDG_RUNTIME_DIR = path.join(dir, 'xdg-run');
  process.env.XDG_STATE_HOME = path.join(dir, 'xdg-state');
  process.env.VIRTBACK_DRIVER = 'test';
  delete process.env.VIRTBACK_URI;
  const pidFile = path.join(dir, 'xdg-run', 'virtback', 'virtbackd.pid');
  t.after(() => {
    process.env = saved;
    if (fs.existsSync(pidFile)) {
      const pid = Number(fs.readFileSync(pidFile, 'utf8').split(' ')[0]);
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });
  await assert.rejects(connect('virtback:///session', { autostart: false }), (e: unknown) => e instanceof VirError && e.code === 5);
  const c = await connect('virtback:///session');
  assert.equal(c.getURI(), 'virtback:///session');
  await c.defineXML('<domain><name>s1</name></domain>');
  // A second connection reaches the same daemon.
  const again = await connect('virtback:///session', { readOnly: true });
  assert.equal(again.isReadOnly(), true);
  assert.deepEqual((await again.listAllDomains()).map((d) => d.name), ['s1']);
  await c.close();
  await again.close();
  const pid = Number(fs.readFileSync(pidFile, 'utf8').split(' ')[0]);
  process.kill(pid, 'SIGTERM');
  await until(() => !alive(pid), 'the session daemon to exit');
});

/** The daemon's resident memory in bytes. */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

test('attacks on the read-only socket by another user: root\'s calls keep answering fast, memory stays bounded', async (t) => {
  if (process.getuid?.() !== 0 || spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, '-e', '0']).status !== 0) {
    t.skip('needs root, and a user nobody who can run node');
    return;
  }
  const dir = tmp(t);
  fs.chmodSync(dir, 0o755); // nobody reaches the read-only socket through it
  const d = await startReady(t, dir);
  const pid = d.child.pid!;
  const rw = await connect(`virtback+unix:///?socket=${path.join(d.run, 'virtbackd.sock')}`);
  t.after(() => rw.close());
  for (let i = 0; i < 20; i++) await rw.listAllDomains(); // warm up
  const before = rss(pid);
  // a copy nobody can read wherever the repository lives
  const attackScript = path.join(dir, 'hostile-attack.mjs');
  fs.copyFileSync(path.join(import.meta.dirname, 'hostile-attack.mjs'), attackScript);
  fs.chmodSync(attackScript, 0o644);
  const attack = spawn('runuser', ['-u', 'nobody', '--', process.execPath, attackScript, path.join(d.run, 'virtbackd-ro.sock'), '6'], { stdio: 'ignore' });
  const attackDone = new Promise((r) => attack.on('exit', r));
  await new Promise((r) => setTimeout(r, 1000));
  const latencies: number[] = [];
  let peak = before;
  while (attack.exitCode === null && latencies.length < 200) {
    const t0 = performance.now();
    await rw.listAllDomains();
    latencies.push(performance.now() - t0);
    peak = Math.max(peak, rss(pid));
    await new Promise((r) => setTimeout(r, 10));
  }
  await attackDone;
  assert.equal(attack.exitCode, 0, 'the attack ran its course as nobody');
  latencies.sort((a, b) => a - b);
  const p95 = latencies[Math.floor(latencies.length * 0.95)]!;
  assert.ok(latencies.length >= 50, `root's calls kept going during the attack (${latencies.length})`);
  assert.ok(p95 < 100, `p95 of root's calls during the attack: ${p95.toFixed(1)} ms`);
  assert.ok(peak - before < 100 * 1024 * 1024, `daemon RSS grew by ${((peak - before) / 1048576).toFixed(1)} MiB`);
  assert.equal(d.child.exitCode, null, 'the daemon is still up');
  assert.equal((await rw.listAllDomains()).length >= 0, true);
});
