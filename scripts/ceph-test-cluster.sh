#!/usr/bin/env bash
# A single-node Ceph cluster with an S3 gateway, for the tests and the bench of
# the S3 chunk repository (docs/object-storage.md): one monitor, one OSD on a
# sparse file-backed bluestore device, radosgw on 127.0.0.1:PORT and an S3 user.
# Everything (config, keys, data, logs, admin sockets, pid files) lives under
# DIR; nothing is installed or registered anywhere else. Needs root and the
# Debian packages ceph-mon ceph-osd radosgw ceph-common (scripts/ensure-deps.sh).
#
#   ceph-test-cluster.sh start DIR PORT [TLSPORT]
#                                         start it; waits until an authenticated S3 request succeeds,
#                                         then writes DIR/s3.env (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#                                         AWS_ENDPOINT_URL, AWS_REGION) — source it or read it. With TLSPORT
#                                         gateway 0 also serves HTTPS on 127.0.0.1:TLSPORT, with a certificate
#                                         of a CA made for this cluster (DIR/tls/ca.pem); s3.env then also
#                                         names S3_HTTPS_ENDPOINT and AWS_CA_BUNDLE (the CA, as the AWS tools take it)
#   ceph-test-cluster.sh stop DIR         kill every daemon (each pid file), wait until they are gone
#   ceph-test-cluster.sh kill-rgw DIR [N]      kill -9 gateway N (default 0; a crash)
#   ceph-test-cluster.sh restart-rgw DIR [N]   start gateway N again (after kill-rgw, or kill and start it);
#                                              waits for an authenticated request
#   ceph-test-cluster.sh add-rgw DIR N PORT    start one more gateway, client.rgw.N on 127.0.0.1:PORT, on the
#                                              same cluster and user (a test that kills a gateway kills its own)
#   ceph-test-cluster.sh kill-osd DIR     kill -9 the OSD
#   ceph-test-cluster.sh restart-osd DIR  mark osd.0 down (a crashed OSD still looks up, and the gateway
#                                         would hang ~15 s on its old address), then start it again
#   ceph-test-cluster.sh wait-s3 DIR      wait until an authenticated S3 request succeeds
#
# Set CEPH_TEST_KEEP_DATA=1 to keep DIR's data after stop (for a look at the logs).
set -euo pipefail

usage() {
  sed -n '9,26p' "$0" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
D=$(realpath -m "$2")
CONF=$D/ceph.conf
# the S3 user: fixed keys (a scratch cluster on loopback; the tests read them from s3.env)
S3_USER=virtback-test
S3_ACCESS_KEY=VIRTBACKTESTACCESSKEY
S3_SECRET_KEY=virtback-test-secret-key-0123456789abcdef

EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

log() { echo "ceph-test-cluster: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

ceph_cli() { timeout 60 ceph -c "$CONF" -n client.admin "$@"; }

# A free TCP port on loopback for the monitor (several clusters may run at once: the suite's and a test's own).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  local fsid=$1 mon_port=$2 rgw_port=$3 tls_port=$4
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $D
admin socket = $D/\$name.asok
log file = $D/\$name.log
pid file = $D/\$name.pid
keyring = $D/keyring
crash dir = $D/crash
exporter sock dir = $D
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0

[mon]
mon data = $D/mon.\$id

[osd]
osd data = $D/osd.\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 42949672960
osd memory target = 1073741824
osd max object name len = 460
osd max object namespace len = 64
EOF
  local tls=''
  [ -z "$tls_port" ] || tls=" ssl_endpoint=127.0.0.1:$tls_port ssl_certificate=$D/tls/server.pem ssl_private_key=$D/tls/server.key"
  rgw_section 0 "$rgw_port" "$tls"
}

rgw_section() {
  printf '\n[client.rgw.%s]\nkeyring = %s\nrgw frontends = beast endpoint=127.0.0.1:%s%s\nrgw data = %s\n' \
    "$1" "$D/rgw.keyring" "$2" "${3:-}" "$D/rgw.$1" >>"$CONF"
}

# the port of gateway $1
rgw_port() { sed -n "/^\[client.rgw.$1\]/,/^\[/s/^rgw frontends = beast endpoint=127.0.0.1:\([0-9]*\).*$/\1/p" "$CONF"; }
# its HTTPS port, if it has one
rgw_tls_port() { sed -n "/^\[client.rgw.$1\]/,/^\[/s/^rgw frontends = beast .*ssl_endpoint=127.0.0.1:\([0-9]*\).*$/\1/p" "$CONF"; }

# A CA of this cluster's own and a certificate it signs for 127.0.0.1 and localhost (the gateway's TLS port).
make_tls() {
  local t=$D/tls
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=virtback test CA" -keyout "$t/ca.key" -out "$t/ca.pem" 2>>"$D/setup.log"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$t/server.key" -out "$t/server.csr" 2>>"$D/setup.log"
  printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n' >"$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 30 \
    -extfile "$t/ext.cnf" -out "$t/server.pem" 2>>"$D/setup.log"
}

# Waits until an authenticated ListBuckets succeeds (the gateway answers an
# anonymous GET / before it can serve), up to $1 seconds.
wait_s3() {
  local limit=$1 port tls_port url ok start=$SECONDS
  port=$(rgw_port "$2")
  tls_port=$(rgw_tls_port "$2")
  [ -n "$port" ] || die "no gateway $2 in $CONF"
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    ok=1
    for url in "http://127.0.0.1:$port/" ${tls_port:+"https://127.0.0.1:$tls_port/"}; do
      # curl signs an empty body but sends no x-amz-content-sha256, which the gateway needs
      curl -sf -o /dev/null --max-time 5 --cacert "$D/tls/ca.pem" --aws-sigv4 "aws:amz:us-east-1:s3" \
        -H "x-amz-content-sha256: $EMPTY_SHA256" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "$url" || ok=0
    done
    [ "$ok" = 0 ] || return 0
    sleep 0.5
  done
  die "the gateway on 127.0.0.1:$port did not answer an authenticated request within ${limit}s (see $D/client.rgw.$2.log)"
}

start_rgw() {
  mkdir -p "$D/rgw.$1"
  radosgw -c "$CONF" -n "client.rgw.$1" --keyring "$D/rgw.keyring" 2>>"$D/setup.log"
}

start_osd() {
  ceph-osd -c "$CONF" -i 0 2>>"$D/setup.log"
}

cmd_start() {
  local rgw_port=${1:-} tls_port=${2:-}
  [ -n "$rgw_port" ] || usage
  [ "$(id -u)" -eq 0 ] || die "needs root"
  for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl python3 ${tls_port:+openssl}; do
    command -v "$b" >/dev/null || die "'$b' is missing (Debian packages ceph-mon ceph-osd radosgw ceph-common: scripts/ensure-deps.sh)"
  done
  if [ -f "$CONF" ] && pid_alive "$D/mon.a.pid"; then die "a cluster already runs in $D"; fi
  mkdir -p "$D" "$D/crash"
  local t0=$SECONDS fsid mon_port osd_uuid osd_secret
  fsid=$(cat /proc/sys/kernel/random/uuid)
  mon_port=$(free_port)
  [ -z "$tls_port" ] || make_tls
  write_conf "$fsid" "$mon_port" "$rgw_port" "$tls_port"

  # keys: the monitor's and the admin's in one keyring
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$D/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" 2>>"$D/setup.log"
  ceph-mon -c "$CONF" -i a 2>>"$D/setup.log"
  ceph_cli -s >/dev/null || die "the monitor does not answer (see $D/mon.a.log)"

  # one OSD on a sparse file (bluestore block create)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_secret=$(ceph-authtool --gen-print-key)
  local id
  id=$(echo "{\"cephx_secret\": \"$osd_secret\"}" | ceph_cli osd new "$osd_uuid" -i -)
  [ "$id" = 0 ] || die "expected osd id 0, got '$id'"
  mkdir -p "$D/osd.0"
  ceph-authtool --create-keyring "$D/osd.0/keyring" --name osd.0 --add-key "$osd_secret" >/dev/null
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" --keyring "$D/osd.0/keyring" 2>>"$D/setup.log" >/dev/null
  sed -i "s|^\[osd\]$|[osd]\nkeyring = $D/osd.\$id/keyring|" "$CONF"
  start_osd

  # the gateway, then the S3 user (radosgw-admin blocks until the gateway's pools exist)
  ceph_cli auth get-or-create client.rgw.0 mon 'allow rw' osd 'allow rwx' -o "$D/rgw.keyring" >/dev/null
  start_rgw 0
  timeout 120 radosgw-admin -c "$CONF" -n client.admin user create --uid="$S3_USER" --display-name="virtback tests" \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
  wait_s3 180 0
  cat >"$D/s3.env" <<EOF
AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
AWS_ENDPOINT_URL=http://127.0.0.1:$rgw_port
AWS_REGION=us-east-1
EOF
  if [ -n "$tls_port" ]; then
    printf 'S3_HTTPS_ENDPOINT=https://127.0.0.1:%s\nAWS_CA_BUNDLE=%s\n' "$tls_port" "$D/tls/ca.pem" >>"$D/s3.env"
  fi
  log "S3 on http://127.0.0.1:$rgw_port${tls_port:+ and https://127.0.0.1:$tls_port} after $((SECONDS - t0))s (cluster in $D)"
}

# kill -TERM each daemon, then -KILL what is still there after 10 s
cmd_stop() {
  local f pids=() pid
  shopt -s nullglob
  for f in "$D"/*.pid; do
    pid=$(cat "$f" 2>/dev/null || true)
    # only our daemons: the pid's command line must name our config
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  for _ in $(seq 100); do
    local alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
  if [ "${CEPH_TEST_KEEP_DATA:-0}" != 1 ]; then
    rm -rf "$D/osd.0" "$D/mon.a" "$D"/rgw.*
  fi
}

kill_daemon() {
  local f=$1 pid
  [ -f "$f" ] || die "no pid file $f"
  pid=$(cat "$f")
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$f"
}

case $cmd in
  start) cmd_start "${3:-}" "${4:-}" ;;
  stop) cmd_stop ;;
  kill-rgw) kill_daemon "$D/client.rgw.${3:-0}.pid" ;;
  restart-rgw)
    n=${3:-0}
    if pid_alive "$D/client.rgw.$n.pid"; then kill_daemon "$D/client.rgw.$n.pid"; fi
    start_rgw "$n"
    wait_s3 120 "$n"
    ;;
  add-rgw)
    n=${3:-}
    port=${4:-}
    [[ "$n" =~ ^[1-9][0-9]*$ && -n "$port" ]] || usage
    [ -z "$(rgw_port "$n")" ] || die "gateway $n exists already"
    ceph_cli auth get-or-create "client.rgw.$n" mon 'allow rw' osd 'allow rwx' >>"$D/rgw.keyring"
    echo >>"$D/rgw.keyring"
    rgw_section "$n" "$port"
    start_rgw "$n"
    wait_s3 120 "$n"
    ;;
  kill-osd) kill_daemon "$D/osd.0.pid" ;;
  restart-osd)
    if pid_alive "$D/osd.0.pid"; then kill_daemon "$D/osd.0.pid"; fi
    ceph_cli osd down 0 >/dev/null 2>&1 || true
    start_osd
    wait_s3 120 0
    ;;
  wait-s3) wait_s3 120 "${3:-0}" ;;
  *) usage ;;
esac
