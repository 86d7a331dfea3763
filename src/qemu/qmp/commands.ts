// Typed arguments and returns of the QMP commands and events virtback uses,
// written after QEMU 7.2's QAPI schema (qapi/block-core.json, job.json,
// block-export.json, misc.json, run-state.json). Only the members we read or
// send are spelled out; QEMU may return more.

// ---- shared types ----------------------------------------------------------

export type JobStatus =
  | 'undefined'
  | 'created'
  | 'running'
  | 'paused'
  | 'ready'
  | 'standby'
  | 'waiting'
  | 'pending'
  | 'aborting'
  | 'concluded'
  | 'null';

export type JobType =
  | 'commit'
  | 'stream'
  | 'mirror'
  | 'backup'
  | 'create'
  | 'amend'
  | 'snapshot-load'
  | 'snapshot-save'
  | 'snapshot-delete';

export type Empty = Record<string, never>;

export type BlockdevOnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';
export type MirrorSyncMode = 'top' | 'full' | 'none' | 'incremental' | 'bitmap';
export type BitmapSyncMode = 'on-success' | 'never' | 'always';
export type BlockdevDetectZeroes = 'off' | 'on' | 'unmap';
export type BlockdevDiscard = 'ignore' | 'unmap';

/** A node name, or options of a node to create inline. */
export type BlockdevRef = string | BlockdevOptions;
export type BlockdevRefOrNull = BlockdevRef | null;

interface BlockdevOptionsBase {
  'node-name'?: string;
  discard?: BlockdevDiscard;
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  'force-share'?: boolean;
  'detect-zeroes'?: BlockdevDetectZeroes;
}

export interface BlockdevOptionsFile extends BlockdevOptionsBase {
  driver: 'file';
  filename: string;
  locking?: 'on' | 'off' | 'auto';
  aio?: 'threads' | 'native' | 'io_uring';
}

export interface BlockdevOptionsQcow2 extends BlockdevOptionsBase {
  driver: 'qcow2';
  file: BlockdevRef;
  backing?: BlockdevRefOrNull;
  'lazy-refcounts'?: boolean;
  'data-file'?: BlockdevRef;
}

export interface BlockdevOptionsRaw extends BlockdevOptionsBase {
  driver: 'raw';
  file: BlockdevRef;
  offset?: number;
  size?: number;
}

/** Any other driver (null-co, copy-before-write, snapshot-access, ...). */
export interface BlockdevOptionsOther extends BlockdevOptionsBase {
  driver: string;
  [member: string]: unknown;
}

export type BlockdevOptions = BlockdevOptionsFile | BlockdevOptionsQcow2 | BlockdevOptionsRaw | BlockdevOptionsOther;

export interface BlockdevCreateOptionsFile {
  driver: 'file';
  filename: string;
  size: number;
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  nocow?: boolean;
}

export interface BlockdevCreateOptionsQcow2 {
  driver: 'qcow2';
  file: BlockdevRef;
  size: number;
  'data-file'?: BlockdevRef;
  'data-file-raw'?: boolean;
  version?: 'v2' | 'v3';
  'backing-file'?: string;
  'backing-fmt'?: string;
  'cluster-size'?: number;
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  'lazy-refcounts'?: boolean;
  'refcount-bits'?: number;
  'compression-type'?: 'zlib' | 'zstd';
}

export type BlockdevCreateOptions = BlockdevCreateOptionsFile | BlockdevCreateOptionsQcow2;

export interface BlockDirtyBitmap {
  node: string;
  name: string;
}

export interface BlockDirtyBitmapAdd extends BlockDirtyBitmap {
  granularity?: number;
  persistent?: boolean;
  disabled?: boolean;
}

/** A bitmap on the target's node (plain name) or on any node. */
export type BlockDirtyBitmapOrStr = string | BlockDirtyBitmap;

export interface BlockDirtyBitmapMerge {
  node: string;
  target: string;
  bitmaps: BlockDirtyBitmapOrStr[];
}

export interface BackupPerf {
  'use-copy-range'?: boolean;
  'max-workers'?: number;
  'max-chunk'?: number;
}

export interface BlockdevBackup {
  'job-id'?: string;
  device: string;
  target: string;
  sync: MirrorSyncMode;
  speed?: number;
  bitmap?: string;
  'bitmap-mode'?: BitmapSyncMode;
  compress?: boolean;
  'on-source-error'?: BlockdevOnError;
  'on-target-error'?: BlockdevOnError;
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
  'filter-node-name'?: string;
  'x-perf'?: BackupPerf;
}

export type TransactionAction =
  | { type: 'block-dirty-bitmap-add'; data: BlockDirtyBitmapAdd }
  | { type: 'block-dirty-bitmap-remove'; data: BlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-clear'; data: BlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-enable'; data: BlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-disable'; data: BlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-merge'; data: BlockDirtyBitmapMerge }
  | { type: 'blockdev-backup'; data: BlockdevBackup };

export interface JobInfo {
  id: string;
  type: JobType;
  status: JobStatus;
  'current-progress': number;
  'total-progress': number;
  /** Present once a job concluded with an error. */
  error?: string;
}

export interface BlockJobInfo {
  type: string;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': 'ok' | 'failed' | 'nospace';
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
}

export interface BlockDirtyInfo {
  name?: string;
  /** Dirty bytes. */
  count: number;
  granularity: number;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  /** Set when a persistent bitmap was not stored cleanly (QEMU killed). */
  inconsistent?: boolean;
}

export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  'actual-size'?: number;
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  compressed?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'backing-image'?: ImageInfo;
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  backing_file_depth: number;
  encrypted: boolean;
  detect_zeroes: 'off' | 'on' | 'unmap';
  image: ImageInfo;
  'dirty-bitmaps'?: BlockDirtyInfo[];
  cache: { writeback: boolean; direct: boolean; 'no-flush': boolean };
  write_threshold: number;
  [member: string]: unknown;
}

export interface BlockInfo {
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: 'ok' | 'failed' | 'nospace';
}

export type SocketAddressLegacy =
  | { type: 'unix'; data: { path: string; abstract?: boolean; tight?: boolean } }
  | { type: 'inet'; data: { host: string; port: string; numeric?: boolean; ipv4?: boolean; ipv6?: boolean } }
  | { type: 'fd'; data: { str: string } };

export interface BlockExportOptionsNbd {
  type: 'nbd';
  id: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
  'fixed-iothread'?: boolean;
  iothread?: string;
  name?: string;
  description?: string;
  bitmaps?: BlockDirtyBitmapOrStr[];
  'allocation-depth'?: boolean;
}

export interface BlockExportInfo {
  id: string;
  type: 'nbd' | 'fuse' | 'vhost-user-blk' | 'vduse-blk';
  'node-name': string;
  'shutting-down': boolean;
}

export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

export interface StatusInfo {
  running: boolean;
  singlestep: boolean;
  status: RunState;
}

export type ShutdownCause =
  | 'none'
  | 'host-error'
  | 'host-qmp-quit'
  | 'host-qmp-system-reset'
  | 'host-signal'
  | 'host-ui'
  | 'guest-shutdown'
  | 'guest-reset'
  | 'guest-panic'
  | 'subsystem-reset'
  | 'snapshot-load';

export interface ObjectAddArgs {
  'qom-type': string;
  id: string;
  [property: string]: unknown;
}

export interface QmpVersionInfo {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

// ---- commands --------------------------------------------------------------

type Cmd<A, R> = { args: A; ret: R };

/** Command name -> { args; ret }. `args: undefined` = the command takes none. */
export interface QmpCommands {
  qmp_capabilities: Cmd<{ enable?: string[] } | undefined, Empty>;
  'query-version': Cmd<undefined, QmpVersionInfo>;
  'query-commands': Cmd<undefined, { name: string }[]>;
  'query-status': Cmd<undefined, StatusInfo>;
  stop: Cmd<undefined, Empty>;
  cont: Cmd<undefined, Empty>;
  quit: Cmd<undefined, Empty>;
  system_powerdown: Cmd<undefined, Empty>;
  'human-monitor-command': Cmd<{ 'command-line': string; 'cpu-index'?: number }, string>;
  'object-add': Cmd<ObjectAddArgs, Empty>;
  'object-del': Cmd<{ id: string }, Empty>;
  /** a device's property; 'drive' of a running disk device moves it onto another block node (a pull's copy-before-write filter) */
  'qom-set': Cmd<{ path: string; property: string; value: string | number | boolean }, Empty>;

  'blockdev-add': Cmd<BlockdevOptions, Empty>;
  'blockdev-del': Cmd<{ 'node-name': string }, Empty>;
  'blockdev-create': Cmd<{ 'job-id': string; options: BlockdevCreateOptions }, Empty>;
  'blockdev-backup': Cmd<BlockdevBackup, Empty>;
  transaction: Cmd<{ actions: TransactionAction[]; properties?: { 'completion-mode'?: 'individual' | 'grouped' } }, Empty>;
  'query-named-block-nodes': Cmd<{ flat?: boolean } | undefined, BlockDeviceInfo[]>;
  'query-block': Cmd<undefined, BlockInfo[]>;
  // removable media (qemu/media.ts): the tray of a CD-ROM drive, by qdev id
  'blockdev-open-tray': Cmd<{ id: string; force?: boolean }, Empty>;
  'blockdev-close-tray': Cmd<{ id: string }, Empty>;
  'blockdev-remove-medium': Cmd<{ id: string }, Empty>;
  'blockdev-insert-medium': Cmd<{ id: string; 'node-name': string }, Empty>;

  'block-dirty-bitmap-add': Cmd<BlockDirtyBitmapAdd, Empty>;
  'block-dirty-bitmap-remove': Cmd<BlockDirtyBitmap, Empty>;
  'block-dirty-bitmap-clear': Cmd<BlockDirtyBitmap, Empty>;
  'block-dirty-bitmap-enable': Cmd<BlockDirtyBitmap, Empty>;
  'block-dirty-bitmap-disable': Cmd<BlockDirtyBitmap, Empty>;
  'block-dirty-bitmap-merge': Cmd<BlockDirtyBitmapMerge, Empty>;

  'query-jobs': Cmd<undefined, JobInfo[]>;
  'job-dismiss': Cmd<{ id: string }, Empty>;
  'job-cancel': Cmd<{ id: string }, Empty>;
  'job-finalize': Cmd<{ id: string }, Empty>;
  'job-complete': Cmd<{ id: string }, Empty>;
  'block-job-cancel': Cmd<{ device: string; force?: boolean }, Empty>;
  'query-block-jobs': Cmd<undefined, BlockJobInfo[]>;

  'nbd-server-start': Cmd<
    { addr: SocketAddressLegacy; 'tls-creds'?: string; 'tls-authz'?: string; 'max-connections'?: number },
    Empty
  >;
  'nbd-server-stop': Cmd<undefined, Empty>;
  'block-export-add': Cmd<BlockExportOptionsNbd, Empty>;
  'block-export-del': Cmd<{ id: string; mode?: 'safe' | 'hard' }, Empty>;
  'query-block-exports': Cmd<undefined, BlockExportInfo[]>;
}

export type QmpCommandName = keyof QmpCommands;

// ---- events ----------------------------------------------------------------

export interface BlockJobEndData {
  type: JobType;
  device: string;
  len: number;
  offset: number;
  speed: number;
}

/** Event name -> data. */
export interface QmpEvents {
  JOB_STATUS_CHANGE: { id: string; status: JobStatus };
  /** `error` set when the job failed. */
  BLOCK_JOB_COMPLETED: BlockJobEndData & { error?: string };
  BLOCK_JOB_CANCELLED: BlockJobEndData;
  BLOCK_JOB_ERROR: { device: string; operation: 'read' | 'write'; action: 'ignore' | 'report' | 'stop' };
  BLOCK_JOB_READY: BlockJobEndData;
  BLOCK_JOB_PENDING: { type: JobType; id: string };
  BLOCK_EXPORT_DELETED: { id: string };
  SHUTDOWN: { guest: boolean; reason: ShutdownCause };
  STOP: Empty;
  RESUME: Empty;
}

export type QmpEventName = keyof QmpEvents;

export interface QmpTypedEvent<K extends QmpEventName> {
  event: K;
  data: QmpEvents[K];
  timestamp: { seconds: number; microseconds: number };
}
