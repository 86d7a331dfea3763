// The package entry: `import { connect } from 'virtback'`.

export { connect, connectLocal, defaultURI, resolveURI } from './sdk/connect.js';
export type { ConnectOptions, ResolvedURI, ResolvedUnixURI, ResolvedTlsURI } from './sdk/connect.js';
export { Connect, Domain, DomainCheckpoint } from './api/public.js';
export type { EventCallback, EventMap, EventName } from './api/public.js';
export type * from './api/options.js';
export type {
  BlockJobEvent,
  BlockJobInfo,
  DomainRef,
  DomainSummary,
  Driver,
  DriverEvent,
  EventListener,
  JobCompletedEvent,
  JobStats,
  LifecycleEvent,
} from './api/driver.js';
export { TestDriver } from './api/test-driver.js';
export type { TestDriverOptions } from './api/test-driver.js';
export { RemoteDriver } from './remote/client.js';
export type { RemoteConnectOptions, RemoteTlsOptions } from './remote/client.js';
export { ErrorCode, ErrorDomain, VirError, isVirError, virErr } from './errors.js';
export type { ErrorCodeName, ErrorDomainName } from './errors.js';
export * from './flags.js';
// Restore, verify and the pull-mode client work on backup files, without a daemon.
export { restoreBackup, verifyBackup, formatVerifyResult, pullBackup, readManifest, writeManifest } from './repository/index.js';
export type {
  BackupManifest, BackupManifestInput, WriteManifestOptions, RestoreOptions, RestoreResult, VerifyOptions, VerifyResult,
  PullBackupOptions, PullBackupResult,
} from './repository/index.js';
