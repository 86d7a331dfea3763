// Serves a Driver over libvirt's remote protocol, so unmodified virsh and
// libvirt bindings drive virtbackd (docs/libvirt.md). Like remote/server.ts:
// handed a Driver, it wraps it in CheckedDriver (read-only for the read-only
// socket), shares the client limits of remote/client-limits.ts, and fans the
// driver's events out to the connections that registered for them. The
// connection state machine is libvirt/server-connection.ts, the procedures
// libvirt/server-handlers.ts.

import * as fs from 'node:fs';
import * as os from 'node:os';
import type * as net from 'node:net';
import type { Driver, DriverEvent } from '../api/driver.js';
import { CheckedDriver } from '../api/checked-driver.js';
import { errField, silentLogger, type Logger } from '../log.js';
import { AutoDestroyTracker } from '../remote/autodestroy.js';
import { ClientPool, type ClientLimitOptions } from '../remote/client-limits.js';
import { listenUnixSocket, removeSocketFiles } from '../remote/unix-socket.js';
import { MAX_MESSAGE_BYTES } from './packet.js';
import type { WireDomain } from './procedures.js';
import { LibvirtConnection, type ConnectionServer, type KeepaliveOptions } from './server-connection.js';
import { toWireEvent } from './server-events.js';
import type { HostFacts } from './server-handlers.js';

/** /dev/kvm opens read-write: what QEMU needs for -accel kvm. */
function kvmUsable(): boolean {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
import { uuidToBytes } from './semantics.js';

/**
 * The largest message a read-only client may send. Nothing it may call
 * carries more than a name, a few flags or a list of mount points (define,
 * checkpoint and backup XML are all refused there), and anyone on the host
 * may connect to that socket: 1 MiB bounds what each such client can make
 * the daemon buffer, far below libvirt's 32 MiB.
 */
export const MAX_READ_ONLY_MESSAGE_BYTES = 1024 * 1024 + 4;

export interface LibvirtServerOptions extends ClientLimitOptions {
  /** daemon log (default: silent); connection lines carry `client` and `protocol: 'libvirt'` */
  logger?: Logger;
  /** QEMU's version for CONNECT_GET_VERSION (major·10⁶ + minor·10³ + micro; default 0 = unknown) */
  hypervisorVersion?: number;
  /** CONNECT_GET_HOSTNAME (default: the real host name, which tools compare with theirs) */
  hostname?: string;
  /** largest message from a read-write client (default libvirt's 32 MiB + 4) */
  maxMessage?: number;
  /** largest message from a read-only client (default MAX_READ_ONLY_MESSAGE_BYTES) */
  maxReadOnlyMessage?: number;
  /** keepalive towards clients that negotiated it (default libvirtd's: every 5 s idle, dropped after 6 unanswered) */
  keepalive?: Partial<KeepaliveOptions>;
}

export class LibvirtServer implements ConnectionServer {
  readonly log: Logger;
  readonly pool: ClientPool<LibvirtConnection>;
  readonly host: HostFacts;
  readonly keepalive: KeepaliveOptions;
  readonly maxMessage: { rw: number; ro: number };
  private readonly rw: CheckedDriver;
  private readonly ro: CheckedDriver;
  /** START_AUTODESTROY domains, by the connection that started them */
  private readonly autoDestroy: AutoDestroyTracker;
  private readonly listeners: net.Server[] = [];
  private readonly socketPaths: string[] = [];
  private unsubscribe: (() => void) | null;
  /** events go out in the order the driver published them, each after its domain id is known */
  private eventChain: Promise<void> = Promise.resolve();
  private nextClientId = 1;
  private callbackIds = 0;

  constructor(
    private readonly inner: Driver,
    opts: LibvirtServerOptions = {},
  ) {
    this.log = opts.logger ?? silentLogger;
    this.pool = new ClientPool(opts);
    this.host = { hostname: opts.hostname ?? os.hostname(), hypervisorVersion: opts.hypervisorVersion ?? 0, kvm: kvmUsable() };
    this.keepalive = { intervalMs: opts.keepalive?.intervalMs ?? 5000, count: opts.keepalive?.count ?? 6 };
    const rw = opts.maxMessage ?? MAX_MESSAGE_BYTES;
    this.maxMessage = { rw, ro: Math.min(rw, opts.maxReadOnlyMessage ?? MAX_READ_ONLY_MESSAGE_BYTES) };
    this.rw = new CheckedDriver(inner, false);
    this.ro = new CheckedDriver(inner, true);
    this.autoDestroy = new AutoDestroyTracker(inner, this.log);
    this.unsubscribe = inner.subscribe((event) => this.publish(event));
  }

  get clientCount(): number {
    return this.pool.size;
  }

  /** Bytes held for all clients now (unread input, queued output). */
  get bufferedBytes(): number {
    return this.pool.bufferedBytes;
  }

  /** Listens on a unix socket with exactly `mode` (0600 read-write, 0666 read-only, as libvirtd's). */
  async listenUnix(path: string, opts: { readOnly: boolean; mode: number }): Promise<void> {
    const server = await listenUnixSocket(path, opts.mode, (socket) => this.accept(socket, opts.readOnly), this.log);
    this.listeners.push(server);
    this.socketPaths.push(path);
    this.log.info({ socket: path, readOnly: opts.readOnly, protocol: 'libvirt' }, 'listening');
  }

  private accept(socket: net.Socket, readOnly: boolean): void {
    if (this.pool.full) {
      this.log.warn({ readOnly, clients: this.pool.size, protocol: 'libvirt' }, 'connection refused: too many clients');
      socket.destroy();
      return;
    }
    const id = this.nextClientId++;
    this.pool.add(new LibvirtConnection(this, socket, readOnly, id));
    this.log.debug({ client: id, readOnly, protocol: 'libvirt' }, 'client connected');
  }

  // ---- ConnectionServer ----

  driver(readOnly: boolean): CheckedDriver {
    return readOnly ? this.ro : this.rw;
  }

  nextCallbackId(): number {
    return this.callbackIds++;
  }

  domainStarted(conn: LibvirtConnection, uuid: string, flags: number): Promise<void> {
    return this.autoDestroy.domainStarted(conn, uuid, flags);
  }

  forget(conn: LibvirtConnection): void {
    this.pool.delete(conn);
    void this.autoDestroy.connectionClosed(conn);
  }

  // ---- events ----

  private publish(event: DriverEvent): void {
    const wire = toWireEvent(event);
    // nobody registered for it: no id lookup, no encoding
    if (!this.pool.all().some((c) => c.wantsEvent(wire))) return;
    // Chained: events keep their order although each waits for its domain's id.
    // Resolving it also lets the reply to the call that caused the event go out first.
    this.eventChain = this.eventChain
      .then(async () => {
        const dom = await this.eventDomain(event);
        for (const c of this.pool.all()) c.deliver(wire, dom);
      })
      .catch((e: unknown) => this.log.warn(errField(e), 'event not delivered'));
  }

  /** The event's domain with its id now; −1 once it stopped or is gone. */
  private async eventDomain(event: DriverEvent): Promise<WireDomain> {
    const { name, uuid } = event.domain;
    let id = -1;
    const gone = event.type === 'lifecycle' && (event.event === 'stopped' || event.event === 'undefined');
    if (!gone) {
      try {
        id = (await this.inner.domainGetInfo(uuid)).id;
      } catch {
        // undefined meanwhile: no id
      }
    }
    return { name, uuid: uuidToBytes(uuid), id };
  }

  /** Stops listening, removes the socket files and disconnects every client. The driver stays open. */
  async close(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    const closing = this.listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    for (const c of this.pool.all()) c.disconnect();
    this.pool.clear();
    await Promise.all(closing);
    await this.eventChain;
    await this.autoDestroy.idle();
    this.listeners.length = 0;
    removeSocketFiles(this.socketPaths);
  }
}
