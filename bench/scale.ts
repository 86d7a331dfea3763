// Scale of one virtbackd (not a test; issue 6): 10 domains with 2 disks each
// (128 MiB, 64 MiB of data), their push backups begun concurrently from 10
// separate client connections while 4 other clients poll getJobStats.
// Reports:
//   - the daemon's peak RSS (VmHWM; goal < 150 MiB),
//   - p50/p99 latency of backupBegin and of getJobStats under that load, and
//     the ratio of getJobStats to the baseline: a plain
//     qemuMonitorCommand('query-jobs') round trip through the same daemon,
//     interleaved with it by the same pollers,
//   - time from QEMU's job completion (the JOB_STATUS_CHANGE "concluded"
//     timestamp of the domain's last disk job, which the backup module logs
//     at debug level; read by bench/job-log.ts) to our job-completed event
//     reaching the client (goal p99 < 50 ms).
//
//   - where that time goes: the backup module's per-job timeline and the
//     daemon's event-loop delay and memory reports (debug log; docs/performance.md).
//
//   node --import tsx bench/scale.ts [rounds=3]
//   VBS_DAEMON=wrapper.mjs: run that script as the daemon (e.g. a profiler around dist/src/cli/virtbackd.js)

import { execFile } from 'node:child_process';
import { mkdtemp, open as openFile, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { connect } from '../src/sdk/connect.js';
import type { JobCompletedEvent } from '../src/api/driver.js';
import type { Connect, Domain } from '../src/api/public.js';
import { killQemuFor, makeTestDomain, type TestDomain } from '../test/helpers/qemu-env.js';
import { startVirtbackd, stopVirtbackd, type Virtbackd } from '../test/qemu/daemon-util.js';
import { builtIsFresh, programFile } from '../test/helpers/entry.js';
import { jobTimelines, logRecords, statusTimes } from './job-log.js';

const run = promisify(execFile);
const DOMAINS = 10;
const DISK_MIB = 128;
const DATA_MIB = 64;
const POLLERS = 4;
const rounds = Number(process.argv[2] ?? 3);

const now = (): number => performance.timeOrigin + performance.now();

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

const fmt = (ms: number): string => `${ms.toFixed(2)} ms`;

async function procStatusMiB(pid: number, field: 'VmHWM' | 'VmRSS'): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]);
  return kb / 1024;
}
const vmHWM = (pid: number): Promise<number> => procStatusMiB(pid, 'VmHWM');
const vmRSS = (pid: number): Promise<number> => procStatusMiB(pid, 'VmRSS');

/**
 * The disk's durable write rate in the benchmark's folder, MiB/s: 256 MiB
 * written then fdatasync'ed (what a push target costs before job-completed).
 */
async function durableWriteRate(dir: string): Promise<number> {
  const file = path.join(dir, 'rate.probe');
  const buf = Buffer.alloc(4 * 1024 * 1024, 0x5a);
  const fh = await openFile(file, 'w');
  const t0 = now();
  try {
    for (let i = 0; i < 64; i++) await fh.write(buf);
    await fh.datasync();
  } finally {
    await fh.close();
    await rm(file, { force: true });
  }
  return 256 / ((now() - t0) / 1000);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vbs-'));
  const stateDir = path.join(dir, 'state');
  const runDir = path.join(dir, 'run');
  const logFile = path.join(dir, 'virtbackd.log');
  let daemon: Virtbackd | null = null;
  const conns: Connect[] = [];
  try {
    // disks with data, written offline (fast) before the domains start
    const tds: TestDomain[] = [];
    for (let i = 0; i < DOMAINS; i++) {
      const td = await makeTestDomain(dir, { disks: 2, sizeMiB: DISK_MIB, name: `scale-${i}`, memoryMiB: 64 });
      for (const [k, d] of td.disks.entries()) {
        await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(0x11 + i * 2 + k).toString(16)} 0 ${DATA_MIB}M`, d.path]);
      }
      tds.push(td);
    }
    const compiled = process.env.VBS_DAEMON ?? (builtIsFresh() ? programFile('cli/virtbackd') : null);
    daemon = await startVirtbackd({ stateDir, runDir }, ['--log-level', 'debug', '--log-file', logFile], compiled ? { compiled } : {});
    const uri = `virtback+unix:///?socket=${path.join(runDir, 'virtbackd.sock')}`;
    const open = async (): Promise<Connect> => {
      const c = await connect(uri);
      conns.push(c);
      return c;
    };
    const admin = await open();
    const doms: Domain[] = [];
    for (const td of tds) {
      const d = await admin.defineXML(td.xml);
      await d.create();
      doms.push(d);
    }
    // one connection per domain for begin/end and its events; POLLERS more for stats
    const owners = await Promise.all(tds.map(() => open()));
    const ownerDoms = await Promise.all(owners.map((c, i) => c.lookupByUUID(tds[i]!.uuid)));
    const pollers = await Promise.all(Array.from({ length: POLLERS }, () => open()));
    const pollerDoms = await Promise.all(pollers.map((c) => Promise.all(tds.map((td) => c.lookupByUUID(td.uuid)))));

    const beginLat: number[] = [];
    const statsLat: number[] = [];
    const qmpLat: number[] = [];
    const eventLat: number[] = [];
    /** concluded -> dismissed by our reconcile */
    const reconcileLat: number[] = [];
    /** dismissed -> event at the client: closing targets, manifests, publishing */
    const terminateLat: number[] = [];
    /** step of the completion -> its ms after QEMU concluded, one per job (src/qemu/backup-timeline.ts) */
    const stepLat = new Map<string, number[]>();
    /** the daemon's published -> the client received it */
    const deliverLat: number[] = [];
    const rssIdle = await vmRSS(daemon.pid);
    const rate = await durableWriteRate(dir);
    let failures = 0;
    /** per round: first backupBegin called -> last QEMU conclusion, and last conclusion -> last event at a client */
    const windows: Array<{ copy: number; tail: number }> = [];

    for (let r = 0; r < rounds; r++) {
      const received = new Map<string, { at: number; ev: JobCompletedEvent }>();
      const offs = owners.map((c) => c.on('job-completed', (ev) => received.set(ev.domain.uuid, { at: now(), ev })));
      for (const c of owners) {
        await c.listAllDomainSummaries();
        await c.listAllDomainSummaries();
      }
      let polling = true;
      const polls = pollerDoms.map(async (ds, p) => {
        let i = p;
        while (polling) {
          const d = ds[i++ % ds.length]!;
          let t0 = now();
          await d.getJobStats();
          statsLat.push(now() - t0);
          t0 = now();
          await d.qemuMonitorCommand('{"execute":"query-jobs"}');
          qmpLat.push(now() - t0);
        }
      });
      const targets = (td: TestDomain): string =>
        `<domainbackup><disks>${td.disks.map((d) => `<disk name='${d.target}' type='file'><target file='${path.join(dir, `r${r}-${td.name}-${d.target}.qcow2`)}'/><driver type='qcow2'/></disk>`).join('')}</disks></domainbackup>`;
      const firstBegin = now();
      const ids = await Promise.all(ownerDoms.map(async (d, i) => {
        const t0 = now();
        const id = await d.backupBegin(targets(tds[i]!));
        beginLat.push(now() - t0);
        return id;
      }));
      const deadline = Date.now() + 120_000;
      while (received.size < DOMAINS && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      polling = false;
      await Promise.all(polls);
      for (const off of offs) off();
      if (received.size < DOMAINS) throw new Error(`round ${r}: only ${received.size} of ${DOMAINS} job-completed events`);
      for (const [i, d] of ownerDoms.entries()) {
        const got = received.get(tds[i]!.uuid)!;
        if (got.ev.jobId !== ids[i] || !got.ev.stats.success) failures++;
        if ((await d.backupEnd(ids[i]!)) !== 1) failures++;
      }
      const log = await readFile(logFile, 'utf8');
      const concluded = statusTimes(log, 'concluded');
      const dismissed = statusTimes(log, 'null');
      const timelines = jobTimelines(log);
      // a job id is reused by the next round: keep the latest time before our event
      // the log names a domain by name or uuid
      const latest = (m: Map<string, Map<string, number>>, td: TestDomain, before: number): number => {
        const times = [...(m.get(td.uuid)?.values() ?? []), ...(m.get(td.name)?.values() ?? [])].filter((t) => t <= before + 1);
        if (times.length === 0) throw new Error(`no QEMU job time logged for domain ${td.name} (${td.uuid})`);
        return Math.max(...times);
      };
      let lastEnd = 0;
      let lastEvent = 0;
      for (const td of tds) {
        const got = received.get(td.uuid)!;
        // the backup ends when its last disk job concluded
        const end = latest(concluded, td, got.at);
        lastEnd = Math.max(lastEnd, end);
        lastEvent = Math.max(lastEvent, got.at);
        const gone = latest(dismissed, td, got.at);
        eventLat.push(got.at - end);
        reconcileLat.push(gone - end);
        terminateLat.push(got.at - gone);
        const steps = timelines.get(`${td.uuid}/${got.ev.jobId}`);
        if (!steps) throw new Error(`no job timeline logged for domain ${td.name} job ${got.ev.jobId}`);
        for (const [step, ms] of steps) stepLat.set(step, [...(stepLat.get(step) ?? []), ms]);
        const published = steps.find(([step]) => step === 'published')?.[1];
        if (published !== undefined) deliverLat.push(got.at - end - published);
      }
      windows.push({ copy: lastEnd - firstBegin, tail: lastEvent - lastEnd });
      for (const td of tds) for (const d of td.disks) await rm(path.join(dir, `r${r}-${td.name}-${d.target}.qcow2`), { force: true });
    }

    const rss = await vmHWM(daemon.pid);
    for (const d of doms) await d.destroy();
    for (const d of doms) await d.undefine();
    for (const c of conns.splice(0)) await c.close();
    await stopVirtbackd(daemon, 'SIGTERM');
    const load = logRecords(await readFile(logFile, 'utf8'), 'daemon load');
    const maxOf = (k: string): number => Math.max(...load.map((l) => Number(l[k])));

    const statsP50 = pct(statsLat, 50);
    const qmpP50 = pct(qmpLat, 50);
    console.log(`daemon: ${compiled ? `built ${path.relative(process.cwd(), compiled)}` : 'sources through tsx (dist/ missing or stale: npm run build; RSS includes the tsx compiler)'}`);
    console.log(`virtbackd scale: ${DOMAINS} domains x 2 disks (${DISK_MIB} MiB, ${DATA_MIB} MiB data), ${rounds} rounds of concurrent push backups, ${POLLERS} pollers`);
    console.log(`  daemon peak RSS (VmHWM)             ${rss.toFixed(1)} MiB   (goal < 150 MiB: ${rss < 150 ? 'met' : 'NOT met'})`);
    console.log(`  daemon RSS with ${DOMAINS} domains and ${1 + DOMAINS + POLLERS} clients, before any backup  ${rssIdle.toFixed(1)} MiB`);
    console.log(`  backupBegin latency                 p50 ${fmt(pct(beginLat, 50))}   p99 ${fmt(pct(beginLat, 99))}   (n=${beginLat.length})`);
    console.log(`  getJobStats latency                 p50 ${fmt(statsP50)}   p99 ${fmt(pct(statsLat, 99))}   (n=${statsLat.length})`);
    console.log(`  baseline qemuMonitorCommand query-jobs p50 ${fmt(qmpP50)}   p99 ${fmt(pct(qmpLat, 99))}   (n=${qmpLat.length})`);
    console.log(`  getJobStats / query-jobs round trip  p50 ${(statsP50 / qmpP50).toFixed(2)}x   p99 ${(pct(statsLat, 99) / pct(qmpLat, 99)).toFixed(2)}x`);
    const e99 = pct(eventLat, 99);
    console.log(`  QEMU job concluded -> job-completed at client  p50 ${fmt(pct(eventLat, 50))}   p99 ${fmt(e99)}   max ${fmt(Math.max(...eventLat))}   (n=${eventLat.length}; goal p99 < 50 ms: ${e99 < 50 ? 'met' : 'NOT met'})`);
    console.log(`    of which concluded -> dismissed (reconcile)          p50 ${fmt(pct(reconcileLat, 50))}   p99 ${fmt(pct(reconcileLat, 99))}`);
    console.log(`    of which dismissed -> client (close targets, manifests, publish)  p50 ${fmt(pct(terminateLat, 50))}   p99 ${fmt(pct(terminateLat, 99))}`);
    console.log(`    completion steps, ms after QEMU concluded the last disk job (cumulative; p50 / p99 over jobs):`);
    for (const [step, ms] of stepLat) console.log(`      ${step.padEnd(28)} p50 ${fmt(pct(ms, 50))}   p99 ${fmt(pct(ms, 99))}`);
    console.log(`      ${'client received'.padEnd(28)} p50 ${fmt(pct(eventLat, 50))}   p99 ${fmt(e99)}   (published -> client p50 ${fmt(pct(deliverLat, 50))}, p99 ${fmt(pct(deliverLat, 99))})`);
    // the targets must be durable before their events: the copies outrun the disk, whose backlog is the events' wait
    const bytesMiB = DOMAINS * 2 * DATA_MIB;
    for (const [r, w] of windows.entries()) {
      const all = w.copy + w.tail;
      console.log(`  round ${r + 1}: ${bytesMiB} MiB of targets copied in ${w.copy.toFixed(0)} ms (first backupBegin -> last QEMU conclusion), ` +
        `all durable and told ${w.tail.toFixed(0)} ms later: ${(bytesMiB / (all / 1000)).toFixed(0)} MiB/s from begin to the last event ` +
        `(a lone 256 MiB write + fdatasync before the rounds: ${rate.toFixed(0)} MiB/s)`);
    }
    console.log(`  daemon event-loop delay (${load.length} reports of ~5 s)  worst p99 ${fmt(maxOf('loopDelayP99'))}   max ${fmt(maxOf('loopDelayMax'))}`);
    console.log(`  daemon memory, largest reported     rss ${maxOf('rssMiB').toFixed(1)} MiB   heap used ${maxOf('heapUsedMiB').toFixed(1)} MiB   heap total ${maxOf('heapTotalMiB').toFixed(1)} MiB   external ${maxOf('externalMiB').toFixed(1)} MiB (array buffers ${maxOf('arrayBuffersMiB').toFixed(1)} MiB)`);
    if (failures > 0) console.log(`  FAILURES: ${failures} jobs did not complete successfully`);
  } finally {
    for (const c of conns) await c.close().catch(() => {});
    if (daemon && daemon.child.exitCode === null && daemon.child.signalCode === null) await stopVirtbackd(daemon, 'SIGKILL');
    await killQemuFor(dir);
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
