// Whether a process still runs: the owner of a leftover job folder or of a
// detached serve process. EPERM means it exists under another user.

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
