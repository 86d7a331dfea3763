// `virtback backup-serve`: a point's disks as read-only NBD exports, in the
// foreground until SIGINT/SIGTERM. `virtback instant-restore`: run a domain
// from a point on qcow2 overlays backed by those exports (the serve process
// detached, in the overlay folder), optionally streaming the data in;
// `virtback instant-restore-stop`: end that serving once it is safe;
// `virtback instant-restore-resume`: serve it again later.
// docs/backup-serve.md describes all three.

import { type Command } from 'commander';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { virErr } from '../../errors.js';
import type { NbdListen } from '../../nbd/server.js';
import { withConnection } from '../connection.js';
import { out } from '../output.js';
import { jsonLine, progressView } from '../progress.js';
import { openChunkRepository, REPO_HELP, s3EndpointOption, s3NoPathStyleOption, s3PathStyleOption } from './chunk-repo.js';

interface ServeOptions {
  repo: string;
  point?: string;
  socket?: string;
  listen?: string;
  encryptKey?: string;
  pidfile?: string;
  json?: boolean;
}

/** --listen ADDR:PORT (IPv6 as [::1]:PORT); loopback unless an address is given. */
export function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw virErr('INVALID_ARG', 'NBD', `--listen '${v}' is not ADDR:PORT`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

function listenOf(o: ServeOptions, domain: string): NbdListen {
  if (o.socket !== undefined && o.listen !== undefined) throw virErr('INVALID_ARG', 'NBD', '--socket and --listen are exclusive');
  if (o.listen !== undefined) return parseListen(o.listen);
  return { socket: path.resolve(o.socket ?? path.join(os.tmpdir(), `virtback-serve-${domain}-${process.pid}.sock`)) };
}

/** Resolves at the first SIGINT or SIGTERM. */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

function registerServe(program: Command): void {
  program
    .command('backup-serve')
    .description("Serve a point's disks as read-only NBD exports named by target (vda, sdb), until SIGINT/SIGTERM (virtback)")
    .argument('<domain>', 'the domain name the points were taken of')
    .requiredOption('--repo <url>', REPO_HELP)
    .addOption(s3EndpointOption())
    .addOption(s3PathStyleOption()).addOption(s3NoPathStyleOption())
    .option('--point <id>', 'the point (default: the newest of the domain)')
    .option('--socket <path>', 'unix socket to listen on, mode 0600 (default: a new one in the temp folder)')
    .option('--listen <addr:port>', 'TCP address to listen on instead (e.g. 127.0.0.1:10809)')
    .option('--encrypt-key <file>', 'the key file of an encrypted repository')
    .option('--pidfile <file>', 'write the process id here once serving (removed at exit)')
    .option('--json', 'print the exports as one JSON line')
    .action(async (domain: string, o: ServeOptions) => {
      // loaded when the command runs, not for every virtback start
      const { servePoint } = await import('../../vmbackup/serve.js');
      const repo = await openChunkRepository(o.repo, o.encryptKey, o);
      const serving = await servePoint(repo, { domain, ...(o.point === undefined ? {} : { point: o.point }), listen: listenOf(o, domain) });
      const stop = untilSignal();
      try {
        if (o.json) out(jsonLine({ point: serving.point.id, disks: serving.disks }));
        else {
          out(`Serving point ${serving.point.id} of '${domain}' read-only; stop with SIGINT or SIGTERM\n`);
          for (const d of serving.disks) out(`${d.target}\t${d.uri}\n`);
        }
        // Written last: a pidfile means the exports accept connections.
        if (o.pidfile !== undefined) fs.writeFileSync(o.pidfile, `${process.pid}\n`, { mode: 0o600 });
        await stop;
      } finally {
        await serving.close();
        if (o.pidfile !== undefined) fs.rmSync(o.pidfile, { force: true });
      }
    });
}

/**
 * The argv that runs this CLI in a new process: node, its module loader flags
 * (tsx in development), and virtback's own entry file next to this one.
 */
export function virtbackCommand(): string[] {
  const self = fileURLToPath(import.meta.url);
  const entry = path.join(path.dirname(self), '..', `virtback${path.extname(self)}`);
  const keep: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (/^--(import|loader|experimental-loader|require)=/.test(a)) keep.push(a);
    else if (/^--(import|loader|experimental-loader|require)$/.test(a) && argv[i + 1] !== undefined) keep.push(a, argv[++i]!);
  }
  return [process.execPath, ...keep, entry];
}

interface InstantOptions {
  repo: string;
  point?: string;
  define: string;
  stream?: boolean;
  overlayDir?: string;
  encryptKey?: string;
  json?: boolean;
  quiet?: boolean;
}

function registerInstant(program: Command): void {
  program
    .command('instant-restore')
    .description('Run a domain from a backup point at once: qcow2 overlays backed by backup-serve exports, defined under a new name and started (virtback)')
    .argument('<domain>', 'the domain name the points were taken of')
    .requiredOption('--repo <url>', REPO_HELP)
    .addOption(s3EndpointOption())
    .addOption(s3PathStyleOption()).addOption(s3NoPathStyleOption())
    .option('--point <id>', 'the point (default: the newest of the domain)')
    .requiredOption('--define <name>', 'the new domain (new UUID and MAC addresses)')
    .option('--stream', 'copy the data into the overlays while the guest runs (QEMU block-stream), then stop serving')
    .option('--overlay-dir <dir>', 'overlays, serve socket, pidfile and log (default: ./NAME.instant)')
    .option('--encrypt-key <file>', 'the key file of an encrypted repository')
    .option('--json', 'print the result as one JSON line')
    .option('--quiet', 'no progress display while streaming')
    .action(async (domain: string, o: InstantOptions & { s3Endpoint?: string; s3PathStyle?: boolean }, cmd: Command) => {
      const { instantRestore } = await import('../../vmbackup/instant.js');
      const repo = await openChunkRepository(o.repo, o.encryptKey, o);
      // stream progress per disk on stderr, as backup and restore show theirs
      const view = progressView({ quiet: o.quiet === true }, process.stderr, (t) => process.stderr.write(t));
      const s = await withConnection(cmd, (conn) =>
        instantRestore(repo, conn, {
          repoDir: o.repo,
          domain,
          define: o.define,
          stream: o.stream === true,
          virtbackCommand: virtbackCommand(),
          // recorded in instant.json and handed to the serve process as arguments
          s3: { ...(o.s3Endpoint === undefined ? {} : { s3Endpoint: o.s3Endpoint }), ...(o.s3PathStyle === undefined ? {} : { s3PathStyle: o.s3PathStyle }) },
          ...(o.point === undefined ? {} : { point: o.point }),
          ...(o.overlayDir === undefined ? {} : { overlayDir: o.overlayDir }),
          ...(o.encryptKey === undefined ? {} : { encryptKeyFile: o.encryptKey }),
          onStreamProgress: (p) => view.update([{ disk: p.target, processed: p.done, total: p.total, state: p.total > 0 && p.done >= p.total ? 'completed' : 'running' }]),
        }),
      ).finally(() => view.stop());
      const dir = path.dirname(s.pidfile);
      if (o.json) out(jsonLine({ ...s, overlayDir: dir }));
      else {
        out(`Domain '${s.name}' (${s.uuid}) runs from point ${s.pointId} of '${domain}'; overlays in ${dir}\n`);
        out(s.streamed
          ? 'Data streamed into the overlays; the repository is no longer needed.\n'
          : `Serving from the repository (log ${s.logFile}); after shutting the domain down: virtback instant-restore-stop ${dir}\n`);
      }
    });
  program
    .command('instant-restore-stop')
    .description('Stop serving an instant restore (refused while its domain runs on the served point) (virtback)')
    .argument('<overlay-dir>', 'the folder instant-restore used')
    .action(async (dir: string, _o: unknown, cmd: Command) => {
      const { stopInstantServe } = await import('../../vmbackup/instant.js');
      const s = await withConnection(cmd, (conn) => stopInstantServe(conn, dir));
      out(`Stopped serving point ${s.pointId} for '${s.name}'\n`);
    });
  program
    .command('instant-restore-resume')
    .description("Serve an instant restore's point again at its socket (after a reboot or instant-restore-stop), so its domain can start (virtback)")
    .argument('<overlay-dir>', 'the folder instant-restore used')
    .action(async (dir: string) => {
      const { resumeInstantServe } = await import('../../vmbackup/instant.js');
      const r = await resumeInstantServe(dir, virtbackCommand());
      out(`${r.started ? 'Serving' : 'Already serving'} point ${r.state.pointId} for '${r.state.name}' (pid ${r.pid}); start the domain with: virtback start ${r.state.name}\n`);
    });
}

export function register(program: Command): void {
  registerServe(program);
  registerInstant(program);
}
