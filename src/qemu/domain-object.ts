// One domain in the driver's memory (libvirt's virDomainObj): its persistent
// definition, the running instance if any, its state, a per-domain mutex, and
// slots where the checkpoint and backup modules attach their per-domain data.

import { DomainState, ShutoffReason } from '../flags.js';
import type { DomainDef } from '../xml/domain.js';
import type { DiskNodes } from './command-line.js';
import type { QmpClient } from './qmp/client.js';
import type { DomainStatus } from './state.js';

/** Serialises async sections: each `run` starts after the previous one settled. */
export class AsyncMutex {
  private tail: Promise<void> = Promise.resolve();
  private held = 0;

  get locked(): boolean {
    return this.held > 0;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(async () => {
      this.held++;
      try {
        return await fn();
      } finally {
        this.held--;
      }
    });
    this.tail = result.then(() => undefined, () => undefined);
    return result;
  }
}

/** What the checkpoint module keeps per domain; the driver only needs the count (list filters, undefine). */
export interface CheckpointStoreLike {
  count(): number;
}

/** What the backup module keeps per domain; the driver only asks whether a job is active (list filters). */
export interface BackupJobTableLike {
  hasActiveJob(): boolean;
}

/** The running QEMU of a domain. */
export interface RunningInstance {
  pid: number;
  pidStartTime: number;
  /** null while the monitor is not connected (reconnect failed; retried on use) */
  qmp: QmpClient | null;
  /** persisted as status/<uuid>.json */
  status: DomainStatus;
  /** set before we stop QEMU ourselves, so the monitor closing is not taken for a crash */
  stopping: boolean;
  /** QEMU announced a SHUTDOWN (guest power-off, quit, SIGTERM): its exit is a shutdown, not a crash */
  shutdownSeen: boolean;
  /** unsubscribe functions for monitor listeners */
  detach: (() => void)[];
}

export class DomainObject {
  /** persistent definition (what the next start uses; libvirt's newDef when running) */
  def: DomainDef;
  persistent: boolean;
  /** flags.DomainState */
  state: number = DomainState.SHUTOFF;
  /** flags.ShutoffReason (or 0 while running) */
  reason: number = ShutoffReason.UNKNOWN;
  run: RunningInstance | null = null;
  /** the definition QEMU runs with; null when shut off */
  liveDef: DomainDef | null = null;
  readonly lock = new AsyncMutex();
  /** qemu-ga serves one client at a time: agent sessions queue here (not on `lock`, which a backup may hold while quiescing) */
  readonly agentLock = new AsyncMutex();
  /** filled by src/qemu/checkpoints.ts */
  checkpoints: CheckpointStoreLike | null = null;
  /** filled by src/qemu/backup.ts */
  backupJobs: BackupJobTableLike | null = null;
  /** set once undefined and stopped: stale handles must not act on it */
  removed = false;

  constructor(def: DomainDef, persistent: boolean) {
    this.def = def;
    this.persistent = persistent;
  }

  get uuid(): string {
    return this.def.uuid;
  }

  /** The name is the persistent definition's (a redefine cannot rename: same uuid means same name). */
  get name(): string {
    return this.def.name;
  }

  get active(): boolean {
    return this.run !== null;
  }

  get disks(): DiskNodes[] {
    return this.run?.status.disks ?? [];
  }
}
