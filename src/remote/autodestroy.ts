// Domains started with START_AUTODESTROY die with the client connection that
// started them (libvirt's connection close callbacks, virCloseCallbacks).
// A server records each such start against the connection and hands the
// connection in when it closes; this class destroys what is still running
// as the instance that connection started. Used by virtbackd's own socket
// (remote/server.ts) and meant for any other server of a Driver.

import type { Driver } from '../api/driver.js';
import { isVirError } from '../errors.js';
import { DomainCreateFlags, DomainState } from '../flags.js';
import { errField, silentLogger, type Logger } from '../log.js';

/** The connection, as the server knows it: any object, compared by identity. */
export type ConnectionKey = object;

export class AutoDestroyTracker {
  /** connection → uuid → domain id (QEMU pid) of the instance it started */
  private readonly started = new Map<ConnectionKey, Map<string, number>>();
  /** connections already closed: a start that finishes after its connection closed is destroyed at once */
  private readonly gone = new WeakSet<ConnectionKey>();
  private readonly pending = new Set<Promise<void>>();

  constructor(
    private readonly driver: Pick<Driver, 'domainGetInfo' | 'domainDestroy'>,
    private readonly log: Logger = silentLogger,
  ) {}

  /** Call after a domainCreate on `conn` succeeded; does nothing unless `flags` has START_AUTODESTROY. */
  async domainStarted(conn: ConnectionKey, uuid: string, flags: number): Promise<void> {
    if ((flags & DomainCreateFlags.AUTODESTROY) === 0) return;
    const { id } = await this.driver.domainGetInfo(uuid);
    const doms = this.started.get(conn) ?? new Map<string, number>();
    doms.set(uuid, id);
    this.started.set(conn, doms);
    if (this.gone.has(conn)) await this.connectionClosed(conn);
  }

  /**
   * Call when `conn` closed (any number of times): destroys the domains it
   * started with AUTODESTROY that still run as those instances. Failures are
   * logged; the promise never rejects.
   */
  connectionClosed(conn: ConnectionKey): Promise<void> {
    this.gone.add(conn);
    const doms = this.started.get(conn);
    if (doms === undefined) return Promise.resolve();
    this.started.delete(conn);
    const work = (async () => {
      for (const [uuid, id] of doms) await this.destroyIfSame(uuid, id);
    })();
    this.pending.add(work);
    return work.finally(() => this.pending.delete(work));
  }

  /** Resolves once every destroy started by a closed connection has finished (a server awaits it on close). */
  async idle(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  private async destroyIfSame(uuid: string, id: number): Promise<void> {
    try {
      const info = await this.driver.domainGetInfo(uuid);
      // stopped meanwhile, or started again by someone else: not ours to destroy
      if (info.state === DomainState.SHUTOFF || info.id !== id) return;
      await this.driver.domainDestroy(uuid, 0);
      this.log.info({ domain: info.name, uuid }, 'autodestroy domain destroyed: its connection closed');
    } catch (e) {
      if (isVirError(e, 'NO_DOMAIN') || isVirError(e, 'OPERATION_INVALID')) return; // gone or already shut off
      this.log.error({ ...errField(e), uuid }, 'cannot destroy an autodestroy domain');
    }
  }
}
