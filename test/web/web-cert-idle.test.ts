// The console with the admin's own certificate (--web-cert/--web-key): that
// certificate is what clients see and no self-signed one is made. And an
// idle browser tab (a logged-in session with its event stream open) costs
// the daemon no CPU beyond what it spends with no tab at all.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { promisify } from 'node:util';
import { makeTestEnv, sleep } from '../helpers/qemu-env.js';
import { stopVirtbackd } from '../qemu/daemon-util.js';
import { startConsoleDaemon } from './web-client.js';

const run = promisify(execFile);

/** user + system CPU time of `pid` so far, in clock ticks (/proc/PID/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

function servedFingerprint(url: string, ca: Buffer): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: u.hostname, port: Number(u.port), ca, servername: undefined }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.end();
    });
    s.on('error', reject);
  });
}

test('web console: --web-cert/--web-key are served as given; an idle tab with its event stream costs the daemon nothing measurable', { timeout: 120_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const cert = path.join(env.dir, 'console.crt');
  const key = path.join(env.dir, 'console.key');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=virtback test console',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert]);
  const cd = await startConsoleDaemon(env, ['--driver', 'test', '--web-cert', cert, '--web-key', key], { caFile: cert });
  t.after(() => stopVirtbackd(cd.daemon, 'SIGKILL'));

  const ours = new X509Certificate(fs.readFileSync(cert)).fingerprint256;
  assert.equal(await servedFingerprint(cd.url, cd.ca!), ours, 'the daemon serves the given certificate');
  assert.equal(fs.existsSync(path.join(env.stateDir, 'web', 'cert.pem')), false, 'no self-signed certificate was made');
  const admin = cd.client();
  assert.equal((await admin.login(cd.adminToken)).status, 200, 'a client trusting only the given certificate logs in');

  // CPU of the daemon over equal windows: no tab, then one idle tab with its
  // stream open. A poll loop would raise every tab window; one GC or ping may
  // land in one of them, so the cheaper tab window is compared.
  const window = async (): Promise<number> => {
    const before = cpuTicks(cd.daemon.pid);
    await sleep(6000);
    return cpuTicks(cd.daemon.pid) - before;
  };
  await sleep(1000); // let start-up work settle
  // alternated, so that a change of the machine's load hits both kinds of window alike
  const without: number[] = [];
  const withTab: number[] = [];
  const streams: Awaited<ReturnType<typeof admin.events>>[] = [];
  for (let i = 0; i < 2; i++) {
    without.push(await window());
    const stream = await admin.events();
    streams.push(stream);
    await sleep(1000); // the stream's hello and first snapshot are its start, not its idle cost
    withTab.push(await window());
    stream.close();
  }
  t.diagnostic(`daemon CPU ticks per 6 s: ${without.join(', ')} without a tab; ${withTab.join(', ')} with an idle tab and its event stream`);
  const cost = Math.min(...withTab) - Math.max(...without);
  // a tick is 10 ms
  assert.ok(cost <= 3, `an idle tab cost the daemon ${cost} ticks of CPU per 6 s (without: ${without.join(', ')}; with: ${withTab.join(', ')})`);
  assert.ok(streams.flatMap((st) => st.events).every((e) => e.event === 'ping' || e.event === 'hello' || e.event === 'domain' || e.event === 'task'), JSON.stringify(streams[0]!.events.slice(0, 3)));
});
