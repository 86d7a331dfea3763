// Backup repository commands: backup-restore and backup-verify work on backup
// files alone (no daemon connection); backup-pull reads a running pull job's
// exports into backup files with manifests. Progress as backup-begin --wait:
// cli-progress bars on a terminal, plain lines otherwise, JSON lines with
// --json (then every line of stdout is one JSON object), none with --quiet.

import { Option, type Command } from 'commander';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Domain } from '../../api/public.js';
import { backupServerTarget, type NbdTarget } from '../../nbd/target.js';
import type { BackupManifest } from '../../repository/index.js';
import { toVirError, virErr } from '../../errors.js';
import { JobType } from '../../flags.js';
import { attr, childElements, childText, firstChild } from '../../xml/node.js';
import { parseXml } from '../xml-parser.js';
import { lookupDomain, withConnection } from '../connection.js';
import { out } from '../output.js';
import { parseJobId } from './backup.js';

// The backup-file code (manifest schemas, qcow2, the NBD copy engine) loads when a command runs.
const repository = () => import('../../repository/index.js');
import { jsonLine, progressView, type DiskState, type ProgressView } from '../progress.js';

const MiB = 1024 * 1024;

/** --json and --quiet, as backup-restore, backup-pull and backup-verify take them. */
interface OutputOptions {
  json?: boolean;
  quiet?: boolean;
}

/** The progress display on stdout for the output options. */
function stdoutProgress(o: OutputOptions): ProgressView {
  return progressView(o, process.stdout, out);
}

function addOutputOptions(cmd: Command, json: string): Command {
  return cmd.option('--json', json).option('--quiet', 'no progress display');
}

/**
 * Progress of named items (restore: the output; verify: each image of the
 * chain) onto a view. An item that stops reporting because the next one began
 * is shown as completed.
 */
export class ItemProgress {
  private current: string | null = null;
  private readonly totals = new Map<string, number>();

  constructor(private readonly view: ProgressView) {}

  update(item: string, done: number, total: number): void {
    if (this.current !== null && this.current !== item) this.finish(this.current);
    this.current = item;
    this.totals.set(item, total);
    this.view.update([{ disk: item, processed: done, total, state: 'running' }]);
  }

  finish(item: string, state: DiskState = 'completed'): void {
    const total = this.totals.get(item) ?? 0;
    this.view.update([{ disk: item, processed: total, total, state }]);
    if (this.current === item) this.current = null;
  }

  /** End the display; the item still running ends in `state`. */
  stop(state: DiskState = 'completed'): void {
    if (this.current !== null) this.finish(this.current, state);
    this.view.stop();
  }
}

/** One disk of a pull job, as its <domainbackup> describes it. */
export interface PullDisk {
  disk: string;
  exportName: string;
  /** the exported dirty bitmap of an incremental disk */
  bitmap: string | null;
  /** the checkpoint the disk is incremental from */
  incremental: string | null;
}

export interface PullJob {
  nbd: NbdTarget;
  /** <server tls='yes'>: the export speaks only TLS. */
  tls: boolean;
  disks: PullDisk[];
}

/** The NBD server and exported disks of a pull job's <domainbackup> (pure). */
export function parsePullJob(xml: string, id: number): PullJob {
  const root = parseXml(xml);
  if (attr(root, 'mode') !== 'pull') throw virErr('OPERATION_INVALID', 'NONE', `backup job ${id} is not a pull backup: there is no export to read`);
  const server = firstChild(root, 'server');
  if (server === null) throw virErr('INTERNAL_ERROR', 'NONE', `backup job ${id} has no <server>`);
  const transport = attr(server, 'transport') ?? 'tcp';
  if (transport !== 'unix' && transport !== 'tcp') {
    throw virErr('CONFIG_UNSUPPORTED', 'NONE', `backup job ${id} exports over transport '${transport}', which backup-pull cannot reach`);
  }
  const port = attr(server, 'port');
  // the address rule QEMU listens by (and the driver's own probe connects by)
  const nbd = backupServerTarget({ transport, socket: attr(server, 'socket'), name: attr(server, 'name'), port: port === null ? null : Number(port) });
  if (nbd === null) {
    throw virErr('INTERNAL_ERROR', 'NONE', `backup job ${id}: <server transport='${transport}'> has no ${transport === 'unix' ? 'socket' : 'port'}`);
  }
  const top = childText(root, 'incremental');
  const disksEl = firstChild(root, 'disks');
  const disks = (disksEl === null ? [] : childElements(disksEl, 'disk'))
    .filter((d) => attr(d, 'backup') !== 'no')
    .map((d) => {
      const disk = attr(d, 'name') ?? '';
      const incremental = attr(d, 'backupmode') === 'full' ? null : (attr(d, 'incremental') ?? top);
      const bitmap = attr(d, 'exportbitmap');
      if (incremental !== null && bitmap === null) throw virErr('INTERNAL_ERROR', 'NONE', `backup job ${id}: incremental disk '${disk}' exports no bitmap`);
      return { disk, exportName: attr(d, 'exportname') ?? disk, bitmap: incremental === null ? null : bitmap, incremental };
    });
  if (disks.length === 0) throw virErr('OPERATION_INVALID', 'NONE', `backup job ${id} exports no disk`);
  return { nbd, tls: attr(server, 'tls') === 'yes', disks };
}

/** The pull backup of `disk` in `dir` that holds checkpoint `checkpoint` (the newest, when several do). */
async function findParent(dir: string, uuid: string, disk: string, checkpoint: string): Promise<string | null> {
  let best: { file: string; m: BackupManifest } | null = null;
  for (const f of await fs.readdir(dir)) {
    if (!f.endsWith('.manifest.json')) continue;
    const file = path.join(dir, f.slice(0, -'.manifest.json'.length));
    let m: BackupManifest | null;
    try {
      m = await (await repository()).readManifest(file);
    } catch {
      continue; // not ours to judge here; backup-verify names broken manifests
    }
    if (m === null || m.domain.uuid !== uuid || m.disk !== disk || m.checkpoint !== checkpoint) continue;
    if (!(await fs.stat(file).then(() => true, () => false))) continue;
    if (best === null || m.time > best.m.time) best = { file, m };
  }
  return best?.file ?? null;
}

/**
 * The checkpoint the job created: given, or the newest checkpoint created no
 * earlier than the job began (the job's XML does not name it); null when none.
 * Creation times have 1 s resolution: among checkpoints of the same second,
 * one that is another's parent is not the newest (a quick full then
 * incremental makes c1 and c2 within one second).
 */
export async function jobCheckpoint(dom: Domain, startSec: number): Promise<string | null> {
  const recent: Array<{ name: string; time: number; parent: string | null }> = [];
  for (const c of await dom.listAllCheckpoints()) {
    const xml = parseXml(await c.getXMLDesc({ noDomain: true }));
    const time = Number(childText(xml, 'creationTime'));
    const parent = firstChild(xml, 'parent');
    if (time >= startSec - 1) recent.push({ name: c.name, time, parent: parent ? childText(parent, 'name') : null });
  }
  const newest = Math.max(...recent.map((c) => c.time));
  const sameSecond = recent.filter((c) => c.time === newest);
  const parents = new Set(sameSecond.map((c) => c.parent));
  return (sameSecond.find((c) => !parents.has(c.name)) ?? sameSecond[0])?.name ?? null;
}

interface PullOptions extends OutputOptions {
  output: string;
  id?: string;
  format: 'qcow2' | 'raw';
  checkpoint?: string;
  tlsCerts?: string;
  connections?: string;
}

/** One disk of a pull backup: where it goes, and the backup it is incremental on. */
interface PullPlan extends PullDisk {
  format: 'qcow2' | 'raw';
  output: string;
  parent: string | null;
}

/** Plan every disk before reading any: a missing parent must not leave half a backup. */
async function planPull(dom: Domain, job: PullJob, dir: string, suffix: string, fullFormat: 'qcow2' | 'raw'): Promise<PullPlan[]> {
  const plans: PullPlan[] = [];
  for (const d of job.disks) {
    const format = d.incremental === null ? fullFormat : 'qcow2';
    const output = path.join(dir, `${dom.name}-${d.disk}.${suffix}.${format}`);
    if (await fs.lstat(output).then(() => true, () => false)) throw virErr('INVALID_ARG', 'STORAGE', `pull backup output '${output}' already exists`);
    let parent: string | null = null;
    if (d.incremental !== null) {
      parent = await findParent(dir, dom.uuid, d.disk, d.incremental);
      if (parent === null) {
        throw virErr('OPERATION_INVALID', 'STORAGE', `disk '${d.disk}' is incremental from checkpoint '${d.incremental}', but '${dir}' holds no backup of that checkpoint for it`);
      }
    }
    plans.push({ ...d, format, output, parent });
  }
  return plans;
}

function registerPull(program: Command): void {
  const cmd = program
    .command('backup-pull')
    .description("Read a running pull backup job's exports into backup files with manifests (virtback)")
    .argument('<domain>', 'domain name, id or uuid')
    .requiredOption('--output <dir>', 'folder for the backup files (incrementals find their parent backup there)')
    .option('--id <id>', 'job id (default: the current job)')
    .addOption(new Option('--format <format>', 'format of a full backup (an incremental one is always qcow2)').choices(['qcow2', 'raw']).default('qcow2'))
    .option('--checkpoint <name>', 'the checkpoint the job created (default: the newest one created since the job began)')
    .option('--tls-certs <dir>', "client credentials for a job with <server tls='yes'>: ca-cert.pem, client-cert.pem, client-key.pem (as nbdcopy's tls-certificates)")
    .option('--connections <n>', 'NBD connections per disk when the export allows multi-conn (default 1)');
  addOutputOptions(cmd, 'print JSON lines: progress, {"type":"pulled"} per disk, then {"type":"completed"}')
    .action(async (ref: string, o: PullOptions, cmd: Command) => {
      const given = parseJobId(cmd, o.id);
      const dir = path.resolve(o.output);
      const st = await fs.stat(dir).catch(() => null);
      if (st === null || !st.isDirectory()) throw virErr('INVALID_ARG', 'STORAGE', `backup-pull output '${dir}' is not a folder`);
      const { pullBackup, writeManifest } = await repository();
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const id = given !== 0 ? given : ((await dom.listJobIds())[0] ?? 0);
        const job = parsePullJob(await dom.backupGetXMLDesc(id), id);
        if (job.tls && o.tlsCerts === undefined) throw virErr('INVALID_ARG', 'NONE', `backup job ${id} exports over TLS: give its client credentials with --tls-certs <dir>`);
        const tls = job.tls ? await (await import('../../nbd/tls.js')).loadTlsDir(path.resolve(o.tlsCerts!)) : undefined;
        const connections = o.connections === undefined ? undefined : Number(o.connections);
        const stats = await dom.getJobStats();
        const running = (stats.type === JobType.UNBOUNDED || stats.type === JobType.BOUNDED) && (stats.id === undefined || stats.id === id);
        const startSec = Math.floor((Date.now() - (running ? (stats.time_elapsed ?? 0) : 0)) / 1000);
        const checkpoint = o.checkpoint ?? (await jobCheckpoint(dom, startSec));
        const suffix = checkpoint ?? String(startSec);

        const plans = await planPull(dom, job, dir, suffix, o.format);
        const progress = new ItemProgress(stdoutProgress(o));
        const written: string[] = [];
        let ok = false;
        try {
          for (const p of plans) {
            const r = await pullBackup({
              nbd: job.nbd,
              ...(tls ? { tls } : {}),
              ...(connections === undefined ? {} : { connections }),
              exportName: p.exportName,
              ...(p.bitmap === null ? {} : { bitmap: p.bitmap }),
              ...(p.parent === null ? {} : { parentBackup: p.parent }),
              output: p.output,
              format: p.format,
              onProgress: (x) => progress.update(p.disk, x.bytesDone, x.bytesTotal),
            });
            written.push(p.output);
            progress.finish(p.disk);
            await writeManifest({
              domain: { name: dom.name, uuid: dom.uuid },
              disk: p.disk,
              target: p.output,
              format: p.format,
              checkpoint,
              incrementalFrom: p.incremental,
              parentBackup: p.parent,
              time: startSec,
              virtualSize: r.size,
              jobId: id,
              mode: 'pull',
            }, r.digests ? { digests: r.digests } : {});
            const what = p.parent === null ? 'full' : `incremental from ${p.incremental}, backed by ${path.basename(p.parent)}`;
            if (o.json) out(jsonLine({ type: 'pulled', disk: p.disk, output: p.output, format: p.format, incrementalFrom: p.incremental, parentBackup: p.parent, bytesRead: r.bytesRead }));
            else out(`${p.disk}: ${p.output} (${what}; ${(r.bytesRead / MiB).toFixed(1)} MiB read)\n`);
          }
          ok = true;
        } catch (e) {
          // a partial set of backups is no backup of the job's instant
          for (const f of written) await Promise.all([fs.rm(f, { force: true }), fs.rm(`${f}.manifest.json`, { force: true })]);
          throw toVirError(e, 'STORAGE');
        } finally {
          progress.stop(ok ? 'completed' : 'failed');
        }
        if (o.json) out(jsonLine({ type: 'completed', jobId: id, checkpoint, dir, disks: plans.length }));
        else out(`Backup job ${id} pulled: ${plans.length} disk${plans.length === 1 ? '' : 's'} into '${dir}'\n`);
      });
    });
}

export function register(program: Command): void {
  const restore = program
    .command('backup-restore')
    .description('Restore a push backup (a full one, or the last incremental of a chain) into a standalone image (virtback)')
    .argument('<target>', 'the backup file: a full backup or the newest incremental of its chain')
    .argument('<output>', 'the image to create (with --in-place: an existing image or block device to overwrite)')
    .addOption(new Option('--format <format>', 'format of the output').choices(['qcow2', 'raw']).default('qcow2'))
    .option('--in-place', 'write onto an existing image or block device of at least the backup size');
  addOutputOptions(restore, 'print JSON lines: progress, then {"type":"restored", ...the result}')
    .action(async (target: string, output: string, o: OutputOptions & { format: 'qcow2' | 'raw'; inPlace?: boolean }) => {
      const progress = new ItemProgress(stdoutProgress(o));
      const label = path.basename(output);
      let ok = false;
      const { restoreBackup } = await repository();
      try {
        const r = await restoreBackup({
          target,
          output,
          format: o.format,
          inPlace: o.inPlace === true,
          onProgress: (p) => progress.update(label, p.bytesDone, p.bytesTotal),
        });
        ok = true;
        progress.stop();
        const images = `${r.chain.length} image${r.chain.length === 1 ? '' : 's'}`;
        if (o.json) out(jsonLine({ type: 'restored', target, ...r, inPlace: o.inPlace === true }));
        else out(`Backup '${target}' (${images}) restored ${o.inPlace ? 'in place onto' : 'to'} '${output}' (${r.format}, ${(r.virtualSize / MiB).toFixed(1)} MiB)\n`);
      } finally {
        if (!ok) progress.stop('failed');
      }
    });

  const verify = program
    .command('backup-verify')
    .description("Re-read a push backup and its chain and check them against their manifests' checksums (virtback)")
    .argument('<target>', 'the backup file: a full backup or the newest incremental of its chain');
  addOutputOptions(verify, 'print the result as one line of JSON (no progress)')
    .action(async (target: string, o: OutputOptions) => {
      // --json prints the result alone: one JSON document on one line
      const progress = new ItemProgress(stdoutProgress({ quiet: o.quiet === true || o.json === true }));
      const { formatVerifyResult, verifyBackup } = await repository();
      let r;
      try {
        r = await verifyBackup({ target, onProgress: (p) => progress.update(path.basename(p.file), p.bytesDone, p.bytesTotal) });
      } finally {
        progress.stop();
      }
      if (o.json) out(jsonLine(r));
      const lines = formatVerifyResult(r);
      // the verdict: on stdout when good, as the error (exit 1) when not
      const verdict = lines.pop()!;
      if (!o.json) for (const l of lines) if (r.chain.length > 0 || !l.startsWith('chain: ')) out(`${l}\n`);
      if (!r.ok) throw virErr('OPERATION_FAILED', 'STORAGE', r.chain.length === 0 && r.chainProblem ? r.chainProblem : verdict);
      if (!o.json) out(`${verdict}\n`);
    });

  registerPull(program);

}
