// A throwaway x509 PKI for NBD over TLS, made with openssl, in the folder
// layouts QEMU's tls-creds-x509 (server-*.pem) and libnbd/virtback's NBD
// client (client-*.pem) read. Several test files need the same one.

import { execFile } from 'node:child_process';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCerts {
  /** ca-cert.pem, server-cert.pem, server-key.pem (the server: localhost, 127.0.0.1) */
  server: string;
  /** ca-cert.pem, client-cert.pem, client-key.pem */
  client: string;
  /** the server and client pairs side by side, as libvirt's /etc/pki/qemu */
  both: string;
  /** ca-cert.pem only */
  caOnly: string;
  /** nothing */
  empty: string;
}

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate, below `dir`. */
export async function makeCerts(dir: string): Promise<TestCerts> {
  const ca = path.join(dir, 'ca');
  const dirs = { server: path.join(dir, 'server'), client: path.join(dir, 'client'), both: path.join(dir, 'both'), caOnly: path.join(dir, 'ca-only'), empty: path.join(dir, 'empty') };
  for (const d of [ca, ...Object.values(dirs)]) await mkdir(d, { recursive: true });
  const caCert = path.join(ca, 'ca-cert.pem');
  const caKey = path.join(ca, 'ca-key.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', caCert, '-days', '2',
    '-subj', '/CN=virtback test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const leaf = async (out: string, name: 'server' | 'client', cn: string, ext: string): Promise<void> => {
    const key = path.join(out, `${name}-key.pem`);
    const csr = path.join(ca, `${name}.csr`);
    const extFile = path.join(ca, `${name}.ext`);
    await writeFile(extFile, `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n${ext}\n`);
    await run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${cn}`]);
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-CAcreateserial', '-days', '2',
      '-out', path.join(out, `${name}-cert.pem`), '-extfile', extFile]);
    await copyFile(caCert, path.join(out, 'ca-cert.pem'));
  };
  await leaf(dirs.server, 'server', 'localhost', 'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1');
  await leaf(dirs.client, 'client', 'virtback-test-client', 'extendedKeyUsage=clientAuth');
  await copyFile(caCert, path.join(dirs.caOnly, 'ca-cert.pem'));
  for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) await copyFile(path.join(dirs.server, f), path.join(dirs.both, f));
  for (const f of ['client-cert.pem', 'client-key.pem']) await copyFile(path.join(dirs.client, f), path.join(dirs.both, f));
  return dirs;
}
