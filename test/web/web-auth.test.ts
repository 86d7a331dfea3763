// virtbackd's web console, its doors: a real virtbackd (the test driver: no
// QEMU needed for these) with --web on a free loopback port over HTTPS with
// its generated certificate. Tokens and key 0600; login wrong/right; cookie
// flags; CSRF and Origin checks; read-only sessions refused on every
// mutating route by the server; bounded bodies; expiry; event streams
// dropped by clients leave none behind; the event stream closed on logout,
// expiry and daemon stop; strict headers on the browser's
// files; plain HTTP refused off loopback; token rotation; login rate limit.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestEnv, sleep, waitFor } from '../helpers/qemu-env.js';
import { stopVirtbackd } from '../qemu/daemon-util.js';
import { dropEventStream, MUTATING_ROUTES, startConsoleDaemon, type WebClient } from './web-client.js';
import { programArgs } from '../helpers/entry.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const UUID = '6f0c3c2e-8d7b-4a55-9d38-000000000001';


type ErrorReply = { error: { code: number; name: string; message: string } };

function errName(r: { json: unknown }): string | undefined {
  return (r.json as ErrorReply | null)?.error?.name;
}

async function loggedIn(c: WebClient, token: string): Promise<WebClient> {
  const r = await c.login(token);
  assert.equal(r.status, 200, r.text);
  return c;
}

function virtbackd(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [...programArgs('cli/virtbackd'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
}

test('web console: tokens, login, cookies, CSRF, origins, read-only refusals, limits, expiry, streams', { timeout: 180_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const assets = path.join(env.dir, 'webui');
  fs.mkdirSync(assets);
  fs.writeFileSync(path.join(assets, 'index.html'), '<!doctype html><script src="/app.js"></script>');
  fs.writeFileSync(path.join(assets, 'app.js'), 'console.log(1)');
  fs.writeFileSync(path.join(env.dir, 'secret.txt'), 'not for the browser');
  const cd = await startConsoleDaemon(env, ['--driver', 'test', '--web-assets', assets, '--web-session-ttl', '3']);
  t.after(() => stopVirtbackd(cd.daemon, 'SIGKILL'));

  // files: tokens and key 0600, the URL is https
  assert.match(cd.url, /^https:\/\/127\.0\.0\.1:\d+\/$/);
  for (const f of ['admin.token', 'readonly.token', 'key.pem']) assert.equal(fs.statSync(path.join(env.stateDir, 'web', f)).mode & 0o777, 0o600, f);
  assert.notEqual(cd.adminToken, cd.readonlyToken);
  assert.ok(cd.daemon.stderr().includes(`web console admin token: ${cd.adminToken}`), 'the admin token is printed once in the log');

  // not logged in, wrong token, right token and its cookie
  const anon = cd.client();
  let r = await anon.get('/api/domains');
  assert.equal(r.status, 401);
  assert.deepEqual([(r.json as ErrorReply).error.code, errName(r)], [45, 'VIR_ERR_AUTH_FAILED']);
  r = await anon.login(`${cd.adminToken}x`);
  assert.equal(r.status, 401);
  assert.equal(anon.cookie, null);
  r = await anon.post('/api/login', { token: cd.adminToken }, { origin: 'https://evil.example' });
  assert.equal(r.status, 403, 'a login from a foreign origin');
  const admin = cd.client();
  r = await admin.login(cd.adminToken);
  assert.equal(r.status, 200);
  assert.equal((r.json as { role: string }).role, 'admin');
  const cookie = (r.headers['set-cookie'] ?? []).find((c) => c.startsWith('vb_session='))!;
  for (const flag of ['HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/']) assert.ok(cookie.split('; ').includes(flag), `${flag} in ${cookie}`);
  r = await admin.get('/api/session');
  assert.deepEqual([r.status, (r.json as { role: string; csrf: string }).role, (r.json as { csrf: string }).csrf], [200, 'admin', admin.csrf]);
  for (const h of ['content-security-policy', 'x-content-type-options', 'referrer-policy', 'x-frame-options']) assert.ok(r.headers[h], `${h} on API replies`);

  // CSRF: missing, forged, foreign origin, cross-site fetch metadata; then the right one gets past the checks (404: no such domain)
  const target = `/api/domains/${UUID}/jobs`;
  const xml = { backupXml: "<domainbackup mode='pull'/>" };
  for (const [what, o] of [
    ['no CSRF header', { noCsrf: true }],
    ['a forged CSRF header', { headers: { 'x-csrf-token': 'forged' } }],
    ['a foreign Origin', { origin: 'https://evil.example' }],
    ['no Origin, cross-site', { origin: null, headers: { 'sec-fetch-site': 'cross-site' } }],
    ['no Origin at all', { origin: null }],
  ] as const) {
    r = await admin.post(target, xml, o);
    assert.equal(r.status, 403, what);
    assert.equal(errName(r), 'VIR_ERR_OPERATION_DENIED', what);
  }
  r = await admin.post(target, xml, { origin: null, headers: { 'sec-fetch-site': 'same-origin' } });
  assert.equal(r.status, 404, `same-origin fetch metadata passes: ${r.text}`);
  assert.equal(errName(r), 'VIR_ERR_NO_DOMAIN');

  // bounded bodies
  r = await admin.request('POST', target, { raw: JSON.stringify({ backupXml: 'x'.repeat(2 * 1024 * 1024) }) });
  assert.equal(r.status, 413);

  // read-only: sees, and every mutating route is refused by the server
  const ro = await loggedIn(cd.client(), cd.readonlyToken);
  r = await ro.get('/api/session');
  assert.equal((r.json as { role: string }).role, 'readonly');
  assert.equal((await ro.get('/api/domains')).status, 200);
  for (const [route, payload] of MUTATING_ROUTES) {
    r = await ro.post(route, payload);
    assert.equal(r.status, 403, route);
    assert.equal(errName(r), 'VIR_ERR_OPERATION_DENIED', route);
  }

  // the browser's files, with the strict headers; unknown paths get index.html; nothing outside the folder
  r = await anon.get('/');
  assert.equal(r.status, 200);
  assert.match(r.text, /app\.js/);
  assert.equal(String(r.headers['content-security-policy']).split(';')[0], "default-src 'self'");
  assert.deepEqual([r.headers['x-content-type-options'], r.headers['referrer-policy'], r.headers['x-frame-options']], ['nosniff', 'no-referrer', 'DENY']);
  assert.match((await anon.get('/app.js')).headers['content-type'] ?? '', /javascript/);
  assert.match((await anon.get('/domains/some-page')).text, /app\.js/);
  for (const p of ['/../secret.txt', '/%2e%2e/secret.txt', '/..%2fsecret.txt']) assert.ok(!(await anon.get(p)).text.includes('not for the browser'), p);

  // streams dropped by their clients, every way, leave nothing behind in the
  // daemon: its count of live streams (the hub's) comes back to 0, not to the cap
  const streamCount = async (): Promise<number> => ((await admin.get('/api/daemon')).json as { eventStreams: number }).eventStreams;
  const open = await Promise.all([admin.events(), admin.events()]);
  await waitFor(async () => (await streamCount()) === 2 || null, 'two streams counted');
  open.forEach((s) => s.close());
  for (let i = 0; i < 120; i++) await dropEventStream(admin, (['destroy', 'half-close', 'early'] as const)[i % 3]!);
  await waitFor(async () => (await streamCount()) === 0 || null, 'no stream left after 122 dropped', 5000);

  // events: a stream per session; logout closes it, expiry closes it
  const stream = await admin.events();
  await waitFor(() => stream.events.some((e) => e.event === 'ping'), 'the first ping');
  r = await admin.post('/api/logout');
  assert.equal(r.status, 200);
  await stream.ended;
  assert.equal((await admin.get('/api/session')).status, 401, 'logged out');
  const idle = await loggedIn(cd.client(), cd.adminToken);
  const idleStream = await idle.events();
  const t0 = Date.now();
  await idleStream.ended;
  assert.ok(Date.now() - t0 >= 2000, 'the stream lasted until the session expired (3 s idle)');
  assert.equal((await idle.get('/api/session')).status, 401, 'expired');

  // the daemon stopping ends streams cleanly and exits 0
  const last = await loggedIn(cd.client(), cd.adminToken);
  const lastStream = await last.events();
  const code = await stopVirtbackd(cd.daemon, 'SIGTERM');
  await lastStream.ended;
  assert.deepEqual(code, { code: 0, signal: null });
});

test('web console: plain HTTP only on loopback, token rotation, login rate limit', { timeout: 120_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const dirs = ['--state-dir', env.stateDir, '--run-dir', env.runDir, '--driver', 'test'];
  let r = await virtbackd([...dirs, '--web', '0.0.0.0:0', '--web-insecure-http']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /only a loopback address/);
  r = await virtbackd([...dirs, '--web-repo', env.dir]);
  assert.equal(r.code, 2, 'web options without --web');

  const cd = await startConsoleDaemon(env, ['--driver', 'test'], { insecure: true });
  t.after(() => stopVirtbackd(cd.daemon, 'SIGKILL'));
  assert.match(cd.url, /^http:\/\/127\.0\.0\.1:/);
  const c = cd.client();
  const login = await c.login(cd.adminToken);
  const cookie = (login.headers['set-cookie'] ?? [])[0]!;
  assert.ok(!cookie.includes('Secure'), 'no Secure flag over plain HTTP');
  assert.ok(cookie.includes('HttpOnly'));

  // rotation writes new tokens and prints them; this daemon keeps its old ones until restarted
  r = await virtbackd(['--state-dir', env.stateDir, '--web-rotate-tokens']);
  assert.equal(r.code, 0, r.stderr);
  const admin = fs.readFileSync(path.join(env.stateDir, 'web', 'admin.token'), 'utf8').trim();
  assert.notEqual(admin, cd.adminToken);
  assert.ok(r.stdout.includes(`web console admin token: ${admin}`));
  assert.equal(fs.statSync(path.join(env.stateDir, 'web', 'admin.token')).mode & 0o777, 0o600);

  // ten wrong tokens from one address, then even the right one waits
  const guesser = cd.client();
  for (let i = 0; i < 10; i++) assert.equal((await guesser.login(`guess-${i}-${'x'.repeat(20)}`)).status, 401);
  const limited = await guesser.login(cd.adminToken);
  assert.equal(limited.status, 429);
  assert.equal(errName(limited), 'VIR_ERR_OPERATION_DENIED');
  await sleep(10);
});
