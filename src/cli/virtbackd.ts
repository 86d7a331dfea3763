#!/usr/bin/env node
// virtbackd: serves the QEMU driver on <run-dir>/virtbackd.sock (0600) and
// <run-dir>/virtbackd-ro.sock (0666), and over libvirt's protocol on
// <run-dir>/libvirt-sock (0600) and <run-dir>/libvirt-sock-ro (0666). `--daemon` detaches once the sockets
// listen: the parent starts the real daemon as a child with a readiness pipe
// on fd 3 and exits 0 when the child writes "ready", 1 with its error otherwise.

import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option, InvalidArgumentError } from 'commander';
import type { Driver } from '../api/driver.js';
import { TestDriver } from '../api/test-driver.js';
import { Daemon, type DaemonTlsOptions } from '../daemon/daemon.js';
import { LOG_LEVELS, isLogLevel, openDaemonLogger, type DaemonLogger, type LogLevel } from '../daemon/logger.js';
import { daemonDirs, prepareRunDir } from '../daemon/paths.js';
import { virErr } from '../errors.js';
import { errField, type Logger } from '../log.js';
import type { WebConsole } from '../web/server.js';
import { addWebOptions, checkWebOptions, rotateWebTokens, startWebConsole, type WebOptions } from './virtbackd-web.js';

interface Options extends WebOptions {
  daemon?: boolean;
  stateDir?: string;
  runDir?: string;
  logLevel: string;
  logFile?: string;
  listenTcp?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  backupTlsDir?: string;
  backupTlsVerify: 'yes' | 'no';
  backupSpeedLimit?: number;
  backupSpaceCheck: 'yes' | 'no';
  driver: string;
  readyFd?: string;
}

async function openDriver(name: string, dirs: { stateDir: string; runDir: string }, o: Options, log: Logger): Promise<Driver> {
  if (name === 'test') return TestDriver.open({ uri: 'test:///default' });
  if (name !== 'qemu') throw virErr('INVALID_ARG', 'NONE', `unknown driver '${name}' (known: qemu, test)`);
  // Loaded lazily: `--driver test` must not depend on the QEMU driver's module graph.
  const { QemuDriver } = await import('../qemu/driver.js');
  const { findPushBackup, writePushManifests } = await import('../repository/push-manifests.js');
  return QemuDriver.open({
    log,
    afterPushComplete: writePushManifests,
    locatePreviousBackup: findPushBackup,
    ...dirs,
    ...(o.backupTlsDir ? { backupTlsX509CertDir: path.resolve(o.backupTlsDir) } : {}),
    backupTlsX509Verify: o.backupTlsVerify === 'yes',
    ...(o.backupSpeedLimit ? { backupSpeedLimit: o.backupSpeedLimit } : {}),
    backupSpaceCheck: o.backupSpaceCheck === 'yes',
  });
}

function parseTls(o: Options): DaemonTlsOptions | undefined {
  if (o.listenTcp === undefined) {
    if (o.tlsCert || o.tlsKey || o.tlsCa) throw virErr('INVALID_ARG', 'NONE', '--tls-cert/--tls-key/--tls-ca need --listen-tcp');
    return undefined;
  }
  const m = /^(.*):(\d+)$/.exec(o.listenTcp);
  if (!m || Number(m[2]) > 65535) throw virErr('INVALID_ARG', 'NONE', `--listen-tcp wants HOST:PORT, not '${o.listenTcp}'`);
  if (!o.tlsCert || !o.tlsKey || !o.tlsCa) {
    throw virErr('INVALID_ARG', 'NONE', '--listen-tcp needs --tls-cert, --tls-key and --tls-ca: plain TCP is not offered');
  }
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]), certFile: o.tlsCert, keyFile: o.tlsKey, caFile: o.tlsCa };
}

/** QEMU's version as libvirt reports it (major·10⁶ + minor·10³ + micro) from `--version`'s first line; 0 when unknown. */
function parseQemuVersion(text: string): number {
  const m = /version (\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? Number(m[1]) * 1_000_000 + Number(m[2]) * 1_000 + Number(m[3] ?? 0) : 0;
}

/** Asked once at startup, for CONNECT_GET_VERSION on the libvirt socket. */
function qemuVersion(log: Logger): Promise<number> {
  return new Promise((resolve) => {
    execFile('qemu-system-x86_64', ['--version'], { timeout: 10_000 }, (err, stdout) => {
      if (err) log.warn(errField(err), 'cannot ask QEMU its version: the libvirt socket reports 0');
      resolve(err ? 0 : parseQemuVersion(stdout));
    });
  });
}

/** Parent side of --daemon: start the child, wait for its readiness line. */
async function detach(argv: string[], o: Options, dirs: { stateDir: string; runDir: string }): Promise<number> {
  const args = argv.filter((a) => a !== '--daemon');
  args.push('--state-dir', dirs.stateDir, '--run-dir', dirs.runDir, '--ready-fd', '3');
  if (o.logFile === undefined) args.push('--log-file', path.join(dirs.runDir, 'virtbackd.log'));
  prepareRunDir(dirs.runDir);
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...args], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let text = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (d: string) => (text += d));
  const code = await new Promise<number | null>((resolve) => {
    pipe.on('end', () => resolve(null));
    child.on('exit', (c) => resolve(c ?? 1));
  });
  if (text.startsWith('ready')) {
    child.unref();
    return 0;
  }
  const msg = text.replace(/^error: /, '').trim() || `daemon exited with status ${code ?? 'unknown'} before it was ready`;
  process.stderr.write(`virtbackd: ${msg}\n`);
  return 1;
}

function commandLine(): Command {
  return addWebOptions(new Command('virtbackd'))
    .description('virtback daemon: checkpoints and incremental backups for QEMU VMs')
    .option('--daemon', 'detach once the sockets are listening')
    .option('--state-dir <dir>', 'state directory (env VIRTBACK_STATE_DIR)')
    .option('--run-dir <dir>', 'directory of the sockets and pid file (env VIRTBACK_RUN_DIR)')
    .addOption(new Option('--log-level <level>', 'log level').choices([...LOG_LEVELS]).default('info'))
    .option('--log-file <file>', 'log JSON lines to this file (created 0600) instead of stderr')
    .option('--listen-tcp <host:port>', 'also listen on TCP with TLS (needs the three --tls options)')
    .option('--tls-cert <file>', 'server certificate (PEM)')
    .option('--tls-key <file>', 'server private key (PEM)')
    .option('--tls-ca <file>', 'CA certificate that signs accepted client certificates (PEM)')
    .addOption(new Option('--backup-tls-dir <dir>', "x509 directory (ca-cert.pem, server-cert.pem, server-key.pem; client-cert.pem, client-key.pem to check a pull's frozen view at its end) for pull backups with <server tls='yes'>")
      .env('VIRTBACK_BACKUP_TLS_DIR'))
    .addOption(new Option('--backup-tls-verify <yes|no>', 'NBD clients of TLS pull backups must present a certificate signed by the CA')
      .choices(['yes', 'no']).default('yes'))
    .addOption(new Option('--backup-speed-limit <bytes/s>', 'bandwidth limit of each push backup disk job (0: none)')
      .argParser((v) => {
        if (!/^\d+$/.test(v)) throw new InvalidArgumentError('a number of bytes per second');
        return Number(v);
      }))
    .addOption(new Option('--backup-space-check <yes|no>', "refuse a push backup whose targets may not fit on their filesystems (a full target fails the guest's writes)")
      .choices(['yes', 'no']).default('yes'))
    .addOption(new Option('--driver <name>', 'driver to serve').choices(['qemu', 'test']).default(process.env.VIRTBACK_DRIVER ?? 'qemu').hideHelp())
    .addOption(new Option('--ready-fd <fd>').hideHelp())
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
}

async function main(argv: string[]): Promise<number> {
  const program = commandLine();
  try {
    program.parse(argv, { from: 'user' });
  } catch (e) {
    const code = (e as { exitCode?: number }).exitCode;
    return code === 0 ? 0 : 2;
  }
  const o = program.opts<Options>();
  const readyFd = o.readyFd === undefined ? null : Number(o.readyFd);
  const tell = (line: string): void => {
    if (readyFd === null) return;
    try {
      fs.writeSync(readyFd, `${line}\n`);
      fs.closeSync(readyFd);
    } catch {
      // parent gone: nothing to tell
    }
  };

  let tlsOpts: DaemonTlsOptions | undefined;
  let web: { host: string; port: number } | null;
  try {
    tlsOpts = parseTls(o);
    web = checkWebOptions(o);
  } catch (e) {
    process.stderr.write(`virtbackd: ${(e as Error).message}\n`);
    return 2;
  }
  if (o.backupTlsDir && !fs.statSync(o.backupTlsDir, { throwIfNoEntry: false })?.isDirectory()) {
    process.stderr.write(`virtbackd: backup TLS directory '${o.backupTlsDir}' is not a directory\n`);
    return 2;
  }
  const dirs = daemonDirs({ stateDir: o.stateDir, runDir: o.runDir });
  if (o.webRotateTokens) {
    rotateWebTokens(dirs.stateDir);
    return 0;
  }
  if (o.daemon) return detach(argv, o, dirs);

  if (!isLogLevel(o.logLevel)) return 2;
  return serve(o, o.logLevel, dirs, tlsOpts, web, tell);
}

/** The daemon in this process: open the log, start, tell the parent, serve until a signal. */
async function serve(
  o: Options,
  level: LogLevel,
  dirs: { stateDir: string; runDir: string },
  tls: DaemonTlsOptions | undefined,
  webAt: { host: string; port: number } | null,
  tell: (line: string) => void,
): Promise<number> {
  let logger: DaemonLogger;
  try {
    if (o.logFile) fs.mkdirSync(path.dirname(path.resolve(o.logFile)), { recursive: true });
    logger = openDaemonLogger({ level, file: o.logFile ?? null });
  } catch (e) {
    const msg = `cannot open log file: ${(e as Error).message}`;
    tell(`error: ${msg}`);
    process.stderr.write(`virtbackd: ${msg}\n`);
    return 1;
  }
  const signals = watchSignals(logger);
  let daemon: Daemon;
  let web: WebConsole | null = null;
  try {
    const hypervisorVersion = await qemuVersion(logger);
    daemon = await Daemon.start({
      ...dirs,
      logger,
      openDriver: (d) => openDriver(o.driver, d, o, logger),
      tls,
      libvirt: { hypervisorVersion },
    });
    const d = daemon;
    if (webAt) {
      web = await startWebConsole(o, webAt, { stateDir: dirs.stateDir, driver: d.driver, clients: () => d.server.clientCount + d.libvirtServer.clientCount, log: logger })
        .catch(async (e: unknown) => {
          await d.stop();
          throw e;
        });
    }
  } catch (e) {
    const msg = (e as Error).message;
    logger.error(`cannot start: ${msg}`);
    tell(`error: ${msg}`);
    if (o.logFile) process.stderr.write(`virtbackd: ${msg}\n`);
    logger.close();
    return 1;
  }
  tell('ready');
  const code = await signals.until(daemon, web);
  logger.close();
  return code;
}

/**
 * SIGTERM/SIGINT stop the daemon (exit 0); a second one exits at once (1). SIGHUP is ignored.
 * Installed before the daemon starts: its sockets answer before start() resolves, and
 * a signal then must stop it cleanly, not kill it with the default action.
 */
function watchSignals(logger: Logger): { until(daemon: Daemon, web: WebConsole | null): Promise<number> } {
  let daemon: Daemon | null = null;
  let webConsole: WebConsole | null = null;
  let signalled = false;
  let resolve!: (code: number) => void;
  const done = new Promise<number>((r) => (resolve = r));
  const stop = (d: Daemon): void => {
    // the console first: its streams end cleanly before the driver goes
    (webConsole?.close() ?? Promise.resolve()).catch((e: unknown) => logger.warn(errField(e), 'closing the web console failed')).then(() => d.stop()).then(
      () => resolve(0),
      (e: unknown) => {
        logger.error(errField(e), 'shutdown failed');
        resolve(1);
      },
    );
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled) {
      logger.warn({ signal: sig }, `${sig} again: exiting without waiting`);
      resolve(1);
      return;
    }
    signalled = true;
    logger.info({ signal: sig }, `${sig} received`);
    if (daemon) stop(daemon);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', () => logger.info({ signal: 'SIGHUP' }, 'SIGHUP ignored'));
  return {
    until(d: Daemon, web: WebConsole | null): Promise<number> {
      daemon = d;
      webConsole = web;
      if (signalled) stop(d);
      return done;
    },
  };
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`virtbackd: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
