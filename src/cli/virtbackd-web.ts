// virtbackd's --web… options (docs/web-console.md): parsed here, the console
// itself is src/web/. Kept apart from virtbackd.ts so the daemon's own
// command line stays readable.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option, InvalidArgumentError, type Command } from 'commander';
import type { Driver } from '../api/driver.js';
import { virErr } from '../errors.js';
import type { Logger } from '../log.js';
import { TOOL_VERSION } from '../vmbackup/index.js';
import { rotateTokens } from '../web/auth.js';
import { isLoopback, WEB_DIR, WebConsole } from '../web/server.js';
import { virtbackCommand } from './commands/serve.js';

export interface WebOptions {
  web?: string;
  webCert?: string;
  webKey?: string;
  webInsecureHttp?: boolean;
  webRepo: string[];
  webSessionTtl?: number;
  webAssets?: string;
  webRotateTokens?: boolean;
}

export function addWebOptions(cmd: Command): Command {
  const seconds = (v: string): number => {
    if (!/^\d{1,9}$/.test(v) || Number(v) === 0) throw new InvalidArgumentError('a number of seconds above 0');
    return Number(v);
  };
  return cmd
    .option('--web <address:port>', 'serve the web console here (HTTPS; e.g. 127.0.0.1:8006)')
    .option('--web-cert <file>', "the console's certificate (PEM; default: a self-signed one in <state-dir>/web/)")
    .option('--web-key <file>', "the console's private key (PEM)")
    .option('--web-insecure-http', 'plain HTTP instead of HTTPS (loopback addresses only)')
    .option('--web-repo <dir>', 'a chunk repository the console shows and backs up into (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .addOption(new Option('--web-session-ttl <seconds>', 'idle expiry of a console session').argParser(seconds).default(1800))
    .option('--web-assets <dir>', "the console's built browser files (default: dist/webui of this installation)")
    .option('--web-rotate-tokens', 'write new console tokens into <state-dir>/web/, print them and exit');
}

/** The built browser files beside this installation: dist/webui from the sources or from the compiled tree. */
function defaultAssets(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const rel of ['../../dist/webui', '../../webui']) {
    const dir = path.resolve(here, rel);
    if (fs.existsSync(path.join(dir, 'index.html'))) return dir;
  }
  return null;
}

/** Checks that need no daemon; throws INVALID_ARG (exit 2). */
export function checkWebOptions(o: WebOptions): { host: string; port: number } | null {
  const dependent = o.webCert || o.webKey || o.webInsecureHttp || o.webRepo.length > 0 || o.webAssets;
  if (o.web === undefined) {
    if (dependent) throw virErr('INVALID_ARG', 'NONE', '--web-… options need --web ADDRESS:PORT');
    return null;
  }
  const m = /^(.*):(\d+)$/.exec(o.web);
  if (!m || Number(m[2]) > 65535 || m[1] === '') throw virErr('INVALID_ARG', 'NONE', `--web wants ADDRESS:PORT, not '${o.web}'`);
  if (Boolean(o.webCert) !== Boolean(o.webKey)) throw virErr('INVALID_ARG', 'NONE', '--web-cert and --web-key go together');
  if (o.webInsecureHttp && o.webCert) throw virErr('INVALID_ARG', 'NONE', '--web-insecure-http and --web-cert exclude each other');
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  if (o.webInsecureHttp && !isLoopback(host)) throw virErr('INVALID_ARG', 'NONE', `--web-insecure-http is refused on '${host}': only a loopback address may serve the console without TLS`);
  return { host, port: Number(m[2]) };
}

/** `virtbackd --web-rotate-tokens`: new tokens on stdout, nothing started. */
export function rotateWebTokens(stateDir: string): void {
  const t = rotateTokens(path.join(stateDir, WEB_DIR));
  process.stdout.write(`web console admin token: ${t.admin}\nweb console read-only token: ${t.readonly}\n`);
  process.stdout.write('a running virtbackd keeps accepting the old tokens until it restarts\n');
}

export function startWebConsole(
  o: WebOptions,
  at: { host: string; port: number },
  d: { stateDir: string; driver: Driver; clients: () => number; log: Logger },
): Promise<WebConsole> {
  return WebConsole.start({
    ...at,
    stateDir: d.stateDir,
    driver: d.driver,
    repos: o.webRepo,
    assetsDir: o.webAssets ? path.resolve(o.webAssets) : defaultAssets(),
    insecureHttp: o.webInsecureHttp === true,
    ...(o.webCert && o.webKey ? { cert: { certFile: path.resolve(o.webCert), keyFile: path.resolve(o.webKey) } } : {}),
    sessionTtlSec: o.webSessionTtl ?? 1800,
    version: TOOL_VERSION,
    clients: d.clients,
    virtbackCommand: virtbackCommand(),
    log: d.log,
  });
}
