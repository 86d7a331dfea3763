// NBD over TLS (NBD_OPT_STARTTLS): after the option's ACK the client wraps
// its plain socket in node:tls and the rest of the handshake and all of
// transmission run encrypted. x509 as QEMU's tls-creds-x509 endpoint=server
// expects: the server's certificate is verified against our CA and its name,
// and a client certificate is sent for servers that verify peers.

import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { virErr } from '../errors.js';
import { connectionError } from './errors.js';

/** x509 credentials for NBD_OPT_STARTTLS (PSK is not supported). */
export interface NbdTlsOptions {
  /** PEM CA bundle used to verify the server. */
  ca?: string | Buffer;
  /** PEM client certificate and key, for servers that verify clients. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name to verify in the server certificate (default: the host; 'localhost' over a unix socket). */
  servername?: string;
  /** TLS-PSK identity and key, as nbdkit/qemu-nbd --tls-creds-psk use: refused with CONFIG_UNSUPPORTED. */
  psk?: { identity: string; key: Buffer };
}

/**
 * Credentials from a folder in the layout QEMU's tls-creds-x509 and libnbd's
 * tls-certificates read: ca-cert.pem, and client-cert.pem + client-key.pem when present.
 */
export async function loadTlsDir(dir: string, servername?: string): Promise<NbdTlsOptions> {
  const read = (f: string) => fs.readFile(path.join(dir, f)).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw virErr('SYSTEM_ERROR', 'NBD', `cannot read TLS credential '${path.join(dir, f)}': ${e.message}`, e);
  });
  const [ca, cert, key] = await Promise.all([read('ca-cert.pem'), read('client-cert.pem'), read('client-key.pem')]);
  if (!ca) throw virErr('INVALID_ARG', 'NBD', `TLS credentials folder '${dir}' has no ca-cert.pem`);
  if ((cert === undefined) !== (key === undefined)) throw virErr('INVALID_ARG', 'NBD', `TLS credentials folder '${dir}' has only one of client-cert.pem and client-key.pem`);
  return { ca, ...(cert && key ? { cert, key } : {}), ...(servername ? { servername } : {}) };
}

/** Refuse what we cannot do before any byte is sent, rather than talk in clear text. */
export function checkTlsOptions(opts: NbdTlsOptions, uri: string): void {
  if (opts.psk) throw virErr('CONFIG_UNSUPPORTED', 'NBD', `TLS-PSK for NBD connection to ${uri} is not supported (use x509 certificates)`);
}

/**
 * Deliver the cleartext of `secure` into one reused buffer, as `onread` does for
 * a plain socket; false if this Node cannot (then it emits 'data' as usual).
 * node:tls takes `onread` only for a socket it opens itself, not for one it
 * wraps (STARTTLS), yet the native TLS stream supports a user buffer like any
 * stream: this sets the two fields net.Socket's constructor would have set and
 * switches the handle over. It must run before any cleartext arrives. Worth it:
 * a fresh 16 KiB buffer and a stream 'data' event per TLS record cost the main
 * thread ~1 s more per GiB than the plain socket's reads.
 */
function useReadBuffer(secure: tls.TLSSocket, onread: net.OnReadOpts): boolean {
  const field = (name: string) => Object.getOwnPropertySymbols(secure).find((s) => s.description === name);
  const kBuffer = field('kBuffer');
  const kBufferCb = field('kBufferCb');
  const handle = (secure as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  if (!kBuffer || !kBufferCb || typeof handle?.useUserBuffer !== 'function' || typeof onread.buffer === 'function') return false;
  const fields = secure as unknown as Record<symbol, unknown>;
  fields[kBuffer] = onread.buffer;
  fields[kBufferCb] = onread.callback;
  handle.useUserBuffer(onread.buffer);
  return true;
}

/**
 * Wrap `raw` (right after the server's ACK to NBD_OPT_STARTTLS) and finish the TLS handshake.
 * With `onread`, cleartext goes there (one reused buffer) where Node allows it; `reads` says which.
 */
export function startTls(
  raw: net.Socket,
  opts: NbdTlsOptions,
  host: string | undefined,
  uri: string,
  onread?: net.OnReadOpts,
): Promise<{ secure: tls.TLSSocket; reads: 'buffer' | 'data' }> {
  const name = opts.servername ?? host ?? 'localhost';
  return new Promise((resolve, reject) => {
    const secure = tls.connect({
      socket: raw,
      ...(opts.ca ? { ca: opts.ca } : {}),
      ...(opts.cert ? { cert: opts.cert } : {}),
      ...(opts.key ? { key: opts.key } : {}),
      // SNI must be a DNS name; the identity check still covers IP addresses.
      ...(net.isIP(name) ? {} : { servername: name }),
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity(name, cert),
      minVersion: 'TLSv1.2',
    });
    const reads = onread && useReadBuffer(secure, onread) ? 'buffer' : 'data';
    const onError = (e: Error) => reject(connectionError(`TLS handshake with NBD server ${uri} failed: ${e.message}`, e));
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.off('error', onError);
      resolve({ secure, reads });
    });
  });
}
