// virDomainGetBlockJobInfo's answer from QEMU's query-block-jobs entry
// (libvirt's qemuBlockJobInfoTranslate). Pure.

import type { BlockJobInfo } from '../api/driver.js';
import { BlockJobInfoFlags, BlockJobType } from '../flags.js';
import type { BlockJobInfo as QemuBlockJob } from './qmp/commands.js';

const MiB = 1024 * 1024;

/** QEMU's job types as libvirt's virDomainBlockJobType */
const JOB_TYPES: Record<string, number> = {
  stream: BlockJobType.PULL,
  mirror: BlockJobType.COPY,
  commit: BlockJobType.COMMIT,
  backup: BlockJobType.BACKUP,
};

/** `job` null: the disk has no block job (libvirt's return 0). */
export function blockJobInfo(job: QemuBlockJob | null, flags: number): BlockJobInfo {
  if (job === null) return { found: false, type: BlockJobType.UNKNOWN, bandwidth: 0, cur: 0, end: 0 };
  let cur = job.offset;
  let end = job.len;
  // 0/0 would read as "done" to virsh: libvirt reports 0/1 (1/1 once ready)
  if (end === 0) [cur, end] = job.ready ? [1, 1] : [0, 1];
  const bytes = (flags & BlockJobInfoFlags.BANDWIDTH_BYTES) !== 0;
  return {
    found: true,
    type: JOB_TYPES[job.type] ?? BlockJobType.UNKNOWN,
    bandwidth: bytes ? job.speed : Math.ceil(job.speed / MiB),
    cur,
    end,
  };
}
