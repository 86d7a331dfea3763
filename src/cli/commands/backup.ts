// Backup commands: backup-begin (virsh's, printing the job id, plus
// --wait), backup-dumpxml and backup-end (ids: the original backup design).

import type { Command } from 'commander';
import type { EntryPointTable } from '../../api/entry-points.js';
import type { Domain } from '../../api/public.js';
import { virErr } from '../../errors.js';
import { JobType } from '../../flags.js';
import { lookupDomain, readFileArg, withConnection } from '../connection.js';
import { out, usageError } from '../output.js';
import { CliFlagOptions } from '../flag-options.js';
import { jsonLine, progressView, waitForBackup } from '../progress.js';

/** A job id from --id, 0 (the default) meaning the current job, as in the API (virsh's wording for a bad number). */
export function parseJobId(cmd: Command, value: string | undefined): number {
  if (value === undefined) return 0;
  if (!/^\d+$/.test(value) || Number(value) > 0x7fffffff) {
    usageError(cmd, `Numeric value '${value}' for <id> option is malformed or out of range`);
  }
  return Number(value);
}

/** The id a command acts on: the given one, else the domain's current job (0 when none: the API reports it). */
async function currentJobId(dom: Domain, id: number): Promise<number> {
  if (id !== 0) return id;
  return (await dom.listJobIds())[0] ?? 0;
}

interface BeginOptions {
  backupxml?: string;
  checkpointxml?: string;
  wait?: boolean;
  json?: boolean;
  quiet?: boolean;
}

export function register(program: Command, table: EntryPointTable): void {
  const begin = program
    .command('backup-begin')
    .description('Start a disk backup of a live domain')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('[backupxml]', 'domain backup XML')
    .argument('[checkpointxml]', 'domain checkpoint XML')
    .option('--backupxml <file>', 'domain backup XML')
    .option('--checkpointxml <file>', 'domain checkpoint XML');
  const beginFlags = CliFlagOptions.add(begin, table, 'backupBegin', {
    NO_METADATA: 'create the checkpoint of --checkpointxml without metadata',
    QUIESCE: "quiesce guest's file systems",
    REUSE_EXTERNAL: 'reuse files provided by caller',
    PRESERVE_SHUTDOWN_DOMAIN: {
      option: 'preserve-domain-on-shutdown',
      help: 'keep the domain running when the guest shuts down during the backup',
    },
  });
  begin
    .option('--wait', 'follow the job with a progress display and exit with its outcome')
    .option('--json', 'print JSON lines: {"type":"started"}, with --wait progress and {"type":"completed"}')
    .option('--quiet', 'no progress display with --wait')
    .action(async (ref: string, posBackup: string | undefined, posCheckpoint: string | undefined, o: BeginOptions, cmd: Command) => {
      const flags = beginFlags.flags(cmd);
      if (posBackup !== undefined && o.backupxml !== undefined) usageError(cmd, 'backup XML given twice');
      if (posCheckpoint !== undefined && o.checkpointxml !== undefined) usageError(cmd, 'checkpoint XML given twice');
      const backupFile = o.backupxml ?? posBackup;
      const checkpointFile = o.checkpointxml ?? posCheckpoint;
      const backupXml = backupFile === undefined ? null : readFileArg(backupFile);
      const checkpointXml = checkpointFile === undefined ? null : readFileArg(checkpointFile);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const id = await dom.backupBegin(backupXml, checkpointXml, flags);
        out(o.json ? jsonLine({ type: 'started', jobId: id }) : `Backup started, job id ${id}\n`);
        if (!o.wait) return;
        const final = await waitForBackup(dom, id, { view: progressView(o, process.stdout, out) });
        if (final.type === JobType.COMPLETED) {
          out(o.json ? jsonLine({ type: 'completed', jobId: id, stats: final }) : `Backup job ${id} completed\n`);
          return;
        }
        const why = final.errmsg ? `: ${final.errmsg}` : '';
        if (final.type === JobType.CANCELLED) throw virErr('OPERATION_FAILED', 'NONE', `backup job ${id} was cancelled${why}`);
        throw virErr('OPERATION_FAILED', 'NONE', `backup job ${id} failed${why}`);
      });
    });

  program
    .command('backup-dumpxml')
    .description('Dump XML for an ongoing domain block backup job')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--id <id>', 'job id (default: the current job)')
    .action(async (ref: string, o: { id?: string }, cmd: Command) => {
      const id = parseJobId(cmd, o.id);
      await withConnection(cmd, async (conn) => {
        const xml = await (await lookupDomain(conn, ref)).backupGetXMLDesc(id);
        out(xml.endsWith('\n') ? xml : `${xml}\n`);
      });
    });

  const end = program
    .command('backup-end')
    .description('End a backup job: release a finished push job or a pull export; --abort cancels a running one')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--id <id>', 'job id (default: the current job)');
  const endFlags = CliFlagOptions.add(end, table, 'backupEnd', { ABORT: 'cancel the job if it is still copying' });
  end.action(async (ref: string, o: { id?: string }, cmd: Command) => {
    const given = parseJobId(cmd, o.id);
    const flags = endFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const dom = await lookupDomain(conn, ref);
      const id = await currentJobId(dom, given);
      const complete = await dom.backupEnd(id, flags);
      out(complete === 1 ? `Backup job ${id} ended, backup complete\n` : `Backup job ${id} aborted\n`);
    });
  });
}
