// A real Ceph RADOS Gateway for the tests of the S3 chunk repository
// (scripts/ceph-test-cluster.sh starts it):
//
//   const ceph = useCeph();                          // at file level
//   test('...', { skip: ceph.skip }, async (t) => {
//     const s3 = await ceph.get();                   // endpoint + keys
//     const bucket = await ceph.bucket(t);           // a new bucket of this test's own, emptied and removed after it
//   });
//
// One cluster per suite run: scripts/test.sh starts one before the tests and
// exports VIRTBACK_TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY /
// _HTTPS_ENDPOINT / _CA_BUNDLE / VIRTBACK_TEST_CEPH_DIR; a file run alone starts its own (in a temp dir, on a
// free port) at its first get() and stops it when the file's tests end. Tests
// never share a bucket, so files running at once do not see each other's
// objects. A test that kills a gateway kills its own: privateGateway() starts
// one more radosgw on the same cluster.

import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from './net.js';

const run = promisify(execFile);
// the SDK's notice that it will drop Node 20 next year is noise in every test's output
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const SCRIPT = fileURLToPath(new URL('../../scripts/ceph-test-cluster.sh', import.meta.url));

export interface CephS3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** the cluster's folder (for scripts/ceph-test-cluster.sh kill-rgw/restart-rgw) */
  dir: string;
  /** the same gateway over HTTPS, and the PEM file of the CA its certificate is from (a cluster started without a TLS port has none) */
  httpsEndpoint?: string;
  caBundle?: string;
}

export interface Gateway {
  endpoint: string;
  /** kill -9 the gateway */
  kill(): Promise<void>;
  /** start it again; resolves when it answers an authenticated request */
  restart(): Promise<void>;
}

export interface CephHandle {
  /** why the tests cannot run here (not root, packages missing), or undefined */
  skip: string | undefined;
  get(): Promise<CephS3>;
  /** A new bucket; emptied and removed when `t` ends. */
  bucket(t: TestContext): Promise<string>;
  /** An S3 client of the test user (path style, the checksums Ceph 16.2 knows). */
  client(s3: CephS3): S3Client;
  /** one more radosgw of this test's own on the same cluster, killed when `t` ends */
  privateGateway(t: TestContext): Promise<Gateway>;
}

const BINARIES = ['/usr/bin/ceph-mon', '/usr/bin/ceph-osd', '/usr/bin/radosgw', '/usr/bin/radosgw-admin', '/usr/bin/ceph'];

export function cephSkipReason(): string | undefined {
  if (process.env.VIRTBACK_TEST_S3_ENDPOINT) return undefined;
  if (process.getuid?.() !== 0) return 'the test Ceph cluster needs root';
  const missing = BINARIES.filter((b) => !existsSync(b));
  if (missing.length > 0) return `Ceph is not installed (${missing.join(', ')}): scripts/ensure-deps.sh installs it`;
  return undefined;
}

async function cluster(...args: string[]): Promise<void> {
  await run(SCRIPT, args, { timeout: 300_000 });
}

function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line);
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

/** Start our own cluster in `dir`; useCeph's file-level `after` stops it. */
async function startOwn(dir: string): Promise<CephS3> {
  const t0 = Date.now();
  try {
    await cluster('start', dir, String(await freePort()), String(await freePort()));
  } catch (e) {
    await cluster('stop', dir).catch(() => undefined);
    throw e;
  }
  process.stderr.write(`# test Ceph cluster: S3 answered ${((Date.now() - t0) / 1000).toFixed(1)} s after a cold start\n`);
  const env = parseEnv(await readFile(path.join(dir, 's3.env'), 'utf8'));
  return {
    endpoint: env.AWS_ENDPOINT_URL!,
    accessKeyId: env.AWS_ACCESS_KEY_ID!,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
    region: env.AWS_REGION!,
    dir,
    ...(env.S3_HTTPS_ENDPOINT && env.AWS_CA_BUNDLE ? { httpsEndpoint: env.S3_HTTPS_ENDPOINT, caBundle: env.AWS_CA_BUNDLE } : {}),
  };
}

export function s3Client(s3: CephS3, endpoint = s3.endpoint): S3Client {
  return new S3Client({
    endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** Delete every object of `bucket`, then the bucket. */
export async function removeBucket(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
    const keys = (page.Contents ?? []).map((o) => ({ Key: o.Key! }));
    if (keys.length === 0) break;
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

let gatewayCounter = 0;

export function useCeph(): CephHandle {
  const skip = cephSkipReason();
  let started: Promise<CephS3> | undefined;
  let ownDir: string | undefined;
  // registered here, at the file's top level: an `after` called inside the
  // first test that starts the cluster would stop it when that test ends
  after(async () => {
    if (ownDir === undefined) return;
    await started?.catch(() => undefined);
    await cluster('stop', ownDir).catch(() => undefined);
    await rm(ownDir, { recursive: true, force: true });
  });
  const get = (): Promise<CephS3> => {
    const env = process.env;
    if (env.VIRTBACK_TEST_S3_ENDPOINT) {
      return Promise.resolve({
        endpoint: env.VIRTBACK_TEST_S3_ENDPOINT,
        accessKeyId: env.VIRTBACK_TEST_S3_ACCESS_KEY ?? '',
        secretAccessKey: env.VIRTBACK_TEST_S3_SECRET_KEY ?? '',
        region: env.VIRTBACK_TEST_S3_REGION ?? 'us-east-1',
        dir: env.VIRTBACK_TEST_CEPH_DIR ?? '',
        ...(env.VIRTBACK_TEST_S3_HTTPS_ENDPOINT && env.VIRTBACK_TEST_S3_CA_BUNDLE
          ? { httpsEndpoint: env.VIRTBACK_TEST_S3_HTTPS_ENDPOINT, caBundle: env.VIRTBACK_TEST_S3_CA_BUNDLE }
          : {}),
      });
    }
    started ??= mkdtemp(path.join(os.tmpdir(), 'vb-ceph-')).then((dir) => {
      ownDir = dir;
      return startOwn(dir);
    });
    return started;
  };
  return {
    skip,
    get,
    client: (s3) => s3Client(s3),
    async bucket(t) {
      const s3 = await get();
      const client = s3Client(s3);
      const name = `vb-${randomBytes(6).toString('hex')}`;
      await client.send(new CreateBucketCommand({ Bucket: name }));
      t.after(async () => {
        await removeBucket(client, name).catch(() => undefined);
        client.destroy();
      });
      return name;
    },
    async privateGateway(t) {
      const s3 = await get();
      if (!s3.dir) throw new Error('the suite cluster did not say where it lives (VIRTBACK_TEST_CEPH_DIR)');
      // gateway numbers are per cluster; a pid-based base keeps two files of one run apart
      const n = String(1 + (process.pid % 1000) * 10 + gatewayCounter++);
      const port = await freePort();
      await cluster('add-rgw', s3.dir, n, String(port));
      t.after(() => cluster('kill-rgw', s3.dir, n).catch(() => undefined));
      return {
        endpoint: `http://127.0.0.1:${port}`,
        kill: () => cluster('kill-rgw', s3.dir, n),
        restart: () => cluster('restart-rgw', s3.dir, n),
      };
    },
  };
}
