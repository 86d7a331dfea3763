// The chunk repository on S3 (not a test): on one Ceph RADOS Gateway, the
// SDK's raw multipart PUT and GET rate of DATA MiB of random data, then a full
// `virtback backup` of a running QEMU domain holding the same amount of data
// into the bucket and a `restore` from it, each printed as a ratio to the raw
// rate measured in the same run (the issue's bar: ≥ 0.8), then an
// incremental after DATA/16 MiB of scattered writes. Printed too: the S3
// requests per GiB by kind (full backup, restore) and per changed chunk
// (incremental), the CPU seconds per GiB each party used (this process with
// its worker threads, QEMU, the Ceph daemons: on a shared 2-core machine the
// gateway and the backup compete for the same cores, and the rates follow
// these), and the load average. Runs are interleaved, medians reported. The
// restore GETs 8 chunks at a time and decodes them on the chunk codec pool
// (src/vmbackup/restore-chunks.ts).
//
//   node --import tsx bench/s3.ts [runs=3] [dataMiB=1024] [shared|split] [http|https]
//
// `https`: everything (the raw PUT and GET too) goes to the gateway's TLS
// port (S3_HTTPS_ENDPOINT and its CA, AWS_CA_BUNDLE, from `DIR/s3.env` of a
// cluster started with one; a cluster started here gets one), where chunk PUTs
// carry an unsigned payload (src/chunkstore/s3-tls.ts).
//
// `split` (needs the gateway's pids, i.e. a cluster started here or
// VIRTBACK_TEST_CEPH_DIR): the Ceph daemons run on CPU 0 and this process
// (its threads, and the QEMU it starts) on the others — as when the gateway
// has cores of its own, which on a 2-core machine shared with the gateway
// (`shared`, the default) it does not: there every rate follows the CPU all
// parties spend per GiB together.
//
// The gateway: the one the environment names (AWS_ENDPOINT_URL +
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, e.g. `. DIR/s3.env`; with
// VIRTBACK_TEST_CEPH_DIR=DIR its daemons' CPU is counted), else one started
// here with scripts/ceph-test-cluster.sh (root, Ceph packages).

import { CreateBucketCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chunkKey, ChunkRepository, ZERO_CHUNK } from '../src/chunkstore/repo.js';
import { makeS3Client, openS3Store, type S3RequestCounts, type S3Store } from '../src/chunkstore/s3-store.js';
import { MonitorCommandFlags } from '../src/flags.js';
import { QemuDriver } from '../src/qemu/driver.js';
import { connectLocal } from '../src/sdk/connect.js';
import { backupDomain, repositoryId, restoreDomain } from '../src/vmbackup/index.js';
import { ChunkCodecPool } from '../src/vmbackup/chunk-codec-pool.js';
import { RESTORE_CONCURRENCY } from '../src/vmbackup/restore-chunks.js';
import { removeBucket } from '../test/helpers/ceph.js';
import { procCpuSeconds } from './cpu-parties.js';
import { median, timed } from './timing.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const runs = Number(process.argv[2] ?? 3);
const DATA_MIB = Number(process.argv[3] ?? 1024);
const CORES = process.argv[4] ?? 'shared';
const HTTPS = process.argv[5] === 'https';
const SCRIPT = fileURLToPath(new URL('../scripts/ceph-test-cluster.sh', import.meta.url));
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const profiled = process.execArgv.some((a) => a.startsWith('--cpu-prof'));

interface Gateway {
  endpoint: string;
  /** the cluster's folder (its daemons' pid files), when known */
  cephDir: string | undefined;
  credentials: { accessKeyId: string; secretAccessKey: string };
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function gateway(): Promise<Gateway> {
  const e = process.env;
  const endpointOf = (env: Record<string, string | undefined>): string => {
    if (!HTTPS) return env.AWS_ENDPOINT_URL!;
    if (!env.S3_HTTPS_ENDPOINT || !env.AWS_CA_BUNDLE) throw new Error('https needs S3_HTTPS_ENDPOINT and AWS_CA_BUNDLE (a cluster started with a TLS port)');
    process.env.AWS_CA_BUNDLE = env.AWS_CA_BUNDLE;
    return env.S3_HTTPS_ENDPOINT;
  };
  if (e.AWS_ENDPOINT_URL && e.AWS_ACCESS_KEY_ID && e.AWS_SECRET_ACCESS_KEY) {
    const creds = { accessKeyId: e.AWS_ACCESS_KEY_ID, secretAccessKey: e.AWS_SECRET_ACCESS_KEY };
    return { endpoint: endpointOf(e), cephDir: e.VIRTBACK_TEST_CEPH_DIR, credentials: creds, stop: async () => undefined };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-ceph-bench-'));
  const t0 = Date.now();
  await run(SCRIPT, ['start', dir, String(await freePort()), String(await freePort())], { timeout: 300_000 });
  console.log(`test Ceph cluster: S3 answered ${((Date.now() - t0) / 1000).toFixed(1)} s after a cold start`);
  const env = Object.fromEntries((await readFile(path.join(dir, 's3.env'), 'utf8')).trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
  return {
    endpoint: endpointOf(env),
    cephDir: dir,
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID!, secretAccessKey: env.AWS_SECRET_ACCESS_KEY! },
    stop: async () => {
      await run(SCRIPT, ['stop', dir]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** GET every data chunk of the point's disks RESTORE_CONCURRENCY at a time, discarding the bytes. */
async function chunkGetsAlone(repo: ChunkRepository, pointId: string): Promise<void> {
  const point = await repo.readPoint('bench', pointId);
  for (const d of point.disks) {
    const index = await repo.readIndex(d.index);
    const ids = index.chunks.filter((id) => id !== ZERO_CHUNK);
    let next = 0;
    const worker = async () => {
      while (next < ids.length) await repo.store.get(chunkKey(ids[next++]!));
    };
    await Promise.all(Array.from({ length: RESTORE_CONCURRENCY }, worker));
  }
}

const CEPH_DAEMONS = ['mon.a', 'osd.0', 'client.rgw.0'];

const KINDS: Array<keyof S3RequestCounts> = ['PUT', 'COPY', 'HEAD', 'GET', 'LIST', 'DELETE'];
/** requests of each kind per GiB of `bytes` */
const perGiB = (r: S3RequestCounts, bytes: number) => KINDS.map((k) => `${k} ${(r[k] / (bytes / 2 ** 30)).toFixed(0)}`).join(', ');
const since = (store: S3Store, before: S3RequestCounts): S3RequestCounts =>
  Object.fromEntries(KINDS.map((k) => [k, store.requests[k] - before[k]])) as S3RequestCounts;

/** DATA/16 MiB of random data as 1 MiB writes at random aligned offsets of the data area (HMP qemu-io, a pattern file each). */
async function dirty(driver: QemuDriver, uuid: string, dir: string): Promise<void> {
  const qdev = driver.diskNodes(uuid).find((d) => d.target === 'sda')!.qdevId;
  for (let k = 0; k < DATA_MIB / 16; k++) {
    const src = path.join(dir, `dirty-${k}.bin`);
    await writeFile(src, randomBytes(MiB));
    const at = Math.floor(Math.random() * DATA_MIB) * MiB;
    const out = await driver.qemuMonitorCommand(uuid, `qemu-io -d ${qdev} "write -s ${src} ${at} ${MiB}"`, MonitorCommandFlags.HMP);
    if (out.trim() !== '' && !/^wrote /m.test(out)) throw new Error(`qemu-io: ${out.trim()}`);
    await rm(src);
  }
}

/**
 * Where the CPU goes, per party: this process (its worker threads
 * included), the domain's QEMU, the Ceph daemons. On a shared 2-core machine
 * the rates follow the CPU a path needs, so this is what to cut.
 */
class CpuMeter {
  constructor(
    private readonly qemuPid: () => number,
    private readonly cephPids: number[],
  ) {}

  static async start(gw: Gateway, qemuPid: () => number): Promise<CpuMeter> {
    const pids: number[] = [];
    for (const d of gw.cephDir ? CEPH_DAEMONS : []) {
      const pid = Number((await readFile(path.join(gw.cephDir!, `${d}.pid`), 'utf8').catch(() => '')).trim());
      if (pid > 0) pids.push(pid);
    }
    return new CpuMeter(qemuPid, pids);
  }

  async sample(): Promise<{ node: number; qemu: number; ceph: number | null }> {
    const u = process.cpuUsage();
    let ceph = 0;
    for (const p of this.cephPids) ceph += procCpuSeconds(p);
    return { node: (u.user + u.system) / 1e6, qemu: procCpuSeconds(this.qemuPid()), ceph: this.cephPids.length > 0 ? ceph : null };
  }

  /** `fn`'s CPU seconds per GiB of `bytes`, per party, as a line. */
  async measure(what: string, bytes: number, fn: () => Promise<unknown>): Promise<string> {
    const a = await this.sample();
    await fn();
    const b = await this.sample();
    const gib = bytes / 2 ** 30;
    const per = (x: number) => (x / gib).toFixed(1);
    const ceph = a.ceph === null || b.ceph === null ? 'Ceph ? (VIRTBACK_TEST_CEPH_DIR unset)' : `Ceph ${per(b.ceph - a.ceph)}`;
    return `${what}: this process ${per(b.node - a.node)}, QEMU ${per(b.qemu - a.qemu)}, ${ceph}`;
  }
}

/** The threads of `pid` on `cpus` (taskset's list syntax). */
async function pin(pid: number, cpus: string): Promise<void> {
  await run('taskset', ['-a', '-p', '-c', cpus, String(pid)]);
}

/** `split`: the gateway's daemons on CPU 0, this process and what it starts on the rest; returns how to undo it. */
async function splitCores(gw: Gateway): Promise<() => Promise<void>> {
  const n = os.availableParallelism();
  if (CORES !== 'split') return async () => undefined;
  if (n < 2 || !gw.cephDir) throw new Error('split needs 2 cores or more and the gateway\'s daemons (VIRTBACK_TEST_CEPH_DIR)');
  const daemons: number[] = [];
  for (const d of CEPH_DAEMONS) daemons.push(Number((await readFile(path.join(gw.cephDir, `${d}.pid`), 'utf8')).trim()));
  for (const pid of daemons) await pin(pid, '0');
  await pin(process.pid, `1-${n - 1}`);
  console.log(`cores split: Ceph on CPU 0, this process and its QEMU on CPU 1-${n - 1}`);
  return async () => {
    for (const pid of daemons) await pin(pid, `0-${n - 1}`).catch(() => undefined);
  };
}

async function main(): Promise<void> {
  const gw = await gateway();
  const unsplit = await splitCores(gw);
  // the machine is shared: the numbers mean little without its load
  const loadAtStart = os.loadavg().map((x) => x.toFixed(1)).join(' ');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-s3b-'));
  const bucket = `vb-bench-${randomBytes(4).toString('hex')}`;
  const opts = { bucket, endpoint: gw.endpoint, credentials: gw.credentials, region: 'us-east-1' };
  const client: S3Client = makeS3Client(opts);
  let driver: QemuDriver | null = null;
  const uuid = '7c1e5a30-3f55-4d3a-9a0e-2b1f3c4d5e6f';
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    // the disk: DATA MiB of random data (nothing to compress or deduplicate) in a qcow2 twice that size
    const data = Buffer.concat(Array.from({ length: DATA_MIB / 64 }, () => randomBytes(64 * MiB)));
    const rawSrc = path.join(dir, 'src.raw');
    const fh = await open(rawSrc, 'w');
    await fh.write(data);
    await fh.truncate(2 * DATA_MIB * MiB);
    await fh.close();
    const disk = path.join(dir, 'disk.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', rawSrc, disk]);
    await rm(rawSrc);
    driver = await QemuDriver.open({ stateDir: path.join(dir, 'state'), runDir: path.join(dir, 'run') });
    await driver.domainDefineXML(
      `<domain type='qemu'><name>bench</name><uuid>${uuid}</uuid><memory unit='MiB'>128</memory><vcpu>1</vcpu>` +
        `<os><type arch='x86_64' machine='q35'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>` +
        `<source file='${disk}'/><target dev='sda' bus='scsi'/></disk></devices></domain>`,
      0,
    );
    await driver.domainCreate(uuid, 0);
    const dom = await connectLocal(driver).lookupByUUID(uuid);

    const res = { put: [] as number[], get: [] as number[], backup: [] as number[], restore: [] as number[], chunkGets: [] as number[] };
    const requests: string[] = [];
    const cpuLines: string[] = [];
    const qemuPid = async () => (await driver!.domainGetInfo(uuid)).id;
    const pid = await qemuPid();
    const cpu = await CpuMeter.start(gw, () => pid);
    /** seconds `fn` takes; its CPU per GiB of the data goes into cpuLines */
    const step = async (what: string, fn: () => Promise<unknown>): Promise<number> => {
      let secs = 0;
      const t0 = process.hrtime.bigint() / 1000n;
      cpuLines.push(await cpu.measure(what, DATA_MIB * MiB, async () => (secs = await timed(fn))));
      // under --cpu-prof: where each step lies on the profile's clock (both are CLOCK_MONOTONIC, µs)
      if (profiled) console.error(`profile window: ${what}: ${t0} ${process.hrtime.bigint() / 1000n}`);
      return secs;
    };
    for (let r = 0; r < runs; r++) {
      const key = `raw/${r}`;
      res.put.push(await step(`run ${r + 1}: raw PUT`, () => new Upload({ client, params: { Bucket: bucket, Key: key, Body: data }, partSize: 16 * MiB, queueSize: 8 }).done()));
      res.get.push(
        await step(`run ${r + 1}: raw GET`, async () => {
          const body = (await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body as Readable;
          for await (const _ of body) void _;
        }),
      );
      // a new repository per run, so that every run uploads every chunk
      const store = await openS3Store({ ...opts, prefix: `repo${r}` });
      const repo = await ChunkRepository.init(store);
      let pointId = '';
      let before = { ...store.requests };
      res.backup.push(await step(`run ${r + 1}: backup`, async () => (pointId = (await backupDomain(dom, repo, repositoryId(repo.config), { level: 'full' })).pointId)));
      requests.push(`run ${r + 1}: full backup (${DATA_MIB} MiB of data): ${perGiB(since(store, before), DATA_MIB * MiB)}`);
      before = { ...store.requests };
      const out = path.join(dir, `restore${r}`);
      res.restore.push(await step(`run ${r + 1}: restore`, () => restoreDomain(repo, null, { domain: 'bench', point: pointId, outputDir: out, format: 'raw' })));
      requests.push(`run ${r + 1}: restore: ${perGiB(since(store, before), DATA_MIB * MiB)}`);
      await rm(out, { recursive: true, force: true });
      // the same chunk objects GET alone, as the restore fetches them (8 in flight), nothing decoded or written:
      // what the gateway gives per object, the restore's own ceiling
      res.chunkGets.push(await timed(() => chunkGetsAlone(repo, pointId)));
      // an incremental on top: its requests per changed chunk (the issue's bound: about one PUT each)
      await dirty(driver, uuid, dir);
      before = { ...store.requests };
      const inc = await backupDomain(dom, repo, repositoryId(repo.config), { level: 'auto' });
      const changed = inc.disks.reduce((n, d) => n + d.chunksRead, 0);
      const incReq = since(store, before);
      requests.push(
        `run ${r + 1}: ${inc.level} backup, ${changed} chunks changed (${DATA_MIB / 16} MiB written): ${KINDS.map((k) => `${k} ${incReq[k]}`).join(', ')} ` +
          `= ${((incReq.PUT + incReq.COPY + incReq.HEAD + incReq.GET + incReq.LIST) / Math.max(1, changed)).toFixed(2)} requests per changed chunk`,
      );
      // a point of the previous run would make the next backup an incremental of nothing: drop the domain's checkpoints
      for (const c of await dom.listAllCheckpoints()) await c.delete();
      store.close();
    }
    const load = os.loadavg().map((x) => x.toFixed(1)).join(' ');
    console.log(`load average at the start ${loadAtStart}, at the end ${load} (${os.cpus().length} cores, ${CORES}, ${gw.endpoint})`);
    const rate = (xs: number[]) => DATA_MIB / median(xs);
    const line = (what: string, xs: number[]) => `${what}: ${rate(xs).toFixed(0)} MiB/s (median of ${runs}; ${xs.map((s) => s.toFixed(1)).join(', ')} s)`;
    console.log(line('raw multipart PUT (SDK)', res.put));
    console.log(line('raw GET (SDK)', res.get));
    console.log(line('virtback backup into S3', res.backup));
    console.log(line('virtback restore from S3', res.restore));
    console.log(`${line('chunk objects GET alone (8 in flight)', res.chunkGets)}: ${(rate(res.chunkGets) / rate(res.get)).toFixed(2)} of the raw GET`);
    const b = rate(res.backup) / rate(res.put);
    const g = rate(res.restore) / rate(res.get);
    console.log(`ratio backup / raw PUT: ${b.toFixed(2)} (target >= 0.8) ${b >= 0.8 ? 'OK' : 'BELOW'}`);
    console.log(`ratio restore / raw GET: ${g.toFixed(2)} (target >= 0.8) ${g >= 0.8 ? 'OK' : 'BELOW'}`);
    console.log('S3 requests per GiB (a first backup: at most 256 chunk PUTs per GiB; an incremental: about one per changed chunk):');
    for (const l of requests) console.log(`  ${l}`);
    console.log('CPU seconds per GiB of data (on a loaded machine the rates follow these):');
    for (const l of cpuLines) console.log(`  ${l}`);
    // each backup and restore starts a codec pool: under tsx its workers compile their sources first
    const c0 = process.cpuUsage();
    const poolStart = await timed(async () => {
      const pool = ChunkCodecPool.start({ keys: null, level: 1 });
      await pool.encode(randomBytes(4096));
      await pool.close();
    });
    const c1 = process.cpuUsage(c0);
    console.log(`  a codec pool's start and stop (once per backup and per restore): ${((c1.user + c1.system) / 1e6).toFixed(1)} CPU s, ${poolStart.toFixed(1)} s`);
  } finally {
    // close() only disconnects: the QEMU of this run goes first
    await driver?.domainDestroy(uuid, 0).catch(() => undefined);
    await driver?.close();
    // every run leaves ~4× the data in the bucket: a test cluster's 40 GiB OSD fills up after a dozen runs
    await removeBucket(client, bucket).catch((e: unknown) => console.error(`could not remove bucket ${bucket}: ${(e as Error).message}`));
    client.destroy();
    await rm(dir, { recursive: true, force: true });
    await unsplit();
    await gw.stop();
  }
}

await main();
