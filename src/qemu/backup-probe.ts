// Whether a pull's frozen view still holds, asked when the pull ends. QEMU
// says nothing when a copy-before-write filter with break-snapshot gives up
// (its scratch could not keep a block the guest rewrote: full, or slower
// than cbw-timeout); from then on every read of the snapshot fails. So the
// driver reads one block of each export through QEMU's own NBD server: a
// failure there means the client's copy cannot be complete, and the job
// ends failed instead of reporting a success nobody had.

import { NbdClient } from '../nbd/client.js';
import type { NbdTarget } from '../nbd/target.js';
import { parseBackupXML } from '../xml/backup.js';
import type { BackupJobRecord } from './backup-job.js';
import { CBW_TIMEOUT_S } from './backup-plan.js';

/** How long the probe of one export may take (a stuck server must not hold the job's end). */
const PROBE_TIMEOUT_MS = 5_000;

/** The NBD server of the job's XML; null when the driver cannot read it back (TLS: the driver holds no client certificate). */
function probeTarget(rec: BackupJobRecord): { target: NbdTarget; exports: Map<string, string> } | null {
  const def = parseBackupXML(rec.xml, { internal: true });
  const s = def.server;
  if (s === null || s.tls === true) return null;
  const target: NbdTarget | null = s.transport === 'unix' && s.socket !== null
    ? { socketPath: s.socket }
    : s.port !== null ? { host: s.name ?? 'localhost', port: s.port } : null;
  if (target === null) return null;
  return { target, exports: new Map(def.disks.map((d) => [d.name, d.exportname ?? d.name])) };
}

/** Read the first block; true when the server answered with an error (the connection itself is not judged). */
async function readFails(target: NbdTarget, exportName: string): Promise<boolean> {
  let client: NbdClient;
  try {
    client = await NbdClient.connect(target, { exportName, handshakeTimeoutMs: PROBE_TIMEOUT_MS });
  } catch {
    return false;
  }
  try {
    // no answer in time is no verdict
    const late = new Promise<void>((resolve) => setTimeout(resolve, PROBE_TIMEOUT_MS).unref());
    await Promise.race([client.read(0, 512), late]);
    return false;
  } catch {
    return true;
  } finally {
    await client.disconnect(1000).catch(() => {});
  }
}

/** Mark failed the disks of an ending pull whose frozen view broke, with the reason. */
export async function failBrokenSnapshots(rec: BackupJobRecord): Promise<void> {
  if (rec.mode !== 'pull' || !rec.disks.some((d) => d.snapshot && d.state === 'running')) return;
  const probe = probeTarget(rec);
  if (probe === null) return;
  for (const d of rec.disks) {
    if (!d.snapshot || d.state !== 'running') continue;
    if (!(await readFails(probe.target, probe.exports.get(d.target) ?? d.target))) continue;
    d.state = 'failed';
    d.error = `the backup's view of disk '${d.target}' broke while the job ran: its scratch '${d.path}' could not keep ` +
      `a block the guest rewrote (full, or slower than ${CBW_TIMEOUT_S} s), so reads of its export failed; the guest's writes went through`;
  }
}
