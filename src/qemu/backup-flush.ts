// A push's targets written back by the daemon, so that QEMU's own flush finds
// little dirty when the job concludes. A push target must be durable before job-completed;
// QEMU's own flush (blockdev-del: the qcow2 metadata, then fdatasync of the
// file) stays the one that vouches for it. Waiting for it was most of the time
// between QEMU concluding and the event (the data of every concurrent job
// written back at once). Here the daemon fdatasyncs the same files from its
// own read-only descriptors (file-posix's flush is fdatasync of the same
// inode) once the job has concluded, in parallel with the outcome's status
// save (and, if asked, in a loop while the job runs): QEMU's flush then finds
// the data clean and writes only its metadata.
//
// Our descriptors never hide an I/O error from QEMU: since Linux 4.13 a
// writeback error is reported to every open file description that has not
// seen it yet (errseq), so QEMU's own fdatasync still fails.

import { open, type FileHandle } from 'node:fs/promises';
import { errField, type Logger } from '../log.js';

/**
 * The default: one write-back, at conclusion (0), not a loop while the job
 * copies. Measured (docs/performance.md, "Push" and "Events"): a loop every
 * 50 ms made one push full 1.21-1.22 -> 1.06-1.15 s, but with ten concurrent jobs their
 * fdatasyncs (each a journal commit) slowed every status save, begin held
 * the domain lock longer, and job-completed came later.
 */
export const DEFAULT_TARGET_WRITEBACK_MS = 0;

export class TargetWriteback {
  private running = true;
  /** ends the pause between two write-backs at once (finish) */
  private wake: (() => void) | null = null;
  private readonly loop: Promise<FileHandle[]>;

  /**
   * Start writing back `paths` (a target that cannot be opened is left to
   * QEMU's flush); `pauseMs` between two rounds, 0: only once the job concluded.
   */
  constructor(paths: readonly string[], private readonly log: Logger, pauseMs: number) {
    this.loop = this.run(paths, pauseMs);
  }

  private async run(paths: readonly string[], pauseMs: number): Promise<FileHandle[]> {
    const opened = await Promise.all(paths.map((p) => open(p, 'r').catch((e: unknown) => {
      this.log.debug({ path: p, ...errField(e) }, 'backup target not written back early');
      return null;
    })));
    const files = opened.filter((f): f is FileHandle => f !== null);
    while (this.running && pauseMs > 0) {
      await this.syncAll(files);
      if (this.running) await this.pause(pauseMs);
    }
    return files;
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      t.unref(); // a driver closed while a job runs is not kept alive by it
      this.wake = () => {
        clearTimeout(t);
        this.wake = null;
        resolve();
      };
    });
  }

  private async syncAll(files: FileHandle[]): Promise<void> {
    await Promise.all(files.map((f) => f.datasync().catch((e: unknown) => {
      // QEMU's flush meets the same error and fails the backup
      this.log.debug({ ...errField(e) }, 'backup target write-back failed');
    })));
  }

  /**
   * The job concluded: the loop stops, then (with `sync`) one more write-back
   * of everything the job wrote; the descriptors are closed. Never throws;
   * a second call is a no-op.
   */
  async finish(sync: boolean): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.wake?.();
    const files = await this.loop;
    if (sync) await this.syncAll(files);
    await Promise.all(files.map((f) => f.close().catch(() => {})));
  }
}
