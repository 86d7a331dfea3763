// The console's TLS certificate: the admin's own (--web-cert/--web-key), or a
// self-signed one made by openssl into <state-dir>/web/ on first start and
// reused afterwards (browsers then pin it once; a new one each start would
// make every start a new warning).

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { virErr } from '../errors.js';

export interface CertPair {
  cert: Buffer;
  key: Buffer;
  certFile: string;
  keyFile: string;
  generated: boolean;
}

function openssl(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { timeout: 60_000 }, (err, _out, stderr) => {
      if (err) reject(virErr('OPERATION_FAILED', 'NONE', `openssl ${args[0]} failed: ${stderr.trim() || err.message}`, err));
      else resolve();
    });
  });
}

/** The SAN list: the address the console listens on, and the loopback names. */
function subjectAltNames(host: string): string {
  const names = new Set(['DNS:localhost', 'IP:127.0.0.1', 'IP:::1']);
  if (/^[\d.]+$/.test(host) || host.includes(':')) {
    if (host !== '0.0.0.0' && host !== '::') names.add(`IP:${host}`);
  } else if (host !== '') names.add(`DNS:${host}`);
  return [...names].join(',');
}

export async function loadOrCreateCert(webDir: string, host: string, given?: { certFile: string; keyFile: string }): Promise<CertPair> {
  if (given) {
    return { cert: fs.readFileSync(given.certFile), key: fs.readFileSync(given.keyFile), ...given, generated: false };
  }
  const certFile = path.join(webDir, 'cert.pem');
  const keyFile = path.join(webDir, 'key.pem');
  let generated = false;
  if (!fs.existsSync(certFile) || !fs.existsSync(keyFile)) {
    fs.mkdirSync(webDir, { recursive: true, mode: 0o700 });
    const tmpKey = `${keyFile}.part`;
    const tmpCert = `${certFile}.part`;
    // the key file is made 0600 before openssl writes into it
    fs.writeFileSync(tmpKey, '', { mode: 0o600 });
    await openssl([
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', tmpKey, '-out', tmpCert, '-days', '3650', '-subj', '/CN=virtbackd web console',
      '-addext', `subjectAltName=${subjectAltNames(host)}`,
    ]);
    fs.chmodSync(tmpKey, 0o600);
    fs.renameSync(tmpKey, keyFile);
    fs.renameSync(tmpCert, certFile);
    generated = true;
  }
  return { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), certFile, keyFile, generated };
}
