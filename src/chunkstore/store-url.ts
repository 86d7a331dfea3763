// Where a repository lives, from what the user typed after --repo: a folder
// path, or s3://BUCKET[/PREFIX] (docs/object-storage.md). The one place that
// chooses the backend; every command opens its repository through here.
// The S3 backend (and the AWS SDK under it: ~0.5 s to load on this machine,
// a third of a `virtback backup` command's start) is loaded only for an
// s3:// URL: a folder repository never pays it.

import path from 'node:path';
import { virErr } from '../errors.js';
import type { Logger } from '../log.js';
import { openFolderStore, type ObjectStore } from './object-store.js';
import type { S3StoreOptions } from './s3-store.js';
import { caBundleFile } from './s3-tls.js';

export interface StoreUrlOptions {
  /** --s3-endpoint: default the SDK's (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url) */
  s3Endpoint?: string;
  /** --s3-path-style / --no-s3-path-style: default on when an endpoint is given (on-site gateways), else virtual-hosted (AWS) */
  s3PathStyle?: boolean;
  /** repo-init --create-bucket: create the bucket first (an existing one of ours is fine) */
  createBucket?: boolean;
  /** with createBucket: enable S3 Object Lock on the new bucket (the hook for --object-lock-days) */
  objectLock?: boolean;
  /** anything else of the S3 store (parallel uploads, retry budget, credentials for tests) */
  s3?: Partial<S3StoreOptions>;
  log?: Logger;
}

export interface S3Location {
  bucket: string;
  prefix: string;
}

// S3's bucket naming rules (lower case, digits, dots and hyphens; 3–63)
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** s3://BUCKET[/PREFIX] → its parts; null for anything that is not an s3:// URL (a folder). */
export function parseS3Url(url: string): S3Location | null {
  if (!/^s3:\/\//i.test(url)) return null;
  const rest = url.slice('s3://'.length);
  const cut = rest.indexOf('/');
  const bucket = cut < 0 ? rest : rest.slice(0, cut);
  const prefix = cut < 0 ? '' : rest.slice(cut + 1).replace(/\/+$/, '');
  if (!BUCKET.test(bucket)) throw virErr('INVALID_ARG', 'STORAGE', `'${url}': '${bucket}' is not an S3 bucket name (3–63 of a-z 0-9 . -)`);
  if (prefix.split('/').some((p) => p === '' || p === '.' || p === '..' || p.startsWith('.'))) {
    if (prefix !== '') throw virErr('INVALID_ARG', 'STORAGE', `'${url}': the key prefix '${prefix}' has an empty, '.', '..' or hidden part`);
  }
  return { bucket, prefix };
}

/**
 * Where an s3:// repository is reached, as resolved now from the options and
 * the environment — none of it secret: what a process started later (an
 * instant restore's serve process, after a reboot) records and is handed,
 * since its own environment may lack it. Credentials (keys, AWS_PROFILE) are
 * never part of it: each process takes its own from its environment.
 */
export interface S3Settings {
  endpoint?: string;
  pathStyle: boolean;
  /** AWS_REGION as set now (else the SDK's chain decides, as it will later) */
  region?: string;
  /**
   * The CA bundle resolved now (AWS_CA_BUNDLE, else the profile's ca_bundle),
   * as an absolute path: a public certificate, not a secret. Absent: the
   * system's CAs, or a plain http:// endpoint with nothing to trust.
   */
  caBundle?: string;
}

/** The endpoint and addressing as resolved now: the options, else the environment. */
function s3Endpoint(opts: Pick<StoreUrlOptions, 's3Endpoint' | 's3PathStyle'>): { endpoint?: string; pathStyle: boolean } {
  const endpoint = opts.s3Endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
  return { ...(endpoint !== undefined ? { endpoint } : {}), pathStyle: opts.s3PathStyle ?? endpoint !== undefined };
}

export function s3Settings(opts: Pick<StoreUrlOptions, 's3Endpoint' | 's3PathStyle'> = {}): S3Settings {
  const where = s3Endpoint(opts);
  // over plain http:// there is no certificate to check: a bundle named in the environment is not recorded
  const ca = where.endpoint !== undefined && /^http:/i.test(where.endpoint) ? undefined : caBundleFile();
  return {
    ...where,
    ...(process.env.AWS_REGION ? { region: process.env.AWS_REGION } : {}),
    ...(ca ? { caBundle: path.resolve(ca.file) } : {}),
  };
}

function s3Options(loc: S3Location, opts: StoreUrlOptions): S3StoreOptions {
  const { endpoint, pathStyle } = s3Endpoint(opts);
  return {
    bucket: loc.bucket,
    prefix: loc.prefix,
    ...(endpoint !== undefined ? { endpoint } : {}),
    forcePathStyle: pathStyle,
    ...(opts.log ? { log: opts.log } : {}),
    ...opts.s3,
  };
}

async function createBucket(o: S3StoreOptions, objectLock: boolean): Promise<void> {
  const [{ CreateBucketCommand }, { isTransient, makeS3Client }] = await Promise.all([import('@aws-sdk/client-s3'), import('./s3-store.js')]);
  const client = makeS3Client(o);
  try {
    await client.send(new CreateBucketCommand({ Bucket: o.bucket, ...(objectLock ? { ObjectLockEnabledForBucket: true } : {}) }));
  } catch (e) {
    const name = (e as { name?: string }).name ?? 'Error';
    if (name === 'BucketAlreadyOwnedByYou') return;
    if (name === 'BucketAlreadyExists') throw virErr('OPERATION_INVALID', 'STORAGE', `S3 bucket '${o.bucket}' exists and belongs to someone else`, e);
    // wrong credentials, an unreachable endpoint: the open that follows says so clearly
    if (AUTH_OR_NETWORK.test(name) || isTransient(e)) return;
    throw virErr('OPERATION_FAILED', 'STORAGE', `cannot create S3 bucket '${o.bucket}': ${name}: ${(e as Error).message}`, e);
  } finally {
    client.destroy();
  }
}

const AUTH_OR_NETWORK = /^(InvalidAccessKeyId|SignatureDoesNotMatch|CredentialsProviderError)$/;

/**
 * The object store `url` names: s3://BUCKET[/PREFIX] (endpoint, region and
 * credentials the way the AWS tools take them, see StoreUrlOptions), or a
 * folder (created when missing).
 */
export async function openObjectStore(url: string, opts: StoreUrlOptions = {}): Promise<ObjectStore> {
  const loc = parseS3Url(url);
  if (loc === null) return openFolderStore(url);
  // the SDK warns on stderr about Node versions it will drop next year; not the user's concern
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const o = s3Options(loc, opts);
  if (opts.createBucket) await createBucket(o, opts.objectLock === true);
  const { openS3Store } = await import('./s3-store.js');
  return openS3Store(o);
}

/** Close what the store holds open (the S3 client's sockets); a folder holds nothing. */
export function closeObjectStore(store: ObjectStore): void {
  (store as ObjectStore & { close?: () => void }).close?.();
}
