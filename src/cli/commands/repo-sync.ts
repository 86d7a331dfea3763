// `virtback repo-sync --from SRC --to DST`: an off-site copy of a chunk
// repository (folder → S3 and back, S3 → S3; src/chunkstore/sync.ts). Copies
// only what DST lacks — chunks, then indexes, then point records last — so
// it is resumable by running it again; --dry-run only says what it would copy.

import { InvalidArgumentError, type Command } from 'commander';
import fs from 'node:fs/promises';
import type { SyncResult } from '../../chunkstore/index.js';
import { DEFAULT_SYNC_PARALLEL } from '../../chunkstore/defaults.js';
import { virErr } from '../../errors.js';
import { formatCapacity, json, out } from '../output.js';
import { openChunkRepository, s3EndpointOption, s3NoPathStyleOption, s3PathStyleOption, type RepoLocation } from './chunk-repo.js';

async function readKey(file: string): Promise<Buffer> {
  return fs.readFile(file).catch((e: unknown) => {
    throw virErr('INVALID_ARG', 'STORAGE', `cannot read encryption key file '${file}': ${(e as Error).message}`, e);
  });
}

interface SyncCliOptions extends Omit<RepoLocation, 'repo'> {
  from: string;
  to: string;
  encryptKey?: string;
  parallel: number;
  dryRun?: boolean;
  json?: boolean;
}

function positive(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 256) throw new InvalidArgumentError('not an integer from 1 to 256');
  return n;
}

export function formatSync(r: SyncResult, created: boolean): string {
  const verb = r.dryRun ? 'would copy' : 'copied';
  const lines = r.points.map((p) => `${verb} point ${p}`);
  if (created) lines.push(r.dryRun ? 'would create the repository at the destination' : 'created the repository at the destination');
  lines.push(`${verb} ${r.points.length} points (${r.pointsPresent} already there), ${r.chunksCopied} chunks (${r.chunksPresent} already there), ${r.indexesCopied} indexes: ${formatCapacity(r.bytesCopied)}`);
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const cmd = program.command('repo-sync');
  cmd.addOption(s3EndpointOption()).addOption(s3PathStyleOption()).addOption(s3NoPathStyleOption());
  cmd
    .description('Copy the backup points a chunk repository lacks from another one: only missing chunks, point records last (virtback)')
    .requiredOption('--from <repo>', 'the source repository (a folder or s3://BUCKET/PREFIX)')
    .requiredOption('--to <repo>', 'the destination (created with the source\'s config when empty)')
    .option('--encrypt-key <file>', 'the key file of encrypted repositories (both must have the same encryption config)')
    .option('--parallel <n>', `objects copied at once (default ${DEFAULT_SYNC_PARALLEL})`, positive, DEFAULT_SYNC_PARALLEL)
    .option('--dry-run', 'only print what would be copied')
    .option('--json', 'print the result as JSON')
    .action(async (o: SyncCliOptions) => {
      const where = { ...(o.s3Endpoint !== undefined ? { s3Endpoint: o.s3Endpoint } : {}), ...(o.s3PathStyle !== undefined ? { s3PathStyle: o.s3PathStyle } : {}) };
      const src = await openChunkRepository(o.from, o.encryptKey, where);
      const key = o.encryptKey === undefined ? undefined : await readKey(o.encryptKey);
      // loaded here, not at start: the store is for this command only
      const [{ openSyncTarget, syncRepositories }, { CONFIG_KEY }, { openObjectStore }] = await Promise.all([
        import('../../chunkstore/index.js'), import('../../chunkstore/repo.js'), import('../../chunkstore/store-url.js'),
      ]);
      const dstStore = await openObjectStore(o.to, where);
      // a dry run creates nothing: against a destination without a repository it copies everything
      const { repo: dst, created } = o.dryRun && !(await dstStore.stat(CONFIG_KEY))
        ? { repo: null, created: true }
        : await openSyncTarget(dstStore, src, key);
      const r = await syncRepositories(src, dst, { dryRun: o.dryRun === true, parallel: o.parallel });
      if (o.json) json({ ...r, created });
      else out(formatSync(r, created));
    });
}
