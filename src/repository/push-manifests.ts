// Manifests of a finished push backup: one per target, written after the
// target is closed, in the background after job-completed (backupEnd of the
// job returns once they are on disk). Injected into the QEMU driver by
// whoever assembles it (virtbackd, the SDK's embedded driver, tests).

import path from 'node:path';
import { writeManifest } from './manifest.js';

/** A finished push job as the driver reports it (the QEMU driver's PushCompleteInfo). */
export interface FinishedPush {
  uuid: string;
  name: string;
  jobId: number;
  /** the backup instant, epoch milliseconds */
  time: number;
  disks: {
    target: string;
    path: string;
    format: string;
    checkpoint: string | null;
    incremental: string | null;
    backingFile: string | null;
    virtualSize: number;
  }[];
}

export async function writePushManifests(info: FinishedPush, liveSources: ReadonlySet<string>): Promise<void> {
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
