// The S3 repository over HTTPS against the real Ceph gateway (its TLS port,
// a certificate of a CA made for the cluster: scripts/ceph-test-cluster.sh):
// a backup and its restore byte-exact; what the PUT requests carry as they
// leave the SDK (observed after the signer, not taken from our own flag):
// UNSIGNED-PAYLOAD for chunk PUTs over HTTPS, the body's SHA-256 over HTTP
// and for other objects; the CA taken from AWS_CA_BUNDLE; a gateway whose
// certificate is not trusted fails at once with AUTH_FAILED saying so.

import type { S3Client } from '@aws-sdk/client-s3';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { openS3Store, type S3Store, type S3StoreOptions } from '../../src/chunkstore/s3-store.js';
import { caBundleOfProfile } from '../../src/chunkstore/s3-tls.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { repositoryId } from '../../src/vmbackup/index.js';
import { useCeph, type CephS3 } from '../helpers/ceph.js';
import { assertRestores, backup, MiB, startVm } from '../qemu/vmbackup-helpers.js';

const ceph = useCeph();
const run = promisify(execFile);
const CHUNK = 4 * MiB;

interface SeenPut {
  key: string;
  /** x-amz-content-sha256 as signed and sent */
  contentSha256: string;
  bodySha256: string;
  signed: boolean;
}

/** Every PutObject as it leaves the SDK: after the signer, just before the HTTP handler. */
function observePuts(client: S3Client): SeenPut[] {
  const seen: SeenPut[] = [];
  type Args = { request: unknown; input: unknown };
  const middleware = (next: (a: Args) => Promise<unknown>, context: { commandName?: string }) => (args: Args) => {
      const req = args.request as { headers: Record<string, string>; body: unknown };
      if (context.commandName === 'PutObjectCommand') {
        seen.push({
          key: (args.input as { Key: string }).Key,
          contentSha256: req.headers['x-amz-content-sha256'] ?? '',
          bodySha256: createHash('sha256').update(req.body as Buffer).digest('hex'),
          signed: /Signature=[0-9a-f]{64}/.test(req.headers.authorization ?? ''),
        });
      }
      return next(args);
  };
  // (the stack's type is a union of every step's middleware: this one is a finalizeRequest step's)
  client.middlewareStack.addRelativeTo(middleware as never, { relation: 'after', toMiddleware: 'httpSigningMiddleware', name: 'testObservePuts' });
  return seen;
}

function opts(s3: CephS3, bucket: string, more: Partial<S3StoreOptions> = {}): S3StoreOptions {
  return { bucket, endpoint: s3.endpoint, region: s3.region, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }, ...more };
}

async function tlsGateway(t: TestContext): Promise<(CephS3 & { httpsEndpoint: string; caBundle: string }) | null> {
  const s3 = await ceph.get();
  if (s3.httpsEndpoint === undefined || s3.caBundle === undefined) {
    t.skip('the suite\'s Ceph cluster has no TLS port (scripts/test.sh starts it with one)');
    return null;
  }
  return { ...s3, httpsEndpoint: s3.httpsEndpoint, caBundle: s3.caBundle };
}

test('over HTTPS: backup and restore byte-exact, chunk PUTs with UNSIGNED-PAYLOAD; over HTTP the payload signed', { skip: ceph.skip, timeout: 600_000 }, async (t) => {
  const s3 = await tlsGateway(t);
  if (s3 === null) return;
  const bucket = await ceph.bucket(t);
  const stores: S3Store[] = [];
  t.after(() => stores.forEach((s) => s.close()));
  const vm = await startVm(t, { name: 'vbk-s3tls', sizeMiB: 32 });
  for (let i = 0; i < 4; i++) await vm.write('sda', i * CHUNK, CHUNK, 0x30 + i);
  await vm.write('sda', 6 * CHUNK + 4096, 65536, 0x55);
  const expected = vm.snapshot();

  const rounds = [
    { endpoint: s3.httpsEndpoint, unsigned: true },
    { endpoint: s3.endpoint, unsigned: false },
  ];
  for (const { endpoint, unsigned } of rounds) {
    const store = await openS3Store(opts(s3, bucket, { endpoint, caBundle: s3.caBundle, prefix: unsigned ? 'tls' : 'plain' }));
    stores.push(store);
    const seen = observePuts(store.client);
    const repo = await ChunkRepository.init(store);
    const full = await backup(vm, { repo, id: repositoryId(repo.config) }, { level: 'full' });
    await assertRestores(repo, 'vbk-s3tls', full.pointId, expected, vm.env.dir);

    const chunks = seen.filter((p) => /\/chunks\//.test(p.key));
    const others = seen.filter((p) => !/\/chunks\//.test(p.key));
    assert.equal(chunks.length, 5, `${endpoint}: one PUT per distinct data chunk: ${JSON.stringify(seen.map((p) => p.key))}`);
    assert.ok(others.length >= 3, `${endpoint}: config, index, point record: ${JSON.stringify(others.map((p) => p.key))}`);
    assert.ok(seen.every((p) => p.signed), `${endpoint}: every request signed`);
    for (const p of chunks) assert.equal(p.contentSha256, unsigned ? 'UNSIGNED-PAYLOAD' : p.bodySha256, `${endpoint}: chunk ${p.key}`);
    // the rest (indexes, records, config) is no content address: signed on either
    for (const p of others) assert.equal(p.contentSha256, p.bodySha256, `${endpoint}: ${p.key}`);
    t.diagnostic(`${endpoint}: ${chunks.length} chunk PUTs ${unsigned ? 'unsigned' : 'signed'}, ${others.length} other PUTs signed`);
    // the dev's restart of the next round: a full backup again into another prefix
    for (const c of await vm.dom.listAllCheckpoints()) await c.delete();
  }
});

test('the CA bundle: AWS_CA_BUNDLE is trusted; a gateway certificate of another CA, or none given, fails at once with AUTH_FAILED', { skip: ceph.skip, timeout: 120_000 }, async (t) => {
  const s3 = await tlsGateway(t);
  if (s3 === null) return;
  const bucket = await ceph.bucket(t);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-s3tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));

  // AWS_CA_BUNDLE, as the AWS CLI takes it
  const saved = process.env.AWS_CA_BUNDLE;
  process.env.AWS_CA_BUNDLE = s3.caBundle;
  try {
    const store = await openS3Store(opts(s3, bucket, { endpoint: s3.httpsEndpoint }));
    await store.put('x/y', Buffer.from('over TLS'));
    assert.equal((await store.get('x/y')).toString(), 'over TLS');
    store.close();
  } finally {
    if (saved === undefined) delete process.env.AWS_CA_BUNDLE;
    else process.env.AWS_CA_BUNDLE = saved;
  }

  // another CA: not trusted, said at once (no retries for a minute)
  const other = path.join(dir, 'other-ca.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=not the gateway CA', '-keyout', path.join(dir, 'k.pem'), '-out', other]);
  const t0 = Date.now();
  const wrong = await openS3Store(opts(s3, bucket, { endpoint: s3.httpsEndpoint, caBundle: other })).catch((e: unknown) => e);
  assert.ok(wrong instanceof VirError && wrong.code === ErrorCode.AUTH_FAILED, String(wrong));
  assert.match(wrong.message, /TLS certificate is not trusted \([A-Z_]+\) by the CA bundle .*other-ca\.pem/);
  assert.ok(Date.now() - t0 < 10_000, `failed in ${Date.now() - t0} ms`);

  // none: the system's CAs, and the message says what to set
  const none = await openS3Store(opts(s3, bucket, { endpoint: s3.httpsEndpoint })).catch((e: unknown) => e);
  assert.ok(none instanceof VirError && none.code === ErrorCode.AUTH_FAILED, String(none));
  assert.match(none.message, /not trusted .*AWS_CA_BUNDLE/);

  // a bundle that cannot be read: INVALID_ARG naming it
  const missing = path.join(dir, 'missing.pem');
  await assert.rejects(openS3Store(opts(s3, bucket, { endpoint: s3.httpsEndpoint, caBundle: missing })), (e: unknown) => e instanceof VirError && e.code === ErrorCode.INVALID_ARG && e.message.includes(missing));
});

test('ca_bundle of the shared config file: the profile asked for, default otherwise', () => {
  const config = ['[default]', 'region = eu-1', 'ca_bundle = /etc/ssl/default.pem', '', '[profile site]', '  ca_bundle=/etc/ssl/site.pem  # the gateway CA', '[profile bare]', 'region = x'].join('\n');
  assert.equal(caBundleOfProfile(config, 'default'), '/etc/ssl/default.pem');
  assert.equal(caBundleOfProfile(config, 'site'), '/etc/ssl/site.pem');
  assert.equal(caBundleOfProfile(config, 'bare'), undefined);
  assert.equal(caBundleOfProfile(config, 'nosuch'), undefined);
});
