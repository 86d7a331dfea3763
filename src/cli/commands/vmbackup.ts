// `virtback backup DOM --repo DIR` and `virtback restore --repo DIR DOM`: whole
// VMs into and out of the chunk repository (src/vmbackup/). Progress per disk
// on stderr (bars on a terminal, lines otherwise, none with --quiet); --json
// prints the result as one JSON line on stdout. `backup --log-file FILE`
// appends one JSON log line per run with its result (for timers).

import { Option, type Command } from 'commander';
import { silentLogger, type Logger } from '../../log.js';
import type { RequestedLevel } from '../../vmbackup/index.js';
import { lookupDomain, withConnection } from '../connection.js';
import { openChunkRepository, REPO_HELP, s3EndpointOption, s3NoPathStyleOption, s3PathStyleOption } from './chunk-repo.js';
import { out } from '../output.js';
import { jsonLine, progressView, type ProgressView } from '../progress.js';

const MiB = 1024 * 1024;

/** Per-disk progress on stderr. */
function diskProgress(quiet: boolean): { view: ProgressView; update(disk: string, done: number, total: number): void } {
  const view = progressView({ quiet }, process.stderr, (s) => process.stderr.write(s));
  return {
    view,
    update: (disk, done, total) => view.update([{ disk, processed: done, total, state: done >= total ? 'completed' : 'running' }]),
  };
}

interface BackupOptions {
  repo: string;
  level: RequestedLevel;
  quiesce?: boolean;
  exclude: string[];
  encryptKey?: string;
  json?: boolean;
  quiet?: boolean;
  logFile?: string;
}

function registerBackup(program: Command): void {
  program
    .command('backup')
    .description('Back up every disk of a running domain at one instant into a chunk repository (virtback)')
    .argument('<domain>', 'domain name, id or uuid')
    .requiredOption('--repo <url>', REPO_HELP)
    .addOption(s3EndpointOption())
    .addOption(s3PathStyleOption()).addOption(s3NoPathStyleOption())
    .addOption(new Option('--level <level>', 'full, inc (from the previous point), or auto (inc when the base is usable, else full, saying why)').choices(['full', 'inc', 'auto']).default('auto'))
    .option('--quiesce', "freeze the guest's file systems for the instant (guest agent)")
    .option('--exclude <disk>', 'a disk not to back up (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--encrypt-key <file>', "the key file of an encrypted repository")
    .option('--json', 'print the result as one JSON line')
    .option('--quiet', 'no progress display')
    .option('--log-file <file>', 'append one JSON log line per run with its result')
    .action(async (ref: string, o: BackupOptions, cmd: Command) => {
      const repo = await openChunkRepository(o.repo, o.encryptKey, o);
      // loaded when the command runs, not for every virtback start
      const { backupDomain, repositoryId } = await import('../../vmbackup/index.js');
      const { openDaemonLogger } = o.logFile === undefined ? { openDaemonLogger: null } : await import('../../daemon/logger.js');
      const log: Logger & { close?(): void } = o.logFile === undefined ? silentLogger : openDaemonLogger!({ level: 'info', file: o.logFile });
      const progress = diskProgress(o.quiet === true);
      try {
        const r = await withConnection(cmd, async (conn) =>
          backupDomain(await lookupDomain(conn, ref), repo, repositoryId(repo.config), {
            level: o.level,
            quiesce: o.quiesce === true,
            exclude: o.exclude,
            log,
            onProgress: (disk, p) => progress.update(disk, p.bytesDone, p.bytesTotal),
          }),
        );
        progress.view.stop();
        if (o.json) out(jsonLine(r));
        else out(`Point ${r.pointId} (${r.level}${r.offline ? ', offline' : ''}: ${r.reason}): ${(r.bytesRead / MiB).toFixed(1)} MiB read, ${(r.bytesNew / MiB).toFixed(1)} MiB new, ${(r.durationMs / 1000).toFixed(1)} s\n`);
      } finally {
        progress.view.stop();
        log.close?.();
      }
    });
}

interface RestoreOptions {
  repo: string;
  point?: string;
  outputDir: string;
  format: 'qcow2' | 'raw';
  targetDev: string[];
  define?: string;
  encryptKey?: string;
  json?: boolean;
  quiet?: boolean;
}

function registerRestore(program: Command): void {
  program
    .command('restore')
    .description("Restore every disk of a point as standalone images, with the domain's definition pointed at them (virtback)")
    .argument('<domain>', 'the domain name the points were taken of')
    .requiredOption('--repo <url>', REPO_HELP)
    .addOption(s3EndpointOption())
    .addOption(s3PathStyleOption()).addOption(s3NoPathStyleOption())
    .option('--point <id>', 'the point (default: the newest of the domain)')
    .option('--output-dir <dir>', 'where the images and <name>.xml go', '.')
    .addOption(new Option('--format <format>', 'format of the images').choices(['qcow2', 'raw']).default('qcow2'))
    .option('--target-dev <disk=device>', 'write disk DISK onto host block device DEVICE instead of an image (repeatable; the device must be at least as large)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--define <name>', 'define the restored domain under this new name (new UUID and MAC addresses)')
    .option('--encrypt-key <file>', 'the key file of an encrypted repository')
    .option('--json', 'print the result as one JSON line')
    .option('--quiet', 'no progress display')
    .action(async (domain: string, o: RestoreOptions, cmd: Command) => {
      const repo = await openChunkRepository(o.repo, o.encryptKey, o);
      const { parseTargetDevs, restoreDomain } = await import('../../vmbackup/index.js');
      const progress = diskProgress(o.quiet === true);
      try {
        const opts = {
          domain,
          outputDir: o.outputDir,
          format: o.format,
          devices: parseTargetDevs(o.targetDev),
          ...(o.point === undefined ? {} : { point: o.point }),
          ...(o.define === undefined ? {} : { define: o.define }),
          onProgress: (disk: string, p: { bytesDone: number; bytesTotal: number }) => progress.update(disk, p.bytesDone, p.bytesTotal),
        };
        const r = o.define === undefined ? await restoreDomain(repo, null, opts) : await withConnection(cmd, (conn) => restoreDomain(repo, conn, opts));
        progress.view.stop();
        if (o.json) {
          out(jsonLine({ pointId: r.pointId, disks: r.disks, xmlPath: r.xmlPath, defined: r.defined }));
        } else {
          for (const d of r.disks) out(`${d.target}: ${d.path} (${d.block ? 'block device' : d.format}, ${(d.size / MiB).toFixed(1)} MiB)\n`);
          out(`Point ${r.pointId} of '${domain}' restored; definition in '${r.xmlPath}'${r.defined ? `, defined as '${r.defined.name}' (${r.defined.uuid})` : ''}\n`);
        }
      } finally {
        progress.view.stop();
      }
    });
}

export function register(program: Command): void {
  registerBackup(program);
  registerRestore(program);
}
