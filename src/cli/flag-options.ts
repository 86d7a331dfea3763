// The CLI's flag options, derived from the entry-point table
// (api/entry-points.ts): every flag of a command's entry point is a boolean
// option, named after the flag (NO_METADATA → --no-metadata) unless the
// command names it as virsh does, and the options given become the numeric
// flags. A flag the table gains appears in the CLI without touching it. The
// row's required-flag pairs are usage errors in virsh's words
// (VSH_REQUIRE_OPTION); exclusive pairs are left to the API, which refuses
// them in libvirt's words, as virsh does.

import type { Command } from 'commander';
import type { EntryFlags, EntryPoint, EntryPointName, EntryPointTable } from '../api/entry-points.js';
import { usageError } from './output.js';

/** How a command offers one flag: help text, virsh's option name and help, or null (not offered). */
export type FlagHelp = string | { option: string; help: string } | null;

/** A command's choices per flag of entry point N; a flag left out is offered as --its-name. */
export type FlagHelps<N extends EntryPointName> = { readonly [K in keyof EntryFlags<N> & string]?: FlagHelp };

/** NO_METADATA → no-metadata */
const kebab = (flag: string): string => flag.toLowerCase().replace(/_/g, '-');

/** --no-domain → domain, --security-info → securityInfo (commander's attribute names) */
const attribute = (option: string): string => option.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/** The options of one entry point's flags on one command. */
export class CliFlagOptions {
  private constructor(
    readonly entry: EntryPoint,
    /** flag name → option name without dashes */
    readonly options: ReadonlyMap<string, string>,
  ) {}

  /**
   * Adds an option per flag of entry point `name` of `table` to `cmd` (one
   * already there, from another entry point of the same command, is shared).
   */
  static add<N extends EntryPointName>(cmd: Command, table: EntryPointTable, name: N, helps: FlagHelps<N>): CliFlagOptions {
    const entry = table[name];
    const byFlag = helps as Readonly<Record<string, FlagHelp | undefined>>;
    const options = new Map<string, string>();
    for (const flag of Object.keys(entry.flags)) {
      const h = byFlag[flag];
      if (h === null) continue;
      const option = typeof h === 'object' && h !== undefined ? h.option : kebab(flag);
      const help = typeof h === 'string' ? h : (h?.help ?? `${entry.flagPrefix}${flag}`);
      if (!cmd.options.some((o) => o.long === `--${option}`)) cmd.option(`--${option}`, help);
      options.set(flag, option);
    }
    return new CliFlagOptions(entry, options);
  }

  /** Whether the option of `flag` was given. */
  given(cmd: Command, flag: string): boolean {
    const option = this.options.get(flag);
    return option !== undefined && optionGiven(cmd, option);
  }

  /** The numeric flags of the options given; a missing required option is a usage error. */
  flags(cmd: Command): number {
    for (const [flag, needed] of this.entry.requires) {
      if (this.given(cmd, flag) && !this.given(cmd, needed)) {
        usageError(cmd, `Option --${this.options.get(needed) ?? kebab(needed)} is required by option --${this.options.get(flag)}`);
      }
    }
    let flags = 0;
    for (const flag of this.options.keys()) if (this.given(cmd, flag)) flags |= this.entry.flags[flag] ?? 0;
    return flags >>> 0;
  }
}

function optionGiven(cmd: Command, option: string): boolean {
  const negated = option.startsWith('no-') ? option.slice(3) : null;
  const twin = negated ?? `no-${option}`;
  if (cmd.options.some((o) => o.long === `--${twin}`)) {
    // --leaves and --no-leaves are separate filters in virsh; commander would merge them into one attribute.
    // rawArgs is set by commander at run time but missing from its type declarations.
    const args = (cmd.parent as unknown as { rawArgs?: string[] } | null)?.rawArgs ?? [];
    return args.includes(`--${option}`);
  }
  const value = cmd.opts<Record<string, unknown>>()[attribute(negated ?? option)];
  // commander stores --no-metadata as metadata=false
  return negated === null ? value === true : value === false;
}
