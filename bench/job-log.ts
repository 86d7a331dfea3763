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

/** The lines of one msg (virtbackd's JSON-lines log), parsed; lines cut short are skipped. */
export function logRecords(log: string, msg: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of log.split('\n')) {
    if (!line.includes(msg)) continue;
    try {
      const rec = JSON.parse(line) as Record<string, unknown>;
      if (rec.msg === msg) out.push(rec);
    } catch {
      // a line cut short by a crash
    }
  }
  return out;
}

/**
 * The backup module's 'backup job timeline' lines (src/qemu/backup-timeline.ts):
 * per domain uuid and job id, each step's ms after QEMU concluded the job's last disk job.
 */
export function jobTimelines(log: string): Map<string, Array<[string, number]>> {
  const out = new Map<string, Array<[string, number]>>();
  for (const rec of logRecords(log, 'backup job timeline')) {
    if (typeof rec.domain !== 'string' || !Array.isArray(rec.steps)) continue;
    out.set(`${rec.domain}/${String(rec.jobId)}`, rec.steps as Array<[string, number]>);
  }
  return out;
}
