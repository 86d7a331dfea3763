// Job commands as in virsh: domjobinfo, domjobabort, and blockjob --info
// for the per-disk view of a backup job.

import type { Command } from 'commander';
import type { JobStats } from '../../api/driver.js';
import type { EntryPointTable } from '../../api/entry-points.js';
import { BlockJobType, JobType } from '../../flags.js';
import { lookupDomain, withConnection } from '../connection.js';
import { blockJobTypeString, formatCapacity, json, jobOperationString, jobTypeString, out, requireOption } from '../output.js';
import { CliFlagOptions } from '../flag-options.js';
import { backupDisks, percent } from '../progress.js';
import { domainDisks } from './domain.js';

/** libvirt's order of the backup job's typed parameters (qemuDomainBackupJobDataToParams), then our id. */
const RAW_KEYS = [
  'operation', 'time_elapsed', 'disk_total', 'disk_processed', 'disk_remaining', 'disk_temp_used', 'disk_temp_total', 'success', 'errmsg', 'id',
] as const;

/** domjobinfo --rawstats: "Job type: N", a blank line, then "field: value" per typed parameter. */
export function formatRawJobStats(s: JobStats): string {
  let text = `Job type: ${s.type}\n\n`;
  for (const k of RAW_KEYS) {
    const v = s[k];
    if (v === undefined) continue;
    text += `${k}: ${typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v)}\n`;
  }
  return text;
}

const row = (label: string, value: string): string => `${label.padEnd(17)} ${value}\n`;

/** domjobinfo's human layout ("%-17s %-12s" lines, sizes as vshPrettyCapacity). */
export function formatJobStats(s: JobStats): string {
  let text = row('Job type:', jobTypeString(s.type).padEnd(12));
  if (s.type === JobType.NONE) return text;
  if (s.operation !== undefined) text += row('Operation:', jobOperationString(s.operation).padEnd(12));
  if (s.id !== undefined) text += row('Job ID:', String(s.id).padEnd(12));
  text += row('Time elapsed:', `${String(s.time_elapsed ?? 0).padEnd(12)} ms`);
  const total = s.disk_total ?? 0;
  const processed = s.disk_processed ?? 0;
  const remaining = s.disk_remaining ?? 0;
  if (total || processed || remaining) {
    text += row('File processed:', formatCapacity(processed));
    text += row('File remaining:', formatCapacity(remaining));
    text += row('File total:', formatCapacity(total));
  }
  if (s.disk_temp_used !== undefined) text += row('Temporary disk space use:', formatCapacity(s.disk_temp_used));
  if (s.disk_temp_total !== undefined) text += row('Temporary disk space total:', formatCapacity(s.disk_temp_total));
  if (s.errmsg !== undefined) text += row('Error message:', s.errmsg);
  return text;
}

/** JSON of job stats: libvirt's keys plus the type and operation in words. */
export function jobStatsJson(s: JobStats): Record<string, unknown> {
  return {
    ...s,
    typeName: jobTypeString(s.type),
    ...(s.operation === undefined ? {} : { operationName: jobOperationString(s.operation) }),
  };
}

/** blockjob --info's line (virshPrintJobProgress): "Backup: [ 42 %]". */
export function formatBlockJobInfo(type: number, cur: number, end: number): string {
  const remaining = Math.max(0, end - cur);
  const pct = remaining === 0 ? 100 : percent(cur, end);
  return `${blockJobTypeString(type)}: [${String(pct).padStart(3)} %]\n`;
}

export function register(program: Command, table: EntryPointTable): void {
  const info = program
    .command('domjobinfo')
    .description('domain job information')
    .argument('<domain>', 'domain name, id or uuid');
  const infoFlags = CliFlagOptions.add(info, table, 'getJobStats', {
    COMPLETED: 'return statistics of a recently completed job',
    KEEP_COMPLETED: "don't destroy statistics of a recently completed job when reading",
  });
  info
    .option('--rawstats', 'print the raw data returned by libvirt')
    .option('--json', 'print the statistics as JSON')
    .action(async (ref: string, o: { rawstats?: boolean; json?: boolean }, cmd: Command) => {
      // virsh's own rule (VSH_REQUIRE_OPTION), not a rule of the row: the API ignores KEEP_COMPLETED alone
      requireOption(cmd, ['keep-completed', infoFlags.given(cmd, 'KEEP_COMPLETED')], ['completed', infoFlags.given(cmd, 'COMPLETED')]);
      const flags = infoFlags.flags(cmd);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const s = await dom.getJobStats(flags);
        if (o.json) json(jobStatsJson(s));
        else if (o.rawstats) out(formatRawJobStats(s));
        else out(formatJobStats(s));
      });
    });

  program
    .command('domjobabort')
    .description('abort active domain job')
    .argument('<domain>', 'domain name, id or uuid')
    .action(async (ref: string, _o: object, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        await (await lookupDomain(conn, ref)).abortJob();
      });
    });

  program
    .command('blockjob')
    .description('Manage active block operations (only --info: the backup job of a disk)')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<path>', 'fully-qualified path of disk, or its target name')
    .option('--info', 'get active job information for the specified disk (the default)')
    .option('--json', 'print the job information as JSON')
    .action(async (ref: string, disk: string, o: { info?: boolean; json?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const disks = domainDisks(await dom.getXMLDesc());
        const target = disks.find((d) => d.target === disk || d.source === disk)?.target ?? disk;
        const s = await dom.getJobStats();
        const running = s.type === JobType.UNBOUNDED || s.type === JobType.BOUNDED;
        let inJob = false;
        if (running) {
          const names = backupDisks(await dom.backupGetXMLDesc(s.id ?? 0).catch(() => '<domainbackup/>'));
          // a job whose XML names no disks backs up every disk
          inJob = names.length === 0 ? disks.some((d) => d.target === target) : names.includes(target);
        }
        if (!inJob) {
          if (o.json) json(null);
          else out(`No current block job for ${disk}\n`);
          return;
        }
        // The Driver reports one aggregate per job: the disk's line shows the job's progress.
        const cur = s.disk_processed ?? s.disk_temp_used ?? 0;
        const end = s.disk_total ?? s.disk_temp_total ?? 0;
        if (o.json) json({ disk: target, type: blockJobTypeString(BlockJobType.BACKUP), jobId: s.id ?? null, cur, end });
        else out(formatBlockJobInfo(BlockJobType.BACKUP, cur, end));
      });
    });
}
