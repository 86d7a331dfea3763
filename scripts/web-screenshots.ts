// Regenerates the web console's screenshots in docs/img/console-*.png (docs/web-console.md ## Pages):
// a virtbackd with --web on a free loopback port, three small QEMU domains (two running, one shut
// off), backups and a verify made through the console's API, then Debian's chromium photographs
// the pages. Everything lives in a temp dir that is removed at the end.
//
//   node --import tsx scripts/web-screenshots.ts [outDir]

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { ChunkRepository, openFolderStore } from '../src/chunkstore/index.js';
import { connect } from '../src/sdk/connect.js';
import { makeTestDomain, makeTestEnv } from '../test/helpers/qemu-env.js';
import { hmpWriteVia, startVirtbackd, stopVirtbackd } from '../test/qemu/daemon-util.js';
import { buildAssets, freePort, launchBrowserAt, login, newPage, pageFetch, readToken, waitUntil } from '../test/web/browser-util.js';

const root = path.resolve(import.meta.dirname, '..');
const outDir = path.resolve(process.argv[2] ?? path.join(root, 'docs', 'img'));

async function task(page: Page, method: string, url: string, body: unknown): Promise<void> {
  const r = await pageFetch(page, method, url, body);
  if (r.status !== 202) throw new Error(`${url}: ${r.status} ${r.body}`);
  const id = (JSON.parse(r.body) as { task: string }).task;
  await waitUntil(async () => {
    const t = JSON.parse((await pageFetch(page, 'GET', `/api/tasks/${id}`)).body) as { state: string; error: unknown };
    if (t.state === 'failed') throw new Error(`${url}: ${JSON.stringify(t.error)}`);
    return t.state === 'completed';
  }, `task ${id}`);
}

async function shoot(page: Page, name: string, ready: string): Promise<void> {
  await page.locator(ready).first().waitFor();
  await page.waitForTimeout(400); // the live feed's refetch settles
  await page.screenshot({ path: path.join(outDir, `console-${name}.png`), fullPage: true });
  console.log(`wrote ${path.join(outDir, `console-${name}.png`)}`);
}

async function main(): Promise<void> {
  await mkdir(outDir, { recursive: true });
  const env = await makeTestEnv();
  const browser = await launchBrowserAt();
  let daemon: Awaited<ReturnType<typeof startVirtbackd>> | null = null;
  try {
    const repoDir = path.join(env.dir, 'backups-main');
    await ChunkRepository.init(await openFolderStore(repoDir));
    const assets = await buildAssets(path.join(env.dir, 'webui'));
    const port = await freePort();
    daemon = await startVirtbackd(env, ['--web', `127.0.0.1:${port}`, '--web-repo', repoDir, '--web-assets', assets]);
    const conn = await connect(`virtback+unix:///?socket=${path.join(env.runDir, 'virtbackd.sock')}`);
    const doms = [];
    for (const name of ['web01', 'db01', 'archive']) {
      const def = await makeTestDomain(env.dir, { name, sizeMiB: 32 });
      const xml = def.xml.replace('</name>', `</name>\n  <description>${name === 'web01' ? 'Front-end web server (nginx)' : name === 'db01' ? 'PostgreSQL primary' : 'Retired file share'}</description>`);
      const dom = await conn.defineXML(xml);
      if (name !== 'archive') await dom.create();
      doms.push(dom);
    }
    const [web, db] = doms as [(typeof doms)[0], (typeof doms)[0]];
    const base = `https://127.0.0.1:${port}`;
    const { page } = await newPage(browser);
    page.setDefaultTimeout(120_000);
    await login(page, base, await readToken(env.stateDir, 'admin'));

    const webXml = await web.getXMLDesc();
    await hmpWriteVia(web, webXml, 'sda', 0x5a, 0, 4 << 20);
    await task(page, 'POST', `/api/domains/${web.uuid}/backup`, { repo: '0', level: 'auto' });
    await hmpWriteVia(web, webXml, 'sda', 0x6b, 8 << 20, 1 << 20);
    await task(page, 'POST', `/api/domains/${web.uuid}/backup`, { repo: '0', level: 'auto' });
    await task(page, 'POST', `/api/domains/${db.uuid}/backup`, { repo: '0', level: 'full' });
    await task(page, 'POST', '/api/repos/0/verify', { domain: 'web01' });
    // a raw pull job left running: the domains page shows it in the job column
    const pull = `<domainbackup mode='pull'><server transport='unix' socket='${path.join(env.dir, 'pull.sock')}'/></domainbackup>`;
    const r = await pageFetch(page, 'POST', `/api/domains/${db.uuid}/jobs`, { backupXml: pull });
    if (r.status !== 200) throw new Error(`raw job: ${r.status} ${r.body}`);

    await page.goto(`${base}/#/daemon`);
    await page.goto(`${base}/#/domains`);
    await shoot(page, 'domains', '#domains tr[data-uuid] .job');
    await page.goto(`${base}/#/domain/${web.uuid}`);
    await page.locator('#points-panel tr[data-point]').first().locator('[data-action=restore-open]').click();
    await page.locator('#restore-panel input[name=destDir]').fill('/var/lib/virtback/restore');
    await page.locator('[data-action=restore-preview]').click();
    await page.locator('#prune-form input[name=keepLast]').fill('1');
    await page.locator('#prune-form button[type=submit]').click();
    await page.locator('#prune-result').waitFor();
    await shoot(page, 'domain', '#restore-preview');
    await page.goto(`${base}/#/events`);
    // events since this page was loaded: a job-completed to show
    await task(page, 'POST', `/api/domains/${web.uuid}/backup`, { repo: '0', level: 'auto' });
    await shoot(page, 'events', '#events tr[data-type=job-completed]');
    await page.goto(`${base}/#/daemon`);
    await shoot(page, 'daemon', '#daemon');

    const ro = await newPage(browser);
    await ro.page.goto(`${base}/#/login`);
    await shoot(ro.page, 'login', 'input[name=token]');
    await conn.close();
  } finally {
    await browser.close();
    if (daemon) await stopVirtbackd(daemon, 'SIGKILL');
    await env.cleanup();
  }
}

await main();
