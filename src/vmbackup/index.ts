// Whole-VM backups into the chunk repository: `virtback backup`, `restore`,
// and the checkpoints a repository keeps on its domains.
export { backupDomain, selectDisks, TOOL_VERSION, type VmBackupOptions, type VmBackupResult } from './backup.js';
export { deleteRepoCheckpoints, pruneRepoCheckpoints } from './checkpoints.js';
export { rewriteDomainXml, macFromBytes, type NewIdentity, type RestoredDisk } from './domain-rewrite.js';
export { checkpointName, checkpointPrefix, decideLevel, repositoryId, type RequestedLevel } from './plan.js';
export { readDisk, type DiskProgress } from './read-disk.js';
export { restoreDomain, type VmRestoreOptions, type VmRestoreResult } from './restore.js';
export { parseTargetDevs, type TargetDevices } from './restore-device.js';
