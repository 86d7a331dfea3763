// `virtback backup` full throughput on real QEMU (not a test), against the two
// limits the issue sets, measured in the same run: nbdcopy reading the same
// pull export (the read side), and SHA-256 + zstd of the same data in memory
// on all cores (ChunkCodecPool, the CPU side). A 2 GiB qcow2 with 1 GiB of
// mixed data (per 16 MiB: 8 random, 4 repeated text, 4 zero). Runs are
// interleaved, medians reported; the bar: backup ≥ 0.8 × the slower limit.
//
//   node --import tsx bench/vmbackup.ts [runs=3] [dataMiB=1024]

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { openFolderStore } from '../src/chunkstore/object-store.js';
import { ChunkRepository } from '../src/chunkstore/repo.js';
import { connectLocal } from '../src/sdk/connect.js';
import { backupDomain, repositoryId } from '../src/vmbackup/index.js';
import { ChunkCodecPool } from '../src/vmbackup/chunk-codec-pool.js';
import { makeTestDomain, makeTestEnv } from '../test/helpers/qemu-env.js';
import { median, timed } from './timing.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;
const runs = Number(process.argv[2] ?? 3);
const DATA_MIB = Number(process.argv[3] ?? 1024);

/** The mixed data: per 16 MiB, 8 random, 4 of repeated text, 4 zero. */
function mixedData(): Buffer {
  const buf = Buffer.alloc(DATA_MIB * MiB);
  const text = Buffer.alloc(4 * MiB, 'virtback backup bench line\n');
  for (let at = 0; at < buf.length; at += 16 * MiB) {
    randomBytes(8 * MiB).copy(buf, at);
    text.copy(buf, at + 8 * MiB);
  }
  return buf;
}

/** SHA-256 + zstd of every chunk, `inFlight` at a time over the pool's threads. */
async function encodeAll(pool: ChunkCodecPool, data: Buffer): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < data.length) {
      const at = next;
      next += CHUNK;
      await pool.encode(Buffer.from(data.subarray(at, at + CHUNK)));
    }
  };
  await Promise.all(Array.from({ length: 2 * pool.size }, worker));
}

async function main(): Promise<void> {
  const env = await makeTestEnv();
  try {
    const def = await makeTestDomain(env.dir, { name: 'bench', sizeMiB: 2 * DATA_MIB });
    const data = mixedData();
    const raw = path.join(env.dir, 'src.raw');
    await fs.writeFile(raw, data);
    await fs.truncate(raw, 2 * DATA_MIB * MiB);
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, def.disks[0]!.path]);
    await fs.rm(raw);
    const driver = await env.openDriver();
    await driver.domainDefineXML(def.xml, 0);
    await driver.domainCreate(def.uuid, 0);
    const dom = await connectLocal(driver).lookupByUUID(def.uuid);
    const pool = ChunkCodecPool.start({ keys: null, level: 1 });
    const t = { backup: [] as number[], nbdcopy: [] as number[], encode: [] as number[] };
    try {
      for (let i = 0; i < runs; i++) {
        const sock = path.join(env.dir, `pull-${i}.sock`);
        t.nbdcopy.push(await timed(async () => {
          const xml = `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='sda' backup='yes' type='file'><scratch file='${path.join(env.dir, `scratch-${i}.qcow2`)}'/></disk></disks></domainbackup>`;
          const id = await dom.backupBegin(xml);
          await run('nbdcopy', [`nbd+unix:///sda?socket=${sock}`, 'null:']);
          await dom.backupEnd(id);
        }));
        t.encode.push(await timed(() => encodeAll(pool, data)));
        const repoDir = path.join(env.dir, `repo-${i}`);
        const repo = await ChunkRepository.init(await openFolderStore(repoDir));
        t.backup.push(await timed(() => backupDomain(dom, repo, repositoryId(repo.config), { level: 'full' })));
        await fs.rm(repoDir, { recursive: true, force: true });
        for (const c of await dom.listAllCheckpoints()) await c.delete();
      }
    } finally {
      await pool.close();
    }
    const rate = (s: number[]) => DATA_MIB / median(s);
    const limit = Math.min(rate(t.nbdcopy), rate(t.encode));
    const fmt = (s: number[]) => s.map((x) => x.toFixed(2)).join(', ');
    console.log(`medians of ${runs} interleaved runs; ${2 * DATA_MIB} MiB qcow2, ${DATA_MIB} MiB mixed data, ${pool.size} cores`);
    console.log(`nbdcopy of the pull export:        ${rate(t.nbdcopy).toFixed(0).padStart(5)} MiB/s (${fmt(t.nbdcopy)} s)`);
    console.log(`SHA-256 + zstd in memory, all cores: ${rate(t.encode).toFixed(0).padStart(5)} MiB/s (${fmt(t.encode)} s)`);
    console.log(`virtback backup --level full:      ${rate(t.backup).toFixed(0).padStart(5)} MiB/s (${fmt(t.backup)} s)`);
    const r = rate(t.backup) / limit;
    console.log(`ratio backup / min(nbdcopy, encode): ${r.toFixed(2)} (target >= 0.8) ${r >= 0.8 ? 'OK' : 'BELOW'}`);
  } finally {
    await env.cleanup();
  }
}

await main();
