// What the browser tests of the web console share: the console's assets built by the project's
// own build step, Debian's chromium driven by playwright-core, a virtbackd with --web on a free
// loopback port, and logging in through the login page.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { freePort } from '../helpers/net.js';
export { freePort };

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '..', '..');

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** `node scripts/build-web.mjs DIR`: the assets exactly as the project builds them. */
export async function buildAssets(dir: string): Promise<string> {
  await run(process.execPath, [path.join(root, 'scripts', 'build-web.mjs'), dir], { cwd: root });
  return dir;
}

/** Debian's chromium, headless; the caller closes it. */
export function launchBrowserAt(executablePath = '/usr/bin/chromium'): Promise<Browser> {
  return chromium.launch({ executablePath, args: CHROMIUM_ARGS });
}

/** The browser of a test, closed after it. */
export async function launchBrowser(t: TestContext): Promise<Browser> {
  const browser = await launchBrowserAt();
  t.after(() => browser.close().catch(() => {}));
  return browser;
}

/** A fresh context (its own cookies) whose page records dialogs and page errors: none may happen. */
export async function newPage(browser: Browser): Promise<{ context: BrowserContext; page: Page; dialogs: string[]; errors: string[] }> {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const dialogs: string[] = [];
  const errors: string[] = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.on('pageerror', (e) => errors.push(e.message));
  return { context, page, dialogs, errors };
}

export async function readToken(stateDir: string, role: 'admin' | 'readonly'): Promise<string> {
  return (await readFile(path.join(stateDir, 'web', `${role}.token`), 'utf8')).trim();
}

/** Logs in through the login page and waits for the domains table. */
export async function login(page: Page, base: string, token: string): Promise<void> {
  await page.goto(`${base}/#/login`);
  await page.locator('input[name=token]').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('table#domains').waitFor();
  assert.equal(new URL(page.url()).hash, '#/domains');
}

/** The progress bar's value (aria-valuenow) of a locator holding one. */
export async function barValue(page: Page, selector: string): Promise<number> {
  return Number(await page.locator(`${selector} [role=progressbar]`).first().getAttribute('aria-valuenow'));
}

/** fetch() from inside the page (its cookies, its origin): what a script of the console could do. */
export async function pageFetch(page: Page, method: string, url: string, body?: unknown): Promise<{ status: number; body: string }> {
  return page.evaluate(
    async ([m, u, b]) => {
      const s = (await (await fetch('/api/session')).json()) as { csrf?: string };
      const r = await fetch(u, {
        method: m,
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf ?? '' },
        body: m === 'GET' ? undefined : JSON.stringify(b ?? {}),
      });
      return { status: r.status, body: await r.text() };
    },
    [method, url, body] as const,
  );
}

/** Polls `fn` (e.g. a locator's count) until it holds: the page updates from its live feed. */
export async function waitUntil(fn: () => Promise<boolean>, what: string, timeoutMs = 90_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
