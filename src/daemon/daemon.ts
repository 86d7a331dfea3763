// virtbackd's life cycle, without the command line: take the locks, open the
// driver, listen on the read-write and read-only sockets (and TLS if asked),
// and on stop undo exactly that. Stopping closes the driver (which detaches
// from QEMU) but never stops domains or jobs.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Driver } from '../api/driver.js';
import { RemoteServer, type ServerOptions } from '../remote/server.js';
import { PidLock } from './lock.js';
import type { Logger } from './logger.js';
import { LOCK_FILE_NAME, PID_FILE_NAME, RO_SOCKET_NAME, SOCKET_NAME } from './paths.js';

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
  server?: Omit<ServerOptions, 'logger'>;
}

export class Daemon {
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly opts: DaemonOptions,
    readonly driver: Driver,
    readonly server: RemoteServer,
    private readonly locks: PidLock[],
  ) {}

  get socketPath(): string {
    return path.join(this.opts.runDir, SOCKET_NAME);
  }

  get roSocketPath(): string {
    return path.join(this.opts.runDir, RO_SOCKET_NAME);
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const log = opts.logger;
    fs.mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    fs.mkdirSync(opts.runDir, { recursive: true, mode: 0o755 });
    const undo: Array<() => Promise<void> | void> = [];
    try {
      // The state lock keeps two daemons off one state; the pid file, taken
      // the same way, keeps two daemons off one set of sockets.
      const stateLock = PidLock.acquire(path.join(opts.stateDir, LOCK_FILE_NAME), `state directory ${opts.stateDir}`);
      undo.push(() => stateLock.release());
      const pidFile = PidLock.acquire(path.join(opts.runDir, PID_FILE_NAME), `run directory ${opts.runDir}`);
      undo.push(() => pidFile.release());

      log.info(`opening driver (state ${opts.stateDir}, run ${opts.runDir})`);
      const driver = await opts.openDriver({ stateDir: opts.stateDir, runDir: opts.runDir });
      undo.push(() => driver.close());

      const server = new RemoteServer(driver, { ...opts.server, logger: log });
      undo.push(() => server.close());
      await server.listenUnix(path.join(opts.runDir, SOCKET_NAME), { readOnly: false, mode: 0o600 });
      await server.listenUnix(path.join(opts.runDir, RO_SOCKET_NAME), { readOnly: true, mode: 0o666 });
      if (opts.tls) {
        await server.listenTls({
          host: opts.tls.host,
          port: opts.tls.port,
          cert: fs.readFileSync(opts.tls.certFile),
          key: fs.readFileSync(opts.tls.keyFile),
          ca: fs.readFileSync(opts.tls.caFile),
        });
      }
      log.info(`virtbackd ready (driver ${driver.uri})`);
      return new Daemon(opts, driver, server, [pidFile, stateLock]);
    } catch (e) {
      for (const u of undo.reverse()) {
        try {
          await u();
        } catch (inner) {
          log.warn(`cleanup after failed start: ${(inner as Error).message}`);
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
      await this.server.close();
      try {
        await this.driver.close();
      } catch (e) {
        log.error(`closing the driver: ${(e as Error).message}`);
      }
      for (const l of this.locks) l.release();
      log.info('stopped');
    })();
    return this.stopping;
  }
}
