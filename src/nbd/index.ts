// The NBD client's public surface, for the pull backup client and tools.
export { NbdClient, describeTarget, type BlockSizes, type Extent, type NbdConnectOptions, type NbdTarget, type NbdTlsOptions } from './client.js';
export { copyToFile, copyToSink, fileSink, planCopy, nonZeroRuns, type CopySink, type CopiedRange, type CopyOptions, type CopyProgress, type CopyResult } from './copy.js';
export { extents, mergeExtents, type ExtentsOptions } from './extents.js';
export { NbdError } from './errors.js';
export { loadTlsDir } from './tls.js';
export * as nbdProtocol from './protocol.js';
