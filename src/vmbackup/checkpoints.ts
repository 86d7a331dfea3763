// This repository's checkpoints on a domain: after a point is written, and
// after prune removed point records, every one of them but the newest kept
// point's goes (through the Driver, so libvirt merges each deleted bitmap into
// its parent and the kept checkpoint stays complete). Another repository's
// checkpoints are never touched: their names carry another repository id.

import type { Domain } from '../api/public.js';
import type { ChunkRepository } from '../chunkstore/repo.js';
import { isVirError } from '../errors.js';
import { errField, type Logger } from '../log.js';
import { unneededCheckpoints } from './plan.js';

/** Delete this repository's checkpoints of `dom` except `keep`; returns the names deleted. Failures are logged, not thrown. */
export async function deleteRepoCheckpoints(dom: Domain, repoId: string, keep: string | null, log: Logger): Promise<string[]> {
  const names = (await dom.listAllCheckpoints()).map((c) => c.name);
  const deleted: string[] = [];
  for (const name of unneededCheckpoints(repoId, names, keep)) {
    try {
      await (await dom.checkpointLookupByName(name)).delete();
      deleted.push(name);
    } catch (e) {
      if (isVirError(e, 'NO_DOMAIN_CHECKPOINT')) continue; // gone meanwhile
      log.warn({ ...errField(e), checkpoint: name }, 'deleting a checkpoint no point needs failed');
    }
  }
  return deleted;
}

/** After points were removed: keep only the checkpoint of the domain's newest remaining point in this repository. */
export async function pruneRepoCheckpoints(dom: Domain, repo: ChunkRepository, repoId: string, log: Logger): Promise<string[]> {
  const points = (await repo.listPoints(dom.name)).filter((p) => p.domain.uuid === dom.uuid);
  return deleteRepoCheckpoints(dom, repoId, points.at(-1)?.checkpoint?.name ?? null, log);
}
