#!/usr/bin/env bash
# The cluster benchmark: how long until every node has the image, and what it costs the
# registry, for a cluster pulling one image at once — without Pollen, through a central cache,
# and with Pollen — on emulated hosts, against the minimum distribution time.
#
#   sudo benches/cluster.sh                    # every scenario, every contender; the report in benches/results/
#   sudo benches/cluster.sh --quick            # 4 nodes, a small image, rollout only: correctness, not timing
#   sudo benches/cluster.sh --scenario edge --contender pollen --out /tmp/r
#   benches/cluster.sh --report-only --out DIR  # results.md again from DIR/runs.jsonl
#
# Hosts. One network namespace per node, one for the upstream registry, one for the central
# cache, joined by veth pairs to a bridge in a switch namespace (tests/e2e/multinode.sh's
# helpers; addresses only inside these namespaces, all deleted at the end, also on failure or
# Ctrl-C). Links are shaped with `tc qdisc add ... root tbf rate R burst 256kb latency 50ms` on
# both ends: a host's upload on its own side of the veth, its download on the bridge side.
# The registry has only an upload limit (its uplink); nodes and the cache have both.
#
# Upstream: the real docker-registry (CNCF Distribution, Debian package) holding an image built
# here from random (incompressible) layers, sized per scenario.
#
# Contenders, one after the other on the same network, each with empty caches:
#   direct  every node pulls from the registry;
#   cache   a docker-registry in proxy mode (Distribution's pull-through cache, the classic
#           Harbor/registry proxy-cache set-up) on a host of its own with a node's links; every
#           node pulls through it;
#   pollen  an agent on every node (roles below, every node bootstrapping to node 1), every
#           node pulling through its own agent.
# The client is this script's own minimal puller (benches/cluster-pull.sh: the manifest by tag,
# then the config and every layer at once with curl, each hashed with sha256sum and compared
# with its digest), because dozens of containerds do not fit this machine beside the agents;
# containerd through the agent is exercised by the e2e (tests/e2e, steps g and h).
#
# Measured per scenario and contender: each node's time to a verified image (p50, p95, max);
# registry egress (the bytes its link carried: rx_bytes of its veth's bridge end), with the
# ratio to the image's blob bytes F; bytes each node sent (same, its veth); the lower bound
#   T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i))
# (for `direct` and `cache` the bound is the same physical one: what any distribution could
# do on these links) and max-time / T_min; CPU use of the whole machine during the run (from
# /proc/stat), so a run where the CPU and not the links was the limit shows it.
# Output in OUT (default benches/results): results.json (one object per run), results.md
# (the table, and for pollen a per-node timeline: peers connected when the pulls start, first
# blob bytes, 99.5 % received, done; the registry's first and last bytes), SCENARIO-CONTENDER.csv
# (time, node, bytes: every node's veth sampled twice a second, bytes received; node 0 is the
# registry, bytes sent) and SCENARIO.svg (bytes received over time, one line per node, a panel
# per contender).
#
# Scenarios (N nodes; links in Mbit/s; layers in MiB):
#   rollout     N=12, registry 50 up, nodes 200/200, layers 16 8 8: the registry is the limit
#   peer-bound  N=12, registry 500 up, nodes 40 up / 200 down, layers 16 8 8: nodes' uploads are
#   edge        N=8, a 20 Mbit/s uplink to the site, nodes 200/200, layers 8 8
#   staggered   rollout's links, node i starts (i-1) * 10 s / N after the first
#   churn       rollout's links; nodes N*3/4+1..N (a quarter) are killed at T_min / 2 (their
#               puller, and for pollen their agent); the others must finish with verified bytes
#   big-layer   N=8, registry 200 up, nodes 1000/1000, one layer of 1024 MiB (AI images are
#               mostly one huge layer)
#   fast-registry N=8, registry 5000 up, nodes 1000/1000, one layer of 256 MiB: an in-region
#               registry faster than a node's upload; direct pulls are near their bound here
#   defaults    rollout's links and image, every agent on default roles (no --tracker, no
#               --seed: the binary's and the chart's defaults)
#   sites       N=8 in two sites of 4 behind a 20 Mbit/s link each (both ways) to the region,
#               which holds the registry (200 up), the cache and, for pollen, a parent agent that
#               serves the sites over TLS (docs/sites.md, tests/e2e/sites.sh); nodes 200/200,
#               layers 8 8. direct and cache pull across the site links; with pollen each site is
#               a swarm whose agents name the parent first. Also recorded: the bytes each site
#               link carried towards its site (site_link_over_f: the busiest, over F)
# Every agent of a scenario is started at once, in random order (a DaemonSet), and the pulls
# start a second after the last one answers /readyz. Roles, except in `defaults`: node 1 a
# tracker and seed, node 2 a tracker, the others --tracker false.
# --quick: rollout with N=4 and layers 4 4, failing only on a wrong digest or a node that never
# finishes (what .ci/run runs as root).
#
# Environment: POLLEN_BIN (default: the release build, built if needed), BENCH_NET (the /24,
# three octets, default 10.79.0), BENCH_TIMEOUT (bound on each pull in seconds, default 600),
# BENCH_RUST_LOG (the agents' RUST_LOG, default warn), BENCH_KEEP_LOGS=1 (keep the last
# scenario's logs in OUT/logs; they are kept anyway when the run fails), BENCH_AGENT_ARGS
# (extra arguments for every agent but the sites' ones, e.g. "--max-upload-sessions 1", split
# on spaces).
set -uo pipefail

CB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CB_HERE/.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"
# shellcheck source=tests/e2e/multinode.sh
source "$REPO/tests/e2e/multinode.sh"
# shellcheck source=tests/e2e/sites.sh
source "$REPO/tests/e2e/sites.sh"

CB_ARGS="$*"
CB_NET=${BENCH_NET:-10.79.0}
CB_TIMEOUT=${BENCH_TIMEOUT:-600}
CB_OUT="$REPO/benches/results"
CB_QUICK=0
CB_REPORT_ONLY=0
CB_SCENARIOS=()
CB_CONTENDERS=()
CB_REPO_TAG="bench/app:v1"
CB_CACHE_IP="$CB_NET.3"
PASSED=0
FAILED=0
T=""

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) CB_QUICK=1 ;;
        --report-only) CB_REPORT_ONLY=1 ;;
        --scenario) CB_SCENARIOS+=("$2"); shift ;;
        --contender) CB_CONTENDERS+=("$2"); shift ;;
        --out) CB_OUT=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "${#CB_CONTENDERS[@]}" -gt 0 ] || CB_CONTENDERS=(direct cache pollen)
if [ "${#CB_SCENARIOS[@]}" -eq 0 ]; then
    if [ "$CB_QUICK" = 1 ]; then
        CB_SCENARIOS=(rollout)
    else
        CB_SCENARIOS=(rollout peer-bound edge staggered churn big-layer fast-registry defaults)
    fi
fi

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

# cb_scenario NAME: sets the scenario's N, layers, link rates (Mbit/s), stagger window and churn.
cb_scenario() {
    CB_STAGGER=0 CB_CHURN=0 CB_DEFAULT_ROLES=0 CB_SITE=0
    case "$1" in
        rollout | staggered | churn | defaults) CB_N=12 CB_LAYERS="16 8 8" CB_REG=50 CB_UP=200 CB_DOWN=200 ;;
        peer-bound) CB_N=12 CB_LAYERS="16 8 8" CB_REG=500 CB_UP=40 CB_DOWN=200 ;;
        edge) CB_N=8 CB_LAYERS="8 8" CB_REG=20 CB_UP=200 CB_DOWN=200 ;;
        big-layer) CB_N=8 CB_LAYERS="1024" CB_REG=200 CB_UP=1000 CB_DOWN=1000 ;;
        fast-registry) CB_N=8 CB_LAYERS="256" CB_REG=5000 CB_UP=1000 CB_DOWN=1000 ;;
        sites) CB_N=8 CB_LAYERS="8 8" CB_REG=200 CB_UP=200 CB_DOWN=200 CB_SITE=20 ;;
        *) die "unknown scenario $1 (rollout, peer-bound, edge, staggered, churn, big-layer, fast-registry, defaults, sites)" ;;
    esac
    [ "$1" = defaults ] && CB_DEFAULT_ROLES=1
    case "$1" in
        staggered) CB_STAGGER=10 ;;
        churn) CB_CHURN=1 ;;
    esac
    if [ "$CB_QUICK" = 1 ]; then CB_N=4 CB_LAYERS="4 4"; fi
}

# cb_shape DEV NS MBIT: a tbf on DEV (its egress) inside NS.
cb_shape() {
    tc -n "$2" qdisc add dev "$1" root tbf rate "${3}mbit" burst 256kb latency 50ms
}

# cb_net_up: the hosts, the cache's host at NET.3, and every link shaped. The hosts are
# mn_net_up's, or in the `sites` scenario tests/e2e/sites.sh's si_net_up's: the registry and
# the parent in the region, two sites of N/2 nodes behind links of CB_SITE Mbit/s each way.
cb_net_up() {
    local i sw=$MN_SW
    if [ "$CB_SITE" -gt 0 ]; then
        SI_NODES=$((MN_NODES / 2)) SI_RATE="${CB_SITE}mbit"
        si_names
        si_net_up || return 1
    else
        mn_net_up || return 1
    fi
    CB_CACHE_NS="$MN_PREFIX-cache"
    mn_add_host "$CB_CACHE_NS" "$CB_CACHE_IP" vcache || return 1
    cb_shape eth0 "$MN_REG_NS" "$CB_REG" || return 1
    cb_shape eth0 "$CB_CACHE_NS" "$CB_UP" && cb_shape vcache "$MN_SW" "$CB_DOWN" || return 1
    for ((i = 1; i <= MN_NODES; i++)); do
        # A node's veth sits on its site's bridge in `sites`, on the one switch otherwise.
        [ "$CB_SITE" -gt 0 ] && sw=$(si_sw "$(si_site "$i")")
        cb_shape eth0 "$(mn_ns "$i")" "$CB_UP" && cb_shape "v$i" "$sw" "$CB_DOWN" || return 1
    done
}

# cb_counters: "rx tx" of every node's veth (bridge end: its rx is what the node sent, its tx
# what the node received), then the registry's and the cache's, one line each, read in one go.
# shellcheck disable=SC2046 # the device names are words
cb_counters() {
    local i
    if [ "$CB_SITE" -gt 0 ]; then
        # Nodes' veths are on their site's bridge; the site links (la, lb: towards each site)
        # follow the cache's line.
        cb_read_counters "$(si_sw a)" $(for ((i = 1; i <= SI_NODES; i++)); do printf 'v%s ' "$i"; done)
        cb_read_counters "$(si_sw b)" $(for ((i = SI_NODES + 1; i <= MN_NODES; i++)); do printf 'v%s ' "$i"; done)
        cb_read_counters "$MN_SW" vreg vcache la lb
        return
    fi
    cb_read_counters "$MN_SW" $(for ((i = 1; i <= MN_NODES; i++)); do printf 'v%s ' "$i"; done) vreg vcache
}

# cb_read_counters NS DEV...: "rx tx" of each DEV in NS, a line each.
cb_read_counters() {
    local ns=$1
    shift
    # shellcheck disable=SC2016 # the script is sh's
    mn_in "$ns" sh -c 'for d in "$@"; do echo "$(cat /sys/class/net/$d/statistics/rx_bytes) $(cat /sys/class/net/$d/statistics/tx_bytes)"; done' sh "$@"
}

# cb_sampler FILE T0: every 0.5 s, "seconds node bytes_received" per node and "seconds 0
# bytes_sent" for the registry, until killed.
cb_sampler() {
    local file=$1 t0=$2 t line n
    while :; do
        t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
        n=0
        while read -r line; do
            n=$((n + 1))
            if [ "$n" -le "$MN_NODES" ]; then
                printf '%s %s %s\n' "$t" "$n" "${line#* }"
            elif [ "$n" -eq $((MN_NODES + 1)) ]; then
                printf '%s 0 %s\n' "$t" "${line% *}"
            fi
        done < <(cb_counters)
        sleep 0.5
    done >>"$file"
}

# cb_start_cache: the proxy-mode docker-registry on the cache host, empty.
cb_start_cache() {
    local dir="$MN_DIR/cache"
    rm -rf "$dir"
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $CB_CACHE_IP:5000
proxy:
  remoteurl: http://$MN_REG
YML
    lib_start_bg cache "$MN_DIR/logs/cache.log" ip netns exec "$CB_CACHE_NS" docker-registry serve "$dir/config.yml"
    CB_CACHE_PID=$LIB_LAST_PID
    mn_wait_http "$CB_CACHE_NS" "http://$CB_CACHE_IP:5000/v2/" 150 "$CB_CACHE_PID"
}

# cb_start_agents: an agent on every node with empty data, all started at once in random order
# (a DaemonSet), each then waited for; the pulls start a second after the last is ready (the
# workload's pods come a moment after the DaemonSet's). Roles: the header's.
cb_start_agents() {
    local i args
    if [ "$CB_SITE" -gt 0 ]; then
        # sites: the parent in the region (its cache empty), then every site agent at once with
        # the parent first in its upstream list (tests/e2e/sites.sh).
        si_pki && si_start_parent || return 1
        for i in $(seq 1 "$MN_NODES" | shuf); do
            rm -rf "$MN_DIR/n$i/agent"
            si_launch_agent "$i" || return 1
        done
        for ((i = 1; i <= MN_NODES; i++)); do mn_wait_agent "$i" || return 1; done
        sleep 1
        return
    fi
    for i in $(seq 1 "$MN_NODES" | shuf); do
        rm -rf "$MN_DIR/n$i/agent"
        read -r -a args <<<"${BENCH_AGENT_ARGS:-}"
        if [ "$CB_DEFAULT_ROLES" = 0 ]; then
            if [ "$i" -le 2 ]; then args+=(--tracker true); else args+=(--tracker false); fi
            [ "$i" -eq 1 ] && args+=(--seed true)
        fi
        mn_launch_agent "$i" "${args[@]}" || return 1
    done
    for ((i = 1; i <= MN_NODES; i++)); do mn_wait_agent "$i" || return 1; done
    sleep 1
}

cb_stop_agents() {
    local i
    for ((i = 1; i <= MN_NODES; i++)); do kill -TERM "${MN_AGENT_PID[$i]}" 2>/dev/null || true; done
    for ((i = 1; i <= MN_NODES; i++)); do lib_stop_pid "${MN_AGENT_PID[$i]}" 100; done
    if [ "$CB_SITE" -gt 0 ]; then lib_stop_pid "$SI_PARENT_PID"; fi
}

# cb_puller_target CONTENDER: "BASE QUERY" for the puller.
cb_puller_target() {
    case "$1" in
        direct) echo "http://$MN_REG -" ;;
        cache) echo "http://$CB_CACHE_IP:5000 -" ;;
        pollen) echo "http://127.0.0.1:$MN_AGENT_PORT ns=${MN_REG/:/%3A}" ;;
    esac
}

# cb_metric NAME: a JSON array, each agent's metric NAME now (e.g. pollen_connected_peers; null
# where the metrics did not answer).
cb_metric() {
    local i v out="["
    for ((i = 1; i <= MN_NODES; i++)); do
        v=$(mn_in "$(mn_ns "$i")" curl -s --max-time 2 "http://127.0.0.1:$MN_ADMIN_PORT/metrics" |
            awk -v m="$1" '$1 == m { print $2 + 0; exit }')
        out+="${v:-null}"
        [ "$i" -lt "$MN_NODES" ] && out+=","
    done
    echo "$out]"
}

# cb_run SCENARIO CONTENDER: one run; appends its JSON object to OUT/runs.jsonl.
cb_run() {
    local scen=$1 who=$2 i p base query t0 delay kill_at sampler csv busy0 busy1 idle0 idle1
    local -a pid=() before=() after=()
    csv="$CB_OUT/$scen-$who.csv"
    : >"$csv"
    case "$who" in
        cache) cb_start_cache || die "the cache did not start" ;;
        pollen) cb_start_agents || die "the agents did not start" ;;
    esac
    read -r base query < <(cb_puller_target "$who")
    rm -f "$MN_DIR"/logs/pull-n*.out "$MN_DIR"/logs/pull-n*.killed
    # shellcheck disable=SC2034 # read through a nameref in cb_record
    mapfile -t before < <(cb_counters)
    CB_PEERS="[]"
    [ "$who" = pollen ] && CB_PEERS=$(cb_metric pollen_connected_peers)
    read -r busy0 idle0 < <(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    t0=$EPOCHREALTIME
    cb_sampler "$csv" "$t0" &
    sampler=$!
    for ((i = 1; i <= MN_NODES; i++)); do
        delay=$(awk -v i="$i" -v n="$MN_NODES" -v w="$CB_STAGGER" 'BEGIN { printf "%.2f", (i - 1) * w / n }')
        (
            sleep "$delay"
            mn_in "$(mn_ns "$i")" timeout "$CB_TIMEOUT" bash "$CB_HERE/cluster-pull.sh" "$base" "$query" "$CB_REPO_TAG" "$t0" \
                >"$MN_DIR/logs/pull-n$i.out" 2>&1
        ) &
        pid[i]=$!
    done
    if [ "$CB_CHURN" = 1 ]; then
        kill_at=$(awk -v t="$CB_TMIN" 'BEGIN { printf "%.2f", t / 2 }')
        sleep "$kill_at"
        for ((i = MN_NODES * 3 / 4 + 1; i <= MN_NODES; i++)); do
            # The node is gone: its puller, its curls, and with pollen its agent.
            for p in $(ip netns pids "$(mn_ns "$i")"); do kill -KILL "$p" 2>/dev/null || true; done
            : >"$MN_DIR/logs/pull-n$i.killed"
        done
    fi
    for ((i = 1; i <= MN_NODES; i++)); do wait "${pid[i]}" 2>/dev/null || true; done
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    read -r busy1 idle1 < <(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    # shellcheck disable=SC2034 # read through a nameref in cb_record
    mapfile -t after < <(cb_counters)
    CB_DISPLACED="[]"
    [ "$who" = pollen ] && CB_DISPLACED=$(cb_metric pollen_peer_sessions_displaced_total)
    cb_record "$scen" "$who" before after "$busy0" "$idle0" "$busy1" "$idle1"
    case "$who" in
        cache) lib_stop_pid "$CB_CACHE_PID" ;;
        pollen) cb_stop_agents ;;
    esac
}

# cb_record SCENARIO CONTENDER BEFORE AFTER BUSY0 IDLE0 BUSY1 IDLE1: the run's JSON line.
cb_record() {
    local scen=$1 who=$2 i st secs line survivors=0 ok=0
    local -n b=$3 a=$4
    local cpu sent_json times_json reg_egress
    cpu=$(awk -v b0="$5" -v i0="$6" -v b1="$7" -v i1="$8" 'BEGIN { t = (b1 - b0) + (i1 - i0); printf "%.0f", (t > 0 ? 100 * (b1 - b0) / t : 0) }')
    sent_json="["
    times_json="["
    for ((i = 1; i <= MN_NODES; i++)); do
        sent_json+="$(( ${a[i - 1]% *} - ${b[i - 1]% *} ))"
        [ "$i" -lt "$MN_NODES" ] && sent_json+=","
        line=$(tail -n 1 "$MN_DIR/logs/pull-n$i.out" 2>/dev/null)
        read -r st secs <<<"$line"
        if [ -e "$MN_DIR/logs/pull-n$i.killed" ]; then
            times_json+='{"node":'"$i"',"killed":true}'
        else
            survivors=$((survivors + 1))
            if [ "$st" = ok ]; then
                ok=$((ok + 1))
                times_json+='{"node":'"$i"',"secs":'"$secs"'}'
            else
                times_json+='{"node":'"$i"',"error":'"$(jq -Rs . <"$MN_DIR/logs/pull-n$i.out")"'}'
            fi
        fi
        [ "$i" -lt "$MN_NODES" ] && times_json+=","
    done
    sent_json+="]"
    times_json+="]"
    reg_egress=$(( ${a[MN_NODES]% *} - ${b[MN_NODES]% *} ))
    # sites: the bytes each site link carried towards its site (lines after the cache's).
    local sites_json="[]"
    if [ "$CB_SITE" -gt 0 ]; then
        sites_json="[$(( ${a[MN_NODES + 2]#* } - ${b[MN_NODES + 2]#* } )),$(( ${a[MN_NODES + 3]#* } - ${b[MN_NODES + 3]#* } ))]"
    fi
    jq -nc --arg s "$scen" --arg c "$who" --argjson n "$MN_NODES" --argjson f "$CB_F" \
        --argjson reg "$CB_REG" --argjson up "$CB_UP" --argjson down "$CB_DOWN" --argjson tmin "$CB_TMIN" \
        --argjson egress "$reg_egress" --argjson sent "$sent_json" --argjson nodes "$times_json" \
        --argjson survivors "$survivors" --argjson ok "$ok" --argjson cpu "$cpu" --argjson quick "$CB_QUICK" \
        --argjson peers "$CB_PEERS" --argjson displaced "$CB_DISPLACED" \
        --argjson sites "$sites_json" --argjson site "$CB_SITE" '
        ([$nodes[] | select(.secs != null) | .secs] | sort) as $t
        | def pct(p): if ($t | length) == 0 then null else $t[((($t | length) - 1) * p | floor)] end;
        {scenario: $s, contender: $c, nodes: $n, quick: ($quick == 1), image_blob_bytes: $f,
         links_mbit: {registry_up: $reg, node_up: $up, node_down: $down},
         t_min_secs: $tmin, survivors: $survivors, verified: $ok, all_verified: ($ok == $survivors),
         p50_secs: pct(0.5), p95_secs: pct(0.95), max_secs: (if $ok == $survivors then $t[-1] else null end),
         max_over_t_min: (if $ok == $survivors and $ok > 0 then ($t[-1] / $tmin * 100 | round / 100) else null end),
         registry_egress_bytes: $egress, egress_over_f: ($egress / $f * 1000 | round / 1000),
         bytes_sent_per_node: $sent, cpu_busy_percent: $cpu, per_node: $nodes,
         peers_at_start: $peers, sessions_displaced: $displaced}
        + (if $site > 0 then {site_link_mbit: $site, site_link_bytes: $sites,
             site_link_over_f: ($sites | max / $f * 1000 | round / 1000)} else {} end)' >>"$CB_OUT/runs.jsonl"
    jq -r '"  \(.contender): \(.verified)/\(.survivors) verified; max \(.max_secs // "-") s (\(.max_over_t_min // "-") x T_min), p50 \(.p50_secs // "-") s; registry egress \(.egress_over_f) x F\(if .site_link_over_f then "; busiest site link \(.site_link_over_f) x F" else "" end); CPU \(.cpu_busy_percent)%"' \
        <<<"$(tail -n 1 "$CB_OUT/runs.jsonl")"
}

# cb_t_min: T_min in seconds for the scenario's survivors (F in bytes, rates in Mbit/s).
cb_t_min() {
    local n=$MN_NODES
    [ "$CB_CHURN" = 1 ] && n=$((MN_NODES * 3 / 4))
    # sites: every site's nodes need F through their site's link as well.
    awk -v f="$CB_F" -v s="$CB_REG" -v u="$CB_UP" -v d="$CB_DOWN" -v n="$n" -v l="$CB_SITE" 'BEGIN {
        s *= 125000; u *= 125000; d *= 125000; l *= 125000
        a = f / s; b = f / d; c = n * f / (s + n * u)
        m = a; if (b > m) m = b; if (c > m) m = c; if (l > 0 && f / l > m) m = f / l; printf "%.2f", m }'
}

cb_scenario_run() {
    local scen=$1 who
    cb_scenario "$scen"
    mn_config "pollen-cb-$$" "$CB_NET" "$CB_N" "$CB_REPO_TAG" own
    read -r -a MN_LAYER_MIBS <<<"$CB_LAYERS"
    MN_RUST_LOG=${BENCH_RUST_LOG:-warn}
    MN_DIR="$T/$scen"
    mkdir -p "$MN_DIR/logs"
    lib_step "$scen: $CB_N nodes, layers $CB_LAYERS MiB; registry up ${CB_REG} Mbit/s, nodes ${CB_UP}/${CB_DOWN} Mbit/s up/down${CB_STAGGER:+, starts over ${CB_STAGGER} s}"
    cb_net_up || die "$scen: setting up the hosts failed"
    mn_start_registry || die "$scen: the registry did not start"
    mn_build_image || die "$scen: building the image failed"
    CB_F=$(jq '[.config.size, .layers[].size] | add' "$MN_MANIFEST_FILE")
    CB_TMIN=$(cb_t_min)
    echo "  image: $CB_F blob bytes; T_min = $CB_TMIN s"
    for who in "${CB_CONTENDERS[@]}"; do
        cb_run "$scen" "$who"
    done
    lib_stop_pid "$MN_REG_PID"
    lib_stop_all
    mn_cleanup
    cb_svg "$scen"
}

# cb_svg SCENARIO: SCENARIO.svg (also from --report-only), a panel per contender, bytes received over time per node.
cb_svg() {
    local scen=$1 who files=()
    for who in "${CB_CONTENDERS[@]}"; do files+=("$CB_OUT/$scen-$who.csv"); done
    awk -v title="$scen" -v f="$CB_F" -v tmin="$CB_TMIN" -v names="${CB_CONTENDERS[*]}" '
        FNR == 1 { p++ }
        { t[p, $2, ++k[p, $2]] = $1; v[p, $2, k[p, $2]] = $3; if ($1 > tm[p]) tm[p] = $1; if ($2 > n) n = $2
          if (k[p, $2] == 1) base[p, $2] = $3 }
        END {
            split(names, name, " "); W = 900; H = 220; L = 60; R = 20; top = 40
            printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, top + p * (H + 30)
            printf "<text x=\"%d\" y=\"22\" font-size=\"16\">%s: bytes received per node over time (dashed: T_min %.1f s; each panel its own time axis)</text>\n", L, title, tmin
            for (q = 1; q <= p; q++) {
                y0 = top + (q - 1) * (H + 30)
                # Each panel has its own time axis (the contenders differ tenfold).
                tmax = tm[q] > tmin ? tm[q] : tmin
                printf "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", L, y0 + 12, name[q]
                printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#999\"/>\n", L, y0 + 18, W - L - R, H - 20
                xt = L + (W - L - R) * tmin / tmax
                printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#c00\" stroke-dasharray=\"4\"/>\n", xt, y0 + 18, xt, y0 + H - 2
                printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">F</text><text x=\"%d\" y=\"%d\" text-anchor=\"end\">0</text>\n", L - 4, y0 + 26, L - 4, y0 + H - 2
                printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.0f s</text>\n", W - R, y0 + H + 12, tmax
                for (i = 1; i <= n; i++) {
                    printf "<polyline fill=\"none\" stroke=\"hsl(%d,60%%,40%%)\" stroke-width=\"1.2\" points=\"", (i * 360 / n) % 360
                    for (j = 1; j <= k[q, i]; j++) {
                        b = v[q, i, j] - base[q, i]; if (b > f) b = f
                        printf "%.1f,%.1f ", L + (W - L - R) * t[q, i, j] / tmax, y0 + H - 2 - (H - 20) * b / f
                    }
                    printf "\"/>\n"
                }
            }
            print "</svg>"
        }' "${files[@]}" >"$CB_OUT/$scen.svg"
}

# cb_svg_all: every scenario's picture again from OUT (its CSVs and results.json).
cb_svg_all() {
    local scen who
    for scen in $(jq -r '[.[].scenario] | unique | .[]' "$CB_OUT/results.json"); do
        CB_F=$(jq --arg s "$scen" '[.[] | select(.scenario == $s)][0].image_blob_bytes' "$CB_OUT/results.json")
        CB_TMIN=$(jq --arg s "$scen" '[.[] | select(.scenario == $s)][0].t_min_secs' "$CB_OUT/results.json")
        mapfile -t CB_CONTENDERS < <(jq -r --arg s "$scen" '.[] | select(.scenario == $s) | .contender' "$CB_OUT/results.json")
        cb_svg "$scen"
    done
}

# cb_timeline SCENARIO CONTENDER: where the time went, node by node, from the run's CSV (so at
# the sampler's 0.5 s resolution): peers each agent had when the pulls started, when its first
# blob bytes came (1 % of F), when it had 99.5 % of them, when its puller was done; and the
# registry's first and last bytes.
cb_timeline() {
    local scen=$1 who=$2 csv="$CB_OUT/$1-$2.csv" run f fin peers
    [ -s "$csv" ] || return 0
    run=$(jq -c --arg s "$scen" --arg c "$who" '[.[] | select(.scenario == $s and .contender == $c)][0]' "$CB_OUT/results.json")
    f=$(jq '.image_blob_bytes' <<<"$run")
    fin=$(jq -r '[.per_node[] | (.secs // "-")] | join(" ")' <<<"$run")
    peers=$(jq -r '[(.peers_at_start // [])[] | (. // "-")] | join(" ")' <<<"$run")
    echo
    echo "Timeline of $scen ($who): seconds from the pulls' start, sampled every 0.5 s"
    echo
    echo "| node | peers at start | first blob bytes | 99.5 % received | done |"
    echo "|---|---|---|---|---|"
    awk -v f="$f" -v fin="$fin" -v peers="$peers" '
        !(($2) in base) { base[$2] = $3; if ($2 > n) n = $2 }
        { d = $3 - base[$2]; got[$2] = d; k[$2]++; t[$2, k[$2]] = $1; v[$2, k[$2]] = d
          if (!(($2) in first) && d >= f / 100) first[$2] = $1 }
        function reached(i, want,   j) {
            for (j = 1; j <= k[i]; j++) if (v[i, j] >= want) return t[i, j]
            return "-"
        }
        END {
            split(fin, dn, " "); split(peers, pr, " ")
            if (0 in base) printf "| registry | - | %s | %s (last byte) | - |\n", ((0 in first) ? first[0] : "-"), reached(0, got[0])
            for (i = 1; i <= n; i++) {
                want = 0.995 * (got[i] < f ? got[i] : f)
                printf "| %d | %s | %s | %s | %s |\n", i, ((i in pr) ? pr[i] : "-"), ((i in first) ? first[i] : "-"), reached(i, want), ((i in dn) ? dn[i] : "-")
            }
        }' "$csv"
}

# cb_report: results.json and results.md from runs.jsonl.
cb_report() {
    jq -s . "$CB_OUT/runs.jsonl" >"$CB_OUT/results.json"
    {
        echo "| scenario | contender | N | F | T_min | p50 | p95 | max | max / T_min | registry egress / F | verified | CPU |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
        jq -r '.[] | "| \(.scenario) | \(.contender) | \(.nodes) | \(.image_blob_bytes / 1048576 * 10 | round / 10) MiB | \(.t_min_secs) s | \(.p50_secs // "-") s | \(.p95_secs // "-") s | \(.max_secs // "-") s | \(.max_over_t_min // "-") | \(.egress_over_f) | \(.verified)/\(.survivors) | \(.cpu_busy_percent)% |"' "$CB_OUT/results.json"
        echo
        echo
        echo "Targets (the issue's; reported, never a test): pollen's time until every node has the image"
        echo "against T_min, and its registry egress against F."
        echo
        echo "| scenario | target | pollen | verdict |"
        echo "|---|---|---|---|"
        jq -r '{"rollout": 1.10, "big-layer": 1.10, "edge": 1.10, "defaults": 1.10, "churn": 1.3, "peer-bound": 1.3} as $goal
            | .[] | select(.contender == "pollen" and $goal[.scenario] != null)
            | $goal[.scenario] as $g
            | (if .max_over_t_min == null then "did not finish: \(.verified)/\(.survivors) verified"
               elif .max_over_t_min <= $g then "met"
               else "missed by \(((.max_over_t_min / $g - 1) * 100) | round) %" end) as $time
            | (if .scenario == "peer-bound" then "" elif .egress_over_f <= 1.01 then "; egress met"
               else "; egress missed (\(.egress_over_f) x F)" end) as $eg
            | "| \(.scenario) | <= \($g) x T_min\(if .scenario == "peer-bound" then "" else ", egress <= 1.01 x F" end) | \(.max_over_t_min // "-") x T_min, \(.egress_over_f) x F | \($time)\($eg) |"' "$CB_OUT/results.json"
        echo
        echo "Never slower than direct (fast-registry, peer-bound): pollen's max time <= 1.05 x direct's, same run."
        echo
        jq -r 'group_by(.scenario)[] | select(.[0].scenario == "fast-registry" or .[0].scenario == "peer-bound")
            | (map({(.contender): .max_secs}) | add) as $m | select($m.pollen != null and $m.direct != null)
            | ($m.pollen / $m.direct * 100 | round / 100) as $r
            | "- \(.[0].scenario): pollen / direct = \($r) (\(if $r <= 1.05 then "met" else "missed by \((($r / 1.05 - 1) * 100) | round) %" end))"' "$CB_OUT/results.json"
        echo
        jq -r 'group_by(.scenario)[] | (map({(.contender): .max_secs}) | add) as $m | select($m.pollen != null)
            | "\(.[0].scenario): time until every node has the image, direct / pollen = \(if $m.direct then "\($m.direct / $m.pollen * 10 | round / 10)" else "-" end), central cache / pollen = \(if $m.cache then "\($m.cache / $m.pollen * 10 | round / 10)" else "-" end)"' "$CB_OUT/results.json"
        jq -r '.[] | select(.site_link_over_f != null)
            | "- \(.scenario), \(.contender): the busiest site link carried \(.site_link_over_f) x F towards its site, the registry sent \(.egress_over_f) x F"' "$CB_OUT/results.json"
        echo
        jq -r '.[] | select(.contender | startswith("pollen")) | "\(.scenario) \(.contender)"' "$CB_OUT/results.json" |
            while read -r scen who; do cb_timeline "$scen" "$who"; done
    } >"$CB_OUT/results.md"
    cat "$CB_OUT/results.md"
}

cb_cleanup() {
    local rc=$?
    set +e
    lib_stop_all
    mn_cleanup
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ "$rc" -ne 0 ] || [ "${BENCH_KEEP_LOGS:-0}" = 1 ]; then
            mn_keep_logs "$CB_OUT/logs" && echo "logs of the last scenario kept in $CB_OUT/logs"
        fi
        rm -rf "$T"
    fi
    exit "$rc"
}

main() {
    local scen
    if [ "$CB_REPORT_ONLY" = 1 ]; then
        cb_report
        cb_svg_all
        return
    fi
    lib_is_root || die "must run as root (network namespaces, tc)"
    lib_ensure_tools docker-registry=docker-registry skopeo=skopeo umoci=umoci curl=curl jq=jq ip=iproute2 tc=iproute2 ||
        die "required tools are missing"
    if [ "$CB_QUICK" = 1 ] && [ -n "${POLLEN_BIN:-}" ]; then :; else lib_release_pollen "$REPO" || die "no release binary"; fi
    [ -x "${POLLEN_BIN:-}" ] || die "agent binary not found: ${POLLEN_BIN:-}"
    trap cb_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    T=$(mktemp -d /tmp/pollen-bench.XXXXXX)
    mkdir -p "$CB_OUT"
    : >"$CB_OUT/runs.jsonl"
    for scen in "${CB_SCENARIOS[@]}"; do cb_scenario_run "$scen"; done
    cb_report
    {
        echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
        echo "command: benches/cluster.sh $CB_ARGS"
    } >>"$CB_OUT/results.md"
    # Correctness decides the exit status, never a timing.
    jq -e 'all(.[]; .all_verified)' "$CB_OUT/results.json" >/dev/null || die "a node did not get verified bytes (see $CB_OUT/results.json)"
}

main "$@"
