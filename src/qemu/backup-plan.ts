// Backup planning (pure): an aligned <domainbackup> plus what QEMU and the
// checkpoint module told us about the disks -> the ordered QMP steps of
// backupBegin. No I/O here; backup-execute.ts runs the steps through the
// write-ahead log (backup-steps.ts), so a failure can undo exactly that.
//
// Sequence (libvirt's qemuBackupBegin, QEMU-NOTES "The QMP that libvirt sends"):
//   per disk: [create file] -> blockdev-add file node -> [blockdev-create qcow2]
//             -> blockdev-add format node (backing null | disk node)
//   pull:     + copy-before-write filter over the disk (target: the scratch)
//   pull:     [object-add tls-creds-x509] -> nbd-server-start [tls-creds]
//   push: ONE transaction: checkpoint bitmap-adds, then per disk
//             [temp bitmap add (disabled, non-persistent) + merge from the
//             checkpoint bitmap] + blockdev-backup
//   pull: the instant (vCPUs paused around it when several disks take part):
//             checkpoint bitmap-adds, then each device moves onto its filter
//             (qom-set drive); then a snapshot-access node over each filter
//             and the temp bitmaps on them
//   pull:     block-export-add per disk (of the snapshot-access node)
//
// Why a pull differs from libvirt's (blockdev-backup sync=none into the
// scratch): that job's internal filter fails the GUEST's write when the
// scratch is full (on-cbw-error break-guest-write, not settable through
// blockdev-backup in QEMU 7.2); our own filter has on-cbw-error
// break-snapshot, so a full scratch fails the export's reads instead.
// A device moves onto its filter one at a time (qom-set), not in a
// transaction: with several disks the vCPUs are paused around the moves so
// they share one instant. A push keeps QEMU's job on the disk itself: read
// through snapshot-access it loses copy offload (about 3x slower), and the
// free-space check (backup-space.ts) covers its target instead.

import path from 'node:path';
import { virErr } from '../errors.js';
import { backupServerTarget } from '../nbd/target.js';
import { backupBitmapName, type BackupDef, type BackupDiskDef, type BackupServerDef } from '../xml/backup.js';
import type {
  BackupPerf,
  BlockdevCreateOptionsQcow2,
  BlockdevOptions,
  BlockExportOptionsNbd,
  ObjectAddArgs,
  SocketAddressLegacy,
  TransactionAction,
} from './qmp/commands.js';

/** libvirt creates qcow2 targets and scratch files with 64 KiB clusters. */
export const TARGET_CLUSTER_SIZE = 65536;

/**
 * blockdev-backup performance options. copy_file_range between the images
 * made a full push ~4x faster in QEMU-NOTES and in bench/backup.ts; the
 * output is byte-identical (verified by the backup tests).
 */
export const BACKUP_PERF: BackupPerf = { 'use-copy-range': true };

/** How a push target's file node is opened and its qcow2 made (bench/backup.ts measures the choices; docs/performance.md). */
export interface PushTargetOptions {
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  aio?: 'threads' | 'native' | 'io_uring';
  'cluster-size'?: number;
  preallocation?: 'off' | 'metadata';
}

/** The default: QEMU's own (cache=writeback, aio=threads, 64 KiB clusters as libvirt). */
export const PUSH_TARGET: PushTargetOptions = {};

/** What the planner needs to know of one disk taking part in the backup. */
export interface PlanDiskInput {
  target: string;
  /** the disk's top (format) node, where checkpoint bitmaps live */
  diskNode: string;
  /** the disk's image path and format (backing file of incremental targets and of scratch files) */
  diskPath: string;
  diskFormat: string;
  /** virtual size of the disk in bytes */
  virtualSize: number;
  /** N for the new libvirt-N-storage / libvirt-N-format nodes */
  nodeIndex: number;
  /** the guest device's qdev id (a pull moves it onto its copy-before-write filter) */
  qdevId: string;
  /** for incremental disks: the checkpoint's bitmap on diskNode and its granularity */
  base: { bitmap: string; granularity: number } | null;
  /**
   * Incremental push into qcow2: the previous backup of the same chain when it
   * is known and still exists; null = name the live disk (as libvirt does).
   */
  previous: { path: string; format: string } | null;
  /** size in bytes of a block-device target or scratch (<target dev>, <scratch dev>); null for a file */
  storeSize?: number | null;
}

export interface PlanInput {
  def: BackupDef;
  disks: PlanDiskInput[];
  /** bitmap-add actions of the checkpoint created with the backup (they go first) */
  checkpointActions: TransactionAction[];
  /** the caller made the files (REUSE_EXTERNAL): no create, no format step */
  reuseExternal: boolean;
  /** resolved TCP port for a pull over tcp (the caller picked a free one when none was given) */
  port: number | null;
  perf?: BackupPerf | null;
  /** push targets' file node and qcow2 options (default PUSH_TARGET) */
  pushTarget?: PushTargetOptions;
  /** initial rate limit of each disk job in bytes/s (block-job-set-speed changes it later); 0/undefined = none */
  speed?: number;
  /** pull with <server tls='yes'>: the x509 credentials object to create (qemu.conf backup_tls_x509_*) */
  tls?: BackupTlsInput | null;
}

/** The tls-creds-x509 object of a pull over TLS (libvirt's objlibvirt_backup_tls0). */
export interface BackupTlsInput {
  /** QOM id of the object */
  id: string;
  /** directory with ca-cert.pem, server-cert.pem, server-key.pem */
  dir: string;
  /** demand a client certificate signed by the CA (backup_tls_x509_verify) */
  verifyPeer: boolean;
}

export interface PlannedDisk {
  target: string;
  diskNode: string;
  /** QEMU job id: backup-<target>-<disk node> */
  jobId: string;
  /** target (push) or scratch (pull) file */
  path: string;
  format: 'qcow2' | 'raw';
  virtualSize: number;
  storageNode: string;
  formatNode: string;
  /** create the (empty) file ourselves, mode 0600; for raw also size it (never for a block device) */
  createFile: boolean;
  addStorage: BlockdevOptions;
  /** blockdev-create job (qcow2 only, not with REUSE_EXTERNAL) */
  create: { jobId: string; options: BlockdevCreateOptionsQcow2 } | null;
  addFormat: BlockdevOptions;
  /** the temporary bitmap: on the disk node (push) or the scratch node (pull) */
  tempBitmap: { node: string; name: string } | null;
  /** backing file written into the qcow2 header (incremental push, scratch) */
  backingFile: string | null;
  incremental: string | null;
  export: BlockExportOptionsNbd | null;
  /** pull: the frozen view the export reads; null for a push */
  snapshot: PlannedSnapshot | null;
}

/** A pull's frozen view of one disk: a copy-before-write filter above it, and snapshot-access on the filter. */
export interface PlannedSnapshot {
  /** QOM path of the guest device, moved onto the filter at the instant and back at the end */
  device: string;
  cbwNode: string;
  snapNode: string;
  addCbw: BlockdevOptions;
  addSnap: BlockdevOptions;
}

export interface BackupPlan {
  mode: 'push' | 'pull';
  disks: PlannedDisk[];
  /** nbd-server-start arguments ('tls-creds' names tlsCreds) */
  nbdServer: { addr: SocketAddressLegacy; 'tls-creds'?: string } | null;
  /** object-add before nbd-server-start (pull over TLS) */
  tlsCreds: ObjectAddArgs | null;
  /** push: checkpoint bitmaps, temp bitmaps, jobs; pull: the checkpoint bitmaps only */
  transaction: TransactionAction[];
  /** pull: after the devices moved onto their filters, the temp bitmaps on the snapshot-access nodes */
  afterInstant: TransactionAction[];
  /** pull with more than one disk: the vCPUs are paused around the devices' moves (one instant for all) */
  pauseAtInstant: boolean;
}

/** QEMU listens where clients will connect (backupServerTarget: the same rule as the probe's and backup-pull's). */
function tcpAddr(server: BackupServerDef, port: number | null): SocketAddressLegacy {
  const t = backupServerTarget({ ...server, transport: 'tcp', port: server.port ?? port });
  if (t === null || !('host' in t)) throw virErr('OPERATION_UNSUPPORTED', 'QEMU', '<domainbackup> must specify TCP port for now');
  return { type: 'inet', data: { host: t.host, port: String(t.port) } };
}

/**
 * The backing-file string for a new image at `file`: relative when both live
 * in one folder, except on a block device (/dev/VG/LV is a symlink whose
 * folder is no place to resolve names against).
 */
export function backingFileName(file: string, backing: string, onDevice = false): string {
  if (onDevice) return path.resolve(backing);
  return path.dirname(path.resolve(file)) === path.dirname(path.resolve(backing)) ? path.basename(backing) : backing;
}

/**
 * What can be refused in a <domainbackup> with every default applied
 * (applyBackupDefaults), before anything is allocated or created. backupBegin
 * calls it while preparing; planBackup calls it again (it is cheap) so a plan
 * never comes from a definition that would be refused.
 */
export function checkBackupDef(def: BackupDef, opts: { tlsConfigured: boolean }): void {
  const pull = def.mode === 'pull';
  for (const bd of def.disks) {
    if (!bd.backup) continue;
    if (bd.path === null || bd.format === null || (pull && bd.exportname === null)) {
      throw virErr('INTERNAL_ERROR', 'QEMU', `backup defaults not applied to disk '${bd.name}'`);
    }
    if (pull && bd.format !== 'qcow2') {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `pull mode backup for disk '${bd.name}' requires qcow2 driver`);
    }
    if (bd.format !== 'qcow2' && bd.format !== 'raw') {
      throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `unsupported backup target format '${bd.format}' of disk '${bd.name}'`);
    }
  }
  if (!def.disks.some((d) => d.backup)) throw virErr('CONFIG_UNSUPPORTED', 'QEMU', 'no disks selected for backup');
  if (!pull) return;
  const server = def.server;
  if (server === null) throw virErr('OPERATION_UNSUPPORTED', 'QEMU', '<domainbackup> must specify TCP port for now');
  if (!(server.transport === 'unix' && server.socket !== null) && server.transport !== 'tcp') {
    throw virErr('INTERNAL_ERROR', 'QEMU', 'unexpected transport in <domainbackup>');
  }
  if (server.tls === true && !opts.tlsConfigured) throw virErr('OPERATION_INVALID', 'QEMU', 'backup TLS directory not configured');
}

/** Plan one backup (pure); the definition carries every default (applyBackupDefaults). */
export function planBackup(input: PlanInput): BackupPlan {
  const { def } = input;
  checkBackupDef(def, { tlsConfigured: !!input.tls });
  const disks: PlannedDisk[] = [];
  const perDiskActions: TransactionAction[] = [];
  for (const bd of def.disks) {
    if (!bd.backup) continue;
    const d = input.disks.find((x) => x.target === bd.name);
    if (!d) throw virErr('INTERNAL_ERROR', 'QEMU', `no block node for disk '${bd.name}'`);
    const planned = planDisk(input, bd, d);
    disks.push(planned);
    perDiskActions.push(...diskActions(input, planned, d));
  }
  const { nbdServer, tlsCreds } = planServer(input);
  const pull = def.mode === 'pull';
  return {
    mode: def.mode, disks, nbdServer, tlsCreds,
    transaction: [...input.checkpointActions, ...(pull ? [] : perDiskActions)],
    afterInstant: pull ? perDiskActions : [],
    pauseAtInstant: pull && disks.length > 1,
  };
}

/** One disk's target (push) or scratch (pull): file, nodes, format job, temporary bitmap, export. */
function planDisk(input: PlanInput, bd: BackupDiskDef, d: PlanDiskInput): PlannedDisk {
  const pull = input.def.mode === 'pull';
  // checked by checkBackupDef
  const path = bd.path as string;
  const format = bd.format as 'qcow2' | 'raw';
  // libvirt: a block device is written onto as it is, never created (nor deleted)
  const onDevice = bd.type === 'block';
  const incremental = bd.backupmode === 'incremental' ? bd.incremental : null;
  if (incremental !== null && d.base === null) {
    throw virErr('INTERNAL_ERROR', 'QEMU', `no bitmap for the incremental backup of disk '${bd.name}'`);
  }
  const storageNode = `libvirt-${d.nodeIndex}-storage`;
  const formatNode = `libvirt-${d.nodeIndex}-format`;
  // Backing: pull scratch -> the live disk; incremental qcow2 push -> the disk at run time,
  // and in the header the previous backup of the chain (or the live disk); full -> none.
  const backed = format === 'qcow2' && (pull || incremental !== null);
  let backingFile: string | null = null;
  let backingFmt: string | null = null;
  if (backed) {
    const prev = !pull && d.previous ? d.previous : { path: d.diskPath, format: d.diskFormat };
    backingFile = backingFileName(path, prev.path, onDevice);
    backingFmt = prev.format;
  }
  const { cache, aio, ...createOpts } = pull ? {} : input.pushTarget ?? PUSH_TARGET;
  const create: PlannedDisk['create'] =
    format === 'qcow2' && !input.reuseExternal
      ? {
          jobId: `create-${formatNode}`,
          options: {
            driver: 'qcow2',
            file: storageNode,
            size: d.virtualSize,
            'cluster-size': TARGET_CLUSTER_SIZE,
            ...createOpts,
            ...(backingFile !== null ? { 'backing-file': backingFile, 'backing-fmt': backingFmt ?? 'qcow2' } : {}),
          },
        }
      : null;
  const addFormat: BlockdevOptions =
    format === 'qcow2'
      ? { driver: 'qcow2', 'node-name': formatNode, 'read-only': false, file: storageNode, backing: backed ? d.diskNode : null }
      : { driver: 'raw', 'node-name': formatNode, 'read-only': false, file: storageNode, ...rawWindow(d) };
  const bitmapName = pull ? bd.exportbitmap : backupBitmapName(bd.name);
  if (incremental !== null && bitmapName === null) throw virErr('INTERNAL_ERROR', 'QEMU', `no export bitmap for disk '${bd.name}'`);
  const snapshot = pull ? planSnapshot(d, formatNode) : null;
  // pull: the export's bitmap must be on the node it reads (QEMU looks through filters, not snapshot-access)
  const tempBitmap = incremental !== null && bitmapName !== null ? { node: snapshot ? snapshot.snapNode : d.diskNode, name: bitmapName } : null;
  return {
    target: bd.name,
    diskNode: d.diskNode,
    jobId: `backup-${bd.name}-${d.diskNode}`,
    path,
    format,
    virtualSize: d.virtualSize,
    storageNode,
    formatNode,
    createFile: !input.reuseExternal && !onDevice,
    addStorage: {
      driver: onDevice ? 'host_device' : 'file', filename: path, 'node-name': storageNode, 'auto-read-only': true, discard: 'unmap',
      ...(cache ? { cache } : {}), ...(aio ? { aio } : {}),
    },
    create,
    addFormat,
    tempBitmap,
    backingFile,
    incremental,
    snapshot,
    export: snapshot
      ? {
          type: 'nbd',
          id: `virtback-nbd-${formatNode}`,
          'node-name': snapshot.snapNode,
          writable: false,
          name: bd.exportname ?? '',
          ...(tempBitmap !== null ? { bitmaps: [tempBitmap.name] } : {}),
        }
      : null,
  };
}

/**
 * A guest write waits for its block's old data to reach the scratch: a
 * scratch that hangs (a stuck network filesystem) would hang the guest's
 * writes with it. After this long the copy counts as failed, which breaks
 * the snapshot (the backup) and lets the write through.
 */
export const CBW_TIMEOUT_S = 60;

/**
 * The frozen view of a pull: a copy-before-write filter above the disk whose
 * target is the scratch (old data of each block the guest rewrites goes
 * there first), with break-snapshot so a scratch that cannot take it fails
 * the snapshot's reads, never the guest's write; snapshot-access reads the
 * disk as it was when the device moved onto the filter.
 */
function planSnapshot(d: PlanDiskInput, scratchNode: string): PlannedSnapshot {
  const cbwNode = `virtback-${d.nodeIndex}-cbw`;
  const snapNode = `virtback-${d.nodeIndex}-snapshot`;
  return {
    device: `/machine/peripheral/${d.qdevId}`,
    cbwNode,
    snapNode,
    addCbw: {
      driver: 'copy-before-write', 'node-name': cbwNode, file: d.diskNode, target: scratchNode,
      'on-cbw-error': 'break-snapshot', 'cbw-timeout': CBW_TIMEOUT_S,
    },
    addSnap: { driver: 'snapshot-access', 'node-name': snapNode, file: cbwNode },
  };
}

/**
 * A raw target on a block device larger than the disk (LVs come in whole
 * extents) shows only the disk's size: blockdev-backup wants equal sizes.
 */
function rawWindow(d: PlanDiskInput): { size?: number } {
  return d.storeSize != null && d.storeSize > d.virtualSize ? { size: d.virtualSize } : {};
}

/** The disk's actions: [temporary bitmap + merge from the checkpoint's] + blockdev-backup (push) / after the instant (pull). */
function diskActions(input: PlanInput, p: PlannedDisk, d: PlanDiskInput): TransactionAction[] {
  const pull = input.def.mode === 'pull';
  const out: TransactionAction[] = [];
  const tempBitmap = p.tempBitmap;
  if (tempBitmap !== null && d.base !== null) {
    out.push(
      {
        type: 'block-dirty-bitmap-add',
        data: { node: tempBitmap.node, name: tempBitmap.name, persistent: false, disabled: true, granularity: d.base.granularity },
      },
      {
        type: 'block-dirty-bitmap-merge',
        data: { node: tempBitmap.node, target: tempBitmap.name, bitmaps: [{ node: d.diskNode, name: d.base.bitmap }] },
      },
    );
  }
  if (pull) return out; // the filter holds the instant: no QEMU job
  const perf = input.perf === undefined ? BACKUP_PERF : input.perf;
  out.push({
    type: 'blockdev-backup',
    data: {
      device: d.diskNode,
      'job-id': p.jobId,
      target: p.formatNode,
      // never sync against the checkpoint bitmap itself: that would clear it on success
      sync: tempBitmap !== null ? 'incremental' : 'full',
      ...(tempBitmap !== null ? { bitmap: tempBitmap.name } : {}),
      'auto-finalize': true,
      'auto-dismiss': false,
      ...(perf ? { 'x-perf': perf } : {}),
      ...(input.speed ? { speed: input.speed } : {}),
    },
  });
  return out;
}

/** A pull's NBD server, and its TLS credentials object. */
function planServer(input: PlanInput): Pick<BackupPlan, 'nbdServer' | 'tlsCreds'> {
  const server = input.def.server;
  if (input.def.mode !== 'pull' || server === null) return { nbdServer: null, tlsCreds: null };
  const nbdServer: NonNullable<BackupPlan['nbdServer']> = server.transport === 'unix' && server.socket !== null
    ? { addr: { type: 'unix', data: { path: server.socket } } }
    : { addr: tcpAddr(server, input.port) };
  let tlsCreds: ObjectAddArgs | null = null;
  if (server.tls === true && input.tls) {
    // libvirt's qemuBuildTLSx509BackendProps for a server endpoint
    tlsCreds = { 'qom-type': 'tls-creds-x509', id: input.tls.id, dir: input.tls.dir, endpoint: 'server', 'verify-peer': input.tls.verifyPeer };
    nbdServer['tls-creds'] = input.tls.id;
  }
  return { nbdServer, tlsCreds };
}
