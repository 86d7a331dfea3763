// Shared by the vmbackup tests: a running test domain reached through the
// public API (connectLocal over the QEMU driver), its disks' write models
// (every write goes through HMP qemu-io and is replayed onto a buffer), and
// restore checks that compare each point with the model's snapshot.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import type { Domain } from '../../src/api/public.js';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { connectLocal } from '../../src/sdk/connect.js';
import { backupDomain, repositoryId, restoreDomain, type VmBackupOptions, type VmBackupResult } from '../../src/vmbackup/index.js';
import { makeTestDomain, makeTestEnv, type TestDomainOptions, type TestEnv } from '../helpers/qemu-env.js';
import { DiskModel, run, write } from './backup-util.js';

export const MiB = 1 << 20;
export const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export interface Vm {
  env: TestEnv;
  driver: QemuDriver;
  dom: Domain;
  models: Map<string, DiskModel>;
  /** write through HMP and into the model */
  write(target: string, off: number, len: number, pattern: number): Promise<void>;
  /** the model's content of every disk now */
  snapshot(): Map<string, Buffer>;
}

export interface VmOptions extends TestDomainOptions {
  /** size of each disk (one disk per entry) */
  sizesMiB?: number[];
  /** fill the first disk's image before the domain is defined */
  prepare?: (image: string) => Promise<void>;
}

export async function startVm(t: TestContext, opts: VmOptions = {}): Promise<Vm> {
  const env = await makeTestEnv(t);
  const sizes = opts.sizesMiB ?? [opts.sizeMiB ?? 64];
  const def = await makeTestDomain(env.dir, { ...opts, disks: sizes.length, sizeMiB: sizes[0] });
  // makeTestDomain makes every disk the same size: resize the others as asked
  for (let i = 1; i < sizes.length; i++) await run('qemu-img', ['resize', '-q', def.disks[i]!.path, `${sizes[i]}M`]);
  await opts.prepare?.(def.disks[0]!.path);
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(def.xml, 0);
  await driver.domainCreate(uuid, 0);
  const conn = connectLocal(driver);
  const dom = await conn.lookupByUUID(uuid);
  const models = new Map(def.disks.map((d, i) => [d.target, new DiskModel(d.target, sizes[i]! * MiB)]));
  return {
    env,
    driver,
    dom,
    models,
    write: (target, off, len, pattern) => write(driver, uuid, models.get(target)!, off, len, pattern),
    snapshot: () => new Map([...models].map(([k, m]) => [k, m.snapshot()])),
  };
}

export async function initRepo(dir: string, encryptKey?: Buffer): Promise<{ repo: ChunkRepository; id: string; dir: string }> {
  const repo = await ChunkRepository.init(await openFolderStore(dir), encryptKey ? { encryptKey } : {});
  return { repo, id: repositoryId(repo.config), dir };
}

export function backup(vm: Vm, r: { repo: ChunkRepository; id: string }, opts: Partial<VmBackupOptions> = {}): Promise<VmBackupResult> {
  return backupDomain(vm.dom, r.repo, r.id, { level: 'auto', ...opts });
}

/** Restore point `pointId` as raw into a fresh folder and compare every disk with `expected`. */
export async function assertRestores(repo: ChunkRepository, domain: string, pointId: string, expected: Map<string, Buffer>, dir: string, format: 'raw' | 'qcow2' = 'raw'): Promise<void> {
  const out = path.join(dir, `restore-${pointId.replace(/[:.]/g, '')}-${format}`);
  const r = await restoreDomain(repo, null, { domain, point: pointId, outputDir: out, format });
  assert.deepEqual(r.disks.map((d) => d.target).sort(), [...expected.keys()].sort());
  for (const d of r.disks) {
    let content: Buffer;
    if (format === 'raw') {
      content = await fs.readFile(d.path);
    } else {
      const raw = `${d.path}.check.raw`;
      await run('qemu-img', ['convert', '-O', 'raw', d.path, raw]);
      content = await fs.readFile(raw);
    }
    assert.equal(content.length, expected.get(d.target)!.length, `${pointId} ${d.target}: size`);
    assert.equal(sha(content), sha(expected.get(d.target)!), `${pointId} ${d.target}: content differs from the disk at the backup instant`);
  }
  await fs.rm(out, { recursive: true, force: true });
}

/** Checkpoint names on the domain. */
export async function checkpoints(dom: Domain): Promise<string[]> {
  return (await dom.listAllCheckpoints()).map((c) => c.name).sort();
}
