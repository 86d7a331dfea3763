#!/usr/bin/env bash
# The whole test suite: type check, lint, build, then every test file under
# node's test runner (unit tests and tests against real QEMU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure-deps.sh"

echo "== type check" >&2
npx tsc --noEmit -p tsconfig.json
echo "== lint" >&2
npx eslint .
echo "== build" >&2
virtback_ensure_build

echo "== tests" >&2
mapfile -t files < <(find test -name '*.test.ts' | sort)
if [ "$#" -gt 0 ]; then files=("$@"); fi
exec node --import tsx --test --test-concurrency=2 --test-timeout=600000 "${files[@]}"
