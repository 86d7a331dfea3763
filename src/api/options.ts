// Flags as named options: every public method takes either libvirt's numeric
// flags (src/flags.ts) or an object such as `{ noMetadata: true }`, converted
// here and only here. Option names are the flag names in camelCase.

import { virErr } from '../errors.js';
import {
  BackupBeginFlags,
  BackupEndFlags,
  CheckpointCreateFlags,
  CheckpointDeleteFlags,
  CheckpointXMLFlags,
  DomainXMLFlags,
  JobStatsFlags,
  ListDomainsFlags,
  MonitorCommandFlags,
  UndefineFlags,
} from '../flags.js';

type Camel<S extends string> = S extends `${infer H}_${infer T}` ? `${Lowercase<H>}${Capitalize<Camel<T>>}` : Lowercase<S>;

/** `{ NO_METADATA: 1 }` → `{ noMetadata?: boolean }` */
export type FlagOptions<T extends Record<string, number>> = { [K in keyof T & string as Camel<K>]?: boolean };

/** What a public method accepts for its flags. */
export type FlagsArg<T extends Record<string, number>> = number | FlagOptions<T> | undefined;

function camel(name: string): string {
  return name.toLowerCase().replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/**
 * Numeric flags from either form. Unknown option names are INVALID_ARG (a
 * typo must not silently drop a flag); unknown numeric bits are left for
 * checkFlags, which names them in libvirt's words.
 */
export function toFlags<T extends Record<string, number>>(table: T, arg: FlagsArg<T>, fn: string): number {
  if (arg === undefined) return 0;
  if (typeof arg === 'number') return arg;
  if (arg === null || typeof arg !== 'object' || Array.isArray(arg)) {
    throw virErr('INVALID_ARG', 'NONE', `flags must be a number or an options object in function ${fn}`);
  }
  const byOption = new Map(Object.entries(table).map(([k, v]) => [camel(k), v]));
  let flags = 0;
  for (const [key, value] of Object.entries(arg as Record<string, unknown>)) {
    const bit = byOption.get(key);
    if (bit === undefined) {
      const known = [...byOption.keys()].join(', ') || 'none';
      throw virErr('INVALID_ARG', 'NONE', `unknown option '${key}' in function ${fn} (known: ${known})`);
    }
    if (value !== undefined && typeof value !== 'boolean') {
      throw virErr('INVALID_ARG', 'NONE', `option '${key}' must be a boolean in function ${fn}`);
    }
    if (value) flags |= bit;
  }
  return flags >>> 0;
}

// Per-method option tables: the subset of bits each method accepts.

export const NoFlags = {} as const;
export const DefineOptionFlags = NoFlags;
export const UndefineOptionFlags = UndefineFlags;
export const ListDomainsOptionFlags = ListDomainsFlags;
export const DomainXMLOptionFlags = DomainXMLFlags;
export const MonitorCommandOptionFlags = MonitorCommandFlags;
export const CheckpointCreateOptionFlags = CheckpointCreateFlags;
export const CheckpointXMLOptionFlags = CheckpointXMLFlags;
export const ListCheckpointsOptionFlags = {
  ROOTS: 1 << 0,
  TOPOLOGICAL: 1 << 1,
  LEAVES: 1 << 2,
  NO_LEAVES: 1 << 3,
} as const;
export const ListChildrenOptionFlags = {
  DESCENDANTS: 1 << 0,
  TOPOLOGICAL: 1 << 1,
  LEAVES: 1 << 2,
  NO_LEAVES: 1 << 3,
} as const;
export const CheckpointDeleteOptionFlags = CheckpointDeleteFlags;
export const BackupBeginOptionFlags = BackupBeginFlags;
export const BackupEndOptionFlags = BackupEndFlags;
export const JobStatsOptionFlags = JobStatsFlags;

export type NoOptions = FlagsArg<typeof NoFlags>;
export type UndefineOptions = FlagsArg<typeof UndefineFlags>;
export type ListDomainsOptions = FlagsArg<typeof ListDomainsFlags>;
export type DomainXMLOptions = FlagsArg<typeof DomainXMLFlags>;
export type MonitorCommandOptions = FlagsArg<typeof MonitorCommandFlags>;
export type CheckpointCreateOptions = FlagsArg<typeof CheckpointCreateFlags>;
export type CheckpointXMLOptions = FlagsArg<typeof CheckpointXMLFlags>;
export type ListCheckpointsOptions = FlagsArg<typeof ListCheckpointsOptionFlags>;
export type ListChildrenOptions = FlagsArg<typeof ListChildrenOptionFlags>;
export type CheckpointDeleteOptions = FlagsArg<typeof CheckpointDeleteFlags>;
export type BackupBeginOptions = FlagsArg<typeof BackupBeginFlags>;
export type BackupEndOptions = FlagsArg<typeof BackupEndFlags>;
export type JobStatsOptions = FlagsArg<typeof JobStatsFlags>;

/** OR of every value in a flag table: the bits a method accepts. */
export function allBits(table: Record<string, number>): number {
  return Object.values(table).reduce((a, b) => (a | b) >>> 0, 0);
}
