#!/usr/bin/env bash
# Benchmarks (never part of the test suite). backup, scale, serve and vmbackup print ratios
# against a baseline measured in the same run; soak runs ≥ 1000 randomized
# cycles with faults and exits 1 if a backup was lost, unrestorable or
# something was left behind (bench/soak.ts; takes long).
# s3 measures the chunk repository on a Ceph gateway (bench/s3.ts: its own
# cluster unless AWS_ENDPOINT_URL and keys are set; root and the Ceph packages).
# cli-start times the built CLI's start (bench/cli-start.ts; npm run build first).
# Usage: bash scripts/bench.sh [backup|pull|scale|chunkstore|serve|vmbackup|s3|cli-start|soak] [options of that bench,
#        e.g. soak --seed N --cycles N --max-seconds S]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure-deps.sh"
which=${1:-all}
[ $# -gt 0 ] && shift
for b in backup pull scale chunkstore serve vmbackup s3 cli-start soak; do
  if [ "$which" = all ] || [ "$which" = "$b" ]; then
    [ -f "bench/$b.ts" ] && node --import tsx "bench/$b.ts" "$@"
  fi
done
