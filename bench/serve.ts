// backup-serve read throughput (not a test): a 2 GiB disk with 1 GiB of mixed
// data (random, compressible text, zero runs) written as a chunk-repository
// point, read whole by nbdcopy from `backup-serve`'s export, against nbdcopy
// reading the same data as a qcow2 through `qemu-nbd`, measured in the same
// run; runs interleaved, medians reported, and the CPU each party spent per
// GiB (bench/cpu-parties.ts). The bar: ratio ≥ 0.8.
//
//   node --import tsx bench/serve.ts [runs=3] [dataMiB=1024]

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { servePoint } from '../src/vmbackup/serve.js';
import { writeTestPoint } from '../test/qemu/serve-helpers.js';
import { median, timed } from './timing.js';
import { CpuParties, perGiB, type CpuSample } from './cpu-parties.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const runs = Number(process.argv[2] ?? 3);
const DATA_MIB = Number(process.argv[3] ?? 1024);
const DISK_MIB = 2 * DATA_MIB;


/** Per 16 MiB: 8 random, 4 of repeated text, 4 zero; the second half of the disk is empty. */
function writeMixed(file: string): void {
  const fd = fs.openSync(file, 'w');
  const text = Buffer.alloc(4 * MiB, 'virtback backup-serve bench line\n');
  try {
    for (let at = 0; at < DATA_MIB * MiB; at += 16 * MiB) {
      fs.writeSync(fd, randomBytes(8 * MiB), 0, 8 * MiB, at);
      fs.writeSync(fd, text, 0, text.length, at + 8 * MiB);
    }
    fs.ftruncateSync(fd, DISK_MIB * MiB);
  } finally {
    fs.closeSync(fd);
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbs-'));
  let qemuNbd: ReturnType<typeof spawn> | undefined;
  try {
    const raw = path.join(dir, 'disk.raw');
    writeMixed(raw);
    const qcow2 = path.join(dir, 'disk.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', raw, qcow2]);
    const { repo, point } = await writeTestPoint(dir, 'bench', [{ target: 'vda', file: raw }]);
    fs.rmSync(raw);
    const serving = await servePoint(repo, { domain: 'bench', point: point.id, listen: { socket: path.join(dir, 'serve.sock') } });
    const nbdSock = path.join(dir, 'qemu-nbd.sock');
    qemuNbd = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=8', '--format=qcow2', '--socket', nbdSock, '--export-name=vda', qcow2], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !fs.existsSync(nbdSock); i++) await new Promise((r) => setTimeout(r, 100));
    const served = serving.disks[0]!.uri;
    const viaQemuNbd = `nbd+unix:///vda?socket=${nbdSock}`;
    const ours: number[] = [];
    const base: number[] = [];
    // CPU per party, summed over the runs: this process (backup-serve and its codec threads), nbdcopy, qemu-nbd
    const meter = new CpuParties(() => (qemuNbd?.pid === undefined ? [] : [qemuNbd.pid]));
    const cpu = { ours: { ours: 0, children: 0, servers: 0 } as CpuSample, base: { ours: 0, children: 0, servers: 0 } as CpuSample };
    const add = (k: 'ours' | 'base', c: CpuSample) => void (cpu[k] = { ours: cpu[k].ours + c.ours / runs, children: cpu[k].children + c.children / runs, servers: cpu[k].servers + c.servers / runs });
    try {
      for (let i = 0; i < runs; i++) {
        const b = await meter.measure(() => timed(() => run('nbdcopy', [viaQemuNbd, 'null:'])));
        base.push(b.result);
        add('base', b.cpu);
        const o = await meter.measure(() => timed(() => run('nbdcopy', [served, 'null:'])));
        ours.push(o.result);
        add('ours', o.cpu);
      }
    } finally {
      await serving.close();
    }
    const rate = (s: number) => DISK_MIB / s;
    const r = rate(median(ours)) / rate(median(base));
    console.log(`backup-serve read by nbdcopy: ${rate(median(ours)).toFixed(0)} MiB/s (median of ${runs}; ${ours.map((s) => s.toFixed(2)).join(', ')} s)`);
    console.log(`qemu-nbd (qcow2) read by nbdcopy: ${rate(median(base)).toFixed(0)} MiB/s (${base.map((s) => s.toFixed(2)).join(', ')} s)`);
    console.log(`ratio backup-serve / qemu-nbd: ${r.toFixed(2)} (target >= 0.8) ${r >= 0.8 ? 'OK' : 'BELOW'}`);
    console.log(`per GiB of the disk (children: nbdcopy), backup-serve: ${perGiB(cpu.ours, DISK_MIB * MiB, 'qemu-nbd')}`);
    console.log(`per GiB of the disk (children: nbdcopy), qemu-nbd:     ${perGiB(cpu.base, DISK_MIB * MiB, 'qemu-nbd')}`);
  } finally {
    qemuNbd?.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
