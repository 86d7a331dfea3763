// What the daemon's event loop and memory did, logged at debug level every
// few seconds: event-loop delay (a stall delays every client's replies and
// events) and process.memoryUsage(). bench/scale.ts reads these lines from
// the log; they cost one histogram sample timer and one line per interval.

import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from '../log.js';

/** The msg of the log line (bench/job-log.ts reads it). */
export const LOAD_REPORT_MSG = 'daemon load';

const MiB = 1024 * 1024;
const round = (n: number): number => Math.round(n * 100) / 100;

/** Start reporting; returns stop(), which logs the last partial interval. */
export function startLoadReport(log: Logger, intervalMs = 5000): () => void {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const report = (): void => {
    const m = process.memoryUsage();
    log.debug({
      // nanoseconds -> ms
      loopDelayP50: round(delay.percentile(50) / 1e6),
      loopDelayP99: round(delay.percentile(99) / 1e6),
      loopDelayMax: round(delay.max / 1e6),
      rssMiB: round(m.rss / MiB),
      heapUsedMiB: round(m.heapUsed / MiB),
      heapTotalMiB: round(m.heapTotal / MiB),
      externalMiB: round(m.external / MiB),
      arrayBuffersMiB: round(m.arrayBuffers / MiB),
    }, LOAD_REPORT_MSG);
    delay.reset();
  };
  const timer = setInterval(report, intervalMs);
  timer.unref();
  return () => {
    clearInterval(timer);
    report();
    delay.disable();
  };
}
