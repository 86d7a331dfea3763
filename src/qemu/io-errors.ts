// A disk's I/O error as libvirt reports it. QEMU's BLOCK_IO_ERROR becomes
// one 'io-error' event (libvirt's IO_ERROR and IO_ERROR_REASON, which
// qemuProcessHandleIOError sends for every error, whatever the policy did).
// virDomainGetDiskErrors is what libvirt reads from query-block's io-status:
// per disk, the first error that stopped the guest, until it runs again.
// QEMU 7.2 resets io-status at `cont` only for monitor-owned (-drive)
// devices, never for devices on -blockdev nodes (ours, and libvirt's), so the
// driver keeps it itself from the events (QemuRuntime.diskErrors), cleared by
// QEMU's RESUME, and takes io-status only when it reconnects to a guest
// paused by an I/O error.

import type { DiskError, DomainRef, IoErrorEvent } from '../api/driver.js';
import { DiskErrorCode, IoErrorAction } from '../flags.js';
import type { DiskDef } from '../xml/domain.js';
import type { DiskNodes } from './command-line.js';
import type { BlockInfo } from './qmp/commands.js';

/** BLOCK_IO_ERROR's data (QEMU's qapi/block-core.json) */
export interface BlockIoErrorData {
  /** the BlockBackend's name: '' for devices on -blockdev nodes, as ours */
  device?: string;
  /** the node the device is attached to (its root: during a backup, the job's filter) */
  'node-name'?: string;
  operation?: 'read' | 'write';
  action?: 'ignore' | 'report' | 'stop';
  nospace?: boolean;
  reason?: string;
}

/** qemuMonitorIOErrorAction: QEMU's words as virDomainEventIOErrorAction (an unknown one is NONE, as libvirt) */
const ACTIONS: Readonly<Record<string, number>> = { ignore: IoErrorAction.NONE, stop: IoErrorAction.PAUSE, report: IoErrorAction.REPORT };

/** The disk attached to `node` (its format node), if any. */
export function diskOfNode(disks: readonly DiskNodes[], node: string | undefined): DiskNodes | undefined {
  return node === undefined || node === '' ? undefined : disks.find((d) => d.formatNode === node);
}

/**
 * The disk whose guest device query-block names `qdev`: its id, or for a
 * virtio-blk (whose block backend sits on the proxy's child) a QOM path
 * below /machine/peripheral/<id>/.
 */
function diskOfQdev(disks: readonly DiskNodes[], qdev: string | undefined): DiskNodes | undefined {
  if (qdev === undefined) return undefined;
  return disks.find((d) => qdev === d.qdevId || qdev.startsWith(`/machine/peripheral/${d.qdevId}/`));
}

/** The disk whose device is attached to `node` right now, by query-block (a backup's filter is not one of our nodes). */
export function diskOfRootNode(disks: readonly DiskNodes[], blocks: readonly BlockInfo[], node: string): DiskNodes | undefined {
  const block = blocks.find((b) => b.inserted?.['node-name'] === node);
  return diskOfQdev(disks, block?.qdev);
}

/** The event of one BLOCK_IO_ERROR; `disk` undefined when QEMU named no disk we know (libvirt sends '' then). */
export function ioErrorEvent(dom: DomainRef, disk: DiskNodes | undefined, defs: readonly DiskDef[], data: BlockIoErrorData): IoErrorEvent {
  const def = disk === undefined ? undefined : defs.find((d) => d.target === disk.target);
  return {
    type: 'io-error',
    domain: { name: dom.name, uuid: dom.uuid },
    disk: disk?.target ?? '',
    srcPath: def?.source ?? '',
    devAlias: disk?.qdevId ?? '',
    action: ACTIONS[data.action ?? 'ignore'] ?? IoErrorAction.NONE,
    // qemuMonitorJSONHandleIOError: 'enospc' or nothing
    reason: data.nospace === true ? 'enospc' : '',
  };
}

/** The error code a stopping error leaves (QEMU's io-status: nospace or failed). */
export function diskErrorCode(data: BlockIoErrorData): number {
  return data.nospace === true ? DiskErrorCode.NO_SPACE : DiskErrorCode.UNSPEC;
}

/** query-block's io-status per disk target, the ones that are not ok. */
export function ioStatusErrors(disks: readonly DiskNodes[], blocks: readonly BlockInfo[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const disk of disks) {
    const status = blocks.find((b) => diskOfQdev([disk], b.qdev) !== undefined)?.['io-status'];
    if (status === 'nospace') out.set(disk.target, DiskErrorCode.NO_SPACE);
    else if (status === 'failed') out.set(disk.target, DiskErrorCode.UNSPEC);
  }
  return out;
}

/** virDomainGetDiskErrors: the recorded errors in definition order. */
export function diskErrorList(disks: readonly DiskNodes[], errors: ReadonlyMap<string, number>): DiskError[] {
  return disks.flatMap((d) => {
    const error = errors.get(d.target);
    return error === undefined ? [] : [{ disk: d.target, error }];
  });
}
