// Manifests of a finished push backup: one per target, written after the
// target is closed, in the background after job-completed (backupEnd of the
// job returns once they are on disk). Injected into the QEMU driver by
// whoever assembles it (virtbackd, the tests).

import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { FinishedPush } from '../api/driver.js';
import { MANIFEST_SUFFIX, readManifest, writeManifest } from './manifest.js';
import { imageInfo } from './tools.js';

/**
 * The push backup of `disk` taken together with `checkpoint`, found from the
 * manifests in `dirs` when the driver's own history has lost it (meta.json
 * gone, more backups than it keeps): the newest whose target still exists
 * and whose manifest has a checksum (a backup restore can use).
 */
export async function findPushBackup(q: {
  uuid: string; disk: string; checkpoint: string; dirs: readonly string[];
}): Promise<{ path: string; format: string } | null> {
  let best: { path: string; format: string; time: number } | null = null;
  for (const dir of new Set(q.dirs)) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names.filter((n) => n.endsWith(MANIFEST_SUFFIX))) {
      const target = path.join(dir, name.slice(0, -MANIFEST_SUFFIX.length));
      const m = await readManifest(target).catch(() => null);
      if (!m || m.mode !== 'push' || m.checksum === null || !existsSync(target)) continue;
      if (m.domain.uuid !== q.uuid || m.disk !== q.disk || m.checkpoint !== q.checkpoint) continue;
      if (best === null || m.time > best.time) best = { path: target, format: m.format, time: m.time };
    }
  }
  return best && { path: best.path, format: best.format };
}

export async function writePushManifests(info: FinishedPush, liveSources: ReadonlySet<string>): Promise<void> {
  for (const d of info.disks) {
    // A manifest lives beside its target: beside /dev/VG/LV it would be a file in
    // devtmpfs, gone at the next boot. A block-device target has none (restore
    // and verify then read it unchecked).
    if ((await stat(d.path).catch(() => null))?.isBlockDevice() === true) continue;
    const backing = await actualBacking(d);
    await writeManifest({
      domain: { name: info.name, uuid: info.uuid },
      disk: d.target,
      target: d.path,
      format: d.format === 'raw' ? 'raw' : 'qcow2',
      checkpoint: d.checkpoint,
      incrementalFrom: d.incremental,
      // a backing file that is the live disk is no backup: the manifest says so (no parent, no checksum)
      parentBackup: backing !== null && !liveSources.has(backing) ? backing : null,
      time: Math.floor(info.time / 1000),
      virtualSize: d.virtualSize,
      jobId: info.jobId,
      mode: 'push',
    });
  }
}

/**
 * The backing file in the finished target's header, which is what restore
 * follows. The planned one is not enough for a target the caller created
 * (REUSE_EXTERNAL): the daemon only knows what it would have chosen, while the
 * libvirt client driver, writing the same manifest, chose the previous backup.
 */
async function actualBacking(d: FinishedPush['disks'][number]): Promise<string | null> {
  const planned = d.backingFile === null ? null : path.resolve(path.dirname(d.path), d.backingFile);
  if (d.format === 'raw') return planned;
  const header = await imageInfo(d.path, 'qcow2').catch(() => null);
  if (header === null) return planned;
  const b = header['full-backing-filename'] ?? header['backing-filename'];
  return b === undefined ? null : path.resolve(path.dirname(d.path), b);
}
