// Reads QEMU's own timestamps of backup job status changes out of virtbackd's
// JSON-lines log (--log-level debug --log-file F): the backup module logs each
// JOB_STATUS_CHANGE as msg 'qmp JOB_STATUS_CHANGE' with { domain, job, status,
// qemuTime } (qemuTime: ms since the epoch, with µs). Pure, for bench/scale.ts.

/** The msg of the lines read here. */
export const JOB_STATUS_MSG = 'qmp JOB_STATUS_CHANGE';

/** domain (as logged: name or uuid) -> QEMU job id -> QEMU's time of `status`, ms since the epoch; the last line wins. */
export function statusTimes(log: string, status: string): Map<string, Map<string, number>> {
  const out = new Map<string, Map<string, number>>();
  for (const line of log.split('\n')) {
    // cheap filter before parsing: most debug lines are something else
    if (!line.includes(JOB_STATUS_MSG)) continue;
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue; // a line cut short by a crash
    }
    if (rec.msg !== JOB_STATUS_MSG || rec.status !== status) continue;
    const time = Number(rec.qemuTime);
    if (typeof rec.domain !== 'string' || typeof rec.job !== 'string' || !Number.isFinite(time)) continue;
    const byJob = out.get(rec.domain) ?? new Map<string, number>();
    byJob.set(rec.job, time);
    out.set(rec.domain, byJob);
  }
  return out;
}
