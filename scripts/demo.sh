#!/usr/bin/env bash
# The main job end to end on a throwaway VM (see README "Quick start").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure-deps.sh"
virtback_ensure_build
exec node dist/src/demo.js "$@"
