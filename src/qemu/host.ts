// What the checkpoint and backup modules need from the driver that hosts
// them, declared below all three so that neither module imports driver.ts
// (which composes them). QemuDriver implements DomainHost; QemuCheckpoints
// implements CheckpointAccess for the backup module.

import type { Driver, DriverEvent } from '../api/driver.js';
import type { Logger } from '../log.js';
import type { DomainObject } from './domain-object.js';
import type { GuestAgentClient } from './qmp/agent.js';
import type { QmpClient } from './qmp/client.js';
import type { TransactionAction } from './qmp/commands.js';
import type { StatePaths } from './state.js';
import type { CheckpointDef } from '../xml/checkpoint.js';

/**
 * Lifecycle hooks for the modules that keep per-domain state. All run with the
 * domain's lock held: do not call withDomainLock or the driver's mutating
 * Driver methods from them (deadlock); monitor(), saveStatus(), emit() are
 * fine. A hook that throws is logged and does not stop the others.
 */
export interface DomainHooks {
  /** a definition was loaded at open() or newly defined: attach per-domain stores (dom.checkpoints ...) */
  onLoaded?(dom: DomainObject): Promise<void> | void;
  /** QEMU started and the monitor is connected */
  onStarted?(dom: DomainObject): Promise<void> | void;
  /** open() found this domain's QEMU alive and reconnected (dom.run.qmp may be null if the monitor failed) */
  onReconnected?(dom: DomainObject): Promise<void> | void;
  /** QEMU is gone (destroyed, shut down, crashed); run files are still there, the status file too */
  onStopped?(dom: DomainObject, reason: number): Promise<void> | void;
  /** the domain is removed from the driver (undefined while inactive, or a transient domain stopped) */
  onRemoved?(dom: DomainObject): Promise<void> | void;
}

/** The driver's services for the modules it hosts (checkpoints, backups). */
export interface DomainHost {
  readonly paths: StatePaths;
  readonly log: Logger;
  addHooks(h: DomainHooks): () => void;
  /** the domain or NO_DOMAIN */
  getDomain(uuid: string): DomainObject;
  /** run `fn` under the domain's mutex (NO_DOMAIN if it vanished meanwhile) */
  withDomainLock<T>(uuid: string, fn: (dom: DomainObject) => Promise<T>): Promise<T>;
  /** the running domain's monitor, reconnecting if needed (OPERATION_INVALID when shut off) */
  monitor(uuid: string): Promise<QmpClient>;
  /** one guest-agent session (queued per domain) */
  withAgent<T>(uuid: string, fn: (agent: GuestAgentClient) => Promise<T>, opts?: { timeoutMs?: number }): Promise<T>;
  /** publish a driver event to every subscriber */
  emit(ev: DriverEvent): void;
  /** persist the running domain's status file (atomically) */
  saveStatus(dom: DomainObject): Promise<void>;
  /** a block-node index never used by this QEMU instance (persisted) */
  allocateNodeIndex(uuid: string): Promise<number>;
}

/** A checkpoint parsed and checked, with its QMP actions, not yet created. */
export interface PreparedCheckpoint {
  def: CheckpointDef;
  actions: TransactionAction[];
  /** record the metadata after the transaction succeeded (no-op with NO_METADATA) */
  commit(): Promise<void>;
}

/** What the backup module needs from the checkpoint module. */
export interface CheckpointAccess {
  /** parse + check a new checkpoint to be created inside the backup's transaction */
  prepare(dom: DomainObject, xml: string, opts?: { noMetadata?: boolean }): PreparedCheckpoint;
  /** the bitmap of checkpoint `name` on `disk`, or VirError when it cannot serve an incremental */
  ensureUsable(dom: DomainObject, name: string, disk: string): Promise<{ bitmap: string; granularity: number }>;
  /** freeze the guest's file systems around `fn`, always thawing (QUIESCE) */
  quiesced<T>(dom: DomainObject, fn: () => Promise<T>): Promise<T>;
}

/** The checkpoint API, implemented by checkpoints.ts. */
export type CheckpointOps = Pick<
  Driver,
  | 'checkpointCreateXML'
  | 'checkpointGetXMLDesc'
  | 'listAllCheckpoints'
  | 'checkpointListAllChildren'
  | 'checkpointLookupByName'
  | 'checkpointGetParent'
  | 'checkpointDelete'
  | 'listUnknownBitmaps'
> & {
  /** drop every checkpoint's metadata of an inactive domain being undefined (domain lock held) */
  discardAllMetadata(dom: DomainObject): Promise<void>;
};

/** The backup-job API, implemented by backup.ts. */
export type BackupOps = Pick<
  Driver,
  'backupBegin' | 'backupGetXMLDesc' | 'backupEnd' | 'listJobIds' | 'getJobStats' | 'abortJob'
> & {
  /**
   * Events published while the driver's open() recovered jobs (a push that
   * finished while no driver ran); drained by the caller, who replays them to
   * subscribers that arrive later (virtbackd).
   */
  recoveredEvents(): DriverEvent[];
};
