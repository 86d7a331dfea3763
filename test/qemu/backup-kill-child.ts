// Child process of backup-recovery.test.ts: open a driver on the test's
// state/run dirs, start a backup, and SIGKILL itself at a named step of
// backupBegin (before the step or right after it) — a daemon killed at a step
// boundary inside backupBegin, for real. Steps are the backup module's status
// saves, named by the write-ahead entry each one first records (`record`: the
// first save, which holds every intent; `file#1`, `node#3`, … for a step saved
// on its own; `transaction`: a save that intends the backup jobs; `running`),
// `checkpoint-commit` (the checkpoint's metadata, which is no status save) and
// QMP commands (`qmp:blockdev-add#2`: the second blockdev-add; 'before' is
// before it is sent, 'after' once its reply is back). Every save's name is
// printed ("save NAME") as it lands.
// With `waitEnd` the child also waits for the job to end, writing manifests as
// virtbackd does, so a kill can land in its completion ('done': the status save
// that ends it). Argument: one JSON object.

import { QemuDriver } from '../../src/qemu/driver.js';
import { QemuBackups } from '../../src/qemu/backup.js';
import type { BackupJobRecord } from '../../src/qemu/backup-job.js';
import type { CheckpointAccess, DomainHost } from '../../src/qemu/host.js';
import type { QmpClient } from '../../src/qemu/qmp/client.js';
import { writePushManifests } from '../../src/repository/push-manifests.js';

interface Args { stateDir: string; runDir: string; uuid: string; at: string; when: 'before' | 'after'; backupXml: string; checkpointXml: string | null; waitEnd?: boolean }

const a = JSON.parse(process.argv[2] ?? '{}') as Args;

function killIf(at: string, when: 'before' | 'after'): void {
  if (at === a.at && when === a.when) process.kill(process.pid, 'SIGKILL');
}

/** Forward everything but `name`, which `wrap` replaces. */
function intercept<T extends object>(target: T, name: string, wrap: (orig: (...x: unknown[]) => unknown) => unknown): T {
  return new Proxy(target, {
    get(t, prop) {
      const v = Reflect.get(t, prop, t) as unknown;
      if (typeof v !== 'function') return v;
      const bound = (v as (...x: unknown[]) => unknown).bind(t);
      return prop === name ? wrap(bound) : bound;
    },
  });
}

/** Names each status save by what it first records (see the header). */
function saveNamer(): (rec: BackupJobRecord | undefined) => string {
  const seen = new Set<string>();
  const counts = new Map<string, number>();
  let saves = 0;
  return (rec) => {
    saves++;
    if (rec === undefined) return `cleared#${saves}`;
    if (rec.phase !== 'starting') return rec.phase;
    const fresh = rec.steps.filter((s) => !seen.has(JSON.stringify({ ...s, state: undefined })));
    for (const s of fresh) seen.add(JSON.stringify({ ...s, state: undefined }));
    if (saves === 1) return 'record';
    if (fresh.some((s) => s.kind === 'job' && s.id.startsWith('backup-'))) return 'transaction';
    const first = fresh[0];
    if (first === undefined) return `again#${saves}`;
    const n = (counts.get(first.kind) ?? 0) + 1;
    counts.set(first.kind, n);
    return `${first.kind}#${n}`;
  };
}

/** The monitor, with an execute that kills this process at the named command (`qmp:NAME#N`). */
function killingQmp(qmp: QmpClient, counts: Map<string, number>): QmpClient {
  return intercept(qmp, 'execute', (orig) => async (cmd: unknown, args: unknown) => {
    const n = (counts.get(cmd as string) ?? 0) + 1;
    counts.set(cmd as string, n);
    killIf(`qmp:${cmd as string}#${n}`, 'before');
    const out = await orig(cmd, args);
    killIf(`qmp:${cmd as string}#${n}`, 'after');
    return out;
  });
}

/** The driver's host, with a saveStatus that kills this process at the named save, and a monitor that kills at a named command. */
function killing(host: DomainHost): DomainHost {
  const name = saveNamer();
  const counts = new Map<string, number>();
  const wrapped = new WeakMap<QmpClient, QmpClient>();
  const monitored = intercept(host, 'monitor', (orig) => async (...args: unknown[]) => {
    const qmp = await (orig(...args) as Promise<QmpClient>);
    if (!wrapped.has(qmp)) wrapped.set(qmp, killingQmp(qmp, counts));
    return wrapped.get(qmp);
  });
  return intercept(monitored, 'saveStatus', (orig) => async (...args: Parameters<DomainHost['saveStatus']>) => {
    const at = name(args[0].run?.status.extra.backupJob as BackupJobRecord | undefined);
    killIf(at, 'before');
    await orig(...args);
    process.stdout.write(`save ${at}\n`);
    killIf(at, 'after');
  });
}

/** The checkpoint access, with a commit that kills this process when asked. */
function killingCommit(cps: CheckpointAccess): CheckpointAccess {
  return intercept(cps, 'prepare', (orig) => (...args: unknown[]) => {
    const prepared = orig(...args) as ReturnType<CheckpointAccess['prepare']>;
    return {
      ...prepared,
      commit: async () => {
        killIf('checkpoint-commit', 'before');
        await prepared.commit();
        killIf('checkpoint-commit', 'after');
      },
    };
  });
}

const driver = await QemuDriver.open({
  stateDir: a.stateDir,
  runDir: a.runDir,
  backups: (host, cps) => new QemuBackups(killing(host), killingCommit(cps), a.waitEnd ? { afterPushComplete: (info) => writePushManifests(info, new Set()) } : { speed: 1024 * 1024 }),
});
const id = await driver.backupBegin(a.uuid, a.backupXml, a.checkpointXml, 0);
process.stdout.write(`begun ${id}\n`);
while (a.waitEnd && (await driver.getJobStats(a.uuid, 0)).type !== 0) {
  await new Promise((r) => setTimeout(r, 20));
}
await driver.close();
