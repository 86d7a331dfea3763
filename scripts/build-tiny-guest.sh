#!/usr/bin/env bash
# Builds the tiny guest the tests boot when they need a real Linux with
# qemu-ga (QUIESCE, fsfreeze/thaw, files written by a file system): a kernel
# and an initramfs made from Debian 12 (bookworm) packages only.
#
# The guest boots from the initramfs alone (no root disk), loads the virtio
# modules, formats (if blank) and mounts its virtio disks as ext4, and runs
# qemu-ga on the virtio-serial port org.qemu.guest_agent.0, so that
# guest-ping, guest-exec, guest-file-* and guest-fsfreeze-* work.
# docs/tiny-guest.md tells how to boot it and what to expect from it.
#
# Usage:   scripts/build-tiny-guest.sh OUTDIR
# Output:  OUTDIR/vmlinuz, OUTDIR/initramfs.img, OUTDIR/manifest.txt
# The tests call it through test/helpers/tiny-guest.ts, which keeps the
# result in /var/tmp/virtback-tiny-guest-<hash of this script> (VIRTBACK_TINY_GUEST_DIR) and builds
# it only when that folder has no guest yet.
#
# Needs: amd64, apt access to the Debian 12 archive, and a user apt-get
# download works for (root). It installs nothing on the host: the guest's
# packages are fetched with `apt-get download` and unpacked with `dpkg -x`
# into a temporary folder under $TMPDIR (default /tmp), and the initramfs is
# packed with the busybox unpacked there. So the host needs only what Debian
# always has (bash, coreutils, findutils, grep, sed, mawk, dpkg, apt).
#
# Environment (optional):
#   TG_KERNEL_META  kernel metapackage to follow (default linux-image-cloud-amd64;
#                   linux-image-amd64 also works, but is 3x the download)
#   TG_KERNEL_PKG   exact kernel package (overrides TG_KERNEL_META)
#   TG_COMPRESS     gzip (default) | xz | zstd | none  - initramfs compression
#                   (xz and zstd need the host's xz-utils / zstd)
#   TG_KEEP_WORK    1 = keep the temporary build folder (its path is printed)

set -euo pipefail

die() { echo "build-tiny-guest: error: $*" >&2; exit 1; }
log() { echo "build-tiny-guest: $*" >&2; }
trap 'echo "build-tiny-guest: error: command failed at line $LINENO" >&2' ERR

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUT=$1
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 hosts are supported"
command -v apt-get >/dev/null || die "apt-get not found"

KERNEL_META=${TG_KERNEL_META:-linux-image-cloud-amd64}
COMPRESS=${TG_COMPRESS:-gzip}

# Userland packages. qemu-ga needs glib + pcre2 + libudev + libnuma + liburing;
# mke2fs needs libext2fs (ships libe2p) + com_err + blkid + uuid.
# libgcc-s1: glibc dlopen()s libgcc_s.so.1 for thread cancellation/unwinding.
USER_PKGS="busybox-static qemu-guest-agent e2fsprogs
  libc6 libgcc-s1 libglib2.0-0 libpcre2-8-0 libudev1 libnuma1 liburing2
  libext2fs2 libcom-err2 libblkid1 libuuid1"

# Kernel modules wanted (their dependencies are added automatically).
# ext4, jbd2, crc32c and devtmpfs are built into Debian's kernels.
# button + evdev: the ACPI power button reaches acpid as an input event (virsh shutdown).
MODULES="virtio_pci virtio_blk virtio_console virtio_scsi sd_mod virtio_rng button evdev virtio_net"

START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiny-guest-build.XXXXXX")
cleanup() {
    if [ "${TG_KEEP_WORK:-0}" = 1 ]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
mkdir -p "$WORK/debs" "$WORK/pkgroot" "$WORK/kroot" "$WORK/initramfs"
chmod 755 "$WORK"
# apt drops privileges to _apt for downloads; let it write here.
if id _apt >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then chown _apt "$WORK/debs"; fi

# --- 1. which kernel ------------------------------------------------------------
if ! apt-cache show busybox-static >/dev/null 2>&1; then
    log "package lists look empty, running apt-get update"
    apt-get update -qq
fi
if [ -n "${TG_KERNEL_PKG:-}" ]; then
    KPKG=$TG_KERNEL_PKG
else
    KPKG=$(apt-cache depends "$KERNEL_META" | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
    [ -n "$KPKG" ] || die "cannot resolve $KERNEL_META to a kernel package"
fi
log "kernel package: $KPKG"

# --- 2. download and unpack -----------------------------------------------------
log "downloading packages"
# shellcheck disable=SC2086
(cd "$WORK/debs" && apt-get download -q $USER_PKGS "$KPKG" >/dev/null) || die "apt-get download failed"
for deb in "$WORK"/debs/*.deb; do
    case $(basename "$deb") in
        linux-image-*) dpkg -x "$deb" "$WORK/kroot" ;;
        *)             dpkg -x "$deb" "$WORK/pkgroot" ;;
    esac
done
PR=$WORK/pkgroot
IR=$WORK/initramfs
BB=$PR/bin/busybox
[ -x "$BB" ] || die "busybox not found in busybox-static"
VMLINUZ=$(ls "$WORK"/kroot/boot/vmlinuz-* 2>/dev/null | head -n1)
[ -n "$VMLINUZ" ] || die "no vmlinuz in $KPKG"
KVER=${VMLINUZ##*/vmlinuz-}
KMOD=$WORK/kroot/lib/modules/$KVER
[ -d "$KMOD" ] || die "no modules dir for $KVER"
log "kernel version: $KVER"

# --- 3. initramfs skeleton --------------------------------------------------------
mkdir -p "$IR"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt,root,lib/x86_64-linux-gnu,lib64,lib/modules/$KVER}
mkdir -p "$IR/var/log" "$IR/var/tmp"
ln -s ../run "$IR/var/run"
chmod 1777 "$IR/tmp" "$IR/var/tmp"
cp "$BB" "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"     # everything else: busybox --install at boot

# --- 4. binaries + shared libraries (resolved with the packaged ld.so) -------------
LDSO=$PR/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -e "$LDSO" ] || die "ld.so not found in libc6"
LIBPATH=$PR/lib/x86_64-linux-gnu:$PR/usr/lib/x86_64-linux-gnu
copy_libs() {  # $1 = ELF in pkgroot
    local line lib
    "$LDSO" --inhibit-cache --library-path "$LIBPATH" --list "$1" > "$WORK/ldd.out" \
        || die "ld.so --list failed for $1"
    if grep -q 'not found' "$WORK/ldd.out"; then cat "$WORK/ldd.out" >&2; die "missing libs for $1"; fi
    while read -r line; do
        case $line in
            *"=> "/*) lib=${line#*=> }; lib=${lib%% (*} ;;
            *) continue ;;
        esac
        case $lib in
            */ld-linux-x86-64.so.2) continue ;;            # copied separately
            "$PR"/*) ;;
            *) die "$1 resolved $lib outside the package root" ;;
        esac
        cp -L "$lib" "$IR/lib/x86_64-linux-gnu/"
    done < "$WORK/ldd.out"
}
cp -L "$LDSO" "$IR/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$IR/lib64/ld-linux-x86-64.so.2"
cp "$PR/usr/sbin/qemu-ga" "$IR/usr/sbin/"
copy_libs "$PR/usr/sbin/qemu-ga"
cp "$PR/sbin/mke2fs" "$IR/sbin/"
copy_libs "$PR/sbin/mke2fs"
for n in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -s mke2fs "$IR/sbin/$n"; done
cp "$PR/etc/mke2fs.conf" "$IR/etc/" 2>/dev/null || true
for d in lib usr/lib; do
    if [ -e "$PR/$d/x86_64-linux-gnu/libgcc_s.so.1" ]; then
        cp -L "$PR/$d/x86_64-linux-gnu/libgcc_s.so.1" "$IR/lib/x86_64-linux-gnu/"
    fi
done
[ -e "$IR/lib/x86_64-linux-gnu/libgcc_s.so.1" ] || die "libgcc_s.so.1 not found in libgcc-s1"

# --- 5. kernel modules (with dependency closure, in load order) ------------------
: > "$WORK/modorder"
find_mod() {  # module name -> path relative to $KMOD
    local n=$1 alt
    alt=$(echo "$n" | tr _ -)
    (cd "$KMOD" && find kernel \( -name "$n.ko" -o -name "$alt.ko" \) | head -n1)
}
add_mod() {
    local name=$1 rel deps d
    name=$(echo "$name" | tr - _)
    grep -qx "$name" "$WORK/modseen" 2>/dev/null && return 0
    echo "$name" >> "$WORK/modseen"
    if grep -qE "/$name\.ko$|/$(echo "$name" | tr _ -)\.ko$" "$KMOD/modules.builtin"; then return 0; fi
    rel=$(find_mod "$name")
    [ -n "$rel" ] || die "kernel module $name not found"
    deps=$("$BB" strings -a "$KMOD/$rel" | sed -n 's/^depends=//p' | head -n1 | tr , ' ')
    for d in $deps; do add_mod "$d"; done
    mkdir -p "$IR/lib/modules/$KVER/$(dirname "$rel")"
    cp "$KMOD/$rel" "$IR/lib/modules/$KVER/$rel"
    echo "$rel" >> "$WORK/modorder"
}
for m in $MODULES; do add_mod "$m"; done
cp "$WORK/modorder" "$IR/etc/modules.order"
echo "$KVER" > "$IR/etc/kernel-version"

# --- 6. init and helpers -----------------------------------------------------------
cat > "$IR/init" <<'INIT_EOF'
#!/bin/sh
# /init of the tiny guest (PID 1). Kernel command line options:
#   tg.disks=all|none|NAME[,NAME...]  disks to set up; NAME is a kernel name (vdb,
#                                    sda) or a virtio-blk serial. Default: all.
#                                    Mounted at /mnt/<serial>, or /mnt/<kernel name>
#                                    when the disk has no serial (scsi-hd disks).
#   tg.mkfs=blank|force|never        blank (default): mkfs.ext4 only when the first
#                                    MiB is all zeros; a disk holding an ext2/3/4
#                                    file system is mounted as is; anything else is
#                                    left alone. force: always mkfs. never: mount only.
#   tg.writer=MOUNTPOINT             run a loop appending "<n> <epoch> <uptime>" to
#                                    MOUNTPOINT/writer.log every tg.writer_interval s.
#   tg.writer_interval=SECONDS       default 1 (may be fractional, e.g. 0.2)
#   tg.hook=0                        do not give qemu-ga the fsfreeze hook (default:
#                                    /etc/qemu/fsfreeze-hook logs each freeze/thaw)
#   tg.debug=1                       start a shell on the console at the end
#   tg.acpi_delay=SECONDS            after the ACPI power button, wait this long before
#                                    shutting down (a test that must act while it is pending)
#   tg.net=dhcp                      bring eth0 (virtio-net) up with an address from
#                                    DHCP (QEMU's user networking serves one)
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root
umask 022
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/qga
hostname -F /etc/hostname
log() { echo "tiny-guest: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
log "init start (uptime $(uptime_s))"
# Without an entropy source the kernel's crng is not ready for many seconds under
# TCG, and mke2fs (libuuid) then sleeps 1 s per random request (4 s in all). A
# blocking read of /dev/random makes the kernel gather jitter entropy (~1 s).
# With -device virtio-rng-pci (or -cpu max: RDRAND) it returns at once.
dd if=/dev/random of=/dev/null bs=1 count=1 2>/dev/null &
RNG_PID=$!

DISKS=all MKFS=blank WRITER= WINT=1 HOOK=1 DEBUG=0 NET=
for arg in $(cat /proc/cmdline); do
    case $arg in
        tg.disks=*) DISKS=${arg#*=} ;;
        tg.mkfs=*) MKFS=${arg#*=} ;;
        tg.writer=*) WRITER=${arg#*=} ;;
        tg.writer_interval=*) WINT=${arg#*=} ;;
        tg.hook=*) HOOK=${arg#*=} ;;
        tg.debug=*) DEBUG=${arg#*=} ;;
        tg.net=*) NET=${arg#*=} ;;
    esac
done

KVER=$(cat /etc/kernel-version)
while read -r m; do
    case $m in
        */scsi_mod.ko) insmod "/lib/modules/$KVER/$m" scan=sync || log "insmod $m failed" ;;
        *) insmod "/lib/modules/$KVER/$m" || log "insmod $m failed" ;;
    esac
done < /etc/modules.order

# agent channel: udev is absent, make /dev/virtio-ports/<name> symlinks ourselves
agent_port() {
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] || continue
        n=$(cat "$p/name")
        [ -n "$n" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$n"
    done
    [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]
}
i=0
until agent_port; do
    i=$((i+1)); [ $i -ge 50 ] && { log "no virtio port org.qemu.guest_agent.0"; break; }
    sleep 0.1
done

# scsi disks: sd attaches asynchronously; wait (max 5 s) until every scsi disk has
# its block device
i=0
while [ $i -lt 50 ]; do
    pending=0
    for d in /sys/bus/scsi/devices/*:*:*:*; do
        [ "$(cat "$d/type" 2>/dev/null)" = 0 ] || continue
        ls "$d"/block/* >/dev/null 2>&1 || pending=1
    done
    [ $pending = 0 ] && break
    i=$((i+1)); sleep 0.1
done

# disks
wanted() {  # $1 kernel name, $2 serial
    [ "$DISKS" = all ] && return 0
    [ "$DISKS" = none ] && return 1
    case ",$DISKS," in *",$1,"*) return 0 ;; esac
    [ -n "$2" ] && case ",$DISKS," in *",$2,"*) return 0 ;; esac
    return 1
}
has_ext_sb() {  # ext2/3/4 magic 0xEF53 at byte 1080
    [ "$(dd if="$1" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 53ef ]
}
is_blank() {  # first MiB all zeros
    [ "$(dd if="$1" bs=65536 count=16 2>/dev/null | tr -d '\000' | wc -c)" = 0 ]
}
MOUNTED=
for b in /sys/block/vd* /sys/block/sd*; do
    [ -e "$b" ] || continue
    name=${b##*/}
    serial=
    [ -r "$b/serial" ] && serial=$(cat "$b/serial")
    wanted "$name" "$serial" || continue
    dev=/dev/$name
    [ -b "$dev" ] || { log "$dev missing"; continue; }
    mkfs=0
    case $MKFS in
        force) mkfs=1 ;;
        never) ;;
        *) has_ext_sb "$dev" || { is_blank "$dev" && mkfs=1; } ;;
    esac
    if [ $mkfs = 1 ]; then
        [ -n "$RNG_PID" ] && { wait "$RNG_PID"; RNG_PID=; }
        log "mkfs.ext4 $dev"
        /sbin/mke2fs -q -F -t ext4 -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "$dev" \
            || { log "mkfs $dev failed"; continue; }
    elif ! has_ext_sb "$dev"; then
        log "$dev holds no ext2/3/4 file system and is not blank: left alone"
        continue
    fi
    mp=/mnt/${serial:-$name}
    mkdir -p "$mp"
    if mount -t ext4 "$dev" "$mp"; then
        log "mounted $dev on $mp"
        MOUNTED="$MOUNTED $mp"
    else
        log "mount $dev failed"
    fi
done

# ACPI power button (QMP system_powerdown): busybox acpid turns it into
# /etc/acpi/PWRF/00000080, which shuts down like qemu-ga's guest-shutdown does
acpid -c /etc/acpi -l /run/acpid.log || log "acpid failed"

if [ "$NET" = dhcp ]; then
    ip link set lo up
    if ip link set eth0 up && udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 10 -T 1 >/dev/null 2>&1; then
        log "eth0 $(ip -o -4 addr show dev eth0 | awk '{print $4}')"
    else
        log "dhcp on eth0 failed"
    fi
fi

# qemu-ga, restarted if it ever exits
QGA_OPTS="-m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run/qga"
[ "$HOOK" = 1 ] && QGA_OPTS="$QGA_OPTS -F/etc/qemu/fsfreeze-hook"
(
    while :; do
        # shellcheck disable=SC2086
        /usr/sbin/qemu-ga $QGA_OPTS
        log "qemu-ga exited ($?), restarting"
        sleep 1
    done
) &

if [ -n "$WRITER" ]; then
    (
        n=0
        while :; do
            n=$((n+1))
            echo "$n $(date +%s) $(uptime_s)" >> "$WRITER/writer.log"
            sleep "$WINT"
        done
    ) &
    log "writer started on $WRITER"
fi

log "READY uptime $(uptime_s) mounted:${MOUNTED:- none}"
if [ "$DEBUG" = 1 ]; then
    setsid cttyhack sh
fi
# PID 1 must never exit; busybox sh reaps orphaned children while it waits
while :; do sleep 3600; done
INIT_EOF
chmod 755 "$IR/init"

# udhcpc's hook (tg.net=dhcp): configure the lease it got
cat > "$IR/etc/udhcpc.script" <<'DHCP_EOF'
#!/bin/sh
case $1 in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
DHCP_EOF
chmod 755 "$IR/etc/udhcpc.script"

# qemu-ga runs this with "freeze" before FIFREEZE and "thaw" after FITHAW
mkdir -p "$IR/etc/qemu"
cat > "$IR/etc/qemu/fsfreeze-hook" <<'HOOK_EOF'
#!/bin/sh
line="$(cut -d' ' -f1 /proc/uptime) $1"
echo "$line" >> /run/fsfreeze-hook.log
echo "tiny-guest: fsfreeze-hook $line" > /dev/console
exit 0
HOOK_EOF
chmod 755 "$IR/etc/qemu/fsfreeze-hook"

# qemu-ga's guest-shutdown runs /sbin/shutdown -h|-P|-r +0 "message"
cat > "$IR/sbin/shutdown" <<'SHUT_EOF'
#!/bin/sh
mode=poweroff
for a in "$@"; do case $a in -r) mode=reboot ;; esac; done
sync
for mp in $(awk '$3 == "ext4" {print $2}' /proc/mounts); do umount "$mp" 2>/dev/null || mount -o remount,ro "$mp"; done
$mode -f
SHUT_EOF
chmod 755 "$IR/sbin/shutdown"

mkdir -p "$IR/etc/acpi/PWRF"
cat > "$IR/etc/acpi/PWRF/00000080" <<'PWRF_EOF'
#!/bin/sh
echo "tiny-guest: power button: shutting down" > /dev/console
for arg in $(cat /proc/cmdline); do
    case "$arg" in tg.acpi_delay=*) sleep "${arg#*=}" ;; esac
done
exec /sbin/shutdown -h +0
PWRF_EOF
chmod 755 "$IR/etc/acpi/PWRF/00000080"

cat > "$IR/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo "root:x:0:" > "$IR/etc/group"
echo tiny-guest > "$IR/etc/hostname"
ln -s ../proc/self/mounts "$IR/etc/mtab"
cat > "$IR/etc/os-release" <<EOF
NAME="tiny-guest"
ID=tiny-guest
ID_LIKE=debian
VERSION_ID="12"
PRETTY_NAME="tiny-guest (Debian 12 packages, kernel $KVER)"
EOF

# --- 7. pack ------------------------------------------------------------------------
mkdir -p "$OUT"
CPIO=$WORK/initramfs.cpio
(cd "$IR" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 > "$CPIO" 2>/dev/null)
case $COMPRESS in
    gzip) "$BB" gzip -9 -c "$CPIO" > "$OUT/initramfs.img" ;;
    xz)   xz --check=crc32 -9 -c "$CPIO" > "$OUT/initramfs.img" ;;    # needs host xz-utils
    zstd) zstd -q -19 -c "$CPIO" > "$OUT/initramfs.img" ;;             # needs host zstd
    none) cp "$CPIO" "$OUT/initramfs.img" ;;
    *) die "unknown TG_COMPRESS=$COMPRESS" ;;
esac
cp "$VMLINUZ" "$OUT/vmlinuz"

{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $KPKG ($KVER)"
    echo "modules:"; sed 's/^/  /' "$WORK/modorder"
    echo "packages:"
    for deb in "$WORK"/debs/*.deb; do
        echo "  $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
    done
    echo "sizes: vmlinuz $(stat -c %s "$OUT/vmlinuz") initramfs.img $(stat -c %s "$OUT/initramfs.img") (cpio $(stat -c %s "$CPIO"))"
} > "$OUT/manifest.txt"
log "done in $(( $(date +%s) - START ))s: $OUT/vmlinuz $OUT/initramfs.img"
