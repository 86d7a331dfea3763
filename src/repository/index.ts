// The backup repository: manifests, restore, verify, and the pull-mode backup client.
export { writeManifest, readManifest, parseManifest, manifestPath, type BackupManifest, type BackupManifestInput, type WriteManifestOptions } from './manifest.js';
export { restoreBackup, type RestoreOptions, type RestoreProgress, type RestoreResult } from './restore.js';
export { verifyBackup, formatVerifyResult, type BadRange, type VerifyLink, type VerifyOptions, type VerifyProgress, type VerifyResult } from './verify.js';
export { pullBackup, type PullBackupOptions, type PullBackupResult, type PullProgress } from './pull.js';
export { gatherChain, checkChain, resolveChain, type ChainLink } from './chain.js';
export { CHECKSUM_ALGORITHM, CHECKSUM_BLOCK, BlockDigests, blockDigest, decodeChecksum, type ContentChecksum } from './checksum.js';
