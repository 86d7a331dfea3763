// The console's HTTP vocabulary: libvirt errors as JSON with an HTTP status,
// the strict headers every response carries, the same-origin check of
// non-GET requests, and reading a JSON body of a known shape.

import type { Context } from 'hono';
import { z } from 'zod';
import { ErrorCode, toVirError, virErr, type VirError } from '../errors.js';

/** The HTTP status of a libvirt error code (the contract's 400/401/403/404/409/500, and 413/429). */
export function httpStatus(e: VirError): 400 | 401 | 403 | 404 | 409 | 413 | 429 | 500 {
  switch (e.code) {
    case ErrorCode.AUTH_FAILED:
      return 401;
    case ErrorCode.OPERATION_DENIED:
      return 403;
    case ErrorCode.NO_DOMAIN:
    case ErrorCode.NO_DOMAIN_CHECKPOINT:
    case ErrorCode.NO_DOMAIN_BACKUP:
    case ErrorCode.NO_STORAGE_VOL:
      return 404;
    case ErrorCode.OPERATION_INVALID:
    case ErrorCode.CHECKPOINT_INCONSISTENT:
      return 409;
    case ErrorCode.INVALID_ARG:
    case ErrorCode.XML_ERROR:
    case ErrorCode.XML_INVALID_SCHEMA:
    case ErrorCode.ARGUMENT_UNSUPPORTED:
    case ErrorCode.CONFIG_UNSUPPORTED:
    case ErrorCode.INVALID_DOMAIN:
    case ErrorCode.INVALID_DOMAIN_CHECKPOINT:
      return 400;
    default:
      return 500;
  }
}

export function errorBody(e: VirError): { error: { code: number; name: string; message: string } } {
  return { error: { code: e.code, name: `VIR_ERR_${e.codeName}`, message: e.message } };
}

export function errorResponse(c: Context, err: unknown, status?: 404 | 413 | 429): Response {
  const e = toVirError(err);
  return c.json(errorBody(e), status ?? httpStatus(e));
}

/** Headers of every response: no framing, no sniffing, no referrer, scripts only from our own files. */
export const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy': "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cache-Control': 'no-store',
};

/**
 * A non-GET request must come from a page of this console: its Origin names
 * this host (scheme and port included), or, without an Origin, the browser
 * says same-origin. A cross-site form or fetch carries a foreign Origin.
 */
export function sameOrigin(c: Context, secure: boolean): boolean {
  const origin = c.req.header('origin');
  const host = c.req.header('host');
  if (origin !== undefined) return host !== undefined && origin === `${secure ? 'https' : 'http'}://${host}`;
  return c.req.header('sec-fetch-site') === 'same-origin';
}

/** The JSON body, checked against `schema`; bad JSON or shape is INVALID_ARG (400). */
export async function body<T extends z.ZodTypeAny>(c: Context, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    const text = await c.req.text();
    raw = text === '' ? {} : JSON.parse(text);
  } catch (e) {
    throw virErr('INVALID_ARG', 'NONE', `request body is not JSON: ${(e as Error).message}`);
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw virErr('INVALID_ARG', 'NONE', `bad request body: ${r.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
  return r.data as z.infer<T>;
}
