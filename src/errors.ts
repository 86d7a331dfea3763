// One error type for every layer and the wire, with libvirt's numeric codes
// and domains (include/libvirt/virterror.h), so callers can switch on them.

export const ErrorCode = {
  OK: 0,
  INTERNAL_ERROR: 1,
  NO_MEMORY: 2,
  NO_SUPPORT: 3,
  INVALID_DOMAIN: 7,
  INVALID_ARG: 8,
  OPERATION_FAILED: 9,
  SYSTEM_ERROR: 38,
  XML_ERROR: 27,
  OPERATION_DENIED: 29,
  NO_DOMAIN: 42,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  OPERATION_TIMEOUT: 68,
  ARGUMENT_UNSUPPORTED: 74,
  AGENT_UNRESPONSIVE: 86,
  OPERATION_UNSUPPORTED: 84,
  XML_INVALID_SCHEMA: 92,
  INVALID_DOMAIN_CHECKPOINT: 102,
  NO_DOMAIN_CHECKPOINT: 103,
  NO_DOMAIN_BACKUP: 104,
  CHECKPOINT_INCONSISTENT: 109,
  RPC: 39,
  NO_CONNECT: 5,
  NO_STORAGE_VOL: 50,
  NO_STORAGE_POOL: 49,
  AUTH_FAILED: 45,
} as const;

export type ErrorCodeName = keyof typeof ErrorCode;

export const ErrorDomain = {
  NONE: 0,
  QEMU: 10,
  DOMAIN: 20,
  RPC: 7,
  REMOTE: 13,
  STORAGE: 18,
  NBD: 59,
  DOMAIN_CHECKPOINT: 69,
  CONF: 23,
} as const;

export type ErrorDomainName = keyof typeof ErrorDomain;

const codeNames = new Map<number, string>(Object.entries(ErrorCode).map(([k, v]) => [v, k]));
const domainNames = new Map<number, string>(Object.entries(ErrorDomain).map(([k, v]) => [v, k]));

/** The libvirt-style error: numeric code and domain, and a message that names what is wrong. */
export class VirError extends Error {
  readonly code: number;
  readonly domain: number;

  constructor(code: number, domain: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VirError';
    this.code = code;
    this.domain = domain;
  }

  /** Symbolic name of the code, e.g. 'NO_DOMAIN_CHECKPOINT'. */
  get codeName(): string {
    return codeNames.get(this.code) ?? `ERR_${this.code}`;
  }

  get domainName(): string {
    return domainNames.get(this.domain) ?? `FROM_${this.domain}`;
  }

  /** The shape that travels on the wire and in JSON output. */
  toJSON(): { code: number; domain: number; message: string } {
    return { code: this.code, domain: this.domain, message: this.message };
  }

  static fromJSON(v: { code: number; domain: number; message: string }): VirError {
    return new VirError(v.code, v.domain, v.message);
  }
}

/** Shorthand used throughout: `throw virErr('INVALID_ARG', 'QEMU', "...")`. */
export function virErr(code: ErrorCodeName, domain: ErrorDomainName, message: string, cause?: unknown): VirError {
  return new VirError(ErrorCode[code], ErrorDomain[domain], message, cause === undefined ? undefined : { cause });
}

export function isVirError(e: unknown, code?: ErrorCodeName): e is VirError {
  return e instanceof VirError && (code === undefined || e.code === ErrorCode[code]);
}

/** Any thrown value as a VirError; unknown failures become INTERNAL_ERROR with their message. */
export function toVirError(e: unknown, domain: ErrorDomainName = 'NONE'): VirError {
  if (e instanceof VirError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new VirError(ErrorCode.INTERNAL_ERROR, ErrorDomain[domain], message, { cause: e });
}
