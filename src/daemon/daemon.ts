// virtbackd's life cycle, without the command line: take the locks, open the
// driver, listen on the read-write and read-only sockets of our protocol and
// of libvirt's (and TLS if asked), and on stop undo exactly that. Stopping closes the driver (which detaches
// from QEMU) but never stops domains or jobs.
//
// Restart survival: the driver's open() reconnects domains and recovers
// their jobs; events it published meanwhile (a push that finished while no
// daemon ran) had no listener, so they are kept in a startup backlog and
// replayed once to every client that subscribes afterwards (docs/protocol.md).
//
// Autostart: once per boot, as libvirtd, the domains marked autostart that are
// shut off are started before the daemon reports ready.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Driver, DriverEvent } from '../api/driver.js';
import { ListDomainsFlags } from '../flags.js';
import { errField, type Logger } from '../log.js';
import { LibvirtServer, type LibvirtServerOptions } from '../libvirt/server.js';
import { RemoteServer, type ServerOptions } from '../remote/server.js';
import { EventBacklog, drainRecoveredEvents, type BacklogOptions } from './backlog.js';
import { startLoadReport } from './load-report.js';
import { PidLock } from './lock.js';
import {
  LIBVIRT_RO_SOCKET_NAME,
  LIBVIRT_SOCKET_NAME,
  LOCK_FILE_NAME,
  PID_FILE_NAME,
  RO_SOCKET_NAME,
  SOCKET_NAME,
  prepareRunDir,
} from './paths.js';

export interface DaemonTlsOptions {
  host: string;
  port: number;
  certFile: string;
  keyFile: string;
  caFile: string;
}

export interface DaemonOptions {
  stateDir: string;
  runDir: string;
  logger: Logger;
  openDriver: (dirs: { stateDir: string; runDir: string }) => Promise<Driver>;
  tls?: DaemonTlsOptions;
  server?: Omit<ServerOptions, 'logger' | 'backlog'>;
  /** the libvirt sockets' server (QEMU's version, limits); the same logger */
  libvirt?: Omit<LibvirtServerOptions, 'logger'>;
  /** bounds of the startup backlog (default 10 minutes, 1000 events) */
  backlog?: BacklogOptions;
}

export class Daemon {
  private stopping: Promise<void> | null = null;
  private readonly stopLoadReport: () => void;

  private constructor(
    readonly opts: DaemonOptions,
    readonly driver: Driver,
    readonly server: RemoteServer,
    readonly libvirtServer: LibvirtServer,
    private readonly locks: PidLock[],
    /** events recovered at startup, replayed to each client that subscribes */
    readonly backlog: EventBacklog,
  ) {
    this.stopLoadReport = startLoadReport(opts.logger);
  }

  get socketPath(): string {
    return path.join(this.opts.runDir, SOCKET_NAME);
  }

  get roSocketPath(): string {
    return path.join(this.opts.runDir, RO_SOCKET_NAME);
  }

  get libvirtSocketPath(): string {
    return path.join(this.opts.runDir, LIBVIRT_SOCKET_NAME);
  }

  get libvirtRoSocketPath(): string {
    return path.join(this.opts.runDir, LIBVIRT_RO_SOCKET_NAME);
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const log = opts.logger;
    fs.mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    prepareRunDir(opts.runDir);
    const undo: Array<() => Promise<void> | void> = [];
    try {
      // The state lock keeps two daemons off one state; the pid file, taken
      // the same way, keeps two daemons off one set of sockets.
      const stateLock = PidLock.acquire(path.join(opts.stateDir, LOCK_FILE_NAME), `state directory ${opts.stateDir}`);
      undo.push(() => stateLock.release());
      const pidFile = PidLock.acquire(path.join(opts.runDir, PID_FILE_NAME), `run directory ${opts.runDir}`);
      undo.push(() => pidFile.release());

      log.info({ stateDir: opts.stateDir, runDir: opts.runDir }, 'opening driver');
      const driver = await opts.openDriver({ stateDir: opts.stateDir, runDir: opts.runDir });
      undo.push(() => driver.close());
      // Synchronously after open(): nothing can have been published in between.
      const backlog = new EventBacklog(opts.backlog);
      const recovered = drainRecoveredEvents(driver);
      backlog.add(recovered);
      for (const ev of recovered) log.info(eventFields(ev), `recovered at startup: ${describeEvent(ev)}`);

      const server = new RemoteServer(driver, { ...opts.server, logger: log, backlog: () => backlog.current() });
      undo.push(() => server.close());
      await server.listenUnix(path.join(opts.runDir, SOCKET_NAME), { readOnly: false, mode: 0o600 });
      await server.listenUnix(path.join(opts.runDir, RO_SOCKET_NAME), { readOnly: true, mode: 0o666 });
      const libvirtServer = new LibvirtServer(driver, { ...opts.libvirt, logger: log });
      undo.push(() => libvirtServer.close());
      await libvirtServer.listenUnix(path.join(opts.runDir, LIBVIRT_SOCKET_NAME), { readOnly: false, mode: 0o600 });
      await libvirtServer.listenUnix(path.join(opts.runDir, LIBVIRT_RO_SOCKET_NAME), { readOnly: true, mode: 0o666 });
      if (opts.tls) {
        await server.listenTls({
          host: opts.tls.host,
          port: opts.tls.port,
          cert: fs.readFileSync(opts.tls.certFile),
          key: fs.readFileSync(opts.tls.keyFile),
          ca: fs.readFileSync(opts.tls.caFile),
        });
      }
      await autostartDomains(driver, opts.runDir, log);
      log.info({ driver: driver.uri, socket: path.join(opts.runDir, SOCKET_NAME), ...(opts.tls ? { tcp: `${opts.tls.host}:${opts.tls.port}` } : {}) }, 'virtbackd ready');
      return new Daemon(opts, driver, server, libvirtServer, [pidFile, stateLock], backlog);
    } catch (e) {
      for (const u of undo.reverse()) {
        try {
          await u();
        } catch (inner) {
          log.warn(errField(inner), 'cleanup after failed start');
        }
      }
      throw e;
    }
  }

  /** Closes sockets and clients, then the driver, then releases the locks. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const log = this.opts.logger;
      log.info('shutting down');
      await this.libvirtServer.close();
      await this.server.close();
      try {
        await this.driver.close();
      } catch (e) {
        log.error(errField(e), 'closing the driver failed');
      }
      for (const l of this.locks) l.release();
      this.stopLoadReport();
      log.info('stopped');
    })();
    return this.stopping;
  }
}

/**
 * The mark of a run directory whose daemon has autostarted domains since the
 * machine booted (the run directory does not survive a reboot), like
 * libvirt's /run/libvirt/qemu/autostarted (virDriverShouldAutostart).
 */
export const AUTOSTARTED_FILE_NAME = 'autostarted';

/**
 * Start every persistent, shut-off domain marked autostart, once per boot:
 * a daemon restarted later leaves alone what its user shut off meanwhile.
 * A domain that fails to start is logged; the daemon starts anyway.
 */
async function autostartDomains(driver: Driver, runDir: string, log: Logger): Promise<void> {
  try {
    fs.writeFileSync(path.join(runDir, AUTOSTARTED_FILE_NAME), '', { flag: 'wx', mode: 0o600 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') log.info('domains were autostarted since boot already: not again');
    else log.error(errField(e), 'cannot mark the autostart as done: skipping autostart');
    return;
  }
  let candidates: { name: string; uuid: string }[];
  try {
    candidates = await driver.listAllDomains(ListDomainsFlags.PERSISTENT | ListDomainsFlags.SHUTOFF);
  } catch (e) {
    log.error(errField(e), 'cannot list domains to autostart');
    return;
  }
  for (const dom of candidates) {
    try {
      if (!(await driver.domainGetAutostart(dom.uuid))) continue;
      await driver.domainCreate(dom.uuid, 0);
      log.info({ domain: dom.name, uuid: dom.uuid }, 'domain autostarted');
    } catch (e) {
      log.error({ ...errField(e), domain: dom.name, uuid: dom.uuid }, 'cannot autostart domain');
    }
  }
}

/** The event as log fields: what, which domain, which job or disk. */
function eventFields(ev: DriverEvent): Record<string, unknown> {
  const fields: Record<string, unknown> = { event: ev.type, domain: ev.domain.name, uuid: ev.domain.uuid };
  if (ev.type === 'job-completed') Object.assign(fields, { job: ev.jobId, success: ev.stats.success });
  if (ev.type === 'block-job') Object.assign(fields, { disk: ev.disk, status: ev.status });
  if (ev.type === 'io-error') Object.assign(fields, { disk: ev.disk, action: ev.action, reason: ev.reason });
  return fields;
}

function describeEvent(ev: DriverEvent): string {
  switch (ev.type) {
    case 'job-completed':
      return `job-completed of backup job ${ev.jobId} of domain '${ev.domain.name}' (${ev.stats.success ? 'success' : `failed: ${ev.stats.errmsg ?? 'unknown'}`})`;
    case 'block-job':
      return `block-job of disk '${ev.disk}' of domain '${ev.domain.name}' (status ${ev.status})`;
    case 'lifecycle':
      return `lifecycle ${ev.event}/${ev.detail} of domain '${ev.domain.name}'`;
    case 'reboot':
      return `reboot of domain '${ev.domain.name}'`;
    case 'io-error':
      return `io-error of disk '${ev.disk}' of domain '${ev.domain.name}' (action ${ev.action}${ev.reason ? `, ${ev.reason}` : ''})`;
  }
}
