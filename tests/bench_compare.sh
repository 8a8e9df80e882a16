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
# (crash, hang, cut), then the new build's again at the fast settings with its agents in
# process-group containment (as the old build's were), then tests/bench_swarm.sh AGENTS 1000 60 (coordinator CPU at AGENTS x
# 1 Hz; AGENTS=0 skips it; SWARM_ROUNDS=N alternates N rounds of it). Prints one line per figure; the JSON of each run is kept under
# $OUT (default /tmp/tandem-compare).
set -euo pipefail
OLD=$(cd "${1:?old release dir}" && pwd)
NEW=$(cd "${2:?new release dir}" && pwd)
RUNS=${3:-20}
AGENTS=${4:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/tandem-compare}
mkdir -p "$OUT"

# Each kind's median failover, and in brackets its start: failover minus detection (medians).
median() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(' '.join(f\"{k}={v['failover_ms']['median']:.0f} (start {v['failover_ms']['median']-v['detection_ms']['median']:.0f})\" for k,v in d['results'].items()))" "$1"; }

for setting in defaults fast; do
  args=(--runs "$RUNS")
  [ "$setting" = fast ] && args+=(--fast --fence-kill-ms 50)
  for which in old new; do
    dir=$OLD; [ "$which" = new ] && dir=$NEW
    "$dir/bench_failover" "${args[@]}" > "$OUT/failover-$setting-$which.json" 2> "$OUT/failover-$setting-$which.log"
    echo "failover $setting $which: $(median "$OUT/failover-$setting-$which.json") (median ms)"
  done
done
# Like for like: the old build puts no job in a cgroup; the new one again with its agents in
# process-group containment, so that what the engine costs is told apart from what the
# cgroup moves of a start cost.
"$NEW/bench_failover" --runs "$RUNS" --fast --fence-kill-ms 50 --containment process-group \
  > "$OUT/failover-fast-new-process-group.json" 2> "$OUT/failover-fast-new-process-group.log"
echo "failover fast new, process-group containment: $(median "$OUT/failover-fast-new-process-group.json") (median ms)"

# The coordinator's figures of one swarm run: bench_swarm.sh reports the coordinator's process
# as `watched` (the swarm's own as `swarm`).
swarm_line() { python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = d["watched"]
print(f"coordinator CPU steady {w['steady_cpu_pct']} % ramp {w['ramp_cpu_pct']} %, RSS at steady end {w['rss_mib_at_steady_end']:.0f} MiB;"
      f" downs {d['bench']['coordinator_declared_down_total']}, disconnects {d['disconnects']}")
PY
}

# SWARM_ROUNDS (default 1) alternating rounds, old then new: one round's difference is within
# the machine's noise (a few points of a core), so a claim needs several.
if [ "$AGENTS" -gt 0 ]; then
  for round in $(seq 1 "${SWARM_ROUNDS:-1}"); do
    for which in old new; do
      dir=$OLD; [ "$which" = new ] && dir=$NEW
      BIN=$dir OUT="$OUT/swarm-$which-$round" "$ROOT/tests/bench_swarm.sh" "$AGENTS" 1000 60 > "$OUT/swarm-$which-$round.json"
      echo "swarm $AGENTS x 1 Hz $which (round $round): $(swarm_line "$OUT/swarm-$which-$round.json")"
    done
  done
fi
