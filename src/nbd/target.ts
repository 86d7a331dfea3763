// Where an NBD server listens, and the URI that names it in messages (as nbdinfo and nbdcopy spell it).

export type NbdTarget = { socketPath: string } | { host: string; port: number };

export function describeTarget(target: NbdTarget, exportName: string): string {
  const name = encodeURIComponent(exportName);
  return 'socketPath' in target ? `nbd+unix:///${name}?socket=${target.socketPath}` : `nbd://${target.host}:${target.port}/${name}`;
}

/** The attributes of a backup job's `<server>` that say where its NBD server listens (libvirt's names). */
export interface BackupServerAddress {
  /** 'tcp' when absent */
  transport: string | null;
  socket: string | null;
  name: string | null;
  port: number | null;
}

/**
 * Where the NBD server of a pull job's `<server>` listens. The one rule for
 * QEMU's listen address (qemu/backup-plan.ts), the driver's probe at the
 * pull's end and backup-pull's client, so that they cannot disagree (a TCP
 * server without a name listens on 'localhost'). null: another transport
 * (fd), a unix server without a socket, or no port yet.
 */
export function backupServerTarget(s: BackupServerAddress): NbdTarget | null {
  const transport = s.transport ?? 'tcp';
  if (transport === 'unix') return s.socket ? { socketPath: s.socket } : null;
  if (transport !== 'tcp' || s.port === null || !Number.isInteger(s.port) || s.port <= 0) return null;
  return { host: s.name ?? 'localhost', port: s.port };
}
