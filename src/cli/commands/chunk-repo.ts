// Chunk repository commands (docs/repository.md): repo-init, backup-list,
// prune, gc and verify work on the repository alone (no daemon connection).
// A repository is a folder or s3://BUCKET[/PREFIX] (docs/object-storage.md);
// every command opens it through openChunkRepository. The file-based backups of backup-pull/backup-restore/
// backup-verify (commands/repository.ts) are a different thing and keep
// their verbs.

import { InvalidArgumentError, Option, type Command } from 'commander';
import fs from 'node:fs/promises';
import { virErr } from '../../errors.js';
import type { ChunkRepository, KeepPolicy, PointRecord, VerifyReport } from '../../chunkstore/index.js';
import { DEFAULT_GC_GRACE_MS, PRUNE_RULES } from '../../chunkstore/defaults.js';
import type { StoreUrlOptions } from '../../chunkstore/store-url.js';
import { silentLogger } from '../../log.js';
import { lookupDomain, withConnection } from '../connection.js';
import { formatCapacity, formatTable, json, out, usageError } from '../output.js';

// The store (zod schemas, zstd, the S3 client) loads when a command runs, not for --help or other commands.
const chunkstore = () => import('../../chunkstore/index.js');
const storeUrl = () => import('../../chunkstore/store-url.js');

/** Where the repository is: --repo plus --s3-endpoint / --s3-path-style. */
export interface RepoLocation {
  repo: string;
  s3Endpoint?: string;
  s3PathStyle?: boolean;
}

interface RepoOptions extends RepoLocation {
  encryptKey?: string;
  json?: boolean;
}

export const REPO_HELP = 'the chunk repository: a folder, or s3://BUCKET[/PREFIX]';

/** --s3-endpoint and --s3-path-style: every command that takes --repo adds both. */
export const s3EndpointOption = (): Option =>
  new Option('--s3-endpoint <url>', 'S3 endpoint of an s3:// repository (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile, AWS)');
export const s3PathStyleOption = (): Option => new Option('--s3-path-style', 'path-style S3 addressing (default: on when an endpoint is given)');
/** Added after --s3-path-style: neither given leaves s3PathStyle undefined (the default applies). */
export const s3NoPathStyleOption = (): Option => new Option('--no-s3-path-style', 'virtual-hosted S3 addressing (http://BUCKET.host/key) even with an endpoint');

function addS3Options(cmd: Command): Command {
  return cmd.addOption(s3EndpointOption()).addOption(s3PathStyleOption()).addOption(s3NoPathStyleOption());
}

function storeOptions(where: RepoLocation): StoreUrlOptions {
  return {
    ...(where.s3Endpoint !== undefined ? { s3Endpoint: where.s3Endpoint } : {}),
    ...(where.s3PathStyle !== undefined ? { s3PathStyle: where.s3PathStyle } : {}),
  };
}

/** The key file's bytes (the whole file is the key material). */
async function readKeyFile(file: string): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (e) {
    throw virErr('INVALID_ARG', 'STORAGE', `cannot read encryption key file '${file}': ${(e as Error).message}`, e);
  }
}

/**
 * Open the chunk repository at `url` (a folder or s3://BUCKET[/PREFIX]), with
 * the key in `keyFile` when it is encrypted; `where` carries --s3-endpoint and
 * --s3-path-style. Every command that takes --repo opens it here.
 */
export async function openChunkRepository(url: string, keyFile?: string, where: Partial<RepoLocation> = {}): Promise<ChunkRepository> {
  const encryptKey = keyFile === undefined ? undefined : await readKeyFile(keyFile);
  const [{ ChunkRepository }, { openObjectStore }] = await Promise.all([chunkstore(), storeUrl()]);
  const store = await openObjectStore(url, storeOptions({ ...where, repo: url }));
  return ChunkRepository.open(store, encryptKey ? { encryptKey } : {});
}

function repoCommand(program: Command, name: string, description: string): Command {
  const cmd = program.command(name).description(description).requiredOption('--repo <url>', REPO_HELP);
  return addS3Options(cmd)
    .option('--encrypt-key <file>', "the repository's key file (an encrypted repository)")
    .option('--json', 'print the result as JSON');
}

function count(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError('not a non-negative integer');
  return n;
}

const pointSize = (p: PointRecord): number => p.disks.reduce((s, d) => s + d.size, 0);
const pointNew = (p: PointRecord): number => p.disks.reduce((s, d) => s + d.bytesNew, 0);
const verifyState = (p: PointRecord): string => (p.verify ? (p.verify.ok ? 'ok' : `FAILED (${p.verify.firstBad ?? '?'})`) : '-');

export function formatPointList(points: PointRecord[]): string {
  const rows = points.map((p) => [p.domain.name, p.id, p.level, p.time, formatCapacity(pointSize(p)), formatCapacity(pointNew(p)), verifyState(p)]);
  return formatTable(['Domain', 'Point', 'Level', 'Time', 'Size', 'New data', 'Verify'], rows);
}

export function formatVerifyReport(r: VerifyReport): string[] {
  const lines = r.points.map((v) => `${v.domain} ${v.id}: ${v.ok ? 'ok' : `FAILED, first bad: ${v.firstBad}`}${v.checked ? '' : ' (affected, not checked in this run)'}`);
  for (const b of r.badChunks) {
    lines.push(`bad chunk ${b.id}: ${b.error}; ${b.setAside ? `set aside as ${b.setAside}` : 'missing'}; affects ${b.points.join(', ')}`);
  }
  lines.push(r.ok ? `${r.points.length} points verified, ${r.chunksChecked} chunks ok` : `verify failed: ${r.badChunks.length} bad chunks affect ${r.points.filter((v) => !v.ok).length} points`);
  return lines;
}

function registerInit(program: Command): void {
  const cmd = program
    .command('repo-init')
    .description('Create a deduplicating chunk repository in a folder or an S3 bucket (virtback)')
    .requiredOption('--repo <url>', 'a folder (created when missing), or s3://BUCKET[/PREFIX] (the bucket must exist, or --create-bucket)');
  addS3Options(cmd)
    .option('--create-bucket', 'S3: create the bucket first (an existing bucket of yours is fine)')
    .option('--encrypt-key <file>', 'encrypt chunks and metadata with the key in this file (at least 16 bytes, e.g. head -c 32 /dev/urandom)')
    .option('--json', 'print the repository config as JSON')
    .option('--object-lock-days <n>', 'S3: keep every new object undeletable for N days (S3 Object Lock; the bucket must have it, --create-bucket creates it so)', count)
    .addOption(new Option('--object-lock-mode <mode>', 'S3 Object Lock mode: COMPLIANCE (nobody may delete early) or GOVERNANCE (special permission may)').choices(['COMPLIANCE', 'GOVERNANCE']).default('COMPLIANCE'))
    .action(async (o: RepoOptions & { createBucket?: boolean; objectLockDays?: number; objectLockMode: 'COMPLIANCE' | 'GOVERNANCE' }, self: Command) => {
      const encryptKey = o.encryptKey === undefined ? undefined : await readKeyFile(o.encryptKey);
      if (o.objectLockDays === 0) usageError(self, '--object-lock-days must be at least 1');
      const objectLock = o.objectLockDays === undefined ? undefined : { mode: o.objectLockMode, days: o.objectLockDays };
      const [{ ChunkRepository }, { openObjectStore }] = await Promise.all([chunkstore(), storeUrl()]);
      const store = await openObjectStore(o.repo, { ...storeOptions(o), ...(o.createBucket ? { createBucket: true, objectLock: objectLock !== undefined } : {}) });
      const repo = await ChunkRepository.init(store, { ...(encryptKey ? { encryptKey } : {}), ...(objectLock ? { objectLock } : {}) });
      if (o.json) json(repo.config);
      else out(`Chunk repository created in '${o.repo}'${repo.encrypted ? ' (encrypted)' : ''}\n`);
    });
}

function registerList(program: Command): void {
  repoCommand(program, 'backup-list', 'List the backup points of a chunk repository (virtback)')
    .argument('[domain]', 'only this domain')
    .action(async (domain: string | undefined, o: RepoOptions) => {
      const points = await (await openChunkRepository(o.repo, o.encryptKey, o)).listPoints(domain);
      if (o.json) {
        json(points.map((p) => ({ domain: p.domain.name, id: p.id, level: p.level, time: p.time, base: p.base, reason: p.reason, size: pointSize(p), bytesNew: pointNew(p), verify: p.verify ?? null })));
      } else {
        out(formatPointList(points));
      }
    });
}

function registerPrune(program: Command): void {
  const cmd = repoCommand(program, 'prune', "Remove a domain's backup points that no keep rule keeps (virtback; chunks go at the next gc)")
    .argument('<domain>', 'the domain')
    .option('--dry-run', 'only show what would be kept and removed')
    .option('--checkpoints', "also delete the domain's checkpoints of this repository that no kept point needs (connects to the daemon)");
  const period = { hourly: 'hour', daily: 'day', weekly: 'ISO week', monthly: 'month', yearly: 'year' } as const;
  for (const rule of PRUNE_RULES) {
    const help = rule === 'last' ? 'keep the N newest points' : `keep the newest point of each of the N newest ${period[rule]}s with points (UTC)`;
    cmd.option(`--keep-${rule} <n>`, help, count);
  }
  cmd.action(async (domain: string, o: RepoOptions & { dryRun?: boolean; checkpoints?: boolean } & Record<string, unknown>, self: Command) => {
    const policy: KeepPolicy = {};
    for (const rule of PRUNE_RULES) {
      const n = o[`keep${rule[0]!.toUpperCase()}${rule.slice(1)}`];
      if (typeof n === 'number') policy[rule] = n;
    }
    if (!Object.values(policy).some((n) => n! > 0)) usageError(self, 'prune needs at least one --keep-… rule above 0');
    const repo = await openChunkRepository(o.repo, o.encryptKey, o);
    const { checkpointsReferenced, describeRetention, planPrune, prunePoints } = await chunkstore();
    const { pruneRepoCheckpoints, repositoryId } = await import('../../vmbackup/index.js');
    const plan = planPrune(await repo.listPoints(domain), policy);
    const applied = o.dryRun ? null : await prunePoints(repo, plan);
    const deleted = o.checkpoints && !o.dryRun
      ? await withConnection(self, async (conn) => pruneRepoCheckpoints(await lookupDomain(conn, domain), repo, repositoryId(repo.config), silentLogger))
      : [];
    const remaining = plan.keep.map((k) => k.point);
    if (o.json) {
      const extra = applied ? { retained: applied.retained, keptForRuns: applied.keptForRuns } : {};
      json({ domain, dryRun: o.dryRun === true, keep: plan.keep.map((k) => ({ id: k.point.id, rule: k.rule })), remove: plan.remove.map((p) => p.id), checkpointsReferenced: [...checkpointsReferenced(remaining)], ...(o.checkpoints ? { checkpointsDeleted: deleted } : {}), ...extra });
      return;
    }
    for (const name of deleted) out(`checkpoint ${name} deleted\n`);
    const rows = [...plan.keep.map((k) => [k.point.id, 'keep', k.rule]), ...plan.remove.map((p) => [p.id, o.dryRun ? 'would remove' : applied?.removed.includes(p.id) ? 'removed' : 'locked, kept', ''])];
    rows.sort((a, b) => (a[0]! < b[0]! ? 1 : -1));
    out(formatTable(['Point', 'Action', 'Rule'], rows));
    if (applied && applied.retained.count > 0) out(`${describeRetention(applied.retained, 'objects of removed points')}\n`);
  });
}

function registerGc(program: Command): void {
  repoCommand(program, 'gc', 'Remove chunks no backup point references, older than a grace period (virtback)')
    .option('--grace <seconds>', `spare unreferenced chunks touched this recently (default ${DEFAULT_GC_GRACE_MS / 1000})`, count)
    .action(async (o: RepoOptions & { grace?: number }) => {
      const repo = await openChunkRepository(o.repo, o.encryptKey, o);
      const { collectGarbage, describeRetention } = await chunkstore();
      const r = await collectGarbage(repo, o.grace === undefined ? {} : { graceMs: o.grace * 1000 });
      if (o.json) {
        json(r);
        return;
      }
      out(`${r.points} points reference ${r.referencedChunks} chunks\n`);
      out(`removed ${r.removedChunks} chunks (${formatCapacity(r.removedBytes)}), ${r.removedIndexes} unreferenced indexes and ${r.removedStale} leftover temp files; ${r.pendingChunks} unreferenced chunks are within the grace period\n`);
      if (r.liveClaims > 0) out(`${r.liveClaims} backups running (their base and new chunks were kept)\n`);
      if (r.retained.count > 0) out(`${describeRetention(r.retained, 'unreferenced objects')}\n`);
      if (r.missingChunks.length > 0) out(`warning: ${r.missingChunks.length} referenced chunks are missing; run verify to see which points they break\n`);
    });
}

function registerVerify(program: Command): void {
  repoCommand(program, 'verify', 'Re-hash every chunk the backup points reference; set bad chunks aside (virtback)')
    .argument('[domain]', 'only this domain')
    .argument('[point]', 'only this point of the domain')
    .action(async (domain: string | undefined, point: string | undefined, o: RepoOptions) => {
      const repo = await openChunkRepository(o.repo, o.encryptKey, o);
      const { verifyRepository } = await chunkstore();
      const r = await verifyRepository(repo, { ...(domain !== undefined ? { domain } : {}), ...(point !== undefined ? { point } : {}) });
      const lines = formatVerifyReport(r);
      const verdict = lines.pop()!;
      if (o.json) json(r);
      else for (const l of lines) out(`${l}\n`);
      // the verdict: on stdout when good, as the error (exit 1) when not
      if (!r.ok) throw virErr('OPERATION_FAILED', 'STORAGE', verdict);
      if (!o.json) out(`${verdict}\n`);
    });
}

export function register(program: Command): void {
  registerInit(program);
  registerList(program);
  registerPrune(program);
  registerGc(program);
  registerVerify(program);
}
