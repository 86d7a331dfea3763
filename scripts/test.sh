#!/usr/bin/env bash
# The whole test suite: type check, lint, layers (dependency-cruiser), build,
# then every test file under node's test runner (unit tests and tests against
# real QEMU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure-deps.sh"

echo "== type check" >&2
npx tsc --noEmit -p tsconfig.json
npx tsc --noEmit -p webui/tsconfig.json  # the web console's browser code: its own project (DOM libs, JSX)
echo "== lint" >&2
npx eslint .
echo "== layers" >&2
# No cycles in src/ and no upward imports: the rules and their reasons are in
# .dependency-cruiser.mjs (known violations: .dependency-cruiser-known-violations.json).
npx depcruise src --config .dependency-cruiser.mjs --ignore-known
# The project carries what it needs: nothing may reach for the reference tree
# beside the repository (a parent-directory path to shared/, written either way).
if git grep -nE --untracked "\.\.(/+|['\"], *['\"])shared\b" -- src test scripts bench; then
  echo "error: the lines above reach outside the repository" >&2
  exit 1
fi
echo "== build" >&2
virtback_ensure_build

echo "== tests" >&2
mapfile -t files < <(find test -name '*.test.ts' | sort)
if [ "$#" -gt 0 ]; then files=("$@"); fi
exec node --import tsx --test --test-concurrency=2 --test-timeout=600000 "${files[@]}"
