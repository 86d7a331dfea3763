// Pull client throughput (not a test): qemu-nbd serves a 2 GiB qcow2 holding
// 1 GiB of random data (read-only, as a pull job's export), and in the same
// run, interleaved, medians printed with ratios:
//   - backup-pull's work to a raw file, manifest checksum included (pullBackup
//     + writeManifest, fdatasync'ed) vs `nbdcopy` (no flush) and `nbdcopy --flush`,
//     and the same with the checksum hashed on the main thread (as before the
//     hash pool) vs on the pool's threads (pullBackup's default: the pool on
//     more than 2 cores, the main thread on 2 or fewer)
//   - the same to qcow2 vs `qemu-img convert -O qcow2` from the NBD URI
//   - over TLS (x509, client certificate) vs plain TCP
//   - incremental: a 1 TiB sparse qcow2 with 1 GiB dirty in scattered 64 KiB
//     extents: extent query time (planCopy) and the whole incremental pull,
//     run in a child process whose peak RSS (VmHWM) is printed.
// Each variant also prints its CPU seconds: the main thread's, and all of the
// pull's (our threads, or the nbdcopy / qemu-img child), the measure that
// says where a 2-core machine's time goes.
//
//   node --import tsx bench/pull.ts [runs=3]     (VBP_ONLY=incremental: that part alone)

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NbdClient } from '../src/nbd/client.js';
import { planCopy } from '../src/nbd/copy.js';
import { loadTlsDir, type NbdTlsOptions } from '../src/nbd/tls.js';
import type { NbdTarget } from '../src/nbd/target.js';
import { blockDigest, pullBackup, writeManifest } from '../src/repository/index.js';
import { hashBlocks, type HashPool } from '../src/repository/hash-pool.js';
import { procCpuSeconds } from './cpu-parties.js';
import { median, timed } from './timing.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const runs = Number(process.argv[2] === 'incremental-child' ? 0 : (process.argv[2] ?? 3));

const procs: ChildProcess[] = [];
async function serve(args: string[], probe: NbdTarget): Promise<void> {
  const p = spawn('qemu-nbd', ['--persistent', '--shared=8', '--format=qcow2', ...args], { stdio: 'ignore' });
  procs.push(p);
  for (let i = 0; i < 400; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = 'socketPath' in probe ? net.createConnection(probe.socketPath) : net.createConnection(probe.port, probe.host);
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`qemu-nbd ${args.join(' ')} did not listen`);
}

/** CPU seconds of this process's main thread alone (not the hash pool's): /proc/self/task/<pid>/stat utime + stime. */
function mainThreadCpu(): number {
  return procCpuSeconds(`self/task/${process.pid}`);
}

/** CPU seconds of all this process's threads and its waited-for children (nbdcopy, qemu-img): utime + stime + cutime + cstime. */
function allCpu(): number {
  return procCpuSeconds('self') + procCpuSeconds('self', true);
}

/** Peak resident set of this process in MiB (VmHWM). */
function peakRssMiB(): number {
  const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(m![1]) / 1024;
}

async function certs(dir: string): Promise<{ server: string; client: string }> {
  const server = path.join(dir, 'server');
  const client = path.join(dir, 'client');
  await mkdir(server, { recursive: true });
  await mkdir(client, { recursive: true });
  const ca = path.join(dir, 'ca-cert.pem');
  const caKey = path.join(dir, 'ca-key.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/CN=bench CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  for (const [out, name, ext] of [[server, 'server', 'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1'], [client, 'client', 'extendedKeyUsage=clientAuth']] as const) {
    await writeFile(path.join(dir, `${name}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n${ext}\n`);
    await run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(out, `${name}-key.pem`), '-out', path.join(dir, `${name}.csr`), '-subj', `/CN=${name}`]);
    await run('openssl', ['x509', '-req', '-in', path.join(dir, `${name}.csr`), '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '2', '-out', path.join(out, `${name}-cert.pem`), '-extfile', path.join(dir, `${name}.ext`)]);
    await run('cp', [ca, path.join(out, 'ca-cert.pem')]);
  }
  return { server, client };
}

/** The checksum as before the pool: SHA-256 of each 1 MiB window on the main thread. */
const mainThread: Pick<HashPool, 'blockDigests'> = { blockDigests: (data) => Promise.resolve([blockDigest(data)]) };
/** The checksum on the hash pool's threads (pullBackup's default on more than 2 cores). */
const pool: Pick<HashPool, 'blockDigests'> = { blockDigests: (data, blockSize) => hashBlocks(data, blockSize) };

async function pull(dir: string, nbd: NbdTarget, format: 'raw' | 'qcow2', tls?: NbdTlsOptions, hashPool?: Pick<HashPool, 'blockDigests'>): Promise<void> {
  const output = path.join(dir, `out.${format}`);
  const r = await pullBackup({ nbd, ...(tls ? { tls } : {}), exportName: '', output, format, ...(hashPool ? { hashPool } : {}) });
  await writeManifest({ domain: { name: 'b', uuid: 'u' }, disk: 'sda', target: output, format, checkpoint: null, incrementalFrom: null, parentBackup: null, time: 0, virtualSize: r.size, jobId: 1, mode: 'pull' }, { digests: r.digests! });
  await rm(output);
  await rm(`${output}.manifest.json`);
}

async function incremental(dir: string): Promise<void> {
  // 1 TiB virtual, 16384 scattered 64 KiB writes after the bitmap = 1 GiB dirty
  const disk = path.join(dir, 'big.qcow2');
  const parent = path.join(dir, 'big-parent.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '1T']);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', parent, '1T']);
  await run('qemu-img', ['bitmap', '--add', '--enable', disk, 'b1']);
  const stride = 2 ** 40 / 16384; // (1 << 40 is 256 in JS: shifts are mod 32)
  const cmds = Array.from({ length: 16384 }, (_v, i) => `write -P ${(i % 250) + 1} ${i * stride + ((i * 7919) % 1024) * 65536} 64k`).join('\n');
  const cmdFile = path.join(dir, 'writes.qemu-io');
  await writeFile(cmdFile, `${cmds}\nquit\n`);
  const log = path.join(dir, 'writes.log');
  await run('sh', ['-c', 'exec qemu-io -f qcow2 "$1" < "$2" > "$3" 2>&1', 'sh', disk, cmdFile, log]).catch(async (e: Error) => {
    const odd = (await readFile(log, 'utf8')).split('\n').filter((l) => !/^(qemu-io> )*(wrote |64 KiB|$)/.test(l));
    throw new Error(`${e.message}\n${odd.slice(0, 20).join('\n')}`);
  });
  const sock = path.join(dir, 'big.sock');
  await serve(['--read-only', `--socket=${sock}`, '--bitmap=b1', disk], { socketPath: sock });
  const query: number[] = [];
  const whole: number[] = [];
  const rss: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c = await NbdClient.connect({ socketPath: sock }, { exportName: '', metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b1'], maxInFlight: 64 });
    let n = 0;
    query.push(await timed(async () => (n = (await planCopy(c, { onlyDirty: 'qemu:dirty-bitmap:b1' })).length)));
    await c.disconnect();
    if (n < 16384) throw new Error(`only ${n} dirty ranges found`);
    const output = path.join(dir, 'inc.qcow2');
    // In a child of its own, so its peak RSS is the pull's alone.
    const { stdout } = await run(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), 'incremental-child', sock, parent, output], { maxBuffer: 1 << 20 });
    const child = JSON.parse(stdout.trim().split('\n').pop()!) as { seconds: number; peakRssMiB: number };
    whole.push(child.seconds);
    rss.push(child.peakRssMiB);
    await rm(output);
  }
  const q = median(query);
  const w = median(whole);
  console.log(`incremental 1 TiB / 1 GiB dirty in 64 KiB extents: extent query ${q.toFixed(2)} s (goal < 5 s); whole pull ${w.toFixed(2)} s, copy ${(1024 / (w - q)).toFixed(0)} MiB/s after the query`);
  console.log(`incremental pull peak RSS (VmHWM of the pulling process): ${Math.max(...rss).toFixed(0)} MiB (goal <= 256 MiB)`);
}

/** The child of incremental(): one incremental pull, then its time and peak RSS as JSON. */
async function incrementalChild(sock: string, parent: string, output: string): Promise<void> {
  const seconds = await timed(() => pullBackup({ nbd: { socketPath: sock }, exportName: '', bitmap: 'b1', parentBackup: parent, output, format: 'qcow2' }));
  console.log(JSON.stringify({ seconds, peakRssMiB: peakRssMiB() }));
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vbpull-'));
  try {
    const rawSrc = path.join(dir, 'src.raw');
    const fh = await open(rawSrc, 'w');
    // 1 GiB random data in 128 MiB runs alternating with holes, over 2 GiB
    for (let i = 0; i < 8; i++) for (let j = 0; j < 2; j++) await fh.write(randomBytes(64 * MiB), 0, 64 * MiB, i * 256 * MiB + j * 64 * MiB);
    await fh.truncate(2048 * MiB);
    await fh.close();
    const disk = path.join(dir, 'disk.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', rawSrc, disk]);
    await rm(rawSrc);
    const pki = await certs(path.join(dir, 'pki'));
    const tls = await loadTlsDir(pki.client);
    const sock = path.join(dir, 's.sock');
    const tcp: NbdTarget = { host: '127.0.0.1', port: 10890 + (process.pid % 100) };
    const tlsTarget: NbdTarget = { host: 'localhost', port: tcp.port + 100 };
    await serve(['--read-only', `--socket=${sock}`, disk], { socketPath: sock });
    await serve(['--read-only', '-b', '127.0.0.1', '-p', String(tcp.port), disk], tcp);
    await serve(['--read-only', '--object', `tls-creds-x509,id=t0,dir=${pki.server},endpoint=server,verify-peer=on`, '--tls-creds=t0', '-b', '127.0.0.1', '-p', String(tlsTarget.port), disk], { host: '127.0.0.1', port: tlsTarget.port });
    const uri = `nbd+unix:///?socket=${sock}`;
    const t: Record<string, number[]> = {};
    const cpu: Record<string, number[]> = {};
    const cpuAll: Record<string, number[]> = {};
    const add = async (k: string, fn: () => Promise<unknown>) => {
      await new Promise((r) => setTimeout(r, 2000)); // the previous variant's writeback and threads settle
      const c0 = mainThreadCpu();
      const a0 = allCpu();
      (t[k] ??= []).push(await timed(fn));
      (cpu[k] ??= []).push(mainThreadCpu() - c0);
      (cpuAll[k] ??= []).push(allCpu() - a0);
    };
    const rmOut = (f: string) => rm(path.join(dir, f), { force: true });
    for (let i = 0; i < (process.env.VBP_ONLY === 'incremental' ? 0 : runs); i++) {
      await add('ours raw', () => pull(dir, { socketPath: sock }, 'raw'));
      await add('ours raw, main-thread hash', () => pull(dir, { socketPath: sock }, 'raw', undefined, mainThread));
      await add('ours raw, hash pool', () => pull(dir, { socketPath: sock }, 'raw', undefined, pool));
      await add('nbdcopy', async () => (await run('nbdcopy', [uri, path.join(dir, 'n.raw')]), await rmOut('n.raw')));
      await add('nbdcopy --flush', async () => (await run('nbdcopy', ['--flush', uri, path.join(dir, 'n.raw')]), await rmOut('n.raw')));
      await add('ours qcow2', () => pull(dir, { socketPath: sock }, 'qcow2'));
      await add('qemu-img convert', async () => (await run('qemu-img', ['convert', '-O', 'qcow2', uri, path.join(dir, 'c.qcow2')]), await rmOut('c.qcow2')));
      await add('ours raw tcp', () => pull(dir, tcp, 'raw'));
      await add('ours raw tls', () => pull(dir, tlsTarget, 'raw', tls));
    }
    if (Object.keys(t).length > 0) {
      const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
      const rate = (s: number) => `${(1024 / s).toFixed(0)} MiB/s`;
      for (const [k, v] of Object.entries(m)) {
        const main = k.startsWith('ours') ? `main-thread CPU ${median(cpu[k]!).toFixed(2)} s, ` : '';
        console.log(`${k.padEnd(28)} ${v.toFixed(2)} s  ${rate(v)} (of data)  ${main}all CPU ${median(cpuAll[k]!).toFixed(2)} s`);
      }
      console.log(`hash pool: ${(m['ours raw, main-thread hash']! / m['ours raw, hash pool']!).toFixed(2)}x the main-thread hashing rate (pullBackup's default here: ${os.availableParallelism() <= 2 ? 'main thread' : 'pool'})`);
      console.log(`full raw: ${(m['nbdcopy']! / m['ours raw']!).toFixed(2)}x nbdcopy, ${(m['nbdcopy --flush']! / m['ours raw']!).toFixed(2)}x nbdcopy --flush (goal >= 1.0)`);
      console.log(`full qcow2: ${(m['qemu-img convert']! / m['ours qcow2']!).toFixed(2)}x qemu-img convert (goal >= 1.0)`);
      console.log(`TLS: ${(m['ours raw tcp']! / m['ours raw tls']!).toFixed(2)}x its plain TCP rate (goal >= 0.8)`);
    }
    for (const p of procs.splice(0)) p.kill('SIGTERM');
    await incremental(dir);
  } finally {
    for (const p of procs) p.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === 'incremental-child') await incrementalChild(process.argv[3]!, process.argv[4]!, process.argv[5]!);
else await main();
