#!/usr/bin/env bash
# Benchmarks (never part of the test suite): each prints ratios against a
# baseline measured in the same run. Usage: bash scripts/bench.sh [backup|scale]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure-deps.sh"
which=${1:-all}
for b in backup scale; do
  if [ "$which" = all ] || [ "$which" = "$b" ]; then
    [ -f "bench/$b.ts" ] && node --import tsx "bench/$b.ts"
  fi
done
