// Whether a pull's frozen view still holds, asked when the pull ends. QEMU
// says nothing when a copy-before-write filter with break-snapshot gives up
// (its scratch could not keep a block the guest rewrote: full, or slower
// than cbw-timeout); from then on every read of the snapshot fails. So the
// driver reads one block of each export through QEMU's own NBD server: a
// failure there means the client's copy cannot be complete, and the job
// ends failed instead of reporting a success nobody had. Over TLS it
// connects as a client would, with the credentials in the server's own folder.

import { NbdClient } from '../nbd/client.js';
import { backupServerTarget, type NbdTarget } from '../nbd/target.js';
import { loadTlsDir, type NbdTlsOptions } from '../nbd/tls.js';
import { errField, type Logger } from '../log.js';
import { parseBackupXML } from '../xml/backup.js';
import type { BackupJobRecord } from './backup-job.js';
import { CBW_TIMEOUT_S } from './backup-plan.js';
import type { BackupTlsConfig } from './backup-prepare.js';

/** How long the probe of one export may take (a stuck server must not hold the job's end). */
const PROBE_TIMEOUT_MS = 5_000;

export interface ProbeOptions {
  /** the driver's backup TLS options: the folder QEMU's server reads is where the probe's credentials are */
  tls: BackupTlsConfig;
  log: Logger;
}

interface Probe {
  target: NbdTarget;
  tls: NbdTlsOptions | null;
  exports: Map<string, string>;
}

/**
 * The client credentials for a pull over TLS, from the server's own folder
 * (libvirt's /etc/pki/qemu holds the server and client pairs side by side):
 * the client pair when there is one, the CA alone when the server verifies
 * no peer. A string: why the view cannot be checked.
 */
async function probeTls(tls: BackupTlsConfig): Promise<NbdTlsOptions | string> {
  if (tls.dir === null) return 'no backup TLS folder is configured (backupTlsX509CertDir)';
  let creds: NbdTlsOptions;
  try {
    // no servername: the name checked in the server certificate is the job's <server name>, as for backup-pull
    creds = await loadTlsDir(tls.dir);
  } catch (e) {
    return (e as Error).message;
  }
  if (creds.cert !== undefined || !tls.verify) return creds;
  return `the server verifies client certificates (backupTlsX509Verify) and the TLS folder '${tls.dir}' has no client-cert.pem and client-key.pem`;
}

/** The NBD server of the job's XML and how to reach it; null when the driver cannot read it back (warned). */
async function probeTarget(rec: BackupJobRecord, opts: ProbeOptions): Promise<Probe | null> {
  const def = parseBackupXML(rec.xml, { internal: true });
  const target = def.server === null ? null : backupServerTarget(def.server);
  if (target === null) return null;
  let tls: NbdTlsOptions | null = null;
  if (def.server?.tls === true) {
    const creds = await probeTls(opts.tls);
    if (typeof creds === 'string') {
      opts.log.warn({ jobId: rec.id }, `the frozen view of TLS pull job ${rec.id} cannot be checked at its end: ${creds}`);
      return null;
    }
    tls = creds;
  }
  return { target, tls, exports: new Map(def.disks.map((d) => [d.name, d.exportname ?? d.name])) };
}

/** Read the first block; true when the server answered with an error (a failed connection is no verdict: warned). */
async function readFails(probe: Probe, exportName: string, rec: BackupJobRecord, log: Logger): Promise<boolean> {
  let client: NbdClient;
  try {
    client = await NbdClient.connect(probe.target, { exportName, handshakeTimeoutMs: PROBE_TIMEOUT_MS, ...(probe.tls ? { tls: probe.tls } : {}) });
  } catch (e) {
    log.warn({ jobId: rec.id, export: exportName, ...errField(e) }, `the frozen view of pull job ${rec.id} could not be checked at its end`);
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
export async function failBrokenSnapshots(rec: BackupJobRecord, opts: ProbeOptions): Promise<void> {
  if (rec.mode !== 'pull' || !rec.disks.some((d) => d.snapshot && d.state === 'running')) return;
  const probe = await probeTarget(rec, opts);
  if (probe === null) return;
  for (const d of rec.disks) {
    if (!d.snapshot || d.state !== 'running') continue;
    if (!(await readFails(probe, probe.exports.get(d.target) ?? d.target, rec, opts.log))) continue;
    d.state = 'failed';
    d.error = `the backup's view of disk '${d.target}' broke while the job ran: its scratch '${d.path}' could not keep ` +
      `a block the guest rewrote (full, or slower than ${CBW_TIMEOUT_S} s), so reads of its export failed; the guest's writes went through`;
  }
}
