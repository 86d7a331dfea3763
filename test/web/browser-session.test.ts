// The console's session in a real browser against a real virtbackd --web whose sessions expire
// after a few idle seconds: a wrong token is refused on the login page, an expired session sends
// the browser back to the login page with a message, and logging out does too.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { makeDaemonEnv } from '../qemu/daemon-util.js';
import { buildAssets, freePort, launchBrowser, login, newPage, readToken } from './browser-util.js';

const TTL_SEC = 3;

test('web console session: wrong token, expiry, logout', { timeout: 120_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  const assets = await buildAssets(path.join(env.dir, 'webui'));
  const port = await freePort();
  await env.start(['--web', `127.0.0.1:${port}`, '--web-assets', assets, '--web-session-ttl', String(TTL_SEC)]);
  const base = `https://127.0.0.1:${port}`;
  const browser = await launchBrowser(t);
  const { page, dialogs, errors } = await newPage(browser);
  page.setDefaultTimeout(30_000);

  await t.test('a wrong token is refused and the page stays on the login form', async () => {
    await page.goto(`${base}/`);
    await page.locator('input[name=token]').fill('not-the-token');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.locator('[role=alert]', { hasText: 'VIR_ERR_AUTH_FAILED' }).waitFor();
    assert.equal(await page.locator('table#domains').count(), 0);
  });

  await t.test('an expired session is sent to the login page with a message', async () => {
    await login(page, base, await readToken(env.stateDir, 'admin'));
    await page.locator('header nav a', { hasText: 'Daemon' }).click();
    await page.locator('table#daemon').waitFor();
    // idle past the server's expiry: the next request is answered 401
    await page.waitForTimeout(TTL_SEC * 1000 + 1500);
    await page.locator('header nav a', { hasText: 'Domains' }).click();
    await page.locator('#login-message', { hasText: 'expired' }).waitFor();
    assert.equal(new URL(page.url()).hash, '#/login');
    assert.equal(await page.locator('header.top').count(), 0);
    // and the old cookie opens nothing: a reload lands on the login form again
    await page.reload();
    await page.locator('input[name=token]').waitFor();
  });

  await t.test('logging out ends the session', async () => {
    await login(page, base, await readToken(env.stateDir, 'readonly'));
    await page.locator('.role', { hasText: 'read-only' }).waitFor();
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('#login-message', { hasText: 'Logged out' }).waitFor();
    const r = await page.evaluate(async () => (await fetch('/api/session')).status);
    assert.equal(r, 401);
  });

  assert.deepEqual(dialogs, []);
  assert.deepEqual(errors, []);
});
