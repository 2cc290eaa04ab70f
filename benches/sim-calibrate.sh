#!/usr/bin/env bash
# The simulator's prediction of every benches/cluster.sh scenario beside the time measured
# there (benches/README.md, "Part 9": the median over the part-9 runs of pollen's max seconds
# until every node has the image). The emulated cluster runs on one 2-core machine, so the simulator gets
# that machine's CPU (--host-cpu 2 --cpu-per-gib 9) and the pull's manifest-and-config phase
# (--pull-overhead 1s); docs/simulator.md says why.
#
#   benches/sim-calibrate.sh            # builds pollen-sim (release) if needed
#
# Output: one markdown table row per scenario: scenario, measured s, simulated s, ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
SIM=${POLLEN_SIM:-target/release/pollen-sim}
[ -x "$SIM" ] || cargo build --release -j2 -p pollen-sim >&2
command -v jq >/dev/null || { echo "sim-calibrate.sh: needs jq" >&2; exit 1; }

base=(--host-cpu 2 --cpu-per-gib 9 --pull-overhead 1s --json)
rollout=(--nodes 12 --layer-sizes "16MiB,8MiB,8MiB" --registry-up 50Mbit --node-up 200Mbit --node-down 200Mbit)

# row NAME MEASURED SURVIVORS ARGS...: the simulated max over the nodes that finish (all but
# the killed ones), which must be SURVIVORS.
row() {
    local name=$1 measured=$2 survivors=$3 json finished sim
    shift 3
    # pollen-sim exits 1 when nodes did not finish: expected where nodes are killed for good.
    json=$("$SIM" "${base[@]}" "$@") || true
    finished=$(jq '.done' <<<"$json")
    sim=$(jq '.max_secs' <<<"$json")
    [ "$finished" = "$survivors" ] || { echo "sim-calibrate.sh: $name: $finished nodes finished, not $survivors" >&2; exit 1; }
    awk -v n="$name" -v m="$measured" -v s="$sim" \
        'BEGIN { printf "| %s | %.2f | %.2f | %.2f |\n", n, m, s, s / m }'
}

echo "| scenario | measured max s | simulated max s | simulated / measured |"
echo "|---|---|---|---|"
row rollout 6.71 12 "${rollout[@]}" --trackers 2
row peer-bound 9.03 12 --nodes 12 --layer-sizes 16MiB,8MiB,8MiB --registry-up 500Mbit --node-up 40Mbit --node-down 200Mbit --trackers 2
row edge 7.40 8 --nodes 8 --layer-sizes 8MiB,8MiB --registry-up 20Mbit --node-up 200Mbit --node-down 200Mbit --trackers 2
row staggered 10.83 12 "${rollout[@]}" --stagger 10s --trackers 2
# cluster.sh kills the last quarter (plain members) at T_min / 2 = 2.68 s, for good.
row churn 6.42 9 "${rollout[@]}" --churn 0.25 --churn-from 2.68s --churn-window 1ms --churn-down 1h --until 120s --trackers 2
row big-layer 48.58 8 --nodes 8 --layer-sizes 1024MiB --registry-up 200Mbit --node-up 1000Mbit --node-down 1000Mbit --trackers 2
row fast-registry 10.95 8 --nodes 8 --layer-sizes 256MiB --registry-up 5000Mbit --node-up 1000Mbit --node-down 1000Mbit --trackers 2
row defaults 6.88 12 "${rollout[@]}"
