// Backup commands: backup-begin (virsh's, printing the job id, plus
// --wait), backup-dumpxml and backup-end (ids: the original backup design).

import type { Command } from 'commander';
import type { Domain } from '../../api/public.js';
import { virErr } from '../../errors.js';
import { JobType } from '../../flags.js';
import { lookupDomain, readFileArg, withConnection } from '../connection.js';
import { out, usageError } from '../output.js';
import { jsonLine, progressView, waitForBackup } from '../progress.js';

/** A positive job id from --id (virsh's wording for a bad number). */
export function parseJobId(cmd: Command, value: string | undefined): number {
  if (value === undefined) return 0;
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 0x7fffffff) {
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
  noMetadata?: boolean;
  quiesce?: boolean;
  reuseExternal?: boolean;
  wait?: boolean;
  json?: boolean;
  quiet?: boolean;
}

export function register(program: Command): void {
  program
    .command('backup-begin')
    .description('Start a disk backup of a live domain')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('[backupxml]', 'domain backup XML')
    .argument('[checkpointxml]', 'domain checkpoint XML')
    .option('--backupxml <file>', 'domain backup XML')
    .option('--checkpointxml <file>', 'domain checkpoint XML')
    .option('--no-metadata', 'create the checkpoint of --checkpointxml without metadata')
    .option('--quiesce', "quiesce guest's file systems")
    .option('--reuse-external', 'reuse files provided by caller')
    .option('--wait', 'follow the job with a progress display and exit with its outcome')
    .option('--json', 'print JSON lines: {"type":"started"}, with --wait progress and {"type":"completed"}')
    .option('--quiet', 'no progress display with --wait')
    .action(async (ref: string, posBackup: string | undefined, posCheckpoint: string | undefined, raw: BeginOptions & { metadata?: boolean }, cmd: Command) => {
      // commander stores --no-metadata as metadata=false
      const o: BeginOptions = { ...raw, noMetadata: raw.metadata === false };
      if (posBackup !== undefined && o.backupxml !== undefined) usageError(cmd, 'backup XML given twice');
      if (posCheckpoint !== undefined && o.checkpointxml !== undefined) usageError(cmd, 'checkpoint XML given twice');
      const backupFile = o.backupxml ?? posBackup;
      const checkpointFile = o.checkpointxml ?? posCheckpoint;
      const backupXml = backupFile === undefined ? null : readFileArg(backupFile);
      const checkpointXml = checkpointFile === undefined ? null : readFileArg(checkpointFile);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const id = await dom.backupBegin(backupXml, checkpointXml, {
          noMetadata: o.noMetadata === true,
          quiesce: o.quiesce === true,
          reuseExternal: o.reuseExternal === true,
        });
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

  program
    .command('backup-end')
    .description('End a backup job: release a finished push job or a pull export; --abort cancels a running one')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--id <id>', 'job id (default: the current job)')
    .option('--abort', 'cancel the job if it is still copying')
    .action(async (ref: string, o: { id?: string; abort?: boolean }, cmd: Command) => {
      const given = parseJobId(cmd, o.id);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const id = await currentJobId(dom, given);
        const complete = await dom.backupEnd(id, { abort: o.abort === true });
        out(complete === 1 ? `Backup job ${id} ended, backup complete\n` : `Backup job ${id} aborted\n`);
      });
    });
}
