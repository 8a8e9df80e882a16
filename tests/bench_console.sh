#!/usr/bin/env bash
# The console's overview at fleet scale: one release coordinator, one tandem-swarm of N agents
# in one pool cluster, and a headless Chromium timing the overview (bench_console).
#
#   cargo build --release --workspace --bins
#   tests/bench_console.sh N [RUNS]        # e.g. tests/bench_console.sh 10000 5
#
# Prints one JSON object: the page loads' times from navigation start until the overview shows
# all N nodes (drawn from GET /v1/clusters, GET /v1/overview and GET /v1/nodes?limit=100), and
# the three API calls' times with curl. Everything is kept under $OUT (default
# /tmp/tandem-bench/console-N). Needs chromium and chromium-driver (installed as root).
set -euo pipefail
N=${1:?agents}
RUNS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/tandem-bench/console-$N}
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"

"$BIN/tandem-coordinator" init --data-dir coord --admin-addr 127.0.0.1:0 --quic-addr 127.0.0.1:0 >/dev/null
# Beats every second (lease 5 s) as in bench_swarm.sh; room for N nodes in one cluster.
GRACE=$(( N * 2 > 7000 ? N * 2 : 7000 ))
sed -i "s/^heartbeat_ms = .*/heartbeat_ms = 1000/; s/^lease_ms = .*/lease_ms = 5000/; s/^restart_grace_ms = .*/restart_grace_ms = $GRACE/; s/^max_nodes_per_cluster = .*/max_nodes_per_cluster = $(( N + 10 ))/" coord/coordinator.toml

RUST_LOG=${COORD_LOG:-info} setsid "$BIN/tandem-coordinator" serve --data-dir coord >coord.log 2>&1 &
CPID=$!
cleanup() { kill "${SWARM:-}" "${CPID:-}" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 600); do [ -f coord/endpoints.json ] && break; sleep 0.1; done
ADMIN=$(python3 -c "import json;print(json.load(open('coord/endpoints.json'))['admin'])")
QUIC=$(python3 -c "import json;print(json.load(open('coord/endpoints.json'))['quic'])")
CTL=("$BIN/tandemctl" --endpoint "http://$ADMIN" --token-file coord/admin.token)
"${CTL[@]}" clusters create --name swarm --mode pool >/dev/null
"${CTL[@]}" tokens create --cluster swarm --uses "$N" --ttl-s 7200 | awk '/^token:/{print $2}' > swarm.token

"$BIN/tandem-swarm" --coordinator "$QUIC" --token-file swarm.token --agents "$N" \
  --duration-s 3600 --settle-s 20 --watch-pid "$CPID" --progress-s 10 > summary.json 2> swarm.log &
SWARM=$!
ready() { curl -s "http://$ADMIN/metrics" | awk '/^tandem_nodes_connected /{print $2}'; }
until [ "$(ready || echo 0)" = "$N" ]; do
  kill -0 $SWARM 2>/dev/null || { echo "the swarm ended early: see $OUT/swarm.log" >&2; exit 1; }
  sleep 1
done
sleep 5

api_ms() {
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $(cat coord/admin.token)" "http://$ADMIN$1"
  done | sort -n | awk '{a[NR]=$1*1000} END {printf "{\"p50\": %.1f, \"max\": %.1f}", a[int((NR+1)/2)], a[NR]}'
}
CLUSTERS=$(api_ms /v1/clusters)
OVERVIEW=$(api_ms /v1/overview)
NODES=$(api_ms '/v1/nodes?limit=100')
PAGE=$("$BIN/bench_console" --endpoint "http://$ADMIN" --token-file coord/admin.token --nodes "$N" --runs "$RUNS" | tail -1)
python3 - "$PAGE" "$CLUSTERS" "$OVERVIEW" "$NODES" <<'PY'
import json, sys
page, clusters, overview, nodes = (json.loads(x) for x in sys.argv[1:5])
page["api_ms"] = {"/v1/clusters": clusters, "/v1/overview": overview, "/v1/nodes?limit=100": nodes}
print(json.dumps(page, indent=1, sort_keys=True))
PY
