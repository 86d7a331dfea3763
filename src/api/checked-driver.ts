// libvirt's public-wrapper checks (src/libvirt-domain.c,
// src/libvirt-domain-checkpoint.c) as a Driver that wraps a Driver: argument
// and flag checks and read-only refusal run before the inner driver is
// called. Every rule comes from the entry point's row in api/entry-points.ts;
// this file only knows how to check each kind of argument and rule. The SDK
// (api/public.ts) calls through it on the client side, and virtbackd calls
// through it again for every client, so a client that skips or lies about
// its checks gains nothing.

import type { Driver, EventListener } from './driver.js';
import { virErr, type ErrorDomainName } from '../errors.js';
import { checkFlags } from '../flags.js';
import {
  allBits,
  entryPointNames,
  entryPoints,
  secureDenial,
  type ArgKind,
  type ArgTypes,
  type EntryMethods,
  type EntryPoint,
  type EntryPointName,
  type EntryPointTable,
} from './entry-points.js';
import { toFlags, type OptionsOf } from './options.js';

/** The wording of the read-only refusal (OPERATION_DENIED). */
export const READ_ONLY_MESSAGE = 'operation forbidden for read only access';

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** A UUID in its canonical form (lowercase, dashed), or null if `s` is not one. */
export function canonicalUUID(s: string): string | null {
  const t = s.trim();
  if (!UUID_RE.test(t)) return null;
  const h = t.replace(/-/g, '').toLowerCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

interface Where {
  arg: string;
  fn: string;
  domain: ErrorDomainName;
}

const invalid = (w: Where, what: string) => virErr('INVALID_ARG', w.domain, `${w.arg} in ${w.fn} ${what}`);

/** virCheckNonNullArgGoto, plus: empty strings are refused too. */
function nonEmpty(value: unknown, w: Where): string {
  if (value === null || value === undefined) throw invalid(w, 'must not be NULL');
  if (typeof value !== 'string') throw invalid(w, 'must be a string');
  if (value.length === 0) throw invalid(w, 'must not be empty');
  return value;
}

/** The check of each kind of argument; each returns the value the driver gets. */
const checkArg: { [K in ArgKind]: (value: unknown, w: Where) => ArgTypes[K] } = {
  uuid: nonEmpty,
  name: nonEmpty,
  xml: nonEmpty,
  command: nonEmpty,
  disk: nonEmpty,
  boolean(value, w) {
    if (typeof value !== 'boolean') throw invalid(w, 'must be a boolean');
    return value;
  },
  uuidString(value, w) {
    const s = nonEmpty(value, w);
    const canonical = canonicalUUID(s);
    if (canonical === null) throw invalid(w, `must be a valid UUID, not '${s}'`);
    return canonical;
  },
  xmlOrNull(value, w) {
    if (value === null || value === undefined || value === '') return null;
    if (typeof value !== 'string') throw invalid(w, 'must be a string or NULL');
    return value;
  },
  mountpoints(value, w) {
    if (!Array.isArray(value)) throw invalid(w, 'must be an array');
    return value.map((m) => nonEmpty(m, w));
  },
  /** virCheckNonNegativeArgGoto */
  jobId(value, w) {
    if (typeof value !== 'number' || !Number.isInteger(value)) throw invalid(w, 'must be an integer');
    if (value < 0) throw invalid(w, 'must be zero or greater');
    return value;
  },
  flags(value, w) {
    checkFlags(value as number, 0xffffffff, w.fn);
    return value as number;
  },
};

/**
 * The wrapper's checks of one call: read-only refusal first (as virtbackd's
 * read-only socket refuses before looking at the arguments), then the
 * arguments, the secure flag on a read-only connection, unknown flag bits,
 * exclusive and required flags, arguments a flag makes mandatory. Returns
 * the arguments the driver gets (canonical UUIDs, '' as NULL).
 */
export function checkCall(e: EntryPoint, args: readonly unknown[], readOnly: boolean): unknown[] {
  const fn = e.libvirt;
  const domain = e.errorDomain;
  if (readOnly && e.mutates) throw virErr('OPERATION_DENIED', domain, READ_ONLY_MESSAGE);
  const checked = e.args.map((a, i) => checkArg[a.kind](args[i], { arg: a.name, fn, domain }));
  const denial = readOnly ? secureDenial(e, checked) : null;
  if (denial !== null) throw virErr('OPERATION_DENIED', domain, denial);
  const fi = e.args.findIndex((a) => a.kind === 'flags');
  if (fi < 0) return checked;
  const flags = checked[fi] as number;
  checkFlags(flags, allBits(e.flags), fn);
  const has = (name: string): boolean => (flags & (e.flags[name] ?? 0)) !== 0;
  const full = (name: string): string => `${e.flagPrefix}${name}`;
  for (const [a, b] of e.exclusive) {
    if (has(a) && has(b)) throw virErr('INVALID_ARG', domain, `Flags '${full(a)}' and '${full(b)}' are mutually exclusive`);
  }
  for (const [flag, needed] of e.requires) {
    if (has(flag) && !has(needed)) throw virErr('INVALID_ARG', domain, `Flag '${full(needed)}' is required by flag '${full(flag)}'`);
  }
  for (const [flag, argName] of e.needsArg) {
    const i = e.args.findIndex((a) => a.name === argName);
    if (has(flag) && checked[i] === null) throw virErr('INVALID_ARG', domain, `${argName} in ${fn} must not be NULL`);
  }
  return checked;
}

class Checked {
  constructor(
    readonly inner: Driver,
    readonly readOnly: boolean,
    /** the rules applied; the real table unless a test derives from a changed copy */
    readonly table: EntryPointTable = entryPoints,
  ) {}

  get uri(): string {
    return this.inner.uri;
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  subscribe(listener: EventListener): () => void {
    return this.inner.subscribe(listener);
  }

  /** The SDK's named options (or numeric flags) of entry point `name` as numeric flags. */
  flagsOf<N extends EntryPointName>(name: N, options: OptionsOf<N>): number {
    return toFlags(this.table[name].flags, options, this.table[name].libvirt);
  }

  /** One entry point: its row's checks, then the inner driver's method. */
  async invoke(name: EntryPointName, args: readonly unknown[]): Promise<unknown> {
    const checked = checkCall(this.table[name], args, this.readOnly);
    const method = this.inner[name] as (...a: unknown[]) => Promise<unknown>;
    return method.apply(this.inner, checked);
  }
}

// One method per row of the table.
for (const name of entryPointNames) {
  Object.defineProperty(Checked.prototype, name, {
    value: function (this: Checked, ...args: unknown[]) {
      return this.invoke(name, args);
    },
    writable: true,
    configurable: true,
  });
}

/** A Driver whose every entry point runs the table's checks first. */
export type CheckedDriver = Checked & EntryMethods;
export const CheckedDriver = Checked as unknown as new (inner: Driver, readOnly: boolean, table?: EntryPointTable) => CheckedDriver;

// CheckedDriver is a Driver (checked at compile time).
const _isDriver: Driver = null as unknown as CheckedDriver;
void _isDriver;
