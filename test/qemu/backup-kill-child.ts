// Child process of backup-recovery.test.ts: open a driver on the test's
// state/run dirs, start a backup, and SIGKILL itself at the n-th status save
// of the backup module (before it lands or right after) — a daemon killed at
// a step boundary inside backupBegin, for real. Argument: one JSON object.

import { QemuDriver } from '../../src/qemu/driver.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import type { DomainHost } from '../../src/qemu/host.js';

interface Args { stateDir: string; runDir: string; uuid: string; save: number; when: 'before' | 'after'; backupXml: string; checkpointXml: string | null }

const a = JSON.parse(process.argv[2] ?? '{}') as Args;

/** The driver's host, with a saveStatus that kills this process at save `a.save`. */
function killing(host: DomainHost): DomainHost {
  let saves = 0;
  return new Proxy(host, {
    get(target, prop) {
      if (prop === 'saveStatus') {
        return async (...args: Parameters<DomainHost['saveStatus']>) => {
          saves++;
          if (saves === a.save && a.when === 'before') process.kill(process.pid, 'SIGKILL');
          await target.saveStatus(...args);
          if (saves === a.save && a.when === 'after') process.kill(process.pid, 'SIGKILL');
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(target) : v;
    },
  });
}

const driver = await QemuDriver.open({
  stateDir: a.stateDir,
  runDir: a.runDir,
  backups: (host, cps) => new QemuBackups(killing(host), cps, { speed: 1024 * 1024 }),
});
const id = await driver.backupBegin(a.uuid, a.backupXml, a.checkpointXml, 0);
process.stdout.write(`begun ${id}\n`);
await driver.close();
