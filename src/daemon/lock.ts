// An exclusive lock file holding "<pid> <start time>", so that a second
// virtbackd on the same state directory refuses to start. The file is
// created atomically with its content (write a temporary file, then link it
// into place: link fails if the name exists). A lock left by a dead daemon is
// recognised because its pid is gone, is a zombie (killed, not yet reaped),
// or is now another process with a different start time (pids are reused),
// or does not hold the lock file open (the owner keeps it open for its whole
// life, and a dead process closes every file at once), and is then taken over.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { virErr } from '../errors.js';

export interface LockOwner {
  pid: number;
  /** Start time in clock ticks since boot (/proc/<pid>/stat field 22), or null where /proc is missing. */
  start: string | null;
}

/** Fields 3.. of /proc/<pid>/stat (index 0 = state), or null if it does not exist or cannot be read. */
function statFields(pid: number): string[] | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** The start time of a process, or null if it does not exist or cannot be read. */
export function processStartTime(pid: number): string | null {
  return statFields(pid)?.[19] ?? null; // field 22 overall = index 19 after pid and comm
}

/** Whether `pid` has ended but was not reaped yet (state Z) or is being torn down (X). */
function isZombie(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state === 'Z' || state === 'X';
}

/**
 * Whether `pid` has the file with inode `ino` of device `dev` open; null when
 * its descriptors cannot be listed (no /proc, another user's process).
 */
function holdsFile(pid: number, dev: number, ino: number): boolean | null {
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return null;
  }
  for (const fd of fds) {
    try {
      const st = fs.statSync(`/proc/${pid}/fd/${fd}`);
      if (st.dev === dev && st.ino === ino) return true;
    } catch {
      // closed meanwhile
    }
  }
  return false;
}

function alive(owner: LockOwner, file: string): boolean {
  if (!Number.isInteger(owner.pid) || owner.pid <= 0 || !processExists(owner.pid)) return false;
  if (isZombie(owner.pid)) return false;
  if (owner.start !== null) {
    const now = processStartTime(owner.pid);
    if (now !== null && now !== owner.start) return false;
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return false;
  }
  return holdsFile(owner.pid, st.dev, st.ino) !== false;
}

function parse(content: string): LockOwner | null {
  const m = /^(\d+)(?: (\S+))?\s*$/.exec(content);
  if (!m) return null;
  return { pid: Number(m[1]), start: m[2] ?? null };
}

function readOrNull(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/**
 * Remove the temp files (`.<lock>.<pid>.tmp`) of starts SIGKILLed inside
 * acquire: nobody else removes them. Another start may be trying at this
 * moment (it will be refused), so only those of a pid that is gone. Best
 * effort: a leftover must not stop the daemon.
 */
function removeDeadTemps(file: string): void {
  const dir = path.dirname(file);
  const prefix = `.${path.basename(file)}.`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const pid = name.startsWith(prefix) && name.endsWith('.tmp') ? name.slice(prefix.length, -'.tmp'.length) : '';
    if (!/^\d+$/.test(pid) || processExists(Number(pid))) continue;
    try {
      fs.rmSync(path.join(dir, name), { force: true });
    } catch {
      // left for the next start
    }
  }
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // someone else's
  }
}

export class PidLock {
  private constructor(
    readonly file: string,
    private readonly content: string,
    /** Open for our whole life: the proof, for others, that the lock is held. */
    private fd: number | null,
  ) {}

  /**
   * Takes the lock or throws OPERATION_INVALID naming the running owner.
   * `what` names the protected thing in the message, e.g. "state directory /var/lib/virtback".
   */
  static acquire(file: string, what: string): PidLock {
    const start = processStartTime(process.pid);
    const content = `${process.pid}${start === null ? '' : ` ${start}`}\n`;
    const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
    const fd = fs.openSync(tmp, 'w', 0o644);
    let taken = false;
    try {
      fs.writeFileSync(fd, content);
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          fs.linkSync(tmp, file);
          taken = true;
          removeDeadTemps(file);
          return new PidLock(file, content, fd);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
        const held = readOrNull(file);
        if (held === null) continue; // released meanwhile
        const owner = parse(held);
        if (owner !== null && alive(owner, file)) {
          throw virErr('OPERATION_INVALID', 'NONE', `virtbackd is already running on ${what} (pid ${owner.pid})`);
        }
        // Stale: remove it unless someone replaced it meanwhile, then try again.
        if (readOrNull(file) === held) fs.rmSync(file, { force: true });
      }
      throw virErr('OPERATION_INVALID', 'NONE', `could not take the lock ${file} for ${what}`);
    } finally {
      if (!taken) fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
    }
  }

  /** The owner recorded in a lock file, if it names a live process. */
  static liveOwner(file: string): LockOwner | null {
    const held = readOrNull(file);
    const owner = held === null ? null : parse(held);
    return owner !== null && alive(owner, file) ? owner : null;
  }

  /** Removes the file if it is still ours. */
  release(): void {
    if (readOrNull(this.file) === this.content) fs.rmSync(this.file, { force: true });
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}
