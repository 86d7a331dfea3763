// CPU seconds per party for the backup-command benches (vmbackup.ts,
// serve.ts): this process (its worker threads included), the child processes
// it has waited for (nbdcopy, qemu-img: /proc/self/stat's cutime + cstime),
// and long-running servers by pid (the domain's QEMU, qemu-nbd). On a shared
// 2-core machine a rate follows the CPU its path needs, so a bar that cannot
// be met shows here as CPU per GiB, ours against the baseline's.

import { readFileSync } from 'node:fs';

/**
 * utime + stime (fields 14, 15) or cutime + cstime (16, 17) of
 * /proc/PROC/stat in seconds; 0 when gone. PROC: a pid, 'self', or
 * 'self/task/TID' for one thread.
 */
export function procCpuSeconds(proc: number | string, children = false): number {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${proc}/stat`, 'utf8');
  } catch {
    return 0;
  }
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const at = children ? 13 : 11;
  return (Number(f[at]) + Number(f[at + 1])) / 100; // clock ticks (USER_HZ 100)
}

export interface CpuSample {
  ours: number;
  children: number;
  servers: number;
}

export class CpuParties {
  /** `servers`: pids of long-running processes the measured work drives (QEMU, qemu-nbd) */
  constructor(private readonly servers: () => number[] = () => []) {}

  sample(): CpuSample {
    const u = process.cpuUsage();
    return { ours: (u.user + u.system) / 1e6, children: procCpuSeconds('self', true), servers: this.servers().reduce((n, p) => n + procCpuSeconds(p), 0) };
  }

  /** `fn`'s CPU seconds, per party, and its result. */
  async measure<T>(fn: () => Promise<T>): Promise<{ cpu: CpuSample; result: T }> {
    const a = this.sample();
    const result = await fn();
    const b = this.sample();
    return { cpu: { ours: b.ours - a.ours, children: b.children - a.children, servers: b.servers - a.servers }, result };
  }
}

/** "ours 2.1, children 0.0, QEMU 0.4 CPU s/GiB" for CPU seconds spent on `bytes`. */
export function perGiB(c: CpuSample, bytes: number, serverName: string): string {
  const g = bytes / 2 ** 30;
  const f = (x: number) => (x / g).toFixed(2);
  return `CPU s/GiB: this process ${f(c.ours)}, children ${f(c.children)}, ${serverName} ${f(c.servers)}, total ${f(c.ours + c.children + c.servers)}`;
}
