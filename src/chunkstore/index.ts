// The chunk repository's public surface (docs/repository.md): storage for
// backup points, used by the backup/restore flows, the NBD server and the CLI.

export { openFolderStore, type ObjectInfo, type ObjectStore } from './object-store.js';
export { CHUNK_SIZE, ChunkRepository, chunkKey, newPointId, ZERO_CHUNK, type ChunkId, type DiskIndex, type PointRecord, type RepoConfig, type VerifyState } from './repo.js';
export { chunkCount, chunkLength } from './disk-index.js';
export { chunkId, encodeObject, type RepoKeys } from './chunk-codec.js';
export { applyPrune, checkpointsReferenced, planPrune, prunePoints, PRUNE_RULES, type KeepPolicy, type PruneApplied, type PrunePlan, type PruneRule } from './prune.js';
export { DEFAULT_LEASE_RENEW_MS, DEFAULT_LEASE_TIMEOUT_MS, DomainLease, listClaims, withDomainLease, type Claim, type LeaseOptions, type ListedClaim } from './lease.js';
export { describeRetention, type RetentionReport } from './retention.js';
export { collectGarbage, DEFAULT_GC_GRACE_MS, type GcOptions, type GcResult } from './gc.js';
export { verifyRepository, type BadChunk, type PointVerdict, type VerifyOptions, type VerifyReport } from './verify.js';
export { pointDiskSource, type Extent, type PointDiskSource } from './source.js';
export { checkCompatible, DEFAULT_SYNC_PARALLEL, openSyncTarget, syncRepositories, type SyncOptions, type SyncResult } from './sync.js';
