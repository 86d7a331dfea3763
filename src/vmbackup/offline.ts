// A shut-off domain is backed up by the same pull job as a running one: its
// QEMU is started with its CPUs stopped (START_PAUSED: -S, the guest never runs
// an instruction) so that the images are open with their persistent bitmaps
// loaded. The checkpoint chain then continues by construction: the job's new
// checkpoint is a bitmap added in the images and recorded by the driver
// exactly as online, the incremental reads the last checkpoint's bitmap (which
// recorded every write up to the power-off), and the next online run builds
// on the checkpoint made here. While the run lasts the domain is active, so a
// start is refused (OPERATION_INVALID: already running); START_AUTODESTROY ties
// that QEMU to this connection, so a killed client does not leave it behind.
// Works over any Driver: libvirt starts paused domains and backs them up too.

import type { Domain } from '../api/public.js';
import { isVirError } from '../errors.js';
import { DomainState } from '../flags.js';
import { errField, type Logger } from '../log.js';

export interface OfflineOpen {
  /** true when this run started the domain paused and stops it again */
  offline: boolean;
  /** stop the paused instance this run started (a no-op when it was running before) */
  close(): Promise<void>;
}

/**
 * Make `dom` active for a backup: a shut-off domain is started paused; a
 * running or paused one is left as it is (a start racing ours wins, and the
 * run is then an ordinary online one).
 */
export async function openForBackup(dom: Domain, log: Logger): Promise<OfflineOpen> {
  const online: OfflineOpen = { offline: false, close: async () => {} };
  if ((await dom.getInfo()).state !== DomainState.SHUTOFF) return online;
  try {
    await dom.create({ paused: true, autodestroy: true });
  } catch (e) {
    if (isVirError(e, 'OPERATION_INVALID') && (await dom.getInfo()).state !== DomainState.SHUTOFF) return online;
    throw e;
  }
  const { id } = await dom.getInfo();
  log.info({ pid: id }, 'domain is shut off: its images are opened by a paused QEMU for this backup');
  return { offline: true, close: () => closeOffline(dom, id, log) };
}

/**
 * Stop the paused instance again — only if it is still ours and still paused:
 * someone who resumed it meanwhile has a running guest, which a backup must
 * not kill (the point is consistent either way: the job froze the disks).
 */
async function closeOffline(dom: Domain, pid: number, log: Logger): Promise<void> {
  try {
    const now = await dom.getInfo();
    if (now.id !== pid) return;
    if (now.state !== DomainState.PAUSED) {
      log.warn({ pid, state: now.state }, 'the domain was resumed during its offline backup: left running');
      return;
    }
    await dom.destroy();
  } catch (e) {
    if (isVirError(e, 'OPERATION_INVALID')) return; // stopped meanwhile
    log.warn(errField(e), 'stopping the paused QEMU of the offline backup failed');
  }
}
