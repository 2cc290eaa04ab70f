#!/usr/bin/env bash
# The issue-15 scale runs of pollen-sim (benches/README.md, "Part 9"): Kraken's published
# set-up and registry-bound rollouts of 1,000, 5,000 and 10,000 nodes in racks of 40 with 4:1
# oversubscribed rack uplinks. Each run's JSON, SVG and /usr/bin/time -v output (wall time,
# peak RSS of the simulator) land in the output directory.
#
#   benches/sim-scale.sh [OUT_DIR]          # default: benches/results/sim
#   SCALE_ONLY="kraken rollout-1000" benches/sim-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benches/results/sim}
# The `sim` profile (Cargo.toml): release with whole-program LTO. Built every time (a no-op
# when fresh), so a run never uses a binary older than the source.
if [ -z "${POLLEN_SIM:-}" ]; then
    cargo build --profile sim -j2 -p pollen-sim >&2
fi
SIM=${POLLEN_SIM:-target/sim/pollen-sim}
[ -x /usr/bin/time ] || { echo "sim-scale.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
mkdir -p "$OUT"
# glibc's malloc on transparent huge pages: the 10,000-node run's working set is gigabytes of
# small objects, and on this VM its page walks cost a fifth of the run (3,000 nodes: 84 s ->
# 66 s of CPU time). The output is the same.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}

# run NAME ARGS...: one simulation; pollen-sim exits 1 when a node did not finish, which is
# a result to record, not a reason to stop the others.
run() {
    local name=$1
    shift
    case " ${SCALE_ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac
    echo "sim-scale.sh: $name: pollen-sim $*" >&2
    /usr/bin/time -v -o "$OUT/$name.time" "$SIM" --json --svg "$OUT/$name.svg" "$@" \
        >"$OUT/$name.json" || true
    jq -c --arg name "$name" \
        --arg wall "$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$OUT/$name.time")" \
        --arg rss "$(awk -F': ' '/Maximum resident/ { print $2 }' "$OUT/$name.time")" \
        '{name: $name, nodes, done, t_min_secs, p50_secs, p99_secs, max_secs, max_over_t_min,
          egress_over_f, rack_in_mean_over_f, rack_in_max_over_f, tracker_peak_bytes, tracker_msgs_per_node_per_sec,
          wall_secs, sim_peak_rss_bytes, elapsed: $wall, rss_kib: ($rss | tonumber)}' "$OUT/$name.json"
}

# Kraken's published run: 2,600 hosts, 3 GB in 2 layers, every agent capped at 300 MB/s, a
# registry that is not the bottleneck. F / d_min = 10 s.
run kraken --nodes 2600 --image 3GB --layers 2 --node-up 300MB/s --node-down 300MB/s \
    --registry-up 10Gbit
rollout=(--image 3GB --layers 2 --node-up 10Gbit --node-down 10Gbit --rack-up 100Gbit
    --registry-up 2Gbit)
for n in 1000 5000 10000; do
    run "rollout-$n" --nodes "$n" --racks $((n / 40)) "${rollout[@]}"
done
