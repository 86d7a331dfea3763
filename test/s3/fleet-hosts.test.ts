// Several hosts, one repository, on real QEMU (docs/repository.md, "Several
// hosts, one repository"): two hosts (two drivers with their own state dirs
// and host ids) back up two domains cloned from one image into one repository,
// round after round at the same time, while a third process prunes and runs
// gc with a short grace period in a loop; afterwards every remaining point of
// both hosts restores byte-exact. Also: dedup across hosts, the base's chunks
// cost no request in an incremental, and the same domain from two hosts is
// refused by the lease. Against the real Ceph gateway (test/helpers/ceph.ts);
// on a folder where Ceph cannot run here.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { DomainLease } from '../../src/chunkstore/lease.js';
import { openFolderStore, type ObjectStore } from '../../src/chunkstore/object-store.js';
import { openObjectStore } from '../../src/chunkstore/store-url.js';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { isVirError } from '../../src/errors.js';
import { assertRestores, backup, checkpoints, MiB, startVm, type Vm } from '../qemu/vmbackup-helpers.js';
import { run } from '../qemu/backup-util.js';
import { useCeph } from '../helpers/ceph.js';

/** Counts the requests a repository makes to its store, by kind, for chunk keys. */
function counting(store: ObjectStore): { store: ObjectStore; chunkCalls: Record<string, number> } {
  const chunkCalls: Record<string, number> = {};
  const wrap = <K extends 'put' | 'stat' | 'touch' | 'get'>(k: K) =>
    (async (key: string, ...rest: unknown[]) => {
      if (key.startsWith('chunks/')) chunkCalls[k] = (chunkCalls[k] ?? 0) + 1;
      return (store[k] as (key: string, ...r: unknown[]) => Promise<unknown>).call(store, key, ...rest);
    }) as ObjectStore[K];
  return { store: Object.assign(Object.create(store) as ObjectStore, { put: wrap('put'), stat: wrap('stat'), touch: wrap('touch'), get: wrap('get') }), chunkCalls };
}

const ceph = useCeph();

interface Location {
  /** a folder or s3://BUCKET/PREFIX, as every process opens it */
  url: string;
  /** the environment that reaches it (S3 endpoint and credentials) */
  env: Record<string, string>;
  open(): Promise<ObjectStore>;
}

/** A bucket of the real Ceph gateway; a folder where Ceph cannot run here (not root, not installed). */
async function repoLocation(t: TestContext, dir: string): Promise<Location> {
  let loc: Location;
  if (ceph.skip) {
    loc = { url: dir, env: {}, open: () => openFolderStore(dir) };
  } else {
    const s3 = await ceph.get();
    const url = `s3://${await ceph.bucket(t)}/fleet`;
    const env = { AWS_ENDPOINT_URL: s3.endpoint, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const opts = { s3Endpoint: s3.endpoint, s3: { credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }, region: s3.region } };
    loc = { url, env, open: () => openObjectStore(url, opts) };
  }
  await ChunkRepository.init(await loc.open());
  return loc;
}

/** The third host: prune (keep the 2 newest of each domain) and gc (grace 3 s: above S3 timestamps' whole seconds) in a loop until told to stop. */
function startJanitor(t: TestContext, loc: Location, domains: string[]): { stop(): Promise<Array<{ removedChunks: number; liveClaims: number; keptForRuns: number }>> } {
  const src = (f: string) => JSON.stringify(path.resolve('src/chunkstore', f));
  const script = `
    import { openObjectStore } from ${src('store-url.ts')};
    import { ChunkRepository } from ${src('repo.ts')};
    import { collectGarbage } from ${src('gc.ts')};
    import { planPrune, prunePoints } from ${src('prune.ts')};
    const repo = await ChunkRepository.open(await openObjectStore(${JSON.stringify(loc.url)}));
    let stopping = false;
    process.stdin.on('data', () => { stopping = true; });
    process.stdin.resume();
    while (!stopping) {
      let keptForRuns = 0;
      for (const d of ${JSON.stringify(domains)}) keptForRuns += (await prunePoints(repo, planPrune(await repo.listPoints(d), { last: 2 }))).keptForRuns.length;
      const g = await collectGarbage(repo, { graceMs: 3000 });
      console.log(JSON.stringify({ removedChunks: g.removedChunks, liveClaims: g.liveClaims, keptForRuns }));
      await new Promise((r) => setTimeout(r, 200));
    }
    process.exit(0);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...loc.env } });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return {
    stop: async () => {
      child.stdin.write('stop\n');
      assert.equal(await exited, 0, 'the prune/gc process ran without an error');
      return out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { removedChunks: number; liveClaims: number; keptForRuns: number });
    },
  };
}

async function clone(t: TestContext, name: string, image: Buffer): Promise<Vm> {
  const vm = await startVm(t, {
    name,
    sizesMiB: [64],
    prepare: async (file) => {
      const raw = `${file}.src.raw`;
      await fs.writeFile(raw, Buffer.concat([image, Buffer.alloc(64 * MiB - image.length)]));
      await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
      await fs.rm(raw);
    },
  });
  for (const m of vm.models.values()) image.copy(m.buf, 0);
  return vm;
}

test('two hosts back up into one repository at once while a third prunes and collects garbage; every point restores', { timeout: 600_000 }, async (t) => {
  const image = randomBytes(24 * MiB);
  const a = await clone(t, `fleet-a-${process.pid}`, image);
  const b = await clone(t, `fleet-b-${process.pid}`, image);
  const loc = await repoLocation(t, path.join(a.env.dir, 'repo'));
  const open = async (): Promise<{ repo: ChunkRepository; id: string; calls: Record<string, number> }> => {
    const c = counting(await loc.open());
    const repo = await ChunkRepository.open(c.store);
    return { repo, id: (await import('../../src/vmbackup/plan.js')).repositoryId(repo.config), calls: c.chunkCalls };
  };
  const host = (vm: Vm, hostId: string) => async () => {
    const r = await open();
    return { res: await backup(vm, r, { lease: { hostId } }), calls: r.calls };
  };
  const hostA = host(a, 'host-a');
  const hostB = host(b, 'host-b');

  // dedup across hosts: host b's first backup of its clone uploads no chunk
  const a1 = await hostA();
  const b1 = await hostB();
  assert.ok(a1.res.bytesNew >= 24 * MiB, `host a stores the image: ${a1.res.bytesNew}`);
  assert.equal(b1.res.bytesNew, 0, 'host b stores nothing new');
  assert.equal(b1.calls.put ?? 0, 0, 'host b uploads no chunk');

  // the same domain from another host while host a's run holds it: refused, naming the holder
  const other = await DomainLease.acquire((await open()).repo, a.dom.name, { hostId: 'host-b' });
  const before = await checkpoints(a.dom);
  await assert.rejects(backup(a, await open(), { lease: { hostId: 'host-a' } }), (e: Error) => isVirError(e, 'OPERATION_INVALID') && new RegExp(`host 'host-b' \\(pid ${process.pid}, started `).test(e.message));
  await other.release();
  assert.deepEqual(await checkpoints(a.dom), before, 'the refused run left no checkpoint');

  const snaps = new Map<string, { vm: Vm; snap: ReturnType<Vm['snapshot']> }>([
    [a1.res.pointId, { vm: a, snap: a.snapshot() }],
    [b1.res.pointId, { vm: b, snap: b.snapshot() }],
  ]);
  const janitor = startJanitor(t, loc, [a.dom.name, b.dom.name]);
  for (let round = 0; round < 3; round++) {
    await a.write('sda', (4 + round * 8) * MiB, 5 * MiB, 0x10 + round);
    await b.write('sda', (6 + round * 8) * MiB, 3 * MiB, 0x20 + round);
    const snapA = a.snapshot();
    const snapB = b.snapshot();
    const [ra, rb] = await Promise.all([hostA(), hostB()]);
    assert.equal(ra.res.level, 'inc');
    assert.equal(rb.res.level, 'inc');
    // only the changed chunks are read and looked up: the base's cost no request
    assert.ok((ra.calls.touch ?? 0) + (ra.calls.stat ?? 0) <= ra.res.disks[0]!.chunksRead, `host a: ${JSON.stringify(ra.calls)} for ${ra.res.disks[0]!.chunksRead} chunks read`);
    snaps.set(ra.res.pointId, { vm: a, snap: snapA });
    snaps.set(rb.res.pointId, { vm: b, snap: snapB });
  }
  const rounds = await janitor.stop();
  assert.ok(rounds.length >= 2, `the prune/gc loop ran ${rounds.length} times`);
  assert.ok(rounds.some((r) => r.removedChunks > 0), `gc removed the chunks of pruned points: ${JSON.stringify(rounds)}`);

  const repo = (await open()).repo;
  const left = await repo.listPoints();
  assert.ok(left.length >= 2);
  for (const p of left) {
    const s = snaps.get(p.id)!;
    await assertRestores(repo, p.domain.name, p.id, s.snap, s.vm.env.dir);
  }
});
