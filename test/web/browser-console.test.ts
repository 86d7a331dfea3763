// The web console in a real browser (Debian's chromium through playwright-core) against a real
// virtbackd --web and a running QEMU domain: log in, back up from the console and watch the
// progress reach 100 %, see the points (full, then inc) and the job-completed event, abort a raw
// pull job, verify, restore to a new file that matches the disk at the backup instant byte for
// byte; a read-only session sees actions disabled and the server refuses them; user-controlled
// names render as text; a cross-site form post is refused.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import type { Page } from 'playwright-core';
import type { Connect, Domain } from '../../src/api/public.js';
import { ChunkRepository, openFolderStore } from '../../src/chunkstore/index.js';
import { makeTestDomain } from '../helpers/qemu-env.js';
import { hmpWriteVia, makeDaemonEnv, type DaemonEnv } from '../qemu/daemon-util.js';
import { barValue, buildAssets, freePort, launchBrowser, login, newPage, pageFetch, readToken, waitUntil } from './browser-util.js';

const MiB = 1 << 20;
const DISK_MIB = 32;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
// a domain name cannot hold '/' (libvirt's rule), so its script tag stays open; the description closes it
const EVIL_NAME = `evil<img src=x onerror=alert(1)><script>alert(1)"q'&amp;`;
const EVIL_DESC = `<script>alert(2)</script> "double" 'single' <img src=x onerror=alert(3)>`;
const xmlEsc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

interface Setup {
  env: DaemonEnv;
  base: string;
  conn: Connect;
  dom: Domain;
  evil: Domain;
  /** the disk's content as written so far (the guest boots nothing: only our writes change it) */
  expected: Buffer;
  write(pattern: number, off: number, len: number): Promise<void>;
}

async function setup(t: TestContext): Promise<Setup> {
  const env = await makeDaemonEnv(t);
  const repoDir = path.join(env.dir, 'repo');
  await ChunkRepository.init(await openFolderStore(repoDir));
  const assets = await buildAssets(path.join(env.dir, 'webui'));
  const port = await freePort();
  await env.start(['--web', `127.0.0.1:${port}`, '--web-repo', repoDir, '--web-assets', assets]);
  const conn = await env.connect();
  const def = await makeTestDomain(env.dir, { name: 'web-vm', sizeMiB: DISK_MIB });
  const dom = await conn.defineXML(def.xml);
  await dom.create();
  const xml = await dom.getXMLDesc();
  const evil = await conn.defineXML(
    `<domain type='qemu'><name>${xmlEsc(EVIL_NAME)}</name><description>${xmlEsc(EVIL_DESC)}</description>` +
      `<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>`,
  );
  const expected = Buffer.alloc(DISK_MIB * MiB);
  return {
    env,
    base: `https://127.0.0.1:${port}`,
    conn,
    dom,
    evil,
    expected,
    async write(pattern, off, len) {
      await hmpWriteVia(dom, xml, 'sda', pattern, off, len);
      expected.fill(pattern, off, off + len);
    },
  };
}

const checkpointNames = async (dom: Domain) => (await dom.listAllCheckpoints()).map((c) => c.name).sort();

/** Starts a backup from the domain page; waits for its task to complete, sampling the bar on the way. */
async function backupFromConsole(page: Page, level: 'auto' | 'full' | 'inc'): Promise<number[]> {
  const before = await page.locator('#tasks tr[data-kind=backup]').count();
  await page.locator('#backup-form select[name=level]').selectOption(level);
  await page.locator('[data-action=start-backup]').click();
  const row = page.locator('#tasks tr[data-kind=backup]').first();
  await waitUntil(async () => (await page.locator('#tasks tr[data-kind=backup]').count()) > before, 'the backup task');
  const seen: number[] = [];
  for (;;) {
    const state = await row.getAttribute('data-state');
    seen.push(await barValue(page, '#tasks tr[data-kind=backup]'));
    if (state !== 'running') {
      assert.equal(state, 'completed', `backup task ended ${state}: ${await row.textContent()}`);
      return seen;
    }
    await page.waitForTimeout(100);
  }
}

test('web console: backup, events, abort, verify, restore, read-only, escaping, cross-site post', { timeout: 300_000 }, async (t) => {
  const s = await setup(t);
  const browser = await launchBrowser(t);
  let checkpointsAfterBackups: string[] = [];
  const admin = await newPage(browser);
  const page = admin.page;
  page.setDefaultTimeout(90_000);

  await t.test('log in and see the running domain', async () => {
    await login(page, s.base, await readToken(s.env.stateDir, 'admin'));
    const row = page.locator(`#domains tr[data-uuid="${s.dom.uuid}"]`);
    assert.equal((await row.locator('td.name').textContent())?.trim(), 'web-vm');
    await row.locator('.badge', { hasText: 'running' }).waitFor();
  });

  await t.test('an auto backup from the console: the bar reaches 100 %, the point is full, then inc', async () => {
    await s.write(0xa1, 0, 2 * MiB);
    await page.locator(`#domains tr[data-uuid="${s.dom.uuid}"] td.name a`).click();
    await page.locator('#domain-name', { hasText: 'web-vm' }).waitFor();
    const seen = await backupFromConsole(page, 'auto');
    assert.equal(seen.at(-1), 100);
    assert.deepEqual([...seen].sort((a, b) => a - b), seen, `progress went backwards: ${seen.join(',')}`);
    await page.locator('#points-panel tr[data-point]').first().waitFor();
    assert.equal(await page.locator('#points-panel tr[data-point]').count(), 1);
    assert.equal(await page.locator('#points-panel tr[data-point]').first().getAttribute('data-level'), 'full');
    const [first] = await checkpointNames(s.dom);

    await s.write(0xb2, 8 * MiB, MiB);
    const seen2 = await backupFromConsole(page, 'auto');
    assert.equal(seen2.at(-1), 100);
    await waitUntil(async () => (await page.locator('#points-panel tr[data-point]').count()) === 2, 'the second point');
    // newest first
    assert.equal(await page.locator('#points-panel tr[data-point]').first().getAttribute('data-level'), 'inc');
    // the backup keeps one checkpoint per repository: the new one, shown as the tree's current one
    const names = await checkpointNames(s.dom);
    assert.equal(names.length, 1);
    assert.notEqual(names[0], first);
    await page.locator(`#checkpoints-panel li[data-checkpoint="${names[0]}"] .badge`, { hasText: 'current' }).waitFor();
    checkpointsAfterBackups = names;
  });

  await t.test('the events page shows the job-completed event and the task', async () => {
    await page.locator('header nav a', { hasText: 'Events' }).click();
    await page.locator('#events tr[data-type=job-completed]').first().waitFor();
    assert.match((await page.locator('#events tr[data-type=job-completed] td.detail').first().textContent()) ?? '', /completed/);
    await page.locator('#events tr[data-type="backup completed"]').first().waitFor();
  });

  await t.test('a raw pull job, its XML shown before it runs, is aborted from the jobs table', async () => {
    await page.goto(`${s.base}/#/domain/${s.dom.uuid}`);
    const xml = `<domainbackup mode='pull'>\n  <server transport='unix' socket='${path.join(s.env.dir, 'pull.sock')}'/>\n</domainbackup>\n`;
    await page.locator('textarea[name=backupXml]').fill(xml);
    await page.locator('[data-action=review-raw-job]').click();
    assert.equal(await page.locator('#raw-backup-xml').textContent(), xml);
    await page.locator('[data-action=run-raw-job]').click();
    const running = page.locator('#jobs tr', { has: page.locator('[data-action=abort]') });
    await running.waitFor();
    const jobId = Number(await running.getAttribute('data-job'));
    assert.deepEqual(await s.dom.listJobIds(), [jobId]);
    await running.locator('[data-action=abort]').click();
    const badge = page.locator(`#jobs tr[data-job="${jobId}"] .badge`);
    await waitUntil(async () => (await badge.textContent()) !== 'running', 'the aborted job to end', 30_000).catch(async (e: unknown) => {
      throw new Error(`${(e as Error).message}: ${await page.locator('#jobs').textContent()}`);
    });
    // libvirt reports a pull job ended by its client as completed (its data was there to pull);
    // the row's end says it ended, the driver that it is gone
    assert.match((await badge.textContent()) ?? '', /^(completed|aborted)$/);
    assert.deepEqual(await s.dom.listJobIds(), []);
    // the failed pull made no checkpoint and no point
    assert.deepEqual(await checkpointNames(s.dom), checkpointsAfterBackups);
    assert.equal(await page.locator('#points-panel tr[data-point]').count(), 2);
  });

  await t.test('verify the newest point', async () => {
    const newest = page.locator('#points-panel tr[data-point]').first();
    await newest.locator('[data-action=verify]').click();
    await page.locator('#tasks tr[data-kind=verify][data-state=completed]').waitFor();
    await page.locator('#points-panel tr[data-point][data-verified=ok]').first().waitFor();
  });

  await t.test('restore the inc point into a new file, after its preview: byte for byte the disk at the backup instant', async () => {
    const dest = path.join(s.env.dir, 'restored');
    await page.locator('#points-panel tr[data-point]').first().locator('[data-action=restore-open]').click();
    await page.locator('#restore-panel input[name=destDir]').fill(dest);
    await page.locator('[data-action=restore-preview]').click();
    const file = path.join(dest, 'web-vm-sda.raw');
    const row = page.locator('#restore-preview tr[data-target=sda]');
    assert.equal(await row.locator('td.mono').textContent(), file);
    await row.locator('.badge', { hasText: 'new file' }).waitFor();
    await page.locator('[data-action=restore]').click();
    await page.locator('#tasks tr[data-kind=restore][data-state=completed]').waitFor();
    const restored = await readFile(file);
    assert.equal(restored.length, s.expected.length);
    assert.equal(restored.readUInt8(8 * MiB), 0xb2, 'the inc point holds the second write');
    assert.equal(sha(restored), sha(s.expected));
    // a second restore into the same folder is refused by the preview and by the server
    await page.locator('[data-action=restore-preview]').click();
    await row.locator('.badge', { hasText: 'exists' }).waitFor();
    assert.equal(await page.locator('[data-action=restore]').isDisabled(), true);
  });

  await t.test('prune preview: keep the last point, the older would go (nothing is deleted)', async () => {
    const points = await page.locator('#points-panel tr[data-point]').evaluateAll((rows: { getAttribute(n: string): string | null }[]) => rows.map((r) => r.getAttribute('data-point')));
    await page.locator('#prune-form input[name=keepLast]').fill('1');
    await page.locator('#prune-form button[type=submit]').click();
    await page.locator('#prune-result').waitFor();
    assert.deepEqual(await page.locator('#prune-result li.keep').allTextContents(), [`${points[0]} (inc) — last`]);
    assert.deepEqual(await page.locator('#prune-result li.remove').allTextContents(), [`${points[1]} (full)`]);
    assert.equal(await page.locator('#points-panel tr[data-point]').count(), 2);
  });

  await t.test('instant restore: a new domain runs on the served point; its task is stopped from the console', async () => {
    await page.locator('#points-panel tr[data-point]').first().locator('[data-action=instant-open]').click();
    await page.locator('#instant-panel input[name=instantName]').fill('web-vm-ir');
    await page.locator('[data-action=instant-restore]').click();
    assert.match((await page.locator('#instant-restore .mono').first().textContent()) ?? '', /^nbd\+unix:\/\/\/sda\?socket=/);
    const row = page.locator('#tasks tr[data-kind=instant-restore][data-state=running]');
    await row.waitFor();
    const copy = await s.conn.lookupByName('web-vm-ir');
    // the server refuses to stop the serving under a running domain; the copy goes first
    await copy.destroy();
    await row.locator('[data-action=stop-task]').click();
    await page.locator('#tasks tr[data-kind=instant-restore][data-state=completed], #tasks tr[data-kind=instant-restore][data-state=aborted]').waitFor();
    await copy.undefine();
  });

  const tasksNow = async () => JSON.parse((await pageFetch(page, 'GET', '/api/tasks')).body) as unknown[];

  await t.test('a read-only session sees actions disabled; the server refuses them, nothing changes', async () => {
    const ro = await newPage(browser);
    ro.page.setDefaultTimeout(60_000);
    const tasksBefore = (await tasksNow()).length;
    await login(ro.page, s.base, await readToken(s.env.stateDir, 'readonly'));
    await ro.page.locator('.banner', { hasText: 'Read-only' }).waitFor();
    await ro.page.goto(`${s.base}/#/domain/${s.dom.uuid}`);
    await ro.page.locator('#points-panel tr[data-point]').first().waitFor();
    for (const action of ['start-backup', 'verify', 'restore-open', 'instant-open', 'review-raw-job']) {
      assert.equal(await ro.page.locator(`[data-action=${action}]`).first().isDisabled(), true, `${action} enabled for read-only`);
    }
    // a forced click: the button enabled by hand sends its request, and the server refuses it
    await ro.page.locator('[data-action=start-backup]').evaluate((el: { removeAttribute(n: string): void }) => el.removeAttribute('disabled'));
    await ro.page.locator('[data-action=start-backup]').click();
    await ro.page.locator('[role=alert]', { hasText: 'VIR_ERR_OPERATION_DENIED' }).waitFor();
    const point = (await ro.page.locator('#points-panel tr[data-point]').first().getAttribute('data-point'))!;
    const u = encodeURIComponent(s.dom.uuid);
    for (const [url, body] of [
      [`/api/domains/${u}/backup`, { repo: '0', level: 'full' }],
      [`/api/domains/${u}/jobs`, { backupXml: "<domainbackup mode='pull'/>" }],
      [`/api/domains/${u}/jobs/1/abort`, {}],
      ['/api/repos/0/verify', {}],
      [`/api/repos/0/points/web-vm/${encodeURIComponent(point)}/restore`, { destDir: path.join(s.env.dir, 'ro-restore') }],
      [`/api/repos/0/points/web-vm/${encodeURIComponent(point)}/instant-restore`, { name: 'ro-instant' }],
    ] as const) {
      const r = await pageFetch(ro.page, 'POST', url, body);
      assert.equal(r.status, 403, `${url}: ${r.body}`);
      assert.equal((JSON.parse(r.body) as { error: { name: string } }).error.name, 'VIR_ERR_OPERATION_DENIED');
    }
    assert.equal((await tasksNow()).length, tasksBefore, 'a task was started');
    assert.deepEqual(await checkpointNames(s.dom), checkpointsAfterBackups);
    assert.deepEqual(await s.dom.listJobIds(), []);
    assert.equal(await page.locator('#points-panel tr[data-point]').count(), 2);
    assert.deepEqual(ro.dialogs, []);
    await ro.context.close();
  });

  await t.test('a name and description holding <script> and quotes render as text', async () => {
    await page.goto(`${s.base}/#/domains`);
    const row = page.locator(`#domains tr[data-uuid="${s.evil.uuid}"]`);
    assert.equal(await row.locator('td.name a').textContent(), EVIL_NAME);
    await row.locator('td.name a').click();
    assert.equal(await page.locator('#domain-name').textContent(), EVIL_NAME);
    assert.equal(await page.locator('#domain-description').textContent(), EVIL_DESC);
    assert.equal(await page.locator('#domain-description img, #domain-name script').count(), 0);
    await page.waitForTimeout(300);
    assert.deepEqual(admin.dialogs, []);
    assert.deepEqual(admin.errors, []);
  });

  await t.test('a form posted to the API from another origin is refused', async () => {
    const tasksBefore = (await tasksNow()).length;
    const target = `${s.base}/api/domains/${encodeURIComponent(s.dom.uuid)}/backup`;
    // text/plain forms are how a foreign page smuggles JSON: name + '=' + value
    const html = `<!doctype html><form id=f method=POST enctype="text/plain" action="${target}">` +
      `<input type=hidden name='{"repo":"0","level":"full","x":"' value='"}'></form><script>document.getElementById('f').submit()</script>`;
    const foreign = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html));
    await new Promise<void>((r) => foreign.listen(0, '127.0.0.1', r));
    t.after(() => foreign.close());
    const evilPage = await admin.context.newPage();
    const answer = evilPage.waitForResponse((r) => r.url() === target);
    await evilPage.goto(`http://127.0.0.1:${(foreign.address() as { port: number }).port}/`);
    const r = await answer;
    assert.ok(r.status() === 401 || r.status() === 403, `cross-site post answered ${r.status()}`);
    await evilPage.close();
    assert.equal((await tasksNow()).length, tasksBefore, 'the forged post started a task');
    assert.deepEqual(await checkpointNames(s.dom), checkpointsAfterBackups);
  });
});
