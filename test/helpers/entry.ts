// How a test starts one of virtback's programs in a process of its own: from
// the build in dist/ (what `npm run build` makes and users run; scripts/test.sh
// builds it before the tests) when it is at least as new as every source file,
// otherwise from the sources through tsx (a test run right after an edit,
// without a build). tsx compiles in every process it starts — some 1.5 CPU s
// and 180 MiB each — which the suite would pay a few hundred times.
// VIRTBACK_TEST_FROM_SOURCE=1 forces the sources.

import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');
const TSX = import.meta.resolve('tsx');

let fresh: boolean | undefined;

/** dist/ is there and no file under src/ is newer than it. */
export function builtIsFresh(): boolean {
  if (fresh !== undefined) return fresh;
  if (process.env.VIRTBACK_TEST_FROM_SOURCE) return (fresh = false);
  const builtAt = statSync(path.join(ROOT, 'dist', 'src', 'cli', 'virtbackd.js'), { throwIfNoEntry: false })?.mtimeMs;
  if (builtAt === undefined) return (fresh = false);
  fresh = readdirSync(path.join(ROOT, 'src'), { recursive: true, withFileTypes: true })
    .every((e) => !e.isFile() || statSync(path.join(e.parentPath, e.name)).mtimeMs <= builtAt);
  return fresh;
}

/** The program's source file, e.g. `cli/virtback`, `cli/virtbackd`, `demo`. */
export type Program = 'cli/virtback' | 'cli/virtbackd' | 'demo';

/** The file node runs for `program` (the built one, or the source). */
export function programFile(program: Program): string {
  return builtIsFresh() ? path.join(ROOT, 'dist', 'src', `${program}.js`) : path.join(ROOT, 'src', `${program}.ts`);
}

/** node's arguments that start `program`: `[file]` or `['--import', tsx, file]`. */
export function programArgs(program: Program): string[] {
  return builtIsFresh() ? [programFile(program)] : ['--import', TSX, programFile(program)];
}

/** A shell command line (quoted) that starts `program` with this node. */
export function programCommand(program: Program): string {
  return [process.execPath, ...programArgs(program)].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
}
