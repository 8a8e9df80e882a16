#!/usr/bin/env bash
# Side-by-side benchmark of two builds on this machine, in one run:
#
#   tests/bench_compare.sh OLD_RELEASE_DIR NEW_RELEASE_DIR [RUNS] [AGENTS]
#
# e.g. with the previous commit checked out in a worktree and both built with
# `cargo build --release --workspace --bins`:
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release --workspace --bins)
#   cargo build --release --workspace --bins
#   tests/bench_compare.sh /tmp/old/target/release target/release 20 10000
#
# Runs, old then new for each: bench_failover at the defaults and at the fast settings
# (50 ms beats, 250 ms lease, 50 ms fence kill timeout), RUNS rounds of each failure kind
# (crash, hang, cut), then tests/bench_swarm.sh AGENTS 1000 60 (coordinator CPU at AGENTS x
# 1 Hz; AGENTS=0 skips it). Prints one line per figure; the JSON of each run is kept under
# $OUT (default /tmp/tandem-compare).
set -euo pipefail
OLD=$(cd "${1:?old release dir}" && pwd)
NEW=$(cd "${2:?new release dir}" && pwd)
RUNS=${3:-20}
AGENTS=${4:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/tandem-compare}
mkdir -p "$OUT"

median() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(' '.join(f\"{k}={v['failover_ms']['median']:.0f}\" for k,v in d['results'].items()))" "$1"; }

for setting in defaults fast; do
  args=(--runs "$RUNS")
  [ "$setting" = fast ] && args+=(--fast --fence-kill-ms 50)
  for which in old new; do
    dir=$OLD; [ "$which" = new ] && dir=$NEW
    "$dir/bench_failover" "${args[@]}" > "$OUT/failover-$setting-$which.json" 2> "$OUT/failover-$setting-$which.log"
    echo "failover $setting $which: $(median "$OUT/failover-$setting-$which.json") (median ms)"
  done
done

if [ "$AGENTS" -gt 0 ]; then
  for which in old new; do
    dir=$OLD; [ "$which" = new ] && dir=$NEW
    BIN=$dir OUT="$OUT/swarm-$which" "$ROOT/tests/bench_swarm.sh" "$AGENTS" 1000 60 > "$OUT/swarm-$which.json"
    echo "swarm $AGENTS x 1 Hz $which: $(python3 - "$OUT/swarm-$which.json" <<'PY'
import json, sys
def walk(d, path=""):
    for k, v in d.items():
        p = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            yield from walk(v, p)
        elif "coordinator" in p and any(w in p for w in ("cpu", "rss", "declared_down")):
            yield f"{p}={v}"
print(" ".join(walk(json.load(open(sys.argv[1])))))
PY
)"
  done
fi
