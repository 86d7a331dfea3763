// Backup throughput on real QEMU (not a test): a 2 GiB qcow2 holding 1 GiB of
// random data; push full, push incremental after 64 MiB of random 64 KiB
// writes, pull full read by nbdcopy. Each is printed as MiB/s and as a ratio to
// `qemu-img convert` of the same image measured in the same run; runs are
// interleaved and medians reported (the machine is noisy).
//
//   node --import tsx bench/backup.ts [runs=5]
//   VBB_ONLY=incremental: only the default push full (the base) and the incremental
//   VBB_ONLY=push: every push full variant and the incremental (no pull)
//
// The incremental is also run with every status save of the backup module
// done twice (about what backupBegin's write-ahead log cost before it saved
// each step once: intent, then done), the same-run baseline of that change.
//
// Push full is measured with our defaults (BACKUP_PERF, PUSH_TARGET) and with
// each alternative below (QEMU's defaults are libvirt's choice), to show what
// each buys; the incremental and pull runs use the defaults.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { DriverEvent } from '../src/api/driver.js';
import { MonitorCommandFlags } from '../src/flags.js';
import { QemuBackups, type QemuBackupsOptions } from '../src/qemu/backup.js';
import type { PushTargetOptions } from '../src/qemu/backup-plan.js';
import type { BackupPerf } from '../src/qemu/qmp/commands.js';
import { QemuDriver } from '../src/qemu/driver.js';
import type { DomainHost } from '../src/qemu/host.js';
import { median, timed } from './timing.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const DATA_MIB = 1024;
const INC_MIB = 64;
const runs = Number(process.argv[2] ?? 5);
const onlyIncremental = process.env.VBB_ONLY === 'incremental';
/** VBB_ONLY=push: push full variants and the incremental, no pull */
const onlyPush = process.env.VBB_ONLY === 'push';

/** The driver's host with saveStatus counted, and done twice while `s.twice`. */
function countingSaves(host: DomainHost, s: { twice: boolean; count: number }): DomainHost {
  return new Proxy(host, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (prop !== 'saveStatus' || typeof v !== 'function') return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(target) : v;
      return async (dom: Parameters<DomainHost['saveStatus']>[0]) => {
        s.count++;
        await target.saveStatus(dom);
        if (s.twice) await target.saveStatus(dom);
      };
    },
  });
}

/** Push full variants: blockdev-backup x-perf (undefined: BACKUP_PERF; null: QEMU's) and the target's options. */
const VARIANTS: Array<{ name: string; perf?: BackupPerf | null; target?: PushTargetOptions; writeback?: number | null }> = [
  { name: 'push full (our defaults)' },
  { name: '  no early write-back (QEMU flush alone)', writeback: null },
  { name: '  written back every 50 ms', writeback: 50 },
  { name: '  written back every 200 ms', writeback: 200 },
  { name: 'push full (QEMU defaults)', perf: null },
  { name: '  copy-range, target cache.direct', target: { cache: { direct: true } } },
  { name: '  no copy-range, cache.direct, aio=native', perf: {}, target: { cache: { direct: true }, aio: 'native' } },
  { name: '  no copy-range, 8 workers, 4 MiB chunks', perf: { 'max-workers': 8, 'max-chunk': 4 * MiB } },
  { name: '  copy-range, 8 workers, 4 MiB chunks', perf: { 'use-copy-range': true, 'max-workers': 8, 'max-chunk': 4 * MiB } },
  { name: '  copy-range, 2 MiB clusters', target: { 'cluster-size': 2 * MiB } },
  { name: '  copy-range, preallocation=metadata', target: { preallocation: 'metadata' } },
];


async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vbb-'));
  let driver: QemuDriver | null = null;
  try {
    // 2 GiB image, first GiB random
    const rawSrc = path.join(dir, 'src.raw');
    const fh = await open(rawSrc, 'w');
    for (let i = 0; i < DATA_MIB / 64; i++) await fh.write(randomBytes(64 * MiB));
    await fh.truncate(2048 * MiB);
    await fh.close();
    const disk = path.join(dir, 'disk.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', rawSrc, disk]);
    await rm(rawSrc);

    const uuid = '5b2c0f62-5d0e-4a7e-9c6f-1f2d3c4b5a69';
    const xml = `<domain type='qemu'><name>bench</name><uuid>${uuid}</uuid><memory unit='MiB'>128</memory><vcpu>1</vcpu>` +
      `<os><type arch='x86_64' machine='q35'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>` +
      `<source file='${disk}'/><target dev='sda' bus='scsi'/></disk></devices></domain>`;
    const events: DriverEvent[] = [];
    const bopts: QemuBackupsOptions = {};
    const saves = { twice: false, count: 0 };
    driver = await QemuDriver.open({
      stateDir: path.join(dir, 'state'), runDir: path.join(dir, 'run'),
      listener: (e) => events.push(e),
      backups: (d, cps) => new QemuBackups(countingSaves(d, saves), cps, bopts),
    });
    const drv = driver;
    await drv.domainDefineXML(xml, 0);
    await drv.domainCreate(uuid, 0);
    const qdev = drv.diskNodes(uuid)[0]!.qdevId;

    const completed = async (id: number): Promise<void> => {
      for (;;) {
        const ev = events.find((e) => e.type === 'job-completed' && e.jobId === id);
        if (ev && ev.type === 'job-completed') {
          if (!ev.stats.success) throw new Error(`job ${id} failed: ${ev.stats.errmsg}`);
          return;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    const pushFull = async (name: string, keep = false): Promise<number> => {
      const t = await timed(async () => {
        const id = await drv.backupBegin(uuid, null, `<domaincheckpoint><name>${name}</name></domaincheckpoint>`, 0);
        await completed(id);
        await drv.backupEnd(uuid, id, 0);
      });
      if (!keep) await rm(`${disk}.${name}`);
      return t;
    };

    const res: Record<string, number[]> = { convertQcow2: [], convertQcow2Durable: [], convertRaw: [], pushInc: [], pushIncTwice: [], incBegin: [], incSaves: [], incTwiceSaves: [], pullFull: [] };
    const variants = onlyIncremental ? VARIANTS.slice(0, 1) : VARIANTS;
    for (const v of variants) res[v.name] = [];
    for (let r = 0; r < runs; r++) {
      const out = path.join(dir, 'conv.out');
      res.convertQcow2!.push(await timed(() => run('qemu-img', ['convert', '-U', '-O', 'qcow2', disk, out])));
      await rm(out);
      res.convertRaw!.push(await timed(() => run('qemu-img', ['convert', '-U', '-O', 'raw', disk, out])));
      await rm(out);
      // convert's default output cache is 'unsafe' (never flushed); a push target is
      // flushed before job-completed, so this is the like-for-like baseline
      res.convertQcow2Durable!.push(await timed(() => run('qemu-img', ['convert', '-U', '-t', 'writeback', '-O', 'qcow2', disk, out])));
      await rm(out);

      for (const [i, v] of [...variants.entries()].reverse()) {
        bopts.perf = v.perf;
        bopts.pushTarget = v.target;
        bopts.targetWriteback = v.writeback;
        // the defaults go last: their checkpoint f<r> is the base of the incremental below
        res[v.name]!.push(await pushFull(i === 0 ? `f${r}` : `v${i}r${r}`, i === 0));
      }
      bopts.perf = undefined;
      bopts.pushTarget = undefined;
      bopts.targetWriteback = undefined;

      // 64 MiB of random 64 KiB writes since checkpoint f<r>, then push incremental
      for (let i = 0; i < (INC_MIB * MiB) / 65536; i++) {
        const off = Math.floor(Math.random() * (2048 * 16)) * 65536;
        await drv.qemuMonitorCommand(uuid, `qemu-io -d ${qdev} "write -P ${1 + (i % 250)} ${off} 64k"`, MonitorCommandFlags.HMP);
      }
      const pushInc = async (name: string, twice: boolean): Promise<void> => {
        saves.twice = twice;
        saves.count = 0;
        const target = `${disk}.i${r}${twice ? 't' : ''}`;
        let begun = 0;
        res[name]!.push(await timed(async () => {
          const t0 = Date.now();
          const id = await drv.backupBegin(uuid, `<domainbackup><incremental>f${r}</incremental><disks><disk name='sda' type='file'><target file='${target}'/></disk></disks></domainbackup>`, null, 0);
          begun = (Date.now() - t0) / 1000;
          await completed(id);
          await drv.backupEnd(uuid, id, 0);
        }));
        res[twice ? 'incTwiceSaves' : 'incSaves']!.push(saves.count);
        if (!twice) res.incBegin!.push(begun);
        saves.twice = false;
        await rm(target);
      };
      // same dirty data (the bitmap of f<r> stays), alternating which goes first
      for (const twice of r % 2 ? [true, false] : [false, true]) await pushInc(twice ? 'pushIncTwice' : 'pushInc', twice);
      await rm(`${disk}.f${r}`);

      const sock = path.join(dir, 'nbd.sock');
      const pullOut = path.join(dir, 'pull.raw');
      if (!onlyIncremental && !onlyPush) res.pullFull!.push(await timed(async () => {
        const id = await drv.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda'><scratch file='${dir}/scratch.qcow2'/></disk></disks></domainbackup>`, null, 0);
        await run('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, pullOut]);
        await drv.backupEnd(uuid, id, 0);
      }));
      await rm(pullOut, { force: true });
      for (const cp of await drv.listAllCheckpoints(uuid, 0)) await drv.checkpointDelete(uuid, cp, 0);
      process.stderr.write(`run ${r + 1}/${runs} done\n`);
    }

    const m = Object.fromEntries(Object.entries(res).map(([k, v]) => [k, median(v)])) as Record<string, number>;
    const line = (what: string, secs: number, mib: number, ref: number, refName: string): string =>
      `${what.padEnd(42)} ${secs.toFixed(3).padStart(7)} s ${(mib / secs).toFixed(0).padStart(6)} MiB/s   ${(ref / secs * 100).toFixed(0).padStart(4)}% of ${refName}`;
    console.log(`medians of ${runs} interleaved runs; 2 GiB qcow2, ${DATA_MIB} MiB random data`);
    console.log(`${'qemu-img convert -O qcow2'.padEnd(42)} ${m.convertQcow2!.toFixed(3).padStart(7)} s ${(DATA_MIB / m.convertQcow2!).toFixed(0).padStart(6)} MiB/s`);
    console.log(`${'qemu-img convert -O raw'.padEnd(42)} ${m.convertRaw!.toFixed(3).padStart(7)} s ${(DATA_MIB / m.convertRaw!).toFixed(0).padStart(6)} MiB/s`);
    console.log(`${'qemu-img convert -t writeback -O qcow2'.padEnd(42)} ${m.convertQcow2Durable!.toFixed(3).padStart(7)} s ${(DATA_MIB / m.convertQcow2Durable!).toFixed(0).padStart(6)} MiB/s   (flushed, as a push target is)`);
    for (const v of variants) {
      console.log(line(v.name, m[v.name]!, DATA_MIB, m.convertQcow2!, 'convert -O qcow2'));
      console.log(`${''.padEnd(42)} ${''.padStart(7)}   ${''.padStart(6)}         ${(m.convertQcow2Durable! / m[v.name]! * 100).toFixed(0).padStart(4)}% of convert -t writeback`);
    }
    console.log(line(`push incremental (${INC_MIB} MiB written)`, m.pushInc!, INC_MIB, m.convertQcow2! * INC_MIB / DATA_MIB, 'convert, scaled to 64 MiB'));
    console.log(`  of which backupBegin ${m.incBegin!.toFixed(3)} s; ${m.incSaves} status saves (goal: whole incremental <= 0.2 s)`);
    console.log(`  every save twice (${m.incTwiceSaves} saves): ${m.pushIncTwice!.toFixed(3)} s = ${(m.pushIncTwice! / m.pushInc!).toFixed(2)}x the time`);
    if (!onlyIncremental && !onlyPush) console.log(line('pull full, nbdcopy (begin..end)', m.pullFull!, DATA_MIB, m.convertRaw!, 'convert -O raw'));
    await drv.domainDestroy(uuid, 0);
  } finally {
    await driver?.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
