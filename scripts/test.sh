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

# One Ceph cluster (S3 gateway) for every test file that needs one
# (test/helpers/ceph.ts): started here when the packages are there and we are
# root, stopped at exit; the files use their own buckets.
if [ "$(id -u)" -eq 0 ] && command -v radosgw >/dev/null && printf '%s\n' "${files[@]}" | grep -q '^test/s3/'; then
  ceph_dir=$(mktemp -d /tmp/vb-ceph-XXXXXX)
  trap 'scripts/ceph-test-cluster.sh stop "$ceph_dir"; rm -rf "$ceph_dir"' EXIT
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  ceph_port=$(free_port)
  ceph_tls_port=$(free_port)
  echo "== ceph (S3 gateway for test/s3, over HTTP and HTTPS)" >&2
  # a cluster that does not come up fails the s3 tests (each then tries one of its own), not the whole run
  if scripts/ceph-test-cluster.sh start "$ceph_dir" "$ceph_port" "$ceph_tls_port"; then
    # shellcheck disable=SC1091
    source "$ceph_dir/s3.env"
    export VIRTBACK_TEST_S3_ENDPOINT=$AWS_ENDPOINT_URL VIRTBACK_TEST_S3_ACCESS_KEY=$AWS_ACCESS_KEY_ID
    export VIRTBACK_TEST_S3_SECRET_KEY=$AWS_SECRET_ACCESS_KEY VIRTBACK_TEST_S3_REGION=$AWS_REGION VIRTBACK_TEST_CEPH_DIR=$ceph_dir
    export VIRTBACK_TEST_S3_HTTPS_ENDPOINT=$S3_HTTPS_ENDPOINT VIRTBACK_TEST_S3_CA_BUNDLE=$AWS_CA_BUNDLE
    unset AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_CA_BUNDLE S3_HTTPS_ENDPOINT
  else
    echo "warning: the test Ceph cluster did not start (logs in $ceph_dir)" >&2
    trap - EXIT
    scripts/ceph-test-cluster.sh stop "$ceph_dir" || true
  fi
fi
node --import tsx --test --test-concurrency=2 --test-timeout=600000 "${files[@]}"
