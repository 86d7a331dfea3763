// What NbdClient.connect is asked for, checked before any socket is opened, and
// the socket itself (plain unix or TCP; TLS is started over it by the handshake).

import * as net from 'node:net';
import { virErr } from '../errors.js';
import type { NbdTarget } from './target.js';
import type { NbdTlsOptions } from './tls.js';

export interface NbdConnectOptions {
  exportName: string;
  /** Exact context names to negotiate, e.g. 'base:allocation', 'qemu:dirty-bitmap:b1'. */
  metaContexts?: string[];
  /** Speak TLS (NBD_OPT_STARTTLS, x509) before anything else; the server must agree. */
  tls?: NbdTlsOptions;
  /** Requests in flight at once (default 16). */
  maxInFlight?: number;
  /** Give up on connect + handshake after this long (default 30 s). */
  handshakeTimeoutMs?: number;
}

/** INVALID_ARG for options no server could satisfy; returns the requests allowed in flight. */
export function checkConnectOptions(opts: NbdConnectOptions): number {
  const maxInFlight = opts.maxInFlight ?? 16;
  if (!Number.isInteger(maxInFlight) || maxInFlight < 1) {
    throw virErr('INVALID_ARG', 'NBD', `maxInFlight must be a positive integer, got ${maxInFlight}`);
  }
  for (const c of opts.metaContexts ?? []) {
    if (c.length === 0 || c.endsWith(':')) {
      throw virErr('INVALID_ARG', 'NBD', `metadata context '${c}' must be a full context name, not a namespace query`);
    }
  }
  return maxInFlight;
}

/** Connect to `target`; with `onread` every read lands in its one buffer instead of 'data' events. */
export function openSocket(target: NbdTarget, onread?: net.OnReadOpts): net.Socket {
  const extra = onread ? { onread } : {};
  return 'socketPath' in target
    ? net.createConnection({ path: target.socketPath, ...extra })
    : net.createConnection({ host: target.host, port: target.port, ...extra });
}
