// NBD failures as VirErrors that also say whether the connection survived,
// so a caller knows if it may retry on the same connection or must reconnect.

import { ErrorCode, ErrorDomain, VirError, type ErrorCodeName } from '../errors.js';

export class NbdError extends VirError {
  /** True when the connection is still in a consistent state and further requests may be sent on it. */
  readonly usable: boolean;

  constructor(code: ErrorCodeName, message: string, usable: boolean, cause?: unknown) {
    super(
      ErrorCode[code],
      ErrorDomain.NBD,
      `${message} (NBD connection ${usable ? 'is still usable' : 'is no longer usable'})`,
      cause === undefined ? undefined : { cause },
    );
    this.name = 'NbdError';
    this.usable = usable;
  }
}

/** The server broke the protocol; we hang up, so nothing more can be sent on this connection. */
export function protocolError(message: string, cause?: unknown): NbdError {
  return new NbdError('INTERNAL_ERROR', `NBD protocol violation: ${message}`, false, cause);
}

/** The server reported a failure for one request; the connection carries on. */
export function serverError(message: string): NbdError {
  return new NbdError('INTERNAL_ERROR', message, true);
}

/** The connection is gone (closed, reset, killed); every pending and later request fails. */
export function connectionError(message: string, cause?: unknown): NbdError {
  return new NbdError('INTERNAL_ERROR', message, false, cause);
}

/** A caller passed a bad argument; nothing was sent. */
export function argError(message: string): NbdError {
  return new NbdError('INVALID_ARG', message, true);
}
