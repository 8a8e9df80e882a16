#!/usr/bin/env bash
# Scale benchmark: one release coordinator and one tandem-swarm of N agents on this machine.
#
#   cargo build --release --workspace --bins
#   tests/bench_swarm.sh N [HEARTBEAT_MS] [STEADY_S] [RESTART]
#
# SWARM_ARGS (e.g. "--usage-s 10") go to the swarm as they are.
# N agents join with one token and beat every HEARTBEAT_MS (default 1000; the lease is 5 beats)
# for STEADY_S seconds once all have registered (default 60). While they beat, the admin
# endpoint's `GET /v1/nodes?limit=100` is timed 10 times. With RESTART=restart the coordinator
# is stopped as planned (SIGTERM: it records its restart hold and grants leases until it) 20 s
# into the steady phase and started again on the same data dir and port; with RESTART=crash it
# is killed with SIGKILL instead. The time until /metrics shows all N connected again is
# measured, and so are downs (counted once the hold, or the restart grace, is over) and the
# agents' lease expiries (the swarm's summary).
# Prints one JSON object (the swarm's summary plus these figures) on stdout; everything is kept
# under $OUT (default /tmp/tandem-bench/N-HEARTBEAT[-restart]).
set -euo pipefail
N=${1:?agents}
HB=${2:-1000}
STEADY=${3:-60}
RESTART=${4:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/tandem-bench/$N-$HB${RESTART:+-$RESTART}}
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"

"$BIN/tandem-coordinator" init --data-dir coord --admin-addr 127.0.0.1:0 --quic-addr 127.0.0.1:0 >/dev/null
# Lease = 5 beats (as 200/1000 ms at the defaults); a restart grace long enough for N agents
# to reconnect (their backoff is at most 2 s, then N handshakes).
GRACE=$(( 6000 > 5 * HB + 2000 ? 6000 : 5 * HB + 2000 ))
GRACE=$(( GRACE > N * 2 ? GRACE : N * 2 ))
sed -i "s/^heartbeat_ms = .*/heartbeat_ms = $HB/; s/^lease_ms = .*/lease_ms = $(( 5 * HB ))/; s/^restart_grace_ms = .*/restart_grace_ms = $GRACE/" coord/coordinator.toml

start_coordinator() {
  rm -f coord/endpoints.json
  RUST_LOG=${COORD_LOG:-info} setsid "$BIN/tandem-coordinator" serve --data-dir coord ${QUIC:+--quic-addr $QUIC} >>coord.log 2>&1 &
  CPID=$!
  for _ in $(seq 600); do [ -f coord/endpoints.json ] && break; sleep 0.1; done
}
cleanup() { kill "${SWARM:-}" "${CPID:-}" 2>/dev/null || true; }
trap cleanup EXIT

start_coordinator
ADMIN=$(python3 -c "import json;print(json.load(open('coord/endpoints.json'))['admin'])")
QUIC=$(python3 -c "import json;print(json.load(open('coord/endpoints.json'))['quic'])")
TOKEN=$(cat coord/admin.token)
"$BIN/tandemctl" --endpoint "http://$ADMIN" --token "$TOKEN" tokens create --uses "$N" --ttl-s 7200 \
  | awk '/^token:/{print $2}' > swarm.token

DURATION=$STEADY
# With a restart the swarm runs until the downs are counted past the grace, then is stopped
# (SIGTERM ends it with its summary): a slow restart must not outlast the swarm.
[ -n "$RESTART" ] && DURATION=$(( STEADY + 3600 ))
"$BIN/tandem-swarm" --coordinator "$QUIC" --token-file swarm.token --agents "$N" \
  --duration-s "$DURATION" --settle-s 20 --watch-pid "$CPID" ${SWARM_ARGS:-} \
  --progress-s 10 > summary.json 2> swarm.log &
SWARM=$!

ready() { curl -s "http://$ADMIN/metrics" | awk '/^tandem_nodes_connected /{print $2}'; }
# Wait until every agent is ready, then let the steady phase settle a little.
until [ "$(ready || echo 0)" = "$N" ]; do
  kill -0 $SWARM 2>/dev/null || break
  sleep 1
done
sleep 10
: > admin_ms.txt
for _ in $(seq 10); do
  curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" \
    "http://$ADMIN/v1/nodes?limit=100" >> admin_ms.txt
  sleep 1
done

downs() { curl -s "http://$ADMIN/metrics" | awk '/^tandem_nodes_declared_down_total/{print $2}'; }
RESTART_MS=null
if [ -n "$RESTART" ]; then
  sleep 10
  DOWNS_BEFORE=$(downs)
  t0=$(date +%s%N)
  if [ "$RESTART" = crash ]; then kill -9 "$CPID"; else kill -TERM "$CPID"; fi
  # The store's lock is released when the old process is gone, not when the signal is sent.
  wait "$CPID" 2>/dev/null || true
  start_coordinator
  ADMIN=$(python3 -c "import json;print(json.load(open('coord/endpoints.json'))['admin'])")
  until [ "$(ready || echo 0)" = "$N" ]; do
    kill -0 $SWARM 2>/dev/null || { echo "the swarm ended before all were back" >&2; break; }
    sleep 0.2
  done
  RESTART_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "restart_to_all_ready_ms $RESTART_MS" > restart.txt
  # Past the restart hold (a planned stop's) and the restart grace, which the reconnect storm
  # extends by one lease plus fence grace past its last registration: anyone still missing
  # would be declared down by now.
  until [ "$(curl -s "http://$ADMIN/healthz" | python3 -c 'import json,sys;print(json.load(sys.stdin)["restart_grace_remaining_ms"])')" = 0 ]; do
    sleep 1
  done
  sleep $(( 5 * HB / 1000 + 5 ))
fi
DOWNS=$(( ${DOWNS_BEFORE:-0} + $(downs) ))
[ -n "$RESTART" ] && kill -TERM $SWARM 2>/dev/null
wait $SWARM || true
SWARM=
python3 - "$N" "$HB" "$RESTART_MS" "${DOWNS:-0}" <<'EOF'
import json, sys
n, hb, restart_ms, downs = sys.argv[1:5]
s = json.load(open("summary.json"))
ms = sorted(float(x) * 1000 for x in open("admin_ms.txt").read().split())
s["bench"] = {
    "agents": int(n), "heartbeat_ms": int(hb),
    "admin_nodes_limit_100_ms": {"p50": ms[len(ms) // 2], "max": ms[-1]},
    "restart_to_all_ready_ms": None if restart_ms == "null" else int(restart_ms),
    "coordinator_declared_down_total": int(float(downs)),
}
print(json.dumps(s, indent=1, sort_keys=True))
EOF
