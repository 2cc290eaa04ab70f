#!/usr/bin/env bash
# The soak: a cluster of agents pulling continuously for an hour while faults hit it every 30 s.
# Not CI (it runs for an hour); it answers "does anything leak, hang or corrupt over time?".
#
#   sudo benches/soak.sh                          # 8 agents, 3600 s; results in benches/results/soak
#   sudo SOAK_DURATION=300 SOAK_FAULT_EVERY=15 benches/soak.sh --out /tmp/soak   # a short trial
#   benches/soak.sh --report-only --out DIR        # results.md and soak.svg again from DIR's CSVs
#
# Hosts: a network namespace per node and one for the registry, joined by veths to a bridge in a
# switch namespace (tests/e2e/multinode.sh's helpers, on BENCH_NET, default 10.81.0: never the
# e2e's or benches/cluster.sh's). Links shaped with tc tbf: the registry's uplink SOAK_REG_MBIT
# (default 200 Mbit/s), each node SOAK_NODE_MBIT both ways (default 500; 0 = unshaped). All of
# it is deleted at the end, also on failure or Ctrl-C.
#
# Upstream: the real docker-registry (CNCF Distribution) holding 20 images built here with umoci
# from random (incompressible) data, 1 MiB to 200 MiB each, about 1 GiB of distinct blobs:
# eight share an 8 MiB base layer, four a 32 MiB one; some have several layers; two are one big
# layer (160, 200 MiB). SOAK_IMAGE_SCALE (percent, default 100) scales every layer.
#
# Agents: one per node, every one with peer-to-peer on and the run's swarm key; node 1
# `--tracker true --seed true`, node 2 `--tracker true`, the others `--tracker false`; every
# node bootstraps to both trackers (the way a Service in front of them would). Each agent's
# data dir is on a tmpfs of its own of SOAK_TMPFS (default 1536M) with --cache-size
# SOAK_CACHE_SIZE (default 768MiB): smaller than the images together, so caches evict and
# refill from peers. Every agent (and the registry) runs under a supervisor loop that restarts
# it when it exits, as a DaemonSet would: after a fault's SIGKILL with the fault's delay, after
# an exit nobody asked for (a crash: recorded as an incident, with its exit status) 3 s later.
#
# Clients: on every node a loop pulls a random image through the node's own agent with
# benches/soak-pull.sh (the manifest by tag, then the config and every layer at once, each
# hashed as it streams and compared with its digest; an object the agent fails is fetched from
# the registry directly, like containerd's hosts.toml falling back to `server`), one pull at a
# time, a random 0-SOAK_PAUSE s (default 10) pause between pulls (with 5, the trials kept both
# cores of the 2-core VM busy: the clients' curl and hashing cost more CPU than the agents, and
# a starved agent stalls for reasons that are not Pollen's). Each pull is bounded by
# SOAK_DEADLINE s (default 300): one still running then is killed and counted as `deadline`.
# Results: ok (every object verified, all through the agent), fallback (verified, some from the
# registry directly), fail (an object verified by neither path: allowed, a runtime retries),
# corrupt (the agent answered 200 with a complete body that does not hash to its digest: must
# never happen), deadline (must never happen).
#
# Faults: every SOAK_FAULT_EVERY s (default 30) one drawn at random from SOAK_FAULTS (default
# all of: agent tracker link registry disk; `none`: a baseline without faults), one at a time
# (a fault that outlasts the interval delays the next; missed slots are skipped):
#   agent     SIGKILL of a non-tracker node's agent, restarted on the same data dir 1-5 s later;
#   tracker   the same for node 1 or 2;
#   link      a node's eth0 down for 5-30 s, then up; checked: the node reaches the registry
#             again and its tbf is in place (re-added if not);
#   registry  SIGKILL of docker-registry, restarted on the same storage 1-3 s later;
#   disk      a node's tmpfs filled to 16 MiB free with a file (fallocate) for SOAK_DISK_HOLD s
#             (default 20), then the file is deleted.
#
# Sampled every SOAK_SAMPLE_EVERY s (default 10), every agent: pid, RSS (VmRSS; also RssAnon,
# RssFile, RssShmem, VmHWM), open file descriptors (/proc/PID/fd), threads, CPU seconds, cache
# size (bytes allocated on disk for its data dir, du -sB1, partial blobs included; also its
# pollen_cache_bytes; du -sb would count partials, sparse files, at their full size); the
# machine's CPU use and available memory. The slope of each over the last SOAK_SLOPE_WINDOW s
# (default 2400, at most 2/3 of the run) is a least-squares fit with one intercept per
# incarnation of the agent (a restart starts a new level, the slope is shared), leaving out each
# incarnation's first 60 s (start-up growth); reported per hour, with the growth over the window
# against the window's mean.
#
# Output in OUT (--out DIR, default benches/results/soak): results.md (the table), pulls.csv,
# faults.csv, samples.csv, events.csv (agent and registry starts, readiness, kills, exits),
# registry.csv (the registry's access log: every blob and manifest GET, by whom), system.csv,
# images.csv, blobs.csv, meta.env, soak.svg (RSS, fds and cache size over time, a line per node
# and agent incarnation, fault times marked); logs/ (agents', registry's, gzipped) when
# something must-be-zero was not, an agent panicked or exited by itself, or SOAK_KEEP_LOGS=1.
# Times are seconds since the clients started. A line of progress every minute. Registry
# egress is the registry's veth counter (the bytes its link carried, headers included) against
# the bytes the cluster needed: the distinct blobs and the manifests of every image some node
# pulled (what any distribution must fetch once; with caches smaller than the images a cluster
# may need more, after evicting a blob everywhere); the access log splits the blob bodies the
# registry sent between agents and clients falling back, and names the agents' bytes beyond one
# copy of each blob with the faults that preceded them.
# Exit status: 1 when a pull was corrupt or over its deadline, or an agent panicked or exited
# by itself.
#
# Environment: POLLEN_BIN (default target/release/pollen; copied once, so a rebuild during the
# run changes nothing; never built here), SOAK_NODES (default 8), SOAK_DURATION (seconds of
# pulling, default 3600), BENCH_NET, SOAK_RUST_LOG (the agents' RUST_LOG, default info),
# SOAK_KEEP_LOGS=1, and the SOAK_* above.
set -uo pipefail

SK_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SK_HERE/.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"
# shellcheck source=tests/e2e/multinode.sh
source "$REPO/tests/e2e/multinode.sh"

SK_ARGS="$*"
SK_NODES=${SOAK_NODES:-8}
SK_DURATION=${SOAK_DURATION:-3600}
SK_FAULT_EVERY=${SOAK_FAULT_EVERY:-30}
SK_FAULTS=${SOAK_FAULTS:-agent tracker link registry disk}
SK_SAMPLE_EVERY=${SOAK_SAMPLE_EVERY:-10}
SK_WINDOW=${SOAK_SLOPE_WINDOW:-2400}
SK_DEADLINE=${SOAK_DEADLINE:-300}
SK_PAUSE=${SOAK_PAUSE:-10}
SK_NET=${BENCH_NET:-10.81.0}
SK_REG_MBIT=${SOAK_REG_MBIT:-200}
SK_NODE_MBIT=${SOAK_NODE_MBIT:-500}
SK_TMPFS=${SOAK_TMPFS:-1536M}
SK_CACHE=${SOAK_CACHE_SIZE:-768MiB}
SK_DISK_HOLD=${SOAK_DISK_HOLD:-20}
SK_SCALE=${SOAK_IMAGE_SCALE:-100}
SK_RUST_LOG=${SOAK_RUST_LOG:-info}
SK_OUT="$REPO/benches/results/soak"
SK_REPORT_ONLY=0
T=""
S=""
# Background loops of this script (supervisors, clients, sampler, fault injector).
SK_BG=()

# The images: NAME BASE LAYER_MIB...; BASE is base0 (8 MiB), base1 (32 MiB) or - (none). Every
# image also gets a small text layer of its own.
SK_IMAGES=(
    "img01 base0 1" "img02 base0 2 1" "img03 base0 4" "img04 base0 6 2 1" "img05 base0 10"
    "img06 base0 16" "img07 base0 24 8" "img08 base0 40" "img09 base1 2" "img10 base1 12 4"
    "img11 base1 48" "img12 base1 64 16" "img13 - 1" "img14 - 3" "img15 - 20 20 20 20"
    "img16 - 80" "img17 - 100" "img18 - 120 10" "img19 - 160" "img20 - 200"
)
declare -A SK_BASE_MIB=([base0]=8 [base1]=32)

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) SK_OUT=$2; shift ;;
        --report-only) SK_REPORT_ONLY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

die() {
    echo "soak.sh: $*" >&2
    exit 1
}

# sk_now: seconds since the run's time zero (the file S/t0, microseconds), one decimal.
sk_now() {
    local t0 u=${EPOCHREALTIME/./} d
    read -r t0 <"$S/t0"
    d=$(((u - t0) / 100000))
    if [ "$d" -lt 0 ]; then printf -- '-%d.%d' $((-d / 10)) $((-d % 10)); else printf '%d.%d' $((d / 10)) $((d % 10)); fi
}
# sk_secs: whole seconds since time zero.
sk_secs() { local t0 u=${EPOCHREALTIME/./}; read -r t0 <"$S/t0"; echo $(((u - t0) / 1000000)); }
sk_event() { printf '%s,%s,%s,%s,%s\n' "$(sk_now)" "$1" "$2" "$3" "${4:-}" >>"$S/events.csv"; }
sk_fault() { printf '%s,%s,%s,%s,%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$S/faults.csv"; }
sk_rand() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }

# sk_ours PID: PID runs this run's agent binary or registry config (a pid file can outlive its
# process while the supervisor waits to restart it, and the number can be reused meanwhile).
sk_ours() {
    local cmd
    cmd=$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null) || return 1
    case "$cmd" in *"$SK_BIN "* | *"$MN_DIR/registry/config.yml"*) return 0 ;; *) return 1 ;; esac
}

# sk_kill_tree PID: PID and its descendants, SIGKILL (children first found, then the parent).
sk_kill_tree() {
    local pid=$1 c
    for c in $(ps -o pid= --ppid "$pid" 2>/dev/null); do sk_kill_tree "$c"; done
    kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- hosts and processes

sk_shape() { tc -n "$2" qdisc replace dev "$1" root tbf rate "${3}mbit" burst 256kb latency 50ms; }

# sk_net_up: mn_net_up's hosts (registry in its own namespace) and the links shaped.
sk_net_up() {
    local i
    mn_net_up || return 1
    sk_shape eth0 "$MN_REG_NS" "$SK_REG_MBIT" || return 1
    if [ "$SK_NODE_MBIT" -gt 0 ]; then
        for ((i = 1; i <= MN_NODES; i++)); do
            sk_shape eth0 "$(mn_ns "$i")" "$SK_NODE_MBIT" && sk_shape "v$i" "$MN_SW" "$SK_NODE_MBIT" || return 1
        done
    fi
}

# sk_supervise NAME NS LOG READY_URL CMD...: runs CMD in NS again whenever it exits, until S/stop
# exists (a DaemonSet's restart). The pid of the running one in S/pid.NAME; events in
# events.csv: start, ready (or not-ready after 120 s), killed (the fault asked for it: S/killed.NAME
# holds the restart delay) or exit (nobody asked: a crash, restarted 3 s later).
sk_supervise() {
    local name=$1 ns=$2 log=$3 url=$4 pid rc i delay inc=0
    shift 4
    while [ ! -e "$S/stop" ]; do
        inc=$((inc + 1))
        printf '\n==== soak: %s start %d at %s (pid in events.csv)\n' "$name" "$inc" "$(date -u +%FT%T.%NZ)" >>"$log"
        ip netns exec "$ns" "$@" >>"$log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$S/pid.$name"
        sk_event "$name" "$pid" start "$inc"
        for ((i = 0; i < 240; i++)); do
            if ip netns exec "$ns" curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
                sk_event "$name" "$pid" ready
                break
            fi
            lib_alive "$pid" || break
            sleep 0.5
        done
        [ "$i" -ge 240 ] && sk_event "$name" "$pid" not-ready "no answer on $url after 120 s"
        # (2>/dev/null: no "Killed" line from the shell for a fault's SIGKILL.)
        wait "$pid" 2>/dev/null
        rc=$?
        [ -e "$S/stop" ] && break
        if [ -e "$S/killed.$name" ]; then
            read -r delay <"$S/killed.$name"
            rm -f "$S/killed.$name"
            sk_event "$name" "$pid" killed "exit $rc; restart in $delay s"
            sleep "$delay"
        else
            sk_event "$name" "$pid" exit "exit $rc (not a fault's kill)"
            tail -n 40 "$log" | sed 's/\x1b\[[0-9;]*m//g' >"$S/crash.$name.$pid.txt"
            sleep 3
        fi
    done
}

sk_start_bg() {
    "$@" &
    SK_BG+=("$!")
}

# sk_agent_cmd N: the command line of node N's agent, in SK_CMD.
sk_agent_cmd() {
    local n=$1 data="$MN_DIR/n$1/agent" b
    SK_CMD=(env "RUST_LOG=$SK_RUST_LOG" "$SK_BIN" agent
        --listen "127.0.0.1:$MN_AGENT_PORT"
        --metrics-listen "127.0.0.1:$MN_ADMIN_PORT"
        --control-socket "$data/control.sock"
        --data-dir "$data"
        --upstream "http://$MN_REG"
        --registry "$MN_REG=http://$MN_REG"
        --cache-size "$SK_CACHE"
        --log-format text
        --p2p true
        --p2p-listen "/ip4/$(mn_ip "$n")/tcp/$MN_P2P_PORT"
        --mdns false
        --swarm-key "$MN_DIR/swarm.key")
    for b in 1 2; do
        [ "$b" -ne "$n" ] && [ "$b" -le "$MN_NODES" ] && SK_CMD+=(--bootstrap "/ip4/$(mn_ip "$b")/tcp/$MN_P2P_PORT")
    done
    case "$n" in
        1) SK_CMD+=(--tracker true --seed true) ;;
        2) SK_CMD+=(--tracker true) ;;
        *) SK_CMD+=(--tracker false) ;;
    esac
}

# sk_wait_ready NAME: the supervisor recorded NAME's current pid ready (120 s at most).
sk_wait_ready() {
    local i pid
    for ((i = 0; i < 600; i++)); do
        if [ -e "$S/pid.$1" ]; then
            read -r pid <"$S/pid.$1"
            grep -q ",$1,$pid,ready," "$S/events.csv" 2>/dev/null && return 0
            grep -q ",$1,$pid,not-ready," "$S/events.csv" 2>/dev/null && return 1
        fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------- images

# sk_build_images: the images (SK_IMAGES) built with umoci in one layout, pushed with skopeo as
# soak/NAME:v1; images.csv (image,repo,manifest_digest,manifest_bytes,blob_bytes,layers) and
# blobs.csv (image,digest,bytes).
sk_build_images() {
    local oci="$T/oci" src="$T/src" spec name base mib kib j ref mf
    mkdir -p "$src"
    {
        umoci init --layout "$oci" || return 1
        for base in base0 base1; do
            kib=$((SK_BASE_MIB[$base] * 1024 * SK_SCALE / 100))
            head -c "${kib}K" /dev/urandom >"$src/base.bin" &&
                umoci new --image "$oci:$base" &&
                umoci insert --image "$oci:$base" "$src/base.bin" "/opt/soak/$base.bin" || return 1
        done
        for spec in "${SK_IMAGES[@]}"; do
            read -r name base mib <<<"$spec"
            if [ "$base" = - ]; then umoci new --image "$oci:$name" || return 1; else umoci tag --image "$oci:$base" "$name" || return 1; fi
            umoci config --image "$oci:$name" --config.cmd /bin/true --author pollen-soak || return 1
            echo "soak image $name ($$)" >"$src/name.txt"
            umoci insert --image "$oci:$name" "$src/name.txt" "/etc/soak/$name.txt" || return 1
            j=0
            # shellcheck disable=SC2086 # the layer sizes are words
            for mib in ${spec#* * }; do
                kib=$((mib * 1024 * SK_SCALE / 100))
                [ "$kib" -ge 4 ] || kib=4
                head -c "${kib}K" /dev/urandom >"$src/layer.bin" &&
                    umoci insert --image "$oci:$name" "$src/layer.bin" "/opt/soak/$name-$j.bin" || return 1
                j=$((j + 1))
            done
        done
    } >"$MN_DIR/logs/umoci.log" 2>&1 || { tail -n 20 "$MN_DIR/logs/umoci.log" >&2; return 1; }
    rm -rf "$src"
    echo "image,repo,manifest_digest,manifest_bytes,blob_bytes,layers" >"$S/images.csv"
    echo "image,digest,bytes" >"$S/blobs.csv"
    SK_IMG_REF=() SK_IMG_DIGEST=()
    for spec in "${SK_IMAGES[@]}"; do
        name=${spec%% *}
        ref="$MN_REG/soak/$name:v1"
        mn_in "$MN_SW" skopeo copy -q --dest-tls-verify=false "oci:$oci:$name" "docker://$ref" \
            >>"$MN_DIR/logs/push.log" 2>&1 || { tail -n 20 "$MN_DIR/logs/push.log" >&2; return 1; }
        mf="$S/manifest-$name.json"
        mn_in "$MN_SW" skopeo inspect --raw --tls-verify=false "docker://$ref" >"$mf" || return 1
        SK_IMG_REF+=("soak/$name:v1")
        SK_IMG_DIGEST+=("sha256:$(lib_sha256_file "$mf")")
        jq -r --arg i "$name" '(.config, .layers[]) | "\($i),\(.digest),\(.size)"' "$mf" >>"$S/blobs.csv"
        printf '%s,soak/%s,%s,%s,%s,%s\n' "$name" "$name" "${SK_IMG_DIGEST[-1]}" "$(stat -c %s "$mf")" \
            "$(jq '[.config.size, .layers[].size] | add' "$mf")" "$(jq '.layers | length' "$mf")" >>"$S/images.csv"
    done
    rm -rf "$oci"
}

# ---------------------------------------------------------------- clients, sampler, faults

# sk_client N: node N's pulls, one at a time, until S/stop-clients exists; a line each in
# S/pulls-nN.csv: t_start,t_end,node,image,result,secs,bytes,agent_bytes,registry_bytes,
# corrupt_bytes,fallback_objects,detail.
sk_client() {
    local n=$1 ns i ts line rc res secs bytes ab rb cb fb detail
    ns=$(mn_ns "$n")
    sleep "$(sk_rand 0 "$SK_PAUSE")"
    while [ ! -e "$S/stop-clients" ]; do
        i=$((RANDOM % ${#SK_IMG_REF[@]}))
        ts=$(sk_now)
        line=$(TMPDIR="$S/tmp" ip netns exec "$ns" timeout -k 10 "$SK_DEADLINE" bash "$SK_HERE/soak-pull.sh" \
            "http://127.0.0.1:$MN_AGENT_PORT" "http://$MN_REG" "ns=${MN_REG/:/%3A}" "${SK_IMG_REF[i]}" "${SK_IMG_DIGEST[i]}" \
            2>>"$MN_DIR/logs/client-n$n.log")
        rc=$?
        line=${line##*$'\n'}
        read -r res secs bytes ab rb cb fb detail <<<"$line"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] || [ "${res:-}" = deadline ]; then
            res=deadline
            secs=$SK_DEADLINE
        fi
        case "${res:-}" in ok | fallback | fail | corrupt | deadline) ;; *) res=fail detail="puller:rc=$rc:${line// /_}" ;; esac
        detail=${detail:--}
        printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$ts" "$(sk_now)" "$n" "${SK_IMG_REF[i]%%:*}" "$res" "${secs:-0}" \
            "${bytes:-0}" "${ab:-0}" "${rb:-0}" "${cb:-0}" "${fb:-0}" "${detail//,/;}" >>"$S/pulls-n$n.csv"
        sleep "$(sk_rand 0 "$SK_PAUSE")"
    done
}

# sk_sample_once: a line per running agent in S/samples.csv (time,node,pid,rss_kib,fds,
# cache_bytes,cache_metric_bytes,rss_anon_kib,rss_file_kib,rss_shmem_kib,hwm_kib,threads,
# cpu_secs: the agent's user + system CPU so far) and one in S/system.csv (time,cpu_busy_pct,
# mem_available_kib,load1).
sk_sample_once() {
    local n pid t rss fds cache metric busy idle mem
    t=$(sk_now)
    for ((n = 1; n <= MN_NODES; n++)); do
        [ -e "$S/pid.n$n" ] || continue
        read -r pid <"$S/pid.n$n"
        { lib_alive "$pid" && sk_ours "$pid"; } || continue
        mem=$(awk '$1 ~ /^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM|Threads):$/ { v[$1] = $2 }
            END { if (v["VmRSS:"] != "") printf "%s %s,%s,%s,%s,%s", v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["RssShmem:"], v["VmHWM:"], v["Threads:"] }' "/proc/$pid/status" 2>/dev/null)
        rss=${mem%% *}
        # Fields 14 and 15 of /proc/PID/stat: utime, stime (the comm field has no spaces here).
        mem+=",$(awk -v hz="$SK_HZ" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat" 2>/dev/null)"
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        cache=$(du -sB1 "$MN_DIR/n$n/agent" 2>/dev/null | cut -f1)
        metric=$(ip netns exec "$(mn_ns "$n")" curl -s --max-time 2 "http://127.0.0.1:$MN_ADMIN_PORT/metrics" 2>/dev/null |
            awk '$1 == "pollen_cache_bytes" { printf "%.0f", $2; exit }')
        [ -n "$rss" ] && printf '%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" "$n" "$pid" "$rss" "$fds" "${cache:-}" "${metric:-}" "${mem#* }" >>"$S/samples.csv"
    done
    read -r busy idle < <(awk '/^cpu / { printf "%.0f %.0f\n", $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    printf '%s,%s,%s,%s\n' "$t" \
        "$(awk -v b0="${SK_BUSY0:-$busy}" -v i0="${SK_IDLE0:-$idle}" -v b1="$busy" -v i1="$idle" 'BEGIN { d = (b1 - b0) + (i1 - i0); printf "%.0f", (d > 0 ? 100 * (b1 - b0) / d : 0) }')" \
        "$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)" "$(cut -d' ' -f1 /proc/loadavg)" >>"$S/system.csv"
    SK_BUSY0=$busy SK_IDLE0=$idle
}

# sk_sampler: sk_sample_once every SK_SAMPLE_EVERY s (on the multiples of it) until S/stop-sampler.
sk_sampler() {
    local k=0
    while [ ! -e "$S/stop-sampler" ]; do
        sk_sample_once
        k=$((k + 1))
        while [ "$(sk_secs)" -lt $((k * SK_SAMPLE_EVERY)) ] && [ ! -e "$S/stop-sampler" ]; do sleep 0.5; done
    done
}

# sk_reach N: node N opens a TCP connection to the registry.
sk_reach() { ip netns exec "$(mn_ns "$1")" timeout 3 bash -c "exec 3<>/dev/tcp/$MN_REG_IP/5000" 2>/dev/null; }

# sk_inject KIND: one fault; a line in S/faults.csv (time,kind,target,secs,detail) with its start time.
sk_inject() {
    local kind=$1 t n pid d ns mnt avail fill detail i
    t=$(sk_now)
    case "$kind" in
        agent | tracker)
            if [ "$kind" = tracker ] || [ "$MN_NODES" -le 2 ]; then n=$(sk_rand 1 2); else n=$(sk_rand 3 "$MN_NODES"); fi
            d=$(sk_rand 1 5)
            read -r pid <"$S/pid.n$n"
            echo "$d" >"$S/killed.n$n"
            { sk_ours "$pid" && kill -KILL "$pid" 2>/dev/null; } || { rm -f "$S/killed.n$n"; detail="pid $pid was not running (restarting): nothing killed"; }
            sk_fault "$t" "$kind-kill" "n$n" "$d" "SIGKILL pid $pid; restart after $d s${detail:+; $detail}"
            ;;
        registry)
            d=$(sk_rand 1 3)
            read -r pid <"$S/pid.reg"
            echo "$d" >"$S/killed.reg"
            { sk_ours "$pid" && kill -KILL "$pid" 2>/dev/null; } || { rm -f "$S/killed.reg"; detail="pid $pid was not running (restarting): nothing killed"; }
            sk_fault "$t" registry-restart registry "$d" "SIGKILL pid $pid; restart after $d s${detail:+; $detail}"
            ;;
        link)
            n=$(sk_rand 1 "$MN_NODES")
            ns=$(mn_ns "$n")
            d=$(sk_rand 5 30)
            ip -n "$ns" link set eth0 down
            sleep "$d"
            ip -n "$ns" link set eth0 up
            detail="eth0 down $d s"
            for ((i = 0; i < 50; i++)); do sk_reach "$n" && break; sleep 0.2; done
            if [ "$i" -ge 50 ]; then detail+="; NOT reaching the registry 10 s after up"; else detail+="; reaches the registry again"; fi
            if [ "$SK_NODE_MBIT" -gt 0 ] && ! tc -n "$ns" qdisc show dev eth0 | grep -q tbf; then
                sk_shape eth0 "$ns" "$SK_NODE_MBIT"
                detail+="; tbf re-added"
            fi
            sk_fault "$t" link-flap "n$n" "$d" "$detail"
            ;;
        disk)
            n=$(sk_rand 1 "$MN_NODES")
            mnt="$MN_DIR/n$n"
            avail=$(df -B1 --output=avail "$mnt" | tail -n 1 | tr -d ' ')
            fill=$((avail - 16 * 1048576))
            if [ "$fill" -le 0 ]; then
                sk_fault "$t" disk-pressure "n$n" 0 "only $avail bytes free: nothing filled"
                return
            fi
            if fallocate -l "$fill" "$mnt/filler" 2>/dev/null || head -c "$fill" /dev/zero >"$mnt/filler" 2>/dev/null; then
                detail="filled $((fill >> 20)) MiB (free was $((avail >> 20)) MiB)"
            else
                detail="fill of $((fill >> 20)) MiB failed"
            fi
            sleep "$SK_DISK_HOLD"
            rm -f "$mnt/filler"
            sk_fault "$t" disk-pressure "n$n" "$SK_DISK_HOLD" "$detail; $(df -B1M --output=avail "$mnt" | tail -n 1 | tr -d ' ') MiB free after"
            ;;
    esac
}

# sk_injector: a fault every SK_FAULT_EVERY s, drawn from SK_FAULTS, until S/stop-faults.
sk_injector() {
    local -a kinds
    local k=1
    read -r -a kinds <<<"$SK_FAULTS"
    [ "${kinds[0]:-none}" = none ] && return
    while :; do
        while [ "$(sk_secs)" -lt $((k * SK_FAULT_EVERY)) ]; do
            [ -e "$S/stop-faults" ] && return
            sleep 0.5
        done
        [ -e "$S/stop-faults" ] && return
        sk_inject "${kinds[RANDOM % ${#kinds[@]}]}"
        k=$(($(sk_secs) / SK_FAULT_EVERY + 1))
    done
}

# sk_pull_counts: "ok fallback fail deadline corrupt" so far.
sk_pull_counts() {
    cat "$S"/pulls-n*.csv 2>/dev/null | awk -F, '{ c[$5]++ } END { printf "%d %d %d %d %d\n", c["ok"], c["fallback"], c["fail"], c["deadline"], c["corrupt"] }'
}

# sk_counter: bytes the registry sent on its link (rx of its veth's bridge end, vreg).
sk_counter() { mn_in "$MN_SW" cat /sys/class/net/vreg/statistics/rx_bytes; }

# ---------------------------------------------------------------- report

# sk_slopes: per node, from samples.csv and events.csv: first/last/max of RSS, fds, cache, and the
# within-incarnation least-squares slope (per hour) over the window, leaving out each
# incarnation's first 60 s. Lines: node samples incarnations rss_first rss_last rss_max rss_slope
# rss_mean fds... cache... (RSS in KiB, cache in bytes).
sk_slopes() {
    awk -F, -v w0="$SK_W0" -v w1="$SK_W1" '
        FNR == 1 { f++; next }
        f == 1 { if ($4 == "start" && $2 ~ /^n[0-9]+$/) start[$3] = $1; next }
        {
            t = $1; n = $2; p = $3; y[1] = $4; y[2] = $5; y[3] = $6
            if (!(n in seen)) { seen[n] = 1; nodes[++nn] = n; for (m = 1; m <= 3; m++) first[n, m] = y[m] }
            for (m = 1; m <= 3; m++) { last[n, m] = y[m]; if (!((n, m) in mx) || y[m] > mx[n, m]) mx[n, m] = y[m] }
            if (!((n, p) in inc)) { inc[n, p] = 1; incs[n]++ }
            s0 = (p in start) ? start[p] : t
            if (t < w0 || t > w1 || t - s0 < 60) next
            k = n SUBSEP p
            if (!(k in cnt)) { pids[n] = pids[n] " " p }
            cnt[k]++; sn[n]++; st[k] += t
            for (m = 1; m <= 3; m++) { sy[k, m] += y[m]; sty[k, m] += t * y[m]; tot[n, m] += y[m] }
            stt[k] += t * t
        }
        END {
            for (i = 1; i <= nn; i++) {
                n = nodes[i]; np = split(pids[n], pl, " ")
                printf "%s %d %d", n, sn[n], incs[n]
                for (m = 1; m <= 3; m++) {
                    num = 0; den = 0
                    for (j = 1; j <= np; j++) {
                        k = n SUBSEP pl[j]; c = cnt[k]
                        num += sty[k, m] - st[k] * sy[k, m] / c
                        den += stt[k] - st[k] * st[k] / c
                    }
                    slope = den > 0 ? num / den * 3600 : "nan"
                    mean = sn[n] > 0 ? tot[n, m] / sn[n] : 0
                    printf " %.0f %.0f %.0f %s %.0f", first[n, m], last[n, m], mx[n, m], slope, mean
                }
                printf "\n"
            }
        }' "$SK_OUT/events.csv" "$SK_OUT/samples.csv" | sort -n
}

# sk_svg: soak.svg, three panels (RSS, fds, cache size) over time, a line per node and agent
# incarnation, fault times as ticks under each panel's top edge.
sk_svg() {
    awk -F, '
        FNR == 1 { f++; next }
        f == 1 { ft[++nf] = $1; fk[nf] = $2; next }
        {
            t = $1; n = $2 + 0; p = $3
            if (n > nn) nn = n
            if (t > tmax) tmax = t
            key = n SUBSEP p
            if (!(key in line)) { line[key] = ++nl; ln[nl] = n }
            l = line[key]; k = ++cnt[l]; T[l, k] = t
            v[l, k, 1] = $4 / 1024; v[l, k, 2] = $5; v[l, k, 3] = $6 / 1048576
            for (m = 1; m <= 3; m++) if (v[l, k, m] > vmax[m]) vmax[m] = v[l, k, m]
        }
        END {
            W = 960; H = 230; L = 70; R = 110; top = 50; gap = 40
            split("RSS (MiB)|open file descriptors|cache size: du of the data dir (MiB)", title, "|")
            tmin = 0
            span = tmax - tmin; if (span <= 0) span = 1
            printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, top + 3 * (H + gap)
            printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            printf "<text x=\"%d\" y=\"22\" font-size=\"16\">Soak: every agent sampled every 10 s (a new line at each restart); ticks: faults</text>\n", L
            np = split("#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf", pal, " ")
            for (n = 1; n <= nn; n++) ncol[n] = (n <= np) ? pal[n] : sprintf("hsl(%d,65%%,42%%)", (n * 137) % 360)
            split("agent-kill tracker-kill link-flap registry-restart disk-pressure", kinds, " ")
            split("#d62728 #9467bd #1f77b4 #ff7f0e #2ca02c", kcol, " ")
            # Time ticks: about 6 over the run, on round numbers of seconds.
            step = 10; while (span / step > 8) step = (step == 10 ? 30 : (step == 30 ? 60 : (step == 60 ? 300 : (step == 300 ? 600 : step * 2))))
            for (j = 1; j <= 5; j++) { col[kinds[j]] = kcol[j]; printf "<text x=\"%d\" y=\"40\" fill=\"%s\">| %s</text>\n", L + (j - 1) * 140, kcol[j], kinds[j] }
            for (m = 1; m <= 3; m++) {
                y0 = top + (m - 1) * (H + gap); ph = H - 20; mx = vmax[m] > 0 ? vmax[m] * 1.05 : 1
                printf "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", L, y0 + 12, title[m]
                printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#999\"/>\n", L, y0 + 18, W - L - R, ph
                for (g = 0; g <= 4; g++) {
                    yy = y0 + 18 + ph - ph * g / 4
                    printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#eee\"/>", L, yy, W - R, yy
                    printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", L - 4, yy + 4, mx * g / 4
                }
                for (j = 1; j <= nf; j++) {
                    xx = L + (W - L - R) * (ft[j] - tmin) / span
                    c = (fk[j] in col) ? col[fk[j]] : "#000"
                    printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-width=\"1.5\"/>\n", xx, y0 + 18, xx, y0 + 28, c
                }
                for (x = 0; x <= span; x += step) {
                    xx = L + (W - L - R) * x / span
                    printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#999\"/>", xx, y0 + H - 2, xx, y0 + H + 2
                    printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d s</text>\n", xx, y0 + H + 14, x
                }
                for (l = 1; l <= nl; l++) {
                    printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.3\" points=\"", ncol[ln[l]]
                    for (k = 1; k <= cnt[l]; k++)
                        printf "%.1f,%.1f ", L + (W - L - R) * (T[l, k] - tmin) / span, y0 + 18 + ph - ph * v[l, k, m] / mx
                    printf "\"/>\n"
                }
                if (m == 1) for (n = 1; n <= nn; n++)
                    printf "<text x=\"%d\" y=\"%d\" fill=\"%s\">node %d%s</text>\n", W - R + 8, y0 + 32 + 15 * n, ncol[n], n, (n <= 2 ? " (tracker)" : "")
            }
            print "</svg>"
        }' "$SK_OUT/faults.csv" "$SK_OUT/samples.csv" >"$SK_OUT/soak.svg"
}

# sk_bytes BYTES: "X KiB" / "X MiB" / "X GiB".
sk_bytes() {
    awk -v b="$1" 'BEGIN { if (b >= 1073741824) printf "%.2f GiB", b / 1073741824; else if (b >= 1048576) printf "%.1f MiB", b / 1048576; else printf "%.1f KiB", b / 1024 }'
}

# sk_repeats: the blob bytes agents got from the registry beyond one copy of each blob (in time
# order, the bytes of a GET past the blob's size, counting every earlier 2xx GET of it by any
# agent), split by the faults of the 60 s before each such GET: one on the fetching node itself
# (kill, link flap, disk pressure), else one on a tracker's node (n1, n2), else a registry
# restart, else one on another node, else none.
sk_repeats() {
    sort -t, -k1,1g "$SK_OUT/registry.csv" | awk -F, '
        FILENAME ~ /blobs.csv$/ { if (FNR > 1) size[$2] = $3; next }
        FILENAME ~ /faults.csv$/ { if (FNR > 1) { nf++; ft[nf] = $1; fn[nf] = $3; ftr[nf] = ($3 == "n1" || $3 == "n2"); freg[nf] = ($2 == "registry-restart") }; next }
        $3 == "agent" && $4 == "blob" && $6 ~ /^2/ {
            before = got[$5]; got[$5] += $7
            x = got[$5] - (before > size[$5] ? before : size[$5]); if (x <= 0) next
            own = 0; tr = 0; rg = 0; ot = 0
            for (j = 1; j <= nf; j++) if (ft[j] <= $1 + 1 && ft[j] >= $1 - 60) { if (fn[j] == "n" $2) own = 1; else if (ftr[j]) tr = 1; else if (freg[j]) rg = 1; else ot = 1 }
            c = own ? "own" : (tr ? "tr" : (rg ? "rg" : (ot ? "ot" : "no"))); b[c] += x; n[c]++; tot += x; nt++
        }
        function m(v) { return sprintf("%.1f MiB", v / 1048576) }
        END { printf "%s in %d GETs; by the faults of the 60 s before: on the node itself %s (%d), else on a tracker node %s (%d), else a registry restart %s (%d), else on another node %s (%d), no fault %s (%d)", m(tot), nt, m(b["own"]), n["own"], m(b["tr"]), n["tr"], m(b["rg"]), n["rg"], m(b["ot"]), n["ot"], m(b["no"]), n["no"] }
    ' "$SK_OUT/blobs.csv" "$SK_OUT/faults.csv" -
}

# sk_report: results.md (and soak.svg) from OUT's files.
sk_report() {
    local o=$SK_OUT ok fb fail dl cor cb needed nimg recv agentb regb faults ba bc ma mc
    [ -f "$o/meta.env" ] || die "no $o/meta.env: not a soak output directory"
    # shellcheck source=/dev/null
    source "$o/meta.env"
    SK_W1=$SK_END
    SK_W0=$(awk -v e="$SK_END" -v w="$SK_WINDOW" 'BEGIN { x = e * 2 / 3; if (w < x) x = w; printf "%.1f", e - x }')
    read -r ok fb fail dl cor < <(awk -F, 'NR > 1 { c[$5]++ } END { printf "%d %d %d %d %d\n", c["ok"], c["fallback"], c["fail"], c["deadline"], c["corrupt"] }' "$o/pulls.csv")
    read -r cb recv agentb regb < <(awk -F, 'NR > 1 { c += $10; r += $7 + $10; a += $8; g += $9 } END { printf "%.0f %.0f %.0f %.0f\n", c, r, a, g }' "$o/pulls.csv")
    # Needed: distinct blobs and the manifests of every image pulled at least once (any result).
    read -r needed nimg < <(awk -F, '
        FNR == 1 { f++; next }
        f == 1 { pulled[$4] = 1; next }
        f == 2 { if (("soak/" $1) in pulled) { if (!($2 in seen)) { seen[$2] = 1; s += $3 } } ; next }
        f == 3 { if ($2 in pulled) { s += $4; n++ } }
        END { printf "%.0f %d\n", s, n }' "$o/pulls.csv" "$o/blobs.csv" "$o/images.csv")
    read -r ba bc ma mc < <(awk -F, 'NR > 1 && $1 >= 0 && $6 ~ /^2/ { k = $4 "-" $3; b[k] += $7 }
        END { printf "%.0f %.0f %.0f %.0f\n", b["blob-agent"], b["blob-client"], b["manifest-agent"], b["manifest-client"] }' "$o/registry.csv")
    faults=$(awk -F, 'NR > 1 { c[$2]++; n++ } END { printf "%d:", n; for (k in c) printf " %s %d,", k, c[k] }' "$o/faults.csv" | sed 's/,$//')
    {
        echo "# Soak: $SK_NODES agents, ${SK_DURATION:-$SK_END} s of pulls, a fault every $SK_FAULT_EVERY s"
        echo
        echo "Run: $SK_DATE, commit $SK_COMMIT; \`$SK_COMMAND\`. Machine: $SK_MACHINE."
        echo "Links: registry uplink $SK_REG_MBIT Mbit/s, nodes $SK_NODE_MBIT Mbit/s each way (0: unshaped). Each agent:"
        echo "tmpfs $SK_TMPFS, --cache-size $SK_CACHE; 20 images, $(sk_bytes "$SK_DISTINCT") of distinct blobs. Deadline per pull $SK_DEADLINE s."
        echo
        echo "| measure | value |"
        echo "|---|---|"
        echo "| duration | ${SK_DURATION:-?} s of new pulls; the last one in flight ended at $SK_END s |"
        echo "| pulls completed | $((ok + fb)) ($ok all through the agent, $fb with objects fetched from the registry directly) |"
        echo "| pulls failed (an object verified by neither path) | $fail |"
        echo "| pulls over their deadline (must be 0) | $dl |"
        echo "| pulls with a corrupt object from the agent (must be 0) | $cor |"
        echo "| corrupt bytes delivered (must be 0) | $cb |"
        echo "| faults injected | ${faults:-0} |"
        echo "| registry egress (bytes on its link, headers included) | $SK_EGRESS ($(sk_bytes "$SK_EGRESS")) |"
        echo "| bytes the cluster needed (distinct blobs + manifests of the $nimg images pulled) | $needed ($(sk_bytes "$needed")) |"
        echo "| registry egress / needed | $(awk -v a="$SK_EGRESS" -v b="$needed" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }') |"
        echo "| registry blob bodies to agents / needed | $(awk -v a="$ba" -v b="$needed" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }') |"
        echo "| registry blob bodies (its access log, 2xx GETs): to agents / to clients falling back | $(sk_bytes "$ba") / $(sk_bytes "$bc") |"
        echo "| registry manifest bodies (access log): to agents / to clients | $(sk_bytes "$ma") / $(sk_bytes "$mc") |"
        echo "| agents' blob bytes from the registry beyond one copy of each blob | $(sk_repeats) |"
        echo "| bytes clients received (reference) | $(sk_bytes "$recv"): verified $(sk_bytes "$agentb") through agents, $(sk_bytes "$regb") from the registry directly |"
        echo "| pull seconds, completed pulls: p50 / p95 / max | $(awk -F, 'NR > 1 && ($5 == "ok" || $5 == "fallback") { print $6 }' "$o/pulls.csv" | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%s / %s / %s", v[int((NR - 1) * 0.5) + 1], v[int((NR - 1) * 0.95) + 1], v[NR]; else printf "-" }') |"
        echo "| agent restarts: after a fault's kill / exits nobody asked for | $(awk -F, '$4 == "killed" && $2 ~ /^n/ { k++ } $4 == "exit" && $2 ~ /^n/ { e++ } END { printf "%d / %d", k, e }' "$o/events.csv") |"
        echo "| agent start to ready after a restart: mean / max | $(awk -F, '$2 ~ /^n/ && $4 == "start" && $5 > 1 { s[$3] = $1 } $4 == "ready" && ($3 in s) { d = $1 - s[$3]; t += d; n++; if (d > m) m = d } END { if (n) printf "%.1f s / %.1f s", t / n, m; else printf "-" }' "$o/events.csv") |"
        echo "| agent never ready within 120 s of a start | $(awk -F, '$4 == "not-ready" { n++ } END { printf "%d", n }' "$o/events.csv") |"
        echo "| panics in the agents' logs | $SK_PANICS |"
        echo "| CPU used by the agents (all together, in cores; the rest: clients, registry, kernel) | $(awk -F, 'NR > 1 && $13 != "" { k = $2 SUBSEP $3; if (!(k in a)) a[k] = $13; z[k] = $13 } END { for (k in a) s += z[k] - a[k]; printf "%.2f", s / e }' e="$SK_END" "$o/samples.csv") |"
        echo "| CPU busy (whole machine): mean / max of 10 s samples | $(awk -F, 'NR > 2 { s += $2; n++; if ($2 > m) m = $2 } END { if (n) printf "%.0f %% / %.0f %%", s / n, m; else printf "-" }' "$o/system.csv") |"
        echo
        echo "Faults by kind:"
        echo
        echo "| kind | count | targets |"
        echo "|---|---|---|"
        awk -F, 'NR > 1 { c[$2]++; tg[$2] = tg[$2] " " $3 } END { for (k in c) printf "| %s | %d |%s |\n", k, c[k], tg[k] }' "$o/faults.csv" | sort
        echo
        echo "Objects clients fetched from the registry directly, by what the agent's attempt got (curl exit /"
        echo "HTTP status; 7/000: connection refused, the agent restarting; 0/5xx: the agent answered an error):"
        echo
        echo "| agent's answer | objects |"
        echo "|---|---|"
        awk -F, 'NR > 1 { d = $12; while (match(d, /fallback:agent:rc=[0-9]+\/http=[0-9]+/)) { c[substr(d, RSTART + 15, RLENGTH - 15)]++; d = substr(d, RSTART + RLENGTH) } }
            END { for (k in c) printf "| %s | %d |\n", k, c[k] }' "$o/pulls.csv" | sort
        echo
        echo "## Agents: RSS, open file descriptors, cache size"
        echo
        echo "Sampled every ${SK_SAMPLE_EVERY} s ([soak.svg](soak.svg)); first / last / max over the whole run. Slope: least squares over"
        echo "t = $SK_W0..$SK_W1 s with one intercept per incarnation (restarts start new levels) and each"
        echo "incarnation's first 60 s left out, per hour; growth = slope x window, against the window's mean."
        echo "Flat: growth below 10 % of the mean (RSS: or 8 MiB; fds: or 8); a decrease is flat. Meaningless in runs of a few"
        echo "minutes, where the window is mostly the caches' and allocators' warm-up."
        echo
        echo "| node | incarnations | samples in window | RSS MiB first / last / max | RSS slope MiB/h (growth) | fds first / last / max | fds slope /h (growth) | cache MiB first / last / max | cache slope MiB/h (growth) | RSS, fds flat |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        sk_slopes | awk -v w="$(awk -v a="$SK_W0" -v b="$SK_W1" 'BEGIN { print b - a }')" '
            function g(slope, mean) { return (slope == "nan" || mean == 0) ? "-" : sprintf("%+.1f %%", 100 * slope * w / 3600 / mean) }
            function flat(slope, mean, floor) { if (slope == "nan") return 1; x = slope * w / 3600; return x <= floor || x <= mean / 10 }
            {
                n = $1; rs = ($7 == "nan") ? "-" : sprintf("%+.1f", $7 / 1024); fs = ($12 == "nan") ? "-" : sprintf("%+.1f", $12); cs = ($17 == "nan") ? "-" : sprintf("%+.1f", $17 / 1048576)
                ok = flat($7, $8, 8192) && flat($12, $13, 8)
                printf "| %d%s | %d | %d | %.0f / %.0f / %.0f | %s (%s) | %d / %d / %d | %s (%s) | %.0f / %.0f / %.0f | %s (%s) | %s |\n",
                    n, (n <= 2 ? " (tracker)" : ""), $3, $2, $4 / 1024, $5 / 1024, $6 / 1024, rs, g($7, $8),
                    $9, $10, $11, fs, g($12, $13), $14 / 1048576, $15 / 1048576, $16 / 1048576, cs, g($17, $18), ($2 < 3 ? "too few samples" : (ok ? "yes" : "NO"))
            }'
        echo
        echo "## Incidents"
        echo
        echo "Pulls other than ok / fallback, and agent exits nobody asked for, each with the faults of the 60 s before it."
        echo
        awk -F, '
            FNR == 1 { f++; next }
            f == 1 { ft[++nf] = $1; fd[nf] = $2 " " $3 " (" $5 ")"; next }
            f == 2 { if ($4 == "exit" || $4 == "not-ready") { ev[++ne] = $1; ed[ne] = "agent/registry " $2 " pid " $3 ": " $4 " " $5 }; next }
            f == 3 { if ($5 != "ok" && $5 != "fallback") { ev[++ne] = $1; ed[ne] = "pull " $5 " on node " $3 " of " $4 " started at " $1 " s, " $6 " s: " $12 } }
            END {
                if (!ne) print "None."
                for (i = 1; i <= ne; i++) {
                    printf "- t=%s s: %s\n", ev[i], ed[i]
                    for (j = 1; j <= nf; j++) if (ft[j] <= ev[i] + 0 && ft[j] >= ev[i] - 60) printf "  - fault at %s s: %s\n", ft[j], fd[j]
                }
            }' "$o/faults.csv" "$o/events.csv" "$o/pulls.csv"
    } >"$o/results.md"
    sk_svg
    cat "$o/results.md"
}

# ---------------------------------------------------------------- main

sk_stop_processes() {
    local f pid i
    touch "$S/stop" "$S/stop-clients" "$S/stop-faults" "$S/stop-sampler" 2>/dev/null
    for f in "$S"/pid.*; do
        [ -e "$f" ] || continue
        read -r pid <"$f"
        sk_ours "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    for ((i = 0; i < 100; i++)); do
        local alive=0
        for f in "$S"/pid.*; do
            [ -e "$f" ] || continue
            read -r pid <"$f"
            lib_alive "$pid" && sk_ours "$pid" && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for f in "$S"/pid.*; do
        [ -e "$f" ] || continue
        read -r pid <"$f"
        lib_alive "$pid" && sk_ours "$pid" && { lib_log "pid $pid ($f) did not stop on SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
    done
}

sk_cleanup() {
    local rc=$? pid
    set +e
    trap - INT TERM
    if [ -n "$S" ] && [ -d "$S" ]; then
        sk_stop_processes
        for pid in "${SK_BG[@]}"; do sk_kill_tree "$pid"; done
        for pid in "${SK_BG[@]}"; do wait "$pid" 2>/dev/null; done
    fi
    lib_stop_all
    mn_cleanup
    if [ -n "$T" ] && [ -d "$T" ]; then
        lib_umount_under "$T"
        if [ "$rc" -ne 0 ] && [ ! -d "$SK_OUT/logs" ] && [ -d "$MN_DIR/logs" ]; then
            mkdir -p "$SK_OUT/logs" && cp -r "$MN_DIR/logs/." "$SK_OUT/logs/" && gzip -f "$SK_OUT"/logs/*.log
            echo "logs kept in $SK_OUT/logs"
        fi
        rm -rf "$T"
    fi
    exit "$rc"
}

# sk_registry_csv T0_EPOCH: the GETs of blobs and manifests in the registry's access log
# ("IP - - [06/Dec/2026:04:25:54 +0000] "GET /v2/... HTTP/1.1" 206 4194304 "" "UA""; the
# time is the request's start, to the second) as CSV: time (since time zero),node,client
# (agent: pollen/*, client: curl/*, a client falling back, other: skopeo pushing the images),
# kind (blob, manifest),ref,status,bytes.
sk_registry_csv() {
    echo "time,node,client,kind,ref,status,bytes"
    sed 's/\x1b\[[0-9;]*m//g' "$MN_DIR/logs/registry.log" | TZ=UTC awk -F'"' -v t0="$1" -v net="$MN_NET." '
        BEGIN { split("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec", mn, " "); for (i = 1; i <= 12; i++) mon[mn[i]] = i }
        $2 ~ /^GET \/v2\/.*\/(blobs|manifests)\// {
            split($1, h, " "); ip = h[1]; ts = h[4]; sub(/^\[/, "", ts)
            split(ts, d, /[\/:]/)
            t = mktime(sprintf("%d %d %d %d %d %d", d[3], mon[d[2]], d[1], d[4], d[5], d[6])) - t0
            node = (index(ip, net) == 1) ? substr(ip, length(net) + 2) : "-"
            split($2, r, " "); np = split(r[2], q, "/"); ref = q[np]; sub(/\?.*/, "", ref)
            split($3, a, " ")
            who = ($6 ~ /^pollen\//) ? "agent" : (($6 ~ /^curl\//) ? "client" : "other")
            printf "%.0f,%s,%s,%s,%s,%s,%.0f\n", t, node, who, (r[2] ~ /\/blobs\//) ? "blob" : "manifest", ref, a[1], a[2]
        }'
}

main() {
    local i n pid last_progress=0 el e0 e1 rb busy0 idle0 busy1 idle1 cpu rc=0 ok fb fail dl cor
    if [ "$SK_REPORT_ONLY" = 1 ]; then
        sk_report
        return
    fi
    lib_is_root || die "must run as root (network namespaces, tc, tmpfs mounts)"
    lib_ensure_tools docker-registry=docker-registry skopeo=skopeo umoci=umoci curl=curl jq=jq ip=iproute2 tc=iproute2 \
        fallocate=util-linux timeout=coreutils openssl=openssl ||
        die "required tools are missing"
    POLLEN_BIN=${POLLEN_BIN:-$(lib_target_dir "$REPO")/release/pollen}
    [ -x "$POLLEN_BIN" ] || die "agent binary not found: $POLLEN_BIN (build it: cargo build --release -p pollen; this script never builds)"
    "$POLLEN_BIN" agent --help 2>/dev/null | grep -q -- '--p2p-listen' || die "$POLLEN_BIN has no --p2p-listen flag"
    case "$SK_NODES" in '' | *[!0-9]*) die "SOAK_NODES must be a number" ;; esac
    for i in $SK_FAULTS; do
        case "$i" in agent | tracker | link | registry | disk | none) ;; *) die "unknown fault kind in SOAK_FAULTS: $i (agent tracker link registry disk, or none)" ;; esac
    done
    [ "$SK_NODES" -ge 3 ] || die "SOAK_NODES must be at least 3 (two trackers and a node)"
    [ "$SK_NODES" -le 80 ] || die "SOAK_NODES at most 80 (addresses NET.1N)"
    local free_kib mem_kib need_kib
    free_kib=$(df -k --output=avail /tmp | tail -n 1 | tr -d ' ')
    [ "$free_kib" -ge $((4 * 1048576)) ] || die "less than 4 GiB free on /tmp ($((free_kib >> 20)) GiB): the registry and the images need about 2.5"
    mem_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    need_kib=$(numfmt --from=iec "$SK_TMPFS" | awk -v n="$SK_NODES" '{ printf "%.0f", n * $1 / 1024 + 2 * 1048576 }')
    [ "$mem_kib" -ge "$need_kib" ] || die "$((mem_kib >> 10)) MiB of memory available; the tmpfs data dirs may take $((need_kib >> 10)) MiB (lower SOAK_TMPFS or SOAK_NODES)"
    if ip netns list | grep -q "^psoak-"; then die "namespaces psoak-* exist already (another soak running?): $(ip netns list | grep '^psoak-' | tr '\n' ' ')"; fi

    trap sk_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    T=$(mktemp -d /tmp/pollen-soak.XXXXXX)
    S="$T/state"
    mkdir -p "$S/tmp" "$SK_OUT"
    rm -rf "$SK_OUT/logs"
    echo $((${EPOCHREALTIME/./})) >"$S/t0"
    SK_HZ=$(getconf CLK_TCK)
    SK_BIN="$T/pollen"
    cp "$POLLEN_BIN" "$SK_BIN" || die "cannot copy $POLLEN_BIN"
    echo "time,name,pid,event,detail" >"$S/events.csv"
    echo "time,kind,target,secs,detail" >"$S/faults.csv"
    echo "time,node,pid,rss_kib,fds,cache_bytes,cache_metric_bytes,rss_anon_kib,rss_file_kib,rss_shmem_kib,hwm_kib,threads,cpu_secs" >"$S/samples.csv"
    echo "time,cpu_busy_pct,mem_available_kib,load1" >"$S/system.csv"

    mn_config "psoak-$$" "$SK_NET" "$SK_NODES" soak/img01:v1 own
    MN_DIR="$T/mn"
    mkdir -p "$MN_DIR/logs"
    lib_step "soak: $SK_NODES agents, ${SK_DURATION} s, a fault every ${SK_FAULT_EVERY} s from: $SK_FAULTS (temp dir $T)"
    sk_net_up || die "setting up the hosts failed"
    mn_registry_config
    sk_start_bg sk_supervise reg "$MN_REG_NS" "$MN_DIR/logs/registry.log" "http://$MN_REG/v2/" docker-registry serve "$MN_DIR/registry/config.yml"
    sk_wait_ready reg || die "the registry did not start (see $MN_DIR/logs/registry.log)"
    for ((i = 1; i <= MN_NODES; i++)); do
        sk_reach "$i" || die "node $i does not reach the registry at $MN_REG"
    done

    echo "building and pushing 20 images (scale ${SK_SCALE} %)"
    sk_build_images || die "building or pushing the images failed"
    SK_DISTINCT=$(awk -F, 'NR > 1 && !($2 in s) { s[$2] = 1; b += $3 } END { printf "%.0f", b }' "$S/blobs.csv")
    echo "  $(sk_bytes "$SK_DISTINCT") of distinct blobs in the registry"

    "$SK_BIN" swarm-key --out "$MN_DIR/swarm.key" >/dev/null 2>&1 || die "pollen swarm-key failed"
    for ((i = 1; i <= MN_NODES; i++)); do
        mkdir -p "$MN_DIR/n$i"
        mount -t tmpfs -o "size=$SK_TMPFS,mode=0755" "psoak-n$i" "$MN_DIR/n$i" || die "mounting the tmpfs of node $i failed"
        mkdir -p "$MN_DIR/n$i/agent"
    done
    echo "starting $MN_NODES agents (DaemonSet-style, random order)"
    for i in $(seq 1 "$MN_NODES" | shuf); do
        sk_agent_cmd "$i"
        sk_start_bg sk_supervise "n$i" "$(mn_ns "$i")" "$MN_DIR/logs/agent-n$i.log" "http://127.0.0.1:$MN_ADMIN_PORT/readyz" "${SK_CMD[@]}"
    done
    for ((i = 1; i <= MN_NODES; i++)); do
        sk_wait_ready "n$i" || { tail -n 30 "$MN_DIR/logs/agent-n$i.log" >&2; die "node $i's agent did not become ready"; }
    done
    peers() { mn_admin "$1" /metrics 2>/dev/null | awk '$1 == "pollen_connected_peers" { print $2 + 0 }'; }
    has_peer() { [ "$(peers "$1")" -ge 1 ] 2>/dev/null; }
    for ((i = 1; i <= MN_NODES; i++)); do
        lib_wait_cmd 150 has_peer "$i" || lib_log "node $i's agent has no peer after 30 s (going on)"
    done
    echo "  peers connected: $(for ((i = 1; i <= MN_NODES; i++)); do printf '%s ' "$(peers "$i")"; done)"

    # Time zero: the clients start. The events so far move to the new time base.
    local t0_old t0_new
    read -r t0_old <"$S/t0"
    t0_new=${EPOCHREALTIME/./}
    awk -F, -v OFS=, -v d="$(((t0_new - t0_old) / 100000))" 'NR > 1 { $1 = sprintf("%.1f", $1 - d / 10) } { print }' \
        "$S/events.csv" >"$S/events.tmp" && mv "$S/events.tmp" "$S/events.csv"
    echo "$t0_new" >"$S/t0"
    e0=$(sk_counter)
    read -r busy0 idle0 < <(awk '/^cpu / { printf "%.0f %.0f\n", $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    local sampler injector clients=()
    sk_start_bg sk_sampler
    sampler=${SK_BG[-1]}
    for ((n = 1; n <= MN_NODES; n++)); do
        sk_start_bg sk_client "$n"
        clients+=("${SK_BG[-1]}")
    done
    sk_start_bg sk_injector
    injector=${SK_BG[-1]}
    echo "pulling for $SK_DURATION s (progress every minute)"
    while :; do
        el=$(sk_secs)
        [ "$el" -ge "$SK_DURATION" ] && break
        if [ $((el / 60)) -gt "$last_progress" ]; then
            last_progress=$((el / 60))
            read -r ok fb fail dl cor < <(sk_pull_counts)
            read -r busy1 idle1 < <(awk '/^cpu / { printf "%.0f %.0f\n", $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
            cpu=$(awk -v b0="$busy0" -v i0="$idle0" -v b1="$busy1" -v i1="$idle1" 'BEGIN { d = (b1 - b0) + (i1 - i0); printf "%.0f", (d > 0 ? 100 * (b1 - b0) / d : 0) }')
            busy0=$busy1 idle0=$idle1
            printf '[%s] %4d s: pulls %d ok, %d fallback, %d failed, %d deadline, %d corrupt; faults %d; agent exits unasked %d; CPU %s %%\n' \
                "$(date +%T)" "$el" "$ok" "$fb" "$fail" "$dl" "$cor" "$(($(wc -l <"$S/faults.csv") - 1))" \
                "$(awk -F, '$4 == "exit" { n++ } END { print n + 0 }' "$S/events.csv")" "$cpu"
        fi
        sleep 1
    done

    echo "stopping: faults first (the one in progress ends), then the clients (their pulls finish, $SK_DEADLINE s at most)"
    touch "$S/stop-faults"
    wait "$injector" 2>/dev/null
    touch "$S/stop-clients"
    for pid in "${clients[@]}"; do wait "$pid" 2>/dev/null; done
    SK_END=$(sk_now)
    e1=$(sk_counter)
    touch "$S/stop-sampler"
    wait "$sampler" 2>/dev/null
    for ((i = 1; i <= MN_NODES; i++)); do
        { echo "# node $i at the end"; mn_admin "$i" /metrics 2>/dev/null | grep -v '^#'; } >>"$MN_DIR/logs/metrics-end.txt"
    done
    sk_stop_processes
    for pid in "${SK_BG[@]}"; do wait "$pid" 2>/dev/null; done
    SK_BG=()

    # Output files.
    {
        echo "t_start,t_end,node,image,result,secs,bytes,agent_bytes,registry_bytes,corrupt_bytes,fallback_objects,detail"
        cat "$S"/pulls-n*.csv 2>/dev/null | sort -t, -k1,1g
    } >"$SK_OUT/pulls.csv"
    cp "$S/faults.csv" "$S/samples.csv" "$S/events.csv" "$S/system.csv" "$S/images.csv" "$S/blobs.csv" "$SK_OUT/"
    sk_registry_csv "$((t0_new / 1000000))" >"$SK_OUT/registry.csv"
    local panics
    panics=$(cat "$MN_DIR"/logs/agent-n*.log | grep -c 'panicked')
    {
        printf 'SK_DURATION=%q\n' "$SK_DURATION"
        printf 'SK_NODES=%q\nSK_END=%q\nSK_FAULT_EVERY=%q\nSK_SAMPLE_EVERY=%q\nSK_WINDOW=%q\nSK_DEADLINE=%q\n' \
            "$SK_NODES" "$SK_END" "$SK_FAULT_EVERY" "$SK_SAMPLE_EVERY" "$SK_WINDOW" "$SK_DEADLINE"
        printf 'SK_REG_MBIT=%q\nSK_NODE_MBIT=%q\nSK_TMPFS=%q\nSK_CACHE=%q\nSK_DISTINCT=%q\nSK_EGRESS=%q\n' \
            "$SK_REG_MBIT" "$SK_NODE_MBIT" "$SK_TMPFS" "$SK_CACHE" "$SK_DISTINCT" "$((e1 - e0))"
        printf 'SK_PANICS=%q\n' "$panics"
        printf 'SK_DATE=%q\nSK_COMMIT=%q\nSK_COMMAND=%q\nSK_MACHINE=%q\n' "$(date -u '+%F %T UTC')" \
            "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
            "$(env | grep -E '^(SOAK_[A-Z_]+|BENCH_NET)=' | sort | tr '\n' ' ')benches/soak.sh $SK_ARGS" \
            "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
    } >"$SK_OUT/meta.env"
    sk_report
    read -r ok fb fail dl cor < <(sk_pull_counts)
    local unasked
    unasked=$(awk -F, '$4 == "exit" && $2 ~ /^n/ { n++ } END { print n + 0 }' "$S/events.csv")
    if [ "$dl" -gt 0 ] || [ "$cor" -gt 0 ] || [ "$unasked" -gt 0 ] || [ "$panics" -gt 0 ]; then
        rc=1
        echo "soak.sh: FAILED: $dl pull(s) over the deadline, $cor corrupt, $unasked agent exit(s) nobody asked for, $panics panic(s)" >&2
    fi
    if [ "$rc" -ne 0 ] || [ "${SOAK_KEEP_LOGS:-0}" = 1 ]; then
        mkdir -p "$SK_OUT/logs"
        cp -r "$MN_DIR/logs/." "$SK_OUT/logs/"
        cp "$S"/crash.* "$SK_OUT/logs/" 2>/dev/null
        gzip -f "$SK_OUT"/logs/*.log
        echo "logs kept in $SK_OUT/logs"
    fi
    return "$rc"
}

main "$@"
