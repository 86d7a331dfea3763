// The optional TCP listener: TLS with client certificates; a client without
// a certificate signed by the CA gets nothing.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RemoteServer } from '../../src/remote/server.js';
import { RemoteDriver } from '../../src/remote/client.js';
import { VirError } from '../../src/errors.js';
import { fakeDriver } from './remote-fixtures.js';

const haveOpenssl = spawnSync('openssl', ['version']).status === 0;

function openssl(dir: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

/** A CA, a server certificate for 127.0.0.1, and two client certificates: one from the CA, one self-signed. */
function makePki(dir: string): void {
  const key = (name: string) => openssl(dir, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`]);
  key('ca');
  openssl(dir, ['req', '-x509', '-new', '-key', 'ca.key', '-subj', '/CN=test CA', '-days', '2', '-out', 'ca.pem']);
  fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1\n');
  for (const name of ['server', 'client']) {
    key(name);
    openssl(dir, ['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-out', `${name}.csr`]);
    openssl(dir, [
      'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
      ...(name === 'server' ? ['-extfile', 'server.ext'] : []), '-out', `${name}.pem`,
    ]);
  }
  key('rogue');
  openssl(dir, ['req', '-x509', '-new', '-key', 'rogue.key', '-subj', '/CN=rogue', '-days', '2', '-out', 'rogue.pem']);
}

test('TLS listener serves clients with a CA-signed certificate and refuses others', { skip: !haveOpenssl && 'openssl not installed' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-tls-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  makePki(dir);
  const read = (f: string) => fs.readFileSync(path.join(dir, f));
  const server = new RemoteServer(fakeDriver());
  t.after(() => server.close());
  const addr = await server.listenTls({ host: '127.0.0.1', port: 0, cert: read('server.pem'), key: read('server.key'), ca: read('ca.pem') });

  const good = await RemoteDriver.connectTls({
    host: '127.0.0.1',
    port: addr.port,
    cert: read('client.pem'),
    key: read('client.key'),
    ca: read('ca.pem'),
  });
  assert.equal(good.uri, 'fake:///test');
  assert.deepEqual(await good.listJobIds('u'), [7]);
  await good.close();

  await assert.rejects(
    RemoteDriver.connectTls({ host: '127.0.0.1', port: addr.port, cert: read('rogue.pem'), key: read('rogue.key'), ca: read('ca.pem') }),
    (e: unknown) => e instanceof VirError && (e.code === 5 || e.code === 39),
  );
});
