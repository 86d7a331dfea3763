#!/usr/bin/env node
// The `virtback` command. Each command group lives in its own file under
// commands/ and exports `register(program)`; add it to COMMAND_GROUPS below.
// Errors are handled here, once: a VirError prints `error: <message>` and
// exits 1; bad usage (unknown command/option, missing or invalid argument)
// exits 2.

import { pathToFileURL } from 'node:url';
import { Command, CommanderError } from 'commander';
import { toVirError } from '../errors.js';
import { register as registerXml } from './commands/xml.js';

/** Command groups, in help order. */
const COMMAND_GROUPS: ((program: Command) => void)[] = [registerXml];

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('virtback')
    .description('libvirt-grade checkpoints and incremental backups for QEMU virtual machines')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  for (const register of COMMAND_GROUPS) register(program);
  // subcommands inherit exitOverride only when set before they are added
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

/** Run the CLI; returns the exit code instead of exiting (tests call this). */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and --version end with an "error" carrying exit code 0
      if (e.exitCode === 0) return EXIT_OK;
      return EXIT_USAGE;
    }
    process.stderr.write(`error: ${toVirError(e).message}\n`);
    return EXIT_ERROR;
  }
}

// Run only when executed, not when imported.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`error: ${String(e)}\n`);
      process.exitCode = EXIT_ERROR;
    },
  );
}
