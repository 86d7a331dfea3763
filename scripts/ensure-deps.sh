#!/usr/bin/env bash
# Installs what virtback needs on Debian 12: the system packages (only when
# missing) and the npm dependencies (only when package-lock.json changed).
# Sourced by scripts/test.sh and scripts/demo.sh.
set -euo pipefail

# libvirt0 for libvirt's RelaxNG schemas in /usr/share/libvirt/schemas: the
# tests' XML conformance oracle, and what virtback judges the <domain> inside a
# redefined checkpoint with (its own schemas serve everything else). Used by the
# tests only: openssl and procps (test PKI, process checks; Debian images
# usually have them). scripts/build-tiny-guest.sh, which builds the tests' guest,
# adds nothing here: it fetches the guest's packages (kernel, busybox-static,
# qemu-guest-agent, e2fsprogs) with apt-get download and installs none of them.
# libvirt-clients (virsh) and python3-libvirt are the unmodified libvirt clients
# the tests drive virtbackd with; libvirt-daemon-driver-qemu brings the real
# libvirtd that test/helpers/private-libvirtd.ts starts for the libvirt driver's
# tests (libvirt-daemon-system, which would run one for the host, is not needed).
# iproute2: `ip` creates and removes the taps of type='bridge' interfaces (src/qemu/net.ts).
# ovmf: the UEFI firmware <os firmware='efi'> selects (/usr/share/OVMF). lvm2
# and util-linux (losetup; setpriv ties every qemu-nbd we start to our life): the block-device tests build a volume group on loop
# devices (as root; skipped otherwise). ceph-mon ceph-osd radosgw ceph-common:
# the single-node Ceph cluster whose S3 gateway the S3 repository's tests use
# (scripts/ceph-test-cluster.sh).
VIRTBACK_APT_PACKAGES=(qemu-system-x86 qemu-utils libnbd-bin libxml2-utils libvirt0 openssl procps
  libvirt-clients python3-libvirt libvirt-daemon-driver-qemu iproute2 ovmf lvm2 util-linux
  ceph-mon ceph-osd radosgw ceph-common
  chromium strace)  # chromium: the web console's browser tests (test/web/browser-*.test.ts, playwright-core);
  # strace: injects a filesystem's refusals into real syscalls (test/unit/backup-steps-nolinks.test.ts)

virtback_missing_packages() {
  local pkg missing=()
  for pkg in "${VIRTBACK_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  echo "${missing[@]:-}"
}

virtback_ensure_system_packages() {
  local missing
  missing=$(virtback_missing_packages)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "virtback needs these Debian packages, which are not installed: $missing" >&2
    echo "Install them as root, then run this command again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $missing" >&2
    exit 1
  fi
  echo "Installing Debian packages: $missing" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

virtback_ensure_node_modules() {
  local stamp=node_modules/.virtback-lock-stamp
  if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    echo "Installing npm dependencies" >&2
    npm ci --no-audit --no-fund --loglevel=error >&2
    cp package-lock.json "$stamp"
  fi
}

virtback_ensure_build() {
  npx tsc -p tsconfig.build.json
  node scripts/build-web.mjs
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
virtback_ensure_system_packages
virtback_ensure_node_modules
