#!/usr/bin/env bash
# Quickstart: a real Redis master, replguard in front of it, and a real replica pointed at
# replguard, all on 127.0.0.1 in a temporary directory. Writes a few keys, reads them back from
# the replica, and shows the offsets replguard keeps next to the servers' own. Cleans up on exit
# (set REPLGUARD_DEMO_KEEP=1 to leave everything running and inspect it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
cargo build --release --quiet
BIN=$PWD/target/release/replguard
WORK=$(mktemp -d /tmp/replguard-demo.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MASTER=$(free_port); LINK=$(free_port); ADMIN=$(free_port); REPLICA=$(free_port)
cli() { redis-cli -p "$1" "${@:2}"; }

cleanup() {
  if [ "${REPLGUARD_DEMO_KEEP:-0}" = 1 ]; then
    echo "left running in $WORK (master :$MASTER, replguard :$LINK, admin :$ADMIN, replica :$REPLICA)"
    return
  fi
  cli "$REPLICA" shutdown nosave >/dev/null 2>&1 || true
  cli "$MASTER" shutdown nosave >/dev/null 2>&1 || true
  [ -n "${RG_PID:-}" ] && kill "$RG_PID" 2>/dev/null && wait "$RG_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/master" "$WORK/replica"
redis-server --port "$MASTER" --bind 127.0.0.1 --dir "$WORK/master" --save "" --daemonize yes \
  --logfile "$WORK/master.log" --repl-ping-replica-period 3600 \
  --enable-debug-command yes --repl-diskless-sync-delay 0
cat > "$WORK/replguard.yaml" <<YAML
state_dir: $WORK/state
admin:
  listen: 127.0.0.1:$ADMIN
links:
  - name: main
    listen: 127.0.0.1:$LINK
    master: 127.0.0.1:$MASTER
    flavor: redis
    guard: enforce
YAML
"$BIN" check --config "$WORK/replguard.yaml"
"$BIN" run --config "$WORK/replguard.yaml" 2>"$WORK/replguard.log" &
RG_PID=$!
for _ in $(seq 50); do cli "$MASTER" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli "$MASTER" debug populate 10000 >/dev/null 2>&1 || cli "$MASTER" set seed 1 >/dev/null

echo "== replica: REPLICAOF 127.0.0.1 $LINK (replguard), master is 127.0.0.1:$MASTER"
redis-server --port "$REPLICA" --bind 127.0.0.1 --dir "$WORK/replica" --save "" --daemonize yes \
  --logfile "$WORK/replica.log" --replicaof 127.0.0.1 "$LINK"
for _ in $(seq 100); do
  cli "$REPLICA" info replication 2>/dev/null | grep -q master_link_status:up && break; sleep 0.1
done
for i in 1 2 3; do cli "$MASTER" set "demo:$i" "value-$i" >/dev/null; done
echo "master WAIT 1 1000 -> $(cli "$MASTER" wait 1 1000) replica(s) acknowledged"
echo "replica GET demo:3 -> $(cli "$REPLICA" get demo:3)"
sleep 1.2   # one ACK period, so the replica's ACK reaches replguard's books
echo "== servers"
echo "master  $(cli "$MASTER" info replication | grep -E '^(master_repl_offset|slave0):' | tr -d '\r' | paste -sd' ')"
echo "replica $(cli "$REPLICA" info replication | grep -E '^(master_host|master_port|slave_repl_offset):' | tr -d '\r' | paste -sd' ')"
echo "== replguard GET /status (session books)"
python3 - "$ADMIN" <<'PY'
import json, sys, urllib.request
st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status"))
for link in st["links"]:
    print(f"link {link['name']}: {link['listen']} -> {link['master']}, sessions {link['sessions_active']}")
    for s in link["sessions"]:
        keys = ["replica", "state", "sync", "replid", "start_offset", "delivered_bytes",
                "expected_offset", "ack_offset", "lag_bytes", "rdb_bytes"]
        for k in keys:
            print(f"  {k:16} {s[k]}")
PY
echo "== replguard log"
cat "$WORK/replguard.log"
