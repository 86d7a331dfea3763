#!/usr/bin/env node
// The `virtback` command. Each command group lives in its own file under
// commands/ and exports `register(program)`; add it to COMMAND_GROUPS below.
// Errors are handled here, once: a VirError prints `error: <message>` and
// exits 1; bad usage (unknown command/option, missing or invalid argument)
// exits 2.
// Every run registers every group, so a group imports at top level only what
// registering needs and loads its implementation in the action (docs/xml.md).

import fs from 'node:fs';
import { pathToFileURL } from 'node:url';
import { Command, CommanderError } from 'commander';
import { entryPoints, type EntryPointTable } from '../api/entry-points.js';
import { toVirError } from '../errors.js';
import { register as registerBackup } from './commands/backup.js';
import { register as registerCheckpoint } from './commands/checkpoint.js';
import { register as registerChunkRepo } from './commands/chunk-repo.js';
import { register as registerRepoSync } from './commands/repo-sync.js';
import { register as registerConsole } from './commands/console.js';
import { register as registerDomain } from './commands/domain.js';
import { register as registerEvent } from './commands/event.js';
import { register as registerJob } from './commands/job.js';
import { register as registerRepository } from './commands/repository.js';
import { register as registerServe } from './commands/serve.js';
import { register as registerVmBackup } from './commands/vmbackup.js';
import { register as registerXml } from './commands/xml.js';
import { addGlobalOptions } from './connection.js';

/**
 * Command groups, in help order (the global -c/--connect and -r/--readonly
 * options first). Each gets the entry-point table its flag options derive from.
 */
const COMMAND_GROUPS: ((program: Command, table: EntryPointTable) => void)[] = [
  addGlobalOptions,
  registerDomain,
  registerConsole,
  registerCheckpoint,
  registerBackup,
  registerJob,
  registerRepository,
  registerVmBackup,
  registerChunkRepo,
  registerRepoSync,
  registerServe,
  registerEvent,
  registerXml,
];

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

/** The program; `table` is the real entry-point table unless a test derives the CLI from a changed copy. */
export function buildProgram(table: EntryPointTable = entryPoints): Command {
  const program = new Command();
  program
    .name('virtback')
    .description('libvirt-grade checkpoints and incremental backups for QEMU virtual machines')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  for (const register of COMMAND_GROUPS) register(program, table);
  // subcommands inherit exitOverride only when set before they are added
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

/** Run the CLI; returns the exit code instead of exiting (tests call this). */
export async function main(argv: string[], table: EntryPointTable = entryPoints): Promise<number> {
  const program = buildProgram(table);
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

/** Whether this module is the program being run (also through an npm bin symlink). */
function isMain(): boolean {
  if (process.argv[1] === undefined) return false;
  try {
    return import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href;
  } catch {
    return false;
  }
}

// Run only when executed, not when imported.
if (isMain()) {
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
