// Where the time between QEMU concluding a backup's last disk job and our
// job-completed event goes: named instants (ms since the epoch) recorded as
// the completion is processed, logged once at debug level as offsets from
// QEMU's own "concluded" timestamp (bench/scale.ts prints the breakdown).
// Pure bookkeeping: no I/O, no timers.

/** The msg of the log line (bench/job-log.ts reads it). */
export const TIMELINE_MSG = 'backup job timeline';

export class JobTimeline {
  /** QEMU's timestamp of the latest JOB_STATUS_CHANGE concluded of this job's disks */
  private concluded: number | null = null;
  private readonly marks: Array<[string, number]> = [];

  /** A disk job concluded at QEMU's `qemuTime`; we read the event at `arrived`. */
  concludedAt(qemuTime: number, arrived: number): void {
    if (this.concluded === null || qemuTime > this.concluded) this.concluded = qemuTime;
    this.mark('event read', arrived);
  }

  mark(step: string, at = Date.now()): void {
    this.marks.push([step, at]);
  }

  /** { qemuConcluded, steps: [[step, ms after QEMU concluded]] }: the last instant of each step name, in order. */
  fields(): { qemuConcluded: number | null; steps: Array<[string, number]> } {
    const base = this.concluded;
    const last = new Map<string, number>();
    for (const [step, at] of this.marks) {
      last.delete(step); // re-insert: keeps the order of the latest occurrence
      last.set(step, at);
    }
    const steps = [...last].map(([step, at]): [string, number] => [step, base === null ? NaN : Math.round((at - base) * 100) / 100]);
    return { qemuConcluded: base, steps };
  }
}
