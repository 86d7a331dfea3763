// One domain in the driver's memory (libvirt's virDomainObj): its persistent
// definition, the running instance if any, its state, a per-domain mutex, and
// slots where the checkpoint and backup modules attach their per-domain data.

import { DomainState, ShutoffReason } from '../flags.js';
import type { DomainDef } from '../xml/domain.js';
import type { DiskNodes } from './command-line.js';
import { AsyncMutex } from './mutex.js';
import type { QemuRuntime } from './runtime.js';

/** What the checkpoint module keeps per domain; the driver only needs the count (list filters, undefine). */
export interface CheckpointStoreLike {
  count(): number;
}

/** What the backup module keeps per domain; the driver asks whether a job is active (list filters) and for block jobs. */
export interface BackupJobTableLike {
  hasActiveJob(): boolean;
  /** the QEMU job id of the backup block job running on disk `target`, or null */
  diskBlockJob?(target: string): string | null;
}

export class DomainObject {
  /** persistent definition (what the next start uses; libvirt's newDef when running) */
  def: DomainDef;
  persistent: boolean;
  /** flags.DomainState */
  state: number = DomainState.SHUTOFF;
  /** the reason of `state`: flags.RunningReason, PausedReason or ShutoffReason */
  reason: number = ShutoffReason.UNKNOWN;
  /** started when virtbackd starts (autostart/<uuid> exists); persistent domains only */
  autostart = false;
  /** started with START_AUTODESTROY: destroyed when the driver that started it is closed */
  autodestroy = false;
  /** the running QEMU (runtime.ts); null when shut off */
  run: QemuRuntime | null = null;
  /** the definition QEMU runs with; null when shut off */
  liveDef: DomainDef | null = null;
  readonly lock = new AsyncMutex();
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
