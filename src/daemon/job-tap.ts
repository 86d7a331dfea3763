// Debug aid: log QEMU's own timestamp of every backup job status change, so
// the time between QEMU finishing a job and our job-completed event reaching
// a client can be measured (bench/scale.ts reads these lines). Only installed
// when the daemon logs at debug level, and only on the QEMU driver; the tap
// listens on each running domain's monitor and is removed with it.

import type { Driver } from '../api/driver.js';
import type { DomainObject } from '../qemu/domain-object.js';
import type { QemuDriver } from '../qemu/driver.js';
import type { Logger } from './logger.js';

/** The line's fixed part; bench/scale.ts parses `qemu-time=<ms since the epoch, with µs>`. */
export const JOB_TAP_PREFIX = 'qmp JOB_STATUS_CHANGE';

function isQemuDriver(d: Driver): d is QemuDriver {
  return typeof (d as Partial<QemuDriver>).addHooks === 'function' && typeof (d as Partial<QemuDriver>).allDomains === 'function';
}

/** Installs the tap; returns false when the driver is not the QEMU driver. */
export function tapJobEvents(driver: Driver, log: Logger): boolean {
  if (!isQemuDriver(driver)) return false;
  const tapped = new WeakSet<object>();
  const tap = (dom: DomainObject): void => {
    const run = dom.run;
    const qmp = run?.qmp;
    if (!run || !qmp || tapped.has(qmp)) return;
    tapped.add(qmp);
    const off = qmp.on('JOB_STATUS_CHANGE', (ev) => {
      const { id, status } = ev.data as { id: string; status: string };
      if (!id.startsWith('backup-')) return;
      const ms = ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
      log.debug(`${JOB_TAP_PREFIX} domain=${dom.uuid} job=${id} status=${status} qemu-time=${ms.toFixed(3)}`);
    });
    run.detach.push(off);
  };
  driver.addHooks({ onStarted: tap, onReconnected: tap });
  for (const dom of driver.allDomains()) tap(dom);
  return true;
}
