// An instant restore's serve process started again later (resumeInstantServe,
// `virtback instant-restore-resume`): it is handed the recorded S3 endpoint,
// addressing, region and CA bundle (an AWS_CA_BUNDLE set where it starts
// wins), never credentials; an environment without credentials is refused
// with AUTH_FAILED naming the folder, the bucket and the endpoint, a recorded
// CA bundle that cannot be read with INVALID_ARG naming it; a running one is
// not started twice. And --no-s3-path-style on every command that takes
// --repo. The serve process here is a stand-in (node -e) that records its
// argv; test/s3/instant-restore.test.ts runs the real one against Ceph.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { s3Settings } from '../../src/chunkstore/store-url.js';
import { buildProgram } from '../../src/cli/virtback.js';
import { ErrorCode, VirError } from '../../src/errors.js';
import { servingPid, stopServeProcess } from '../../src/vmbackup/instant-process.js';
import { resumeInstantServe, STATE_FILE, type InstantState } from '../../src/vmbackup/instant.js';
import { pattern, tempDir, writePoint } from './chunkstore-fixtures.js';

/** A stand-in for `virtback`: records argv, AWS_REGION and AWS_CA_BUNDLE, writes the pidfile given, then waits to be stopped. */
function standIn(record: string): string[] {
  const script = `
    const fs = require('node:fs');
    const a = process.argv.slice(1);
    fs.writeFileSync(${JSON.stringify(record)}, JSON.stringify({ argv: a, region: process.env.AWS_REGION ?? null, ca: process.env.AWS_CA_BUNDLE ?? null, secret: process.env.AWS_SECRET_ACCESS_KEY ?? null }));
    fs.writeFileSync(a[a.indexOf('--pidfile') + 1], process.pid + '\\n');
    setInterval(() => {}, 1000);`;
  return [process.execPath, '-e', script, '--'];
}

function writeState(dir: string, s: InstantState): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, STATE_FILE), JSON.stringify(s));
}

function state(dir: string, over: Partial<InstantState>): InstantState {
  return {
    name: 'inst', uuid: '0f0f0f0f-1111-2222-3333-444444444444', domain: 'vm1', pointId: 'p', repoDir: '/nowhere',
    socket: path.join(dir, 'nbd.sock'), pidfile: path.join(dir, 'serve.pid'), logFile: path.join(dir, 'serve.log'),
    disks: [], streamed: false, ...over,
  };
}

/** Run with `vars` set in process.env (undefined: unset), restored after the test. */
function setEnv(t: TestContext, vars: Record<string, string | undefined>): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) if (x === undefined) delete process.env[k];
    else process.env[k] = x;
  };
  apply(vars);
  t.after(() => apply(saved));
}

test('resume serves a folder repository point again at its socket; a running one is not started twice', async () => {
  const dir = await tempDir();
  const repoDir = path.join(dir, 'repo');
  const repo = await ChunkRepository.init(await openFolderStore(repoDir), { chunkSize: 65536 });
  const point = await writePoint(repo, '2026-12-06T01:00:00.000Z', pattern(65536 * 3, 5));
  const d = path.join(dir, 'inst');
  const s = state(d, { repoDir, pointId: point.id, domain: point.domain.name });
  writeState(d, s);
  const record = path.join(dir, 'argv.json');
  try {
    await resumeAndRefusals(d, s, record, { repoDir, point });
  } finally {
    await stopServeProcess(s.pidfile, s.socket, 1000);
  }
});

async function resumeAndRefusals(d: string, s: InstantState, record: string, { repoDir, point }: { repoDir: string; point: { id: string; domain: { name: string } } }): Promise<void> {
  const first = await resumeInstantServe(d, standIn(record));
  assert.equal(first.started, true);
  assert.equal(servingPid(s.pidfile, s.socket), first.pid);
  const { argv } = JSON.parse(fs.readFileSync(record, 'utf8')) as { argv: string[] };
  assert.deepEqual(argv, ['backup-serve', '--repo', repoDir, point.domain.name, '--point', point.id, '--socket', s.socket, '--pidfile', s.pidfile], 'no S3 arguments for a folder');
  const again = await resumeInstantServe(d, standIn(record));
  assert.deepEqual([again.started, again.pid], [false, first.pid], 'the running serve process is kept');

  await stopServeProcess(s.pidfile, s.socket, 1000);
  assert.equal(servingPid(s.pidfile, s.socket), undefined);
  writeState(d, { ...s, pointId: '2026-12-06T02:00:00.000Z' });
  await assert.rejects(resumeInstantServe(d, standIn(record)), (e: unknown) =>
    e instanceof VirError && e.code === ErrorCode.NO_STORAGE_VOL && e.message.includes(d) && e.message.includes('2026-12-06T02:00:00.000Z'), 'a point no longer there is named');
  writeState(d, { ...s, repoDir: `${repoDir}.moved` });
  await assert.rejects(resumeInstantServe(d, standIn(record)), (e: unknown) => e instanceof VirError && e.code === ErrorCode.NO_STORAGE_POOL && e.message.includes(`${repoDir}.moved`));
  assert.equal(fs.existsSync(`${repoDir}.moved`), false, 'a missing repository folder is not created');
  writeState(d, { ...s, streamed: true });
  await assert.rejects(resumeInstantServe(d, standIn(record)), (e: unknown) => e instanceof VirError && e.code === ErrorCode.OPERATION_INVALID && /needs no serving/.test(e.message));
}

test('resume over S3 without credentials in the environment is refused with AUTH_FAILED, naming folder, bucket and endpoint', async (t) => {
  const dir = await tempDir();
  setEnv(t, {
    AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SESSION_TOKEN: undefined, AWS_PROFILE: undefined,
    AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'none'), AWS_CONFIG_FILE: path.join(dir, 'none'), AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONTAINER_CREDENTIALS_FULL_URI: undefined, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: undefined, AWS_WEB_IDENTITY_TOKEN_FILE: undefined,
    AWS_ENDPOINT_URL: undefined, AWS_ENDPOINT_URL_S3: undefined,
  });
  const d = path.join(dir, 'inst');
  const s = state(d, { repoDir: 's3://fleet-bucket/site-a', s3: { endpoint: 'http://127.0.0.1:9', pathStyle: true } });
  writeState(d, s);
  const record = path.join(dir, 'argv.json');
  await assert.rejects(resumeInstantServe(d, standIn(record)), (e: unknown) => {
    assert.ok(e instanceof VirError && e.code === ErrorCode.AUTH_FAILED, String(e));
    for (const part of [d, 's3://fleet-bucket/site-a', 'http://127.0.0.1:9', 'no S3 credentials']) assert.ok(e.message.includes(part), `${e.message} names ${part}`);
    return true;
  });
  assert.equal(fs.existsSync(record), false, 'no serve process was started');
});

test('s3Settings records endpoint, addressing, region and CA bundle, never credentials; --no-s3-path-style on every --repo command', async (t) => {
  setEnv(t, { AWS_ENDPOINT_URL: undefined, AWS_ENDPOINT_URL_S3: 'http://gw:7480', AWS_REGION: 'eu-1', AWS_SECRET_ACCESS_KEY: 'sekrit', AWS_CA_BUNDLE: undefined, AWS_CONFIG_FILE: '/nonexistent' });
  assert.deepEqual(s3Settings(), { endpoint: 'http://gw:7480', pathStyle: true, region: 'eu-1' });
  assert.deepEqual(s3Settings({ s3Endpoint: 'http://other:80', s3PathStyle: false }), { endpoint: 'http://other:80', pathStyle: false, region: 'eu-1' });
  setEnv(t, { AWS_ENDPOINT_URL_S3: undefined, AWS_REGION: undefined });
  assert.deepEqual(s3Settings(), { pathStyle: false }, 'AWS itself: virtual-hosted');
  assert.deepEqual(s3Settings({ s3PathStyle: true }), { pathStyle: true });

  // the CA bundle, as an absolute path, from AWS_CA_BUNDLE or the profile's ca_bundle; over http:// none is recorded
  const dir = await tempDir();
  const config = path.join(dir, 'config');
  fs.writeFileSync(config, '[profile site]\nca_bundle = /etc/site-ca.pem\n');
  setEnv(t, { AWS_CA_BUNDLE: 'ca/gw.pem', AWS_CONFIG_FILE: config, AWS_PROFILE: 'site' });
  assert.deepEqual(s3Settings({ s3Endpoint: 'https://gw:7443' }), { endpoint: 'https://gw:7443', pathStyle: true, caBundle: path.resolve('ca/gw.pem') });
  assert.deepEqual(s3Settings({ s3Endpoint: 'HTTP://gw:7480' }), { endpoint: 'HTTP://gw:7480', pathStyle: true }, 'nothing to trust over plain HTTP');
  setEnv(t, { AWS_CA_BUNDLE: undefined });
  assert.deepEqual(s3Settings(), { pathStyle: false, caBundle: '/etc/site-ca.pem' }, "the profile's ca_bundle (AWS itself)");

  const withRepo = buildProgram().commands.filter((c) => c.options.some((o) => o.long === '--s3-endpoint'));
  assert.ok(withRepo.length >= 10, `commands with --s3-endpoint: ${withRepo.map((c) => c.name()).join(' ')}`);
  for (const name of withRepo.map((c) => c.name())) {
    const parsed = (args: string[]) => {
      const cmd = buildProgram().commands.find((c) => c.name() === name)!;
      cmd.parseOptions(args);
      return cmd.opts<{ s3PathStyle?: boolean }>().s3PathStyle;
    };
    assert.equal(parsed([]), undefined, `${name}: neither option leaves the default`);
    assert.equal(parsed(['--s3-path-style']), true, name);
    assert.equal(parsed(['--no-s3-path-style']), false, name);
  }
});

test('the serve process is handed the recorded S3 settings as arguments, AWS_REGION and AWS_CA_BUNDLE (the environment\'s first), credentials only through its environment', async (t) => {
  const dir = await tempDir();
  setEnv(t, { AWS_REGION: undefined, AWS_SECRET_ACCESS_KEY: 'from-env', AWS_CA_BUNDLE: undefined });
  const { startServeProcess } = await import('../../src/vmbackup/instant-process.js');
  const d = path.join(dir, 'inst');
  fs.mkdirSync(d);
  const record = path.join(dir, 'argv.json');
  const spec = { virtbackCommand: standIn(record), repoDir: 's3://b/p', domain: 'vm1', pointId: 'P', socket: path.join(d, 'nbd.sock'), pidfile: path.join(d, 'serve.pid'), logFile: path.join(d, 'serve.log') };
  // stopped here, not in an after hook: tempDir's hook, registered first, removes the pidfile's folder first
  const serve = async () => {
    try {
      await startServeProcess({ ...spec, s3: { endpoint: 'http://gw:7480', pathStyle: false, region: 'eu-2', caBundle: '/srv/recorded-ca.pem' } });
    } finally {
      await stopServeProcess(spec.pidfile, spec.socket, 1000);
    }
    return JSON.parse(fs.readFileSync(record, 'utf8')) as { argv: string[]; region: string | null; ca: string | null; secret: string | null };
  };
  const got = await serve();
  assert.deepEqual(got.argv.slice(-3), ['--s3-endpoint', 'http://gw:7480', '--no-s3-path-style']);
  assert.equal(got.region, 'eu-2');
  assert.equal(got.ca, '/srv/recorded-ca.pem', 'the recorded CA bundle');
  setEnv(t, { AWS_CA_BUNDLE: '/srv/renewed-ca.pem' });
  assert.equal((await serve()).ca, '/srv/renewed-ca.pem', 'an AWS_CA_BUNDLE set where it is started wins');
  assert.equal(got.secret, 'from-env', 'credentials reach it through the environment');
  assert.ok(!got.argv.some((a) => a.includes('from-env')), 'and never as an argument');
});

test('resume with a recorded CA bundle that cannot be read is refused with INVALID_ARG naming it and instant.json, before anything starts', async (t) => {
  const dir = await tempDir();
  setEnv(t, { AWS_ACCESS_KEY_ID: 'id', AWS_SECRET_ACCESS_KEY: 'secret', AWS_CA_BUNDLE: undefined, AWS_ENDPOINT_URL: undefined, AWS_ENDPOINT_URL_S3: undefined });
  const d = path.join(dir, 'inst');
  const ca = path.join(dir, 'gone-ca.pem');
  writeState(d, state(d, { repoDir: 's3://fleet-bucket/site-a', s3: { endpoint: 'https://127.0.0.1:9', pathStyle: true, caBundle: ca } }));
  const record = path.join(dir, 'argv.json');
  await assert.rejects(resumeInstantServe(d, standIn(record)), (e: unknown) => {
    assert.ok(e instanceof VirError && e.code === ErrorCode.INVALID_ARG, String(e));
    for (const part of [d, `cannot read the CA bundle ${ca} named by ${path.join(d, STATE_FILE)}`]) assert.ok(e.message.includes(part), `${e.message} names ${part}`);
    return true;
  });
  assert.equal(fs.existsSync(record), false, 'no serve process was started');
});
