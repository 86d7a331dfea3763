// HTTPS for the S3 store: which CA bundle to trust (the way the AWS CLI takes
// it: AWS_CA_BUNDLE, else `ca_bundle` of the profile in the shared config
// file), what a certificate failure says, and unsigned chunk payloads over TLS.
//
// SigV4 signs a SHA-256 of every PUT body (~1 CPU s per GiB of chunks on the
// main thread). Over HTTPS that hash adds nothing: TLS already protects the
// body in transit, and at rest a chunk is checked by its content address (and
// its GCM tag when encrypted) on every read. So chunk PUTs over HTTPS carry
// `x-amz-content-sha256: UNSIGNED-PAYLOAD` (what AWS's own tools send over
// HTTPS); over plain HTTP the signature is all that guards the body, and it
// stays signed.

import type { S3Client } from '@aws-sdk/client-s3';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { virErr, type VirError } from '../errors.js';

/** Where the CA bundle comes from (for messages) and its PEM text. */
export interface CaBundle {
  source: string;
  pem: string;
}

/** The `ca_bundle` of `profile` in an AWS shared config file's text, or undefined. */
export function caBundleOfProfile(configText: string, profile: string): string | undefined {
  const wanted = profile === 'default' ? ['default', 'profile default'] : [`profile ${profile}`];
  let inSection = false;
  for (const raw of configText.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const section = /^\[\s*(.+?)\s*\]$/.exec(line);
    if (section) {
      inSection = wanted.includes(section[1]!);
      continue;
    }
    const kv = /^ca_bundle\s*=\s*(.*)$/.exec(line);
    if (inSection && kv && kv[1] !== '') return kv[1];
  }
  return undefined;
}

/** Which CA bundle file to trust and what named it: `explicit`, AWS_CA_BUNDLE, the profile's `ca_bundle`, else none (the system's roots). */
export function caBundleFile(explicit?: string, explicitSource = 'the caBundle option'): { file: string; source: string } | undefined {
  const env = process.env;
  if (explicit !== undefined) return { file: explicit, source: explicitSource };
  if (env.AWS_CA_BUNDLE) return { file: env.AWS_CA_BUNDLE, source: 'AWS_CA_BUNDLE' };
  const config = env.AWS_CONFIG_FILE ?? path.join(os.homedir(), '.aws', 'config');
  let text = '';
  try {
    text = readFileSync(config, 'utf8');
  } catch {
    // no shared config file: nothing to take from it
  }
  const profile = env.AWS_PROFILE ?? env.AWS_DEFAULT_PROFILE ?? 'default';
  const named = caBundleOfProfile(text, profile);
  if (named === undefined) return undefined;
  return { file: named.replace(/^~(?=\/)/, os.homedir()), source: `ca_bundle of profile '${profile}' in ${config}` };
}

/** The CA bundle to trust (caBundleFile's) with its PEM text; a file that cannot be read is INVALID_ARG naming it and what named it. */
export function resolveCaBundle(explicit?: string, explicitSource?: string): CaBundle | undefined {
  const named = caBundleFile(explicit, explicitSource);
  if (named === undefined) return undefined;
  const { file, source } = named;
  try {
    return { source: `${file} (${source})`, pem: readFileSync(file, 'utf8') };
  } catch (e) {
    throw virErr('INVALID_ARG', 'STORAGE', `cannot read the CA bundle ${file} named by ${source}: ${(e as Error).message}`, e);
  }
}

/** Node's codes for a server certificate it does not trust (or that does not name the host). */
const CERT_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** The certificate code somewhere in `e`'s cause chain, or undefined. */
export function certificateCode(e: unknown): string | undefined {
  for (let c: unknown = e, depth = 0; c && depth < 4; c = (c as { cause?: unknown }).cause, depth++) {
    const code = (c as { code?: string }).code;
    if (code && CERT_CODES.has(code)) return code;
  }
  return undefined;
}

/** AUTH_FAILED for a gateway whose certificate is not trusted: what to set to trust it. */
export function certificateError(e: unknown, code: string, where: string, ca: CaBundle | undefined): VirError {
  const trusted = ca ? `the CA bundle ${ca.source}` : "the system's CAs (set AWS_CA_BUNDLE or the profile's ca_bundle to a PEM file of the gateway's CA)";
  return virErr('AUTH_FAILED', 'STORAGE', `${where}: its TLS certificate is not trusted (${code}) by ${trusted}`, e);
}

/** The value SigV4 signs instead of the body's hash (the header names it). */
export const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';

/**
 * Chunk PUTs (keys under `chunkPrefix`) sent over HTTPS go with an unsigned
 * payload: the signer takes a preset x-amz-content-sha256 as the payload's
 * hash and reads no byte of the body.
 */
export function unsignedChunkPutsOverTls(client: S3Client, chunkPrefix: string): void {
  client.middlewareStack.add(
    (next, context) => (args) => {
      const req = args.request as { protocol?: string; headers?: Record<string, string> };
      const key = (args.input as { Key?: string }).Key;
      if (context.commandName === 'PutObjectCommand' && req.protocol === 'https:' && req.headers && key?.startsWith(chunkPrefix)) {
        req.headers['x-amz-content-sha256'] = UNSIGNED_PAYLOAD;
      }
      return next(args);
    },
    // after the request is serialized (protocol and headers known), before it is signed
    { step: 'build', priority: 'low', name: 'virtbackUnsignedChunkPayload' },
  );
}
