// Glue between a finished push backup and the repository: one manifest per
// target, written after the target is closed, in the background after
// job-completed; backupEnd of the job returns once they are on disk.

import path from 'node:path';
import { writeManifest } from '../repository/manifest.js';
import type { PushCompleteInfo } from './backup.js';

export async function writePushManifests(info: PushCompleteInfo, liveSources: ReadonlySet<string>): Promise<void> {
  for (const d of info.disks) {
    const backing = d.backingFile === null ? null : path.resolve(path.dirname(d.path), d.backingFile);
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
