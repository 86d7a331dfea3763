// Flags as named options: every public method takes either libvirt's numeric
// flags (src/flags.ts) or an object such as `{ noMetadata: true }`, converted
// here and only here. Option names are the flag names in camelCase; which
// options a method takes is its row's flag table in api/entry-points.ts.

import { virErr } from '../errors.js';
import type { EntryFlags, EntryPointName, FlagTable } from './entry-points.js';

type Camel<S extends string> = S extends `${infer H}_${infer T}` ? `${Lowercase<H>}${Capitalize<Camel<T>>}` : Lowercase<S>;

/** `{ NO_METADATA: 1 }` → `{ noMetadata?: boolean }` */
export type FlagOptions<T extends FlagTable> = { [K in keyof T & string as Camel<K>]?: boolean };

/** What a public method accepts for its flags. */
export type FlagsArg<T extends FlagTable> = number | FlagOptions<T> | undefined;

/** What the SDK method of entry point N accepts for its flags. */
export type OptionsOf<N extends EntryPointName> = FlagsArg<EntryFlags<N>>;

/** NO_METADATA → noMetadata */
export function optionName(flag: string): string {
  return flag.toLowerCase().replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/**
 * Numeric flags from either form. Unknown option names are INVALID_ARG (a
 * typo must not silently drop a flag); unknown numeric bits are left for
 * checkFlags, which names them in libvirt's words.
 */
export function toFlags(table: FlagTable, arg: unknown, fn: string): number {
  if (arg === undefined) return 0;
  if (typeof arg === 'number') return arg;
  if (arg === null || typeof arg !== 'object' || Array.isArray(arg)) {
    throw virErr('INVALID_ARG', 'NONE', `flags must be a number or an options object in function ${fn}`);
  }
  const byOption = new Map(Object.entries(table).map(([k, v]) => [optionName(k), v]));
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

// The option types of the public methods, by the names the SDK has always exported.
export type NoOptions = OptionsOf<'domainFSFreeze'>;
export type DefineOptions = OptionsOf<'domainDefineXML'>;
export type CreateOptions = OptionsOf<'domainCreate'>;
export type DestroyOptions = OptionsOf<'domainDestroy'>;
export type ShutdownOptions = OptionsOf<'domainShutdown'>;
export type RebootOptions = OptionsOf<'domainReboot'>;
export type BlockJobInfoOptions = OptionsOf<'domainGetBlockJobInfo'>;
export type UpdateDeviceOptions = OptionsOf<'domainUpdateDevice'>;
export type UndefineOptions = OptionsOf<'domainUndefine'>;
export type ListDomainsOptions = OptionsOf<'listAllDomains'>;
export type DomainXMLOptions = OptionsOf<'domainGetXMLDesc'>;
export type MonitorCommandOptions = OptionsOf<'qemuMonitorCommand'>;
export type CheckpointCreateOptions = OptionsOf<'checkpointCreateXML'>;
export type CheckpointXMLOptions = OptionsOf<'checkpointGetXMLDesc'>;
export type ListCheckpointsOptions = OptionsOf<'listAllCheckpoints'>;
export type ListChildrenOptions = OptionsOf<'checkpointListAllChildren'>;
export type CheckpointDeleteOptions = OptionsOf<'checkpointDelete'>;
export type BackupBeginOptions = OptionsOf<'backupBegin'>;
export type BackupEndOptions = OptionsOf<'backupEnd'>;
export type JobStatsOptions = OptionsOf<'getJobStats'>;
