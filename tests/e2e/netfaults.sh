#!/usr/bin/env bash
# shellcheck shell=bash
# Step m: network faults on emulated hosts. Four nodes (multinode.sh's helpers, the registry in a
# namespace of its own behind a shaped link; nodes 1 and 2 trackers, 3 and 4 --tracker false),
# each with an agent and a private containerd whose hosts.toml names the agent as the mirror
# (the registry the fallback, as on a real node); `ctr images pull` is the client.
#
#   sudo tests/e2e/netfaults.sh        # on its own (builds the agent like run.sh does)
#   sudo tests/e2e/run.sh              # sources this file and runs it as step m
#
#   1. link cut: all four nodes pull an image at once; 1.5 s in, node 3's link goes down
#      (`ip link set eth0 down` in its namespace) for E2E_NETFAULT_CUT_SECS (30) and comes back.
#      Nodes 1, 2 and 4 must finish with verified content; node 3's pull must end within its
#      deadline, and either verify or fail (the runtime then retries, as kubelet does); a retry
#      after the link is back must verify. Printed: how node 3's first pull ended and when.
#   2. partition: nodes {1, 3} and {2, 4} cannot reach each other (nftables drops, on input,
#      every packet from the other side: silent, like a cut cable, not refused), a tracker on
#      each side; the registry is reachable from both. All four pull a new image at once: each
#      must verify within its deadline.
#   3. healed: the rules go; all four pull a third image: each must verify.
#   4. clock: node 4's agent restarts under libfaketime (its wall clock alone is faked; the
#      monotonic clock is not, as on a real node whose NTP steps the clock), and pulls a fourth
#      image alone: 1 s in its wall clock jumps an hour forward, 1 s later an hour back (an hour
#      behind the real time), and then every packet from the registry to node 4 is dropped for
#      35 s. No deadline may fire early (no upstream transfer was cut before the silence:
#      pollen_upstream_resumes_total 0) or never (the 30 s idle timeout still cuts the silent
#      transfer, counted, and the pull ends by itself within its deadline instead of waiting
#      out the hour); the image verifies (or its retry does).
# Egress: the registry's eth0 tx_bytes over each phase, against the image's blob bytes F. The
# bounds, fixed before the pulls: phase 1 at most 1.3 F (the cut node's share of the split
# fetch, a quarter of the blob here, may be fetched again: by a peer once the tracker hands it
# on, and by the cut node itself for what it had not passed on), phase 2 at most 2.04 F (each
# side of the partition fetches the image once), phase 3 at most 1.02 F; 2 % per copy for
# packet headers and resumes, as in step h, plus 64 KiB per node for manifests and HTTP headers.
# Every agent must be alive with no panic at the end.
#
# Environment (besides run.sh's POLLEN_BIN, E2E_KEEP, E2E_NO_BUILD):
#   E2E_NETFAULT_MIB       size of each image's random layer in MiB (default 48)
#   E2E_NETFAULT_RATE      tbf rate of the registry's link (default 100mbit)
#   E2E_NETFAULT_CUT_SECS  how long node 3's link is down (default 30)
#   E2E_NETFAULT_TIMEOUT   deadline of each pull in seconds (default 180)
#   E2E_NETFAULT_NET       the /24 of the test network, three octets (default 10.82.0)
#   E2E_SKIP_NETFAULT=1    skips this step in run.sh

NF_MIB=${E2E_NETFAULT_MIB:-48}
NF_RATE=${E2E_NETFAULT_RATE:-100mbit}
NF_CUT_SECS=${E2E_NETFAULT_CUT_SECS:-30}
NF_TIMEOUT=${E2E_NETFAULT_TIMEOUT:-180}
NF_NET=${E2E_NETFAULT_NET:-10.82.0}
NF_ALLOWANCE_PER_NODE=65536

# nf_pull_job N TAG: node N pulls MN_REF; "rc start end" into pull-TAG-nN.time.
nf_pull_job() {
    local n=$1 t0 rc=0
    t0=$EPOCHREALTIME
    mn_pull "$n" "$MN_REF" "$MN_DIR/logs/ctr-$2-n$n.log" || rc=$?
    printf '%s %s %s\n' "$rc" "$t0" "$EPOCHREALTIME" >"$MN_DIR/logs/pull-$2-n$n.time"
}

# nf_start_pulls TAG: every node's pull at once, in the background (NF_JOB[N]).
nf_start_pulls() {
    local i
    for ((i = 1; i <= MN_NODES; i++)); do
        lib_start_bg "pull-$1-n$i" "$MN_DIR/logs/pull-job-$1-n$i.log" nf_pull_job "$i" "$1"
        NF_JOB[$i]=$LIB_LAST_PID
    done
}

# nf_wait_pulls: waits for every pull job (each bounded by MN_TIMEOUT through mn_pull).
nf_wait_pulls() {
    local i
    for ((i = 1; i <= MN_NODES; i++)); do
        wait "${NF_JOB[$i]}" || true
        lib_stop_pid "${NF_JOB[$i]}"
    done
}

# nf_result TAG N: "rc seconds" of node N's pull in phase TAG ("x ?" if it left no record).
nf_result() {
    local rc t0 t1
    if read -r rc t0 t1 <"$MN_DIR/logs/pull-$1-n$2.time" 2>/dev/null; then
        awk -v r="$rc" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s %.1f\n", r, b - a }'
    else
        echo "x ?"
    fi
}

nf_egress() { mn_in "$MN_REG_NS" cat /sys/class/net/eth0/statistics/tx_bytes; }

# nf_blob_bytes: the blob bytes of the image mn_build_image built last.
nf_blob_bytes() {
    local d sum=0
    for d in "$MN_CONFIG" "${MN_LAYERS[@]}"; do sum=$((sum + MN_BLOB_SIZE[$d])); done
    echo "$sum"
}

# nf_image TAG: a new image MN_NET's registry/test/nf:TAG with one random layer of NF_MIB MiB.
nf_image() {
    rm -rf "$MN_DIR/oci"
    MN_REF="$MN_REG/test/nf:$1"
    mn_build_image || die "netfaults: building or pushing test/nf:$1 failed"
}

# nf_check_phase TAG LABEL EGRESS BOUND_COPIES_PERMILLE: every pull verified (except those the
# caller checks itself: NF_SKIP), and the registry's egress within its bound.
nf_check_phase() {
    local tag=$1 label=$2 egress=$3 permille=$4 i rc secs f bound
    for ((i = 1; i <= MN_NODES; i++)); do
        [ "$i" = "${NF_SKIP:-}" ] && continue
        read -r rc secs < <(nf_result "$tag" "$i")
        if check "$label: node $i's pull finished in $secs s (deadline $NF_TIMEOUT s)" [ "$rc" = 0 ]; then
            mn_verify "$i" "$label" "$MN_REF"
        else
            tail -n 15 "$MN_DIR/logs/ctr-$tag-n$i.log" | sed 's/^/    /'
        fi
    done
    f=$(nf_blob_bytes)
    bound=$((f * permille / 1000 + MN_NODES * NF_ALLOWANCE_PER_NODE))
    check "$label: registry egress $egress bytes <= $(awk -v p="$permille" 'BEGIN { printf "%.2f", p / 1000 }') x $f + allowance = $bound (ratio $(awk -v e="$egress" -v b="$f" 'BEGIN { printf "%.3f", e / b }'))" \
        mn_le "$egress" "$bound" || true
}

# nf_partition SIDE_A... -- SIDE_B...: each node drops, on input, every packet from the other
# side's addresses (an nftables table of its own in its namespace).
nf_partition() {
    local a=() b=() side=a n peer
    for n in "$@"; do
        if [ "$n" = -- ]; then side=b; elif [ "$side" = a ]; then a+=("$n"); else b+=("$n"); fi
    done
    for n in "${a[@]}"; do for peer in "${b[@]}"; do nf_drop_from "$n" "$peer" || return 1; done; done
    for n in "${b[@]}"; do for peer in "${a[@]}"; do nf_drop_from "$n" "$peer" || return 1; done; done
}

# nf_drop_from N M: node N drops every packet from node M (`reg`: from the registry).
nf_drop_from() {
    local ns
    ns=$(mn_ns "$1")
    mn_in "$ns" nft list table inet pollen_nf >/dev/null 2>&1 || {
        mn_in "$ns" nft add table inet pollen_nf &&
            mn_in "$ns" nft add chain inet pollen_nf in '{ type filter hook input priority 0; }'
    } || return 1
    local from
    if [ "$2" = reg ]; then from=$MN_REG_IP; else from=$(mn_ip "$2"); fi
    mn_in "$ns" nft add rule inet pollen_nf in ip saddr "$from" drop
}

# nf_heal: every node's partition rules go.
nf_heal() {
    local i
    for ((i = 1; i <= MN_NODES; i++)); do
        mn_in "$(mn_ns "$i")" nft delete table inet pollen_nf 2>/dev/null || true
    done
}

# nf_reachable N M: node N opens a TCP connection to node M's agent swarm port within 3 s.
nf_reachable() {
    mn_in "$(mn_ns "$1")" timeout 3 bash -c "exec 3<>/dev/tcp/$(mn_ip "$2")/$MN_P2P_PORT" 2>/dev/null
}

# nf_split: the partition holds: no connection across it, both ways within each side.
nf_split() {
    ! nf_reachable 1 2 && ! nf_reachable 3 4 && ! nf_reachable 2 3 && nf_reachable 1 3 && nf_reachable 2 4
}

# nf_ended_or_retried N TAG LABEL: node N's pull of phase TAG ended by itself within its
# deadline (124 would be the deadline), and it verifies, or else a retry (what kubelet does
# after a failed pull) verifies.
nf_ended_or_retried() {
    local n=$1 tag=$2 label=$3 rc secs
    read -r rc secs < <(nf_result "$tag" "$n")
    check "$label: node $n's pull ended within its deadline of $NF_TIMEOUT s (exit $rc at $secs s)" nf_ended "$rc" || true
    if [ "$rc" = 0 ]; then
        mn_verify "$n" "$label: node $n" "$MN_REF"
        return
    fi
    tail -n 10 "$MN_DIR/logs/ctr-$tag-n$n.log" | sed 's/^/    /'
    nf_pull_job "$n" "$tag-retry"
    read -r rc secs < <(nf_result "$tag-retry" "$n")
    if check "$label: node $n's retry finished in $secs s" [ "$rc" = 0 ]; then
        mn_verify "$n" "$label: node $n (retry)" "$MN_REF"
    fi
}

# nf_ended RC: a pull's exit status says it ended by itself (not killed at the deadline, 124).
nf_ended() { [ "$1" != 124 ] && [ "$1" != x ]; }

# nf_link_cut: 1.5 s after the pulls start, node 3's link goes down for NF_CUT_SECS; sets
# NF_CUT_AT and NF_UP_AT.
nf_link_cut() {
    local ns
    ns=$(mn_ns 3)
    sleep 1.5
    ip -n "$ns" link set eth0 down
    NF_CUT_AT=$EPOCHREALTIME
    sleep "$NF_CUT_SECS"
    ip -n "$ns" link set eth0 up
    # The link's address and its connected route come back with it; the default route is on-link.
    NF_UP_AT=$EPOCHREALTIME
}

# nf_faked N: node N's agent runs with libfaketime loaded (its environment and its mappings).
nf_faked() {
    local pid=${MN_AGENT_PID[$1]}
    grep -q libfaketime "/proc/$pid/maps" && tr '\0' '\n' <"/proc/$pid/environ" | grep -q '^FAKETIME_TIMESTAMP_FILE='
}

# nf_clock_phase: step 4 of the header.
nf_clock_phase() {
    local lib clock="$MN_DIR/clock.ts" resumes
    lib=$(find /usr/lib -name libfaketimeMT.so.1 2>/dev/null | head -n 1)
    [ -n "$lib" ] || die "netfaults: libfaketime is missing (apt-get install libfaketime)"
    echo "+0" >"$clock"
    lib_stop_pid "${MN_AGENT_PID[4]}" 100
    LD_PRELOAD=$lib FAKETIME_TIMESTAMP_FILE=$clock FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1 \
        mn_start_agent 4 --tracker false || die "netfaults: node 4's agent did not start under libfaketime"
    check "clock: node 4's agent runs with libfaketime ($lib)" nf_faked 4 || true
    nf_image four
    lib_start_bg pull-clock-n4 "$MN_DIR/logs/pull-job-clock-n4.log" nf_pull_job 4 clock
    NF_JOB[4]=$LIB_LAST_PID
    sleep 1
    echo "+1h" >"$clock"
    sleep 1
    echo "-1h" >"$clock"
    resumes=$(mn_metric 4 pollen_upstream_resumes_total)
    nf_drop_from 4 reg || die "netfaults: the nftables rule could not be added"
    check "clock: after both jumps, before the silence, no upstream transfer of node 4 had been cut (pollen_upstream_resumes_total ${resumes:-missing}: no timeout fired at the forward jump)" \
        [ "${resumes:-x}" = 0 ] || true
    sleep 35
    nf_heal
    wait "${NF_JOB[4]}" || true
    lib_stop_pid "${NF_JOB[4]}"
    nf_ended_or_retried 4 clock clock
    # The silent transfer was cut by the idle timeout (monotonic: an hour behind, it still
    # fired after 30 s) and resumed with a range request; had it waited for the wall clock,
    # TCP would have carried the old transfer on after the silence and nothing would be cut.
    resumes=$(mn_metric 4 pollen_upstream_resumes_total)
    check "clock: the silent transfer was cut at the idle timeout and resumed (pollen_upstream_resumes_total ${resumes:-missing})" \
        mn_ge "${resumes:-}" 1 || true
    echo "+0" >"$clock"
}

netfaults_main() {
    local i rc secs e0 e1 t_start first
    local -A NF_JOB=()
    mn_config "pollen-nf-$$" "$NF_NET" 4 test/nf:one own
    MN_LAYER_MIBS=("$NF_MIB")
    MN_TIMEOUT=$NF_TIMEOUT
    lib_step "m. network faults: a link cut for ${NF_CUT_SECS} s mid-pull, a partition with a tracker on each side, healed; the clock jumps"
    command -v nft >/dev/null 2>&1 || die "netfaults: nft (nftables) is missing"
    MN_DIR="$T/nf"
    mkdir -p "$MN_DIR/logs"
    mn_net_up || die "netfaults: setting up the namespaces failed"
    mn_in "$MN_REG_NS" tc qdisc add dev eth0 root tbf rate "$NF_RATE" burst 256kb latency 50ms ||
        die "netfaults: tc tbf on the registry's link failed"
    mn_start_registry || die "netfaults: docker-registry on $MN_REG did not start"
    mn_check_reach
    for ((i = 1; i <= MN_NODES; i++)); do
        if [ "$i" -le 2 ]; then
            mn_start_agent "$i" --tracker true || die "netfaults: node $i's agent did not become ready"
        else
            mn_start_agent "$i" --tracker false || die "netfaults: node $i's agent did not become ready"
        fi
        mn_start_containerd "$i" || die "netfaults: node $i's containerd did not start"
    done
    pass "4 agents (trackers on nodes 1 and 2) and 4 containerds running"

    # ---- 1. a link cut mid-pull
    nf_image one
    e0=$(nf_egress)
    t_start=$EPOCHREALTIME
    nf_start_pulls cut
    nf_link_cut
    nf_wait_pulls
    e1=$(nf_egress)
    read -r rc secs < <(nf_result cut 3)
    echo "  node 3's link was down from $(awk -v a="$t_start" -v b="$NF_CUT_AT" 'BEGIN { printf "%.1f", b - a }') s to" \
        "$(awk -v a="$t_start" -v b="$NF_UP_AT" 'BEGIN { printf "%.1f", b - a }') s; its pull ended at $secs s with exit $rc"
    first=$rc
    nf_ended_or_retried 3 cut "link cut"
    e1=$(nf_egress)
    NF_SKIP=3 nf_check_phase cut "link cut" "$((e1 - e0))" 1300
    echo "  link cut: node 3's first pull $([ "$first" = 0 ] && echo "survived the cut" || echo "failed (exit $first) and was retried")"

    # ---- 2. a partition, a tracker on each side
    nf_image two
    nf_partition 1 3 -- 2 4 || die "netfaults: the nftables rules could not be added"
    check "partition: node 1 cannot reach node 2, node 3 cannot reach node 4; 1 reaches 3 and 2 reaches 4" \
        nf_split || true
    e0=$(nf_egress)
    nf_start_pulls part
    nf_wait_pulls
    e1=$(nf_egress)
    nf_check_phase part "partition" "$((e1 - e0))" 2040

    # ---- 3. healed
    nf_heal
    check "healed: node 1 reaches node 2 again" lib_wait_cmd 50 nf_reachable 1 2 || true
    nf_image three
    e0=$(nf_egress)
    nf_start_pulls healed
    nf_wait_pulls
    e1=$(nf_egress)
    nf_check_phase healed "healed" "$((e1 - e0))" 1020

    # ---- 4. the wall clock jumps, then the registry goes silent
    nf_clock_phase

    for ((i = 1; i <= MN_NODES; i++)); do
        check "netfaults: node $i's agent still running" lib_alive "${MN_AGENT_PID[$i]}" || true
        check "netfaults: node $i's agent log has no panic" mn_no_panic "$MN_DIR/logs/agent-n$i.log" || true
    done
    for ((i = 1; i <= MN_NODES; i++)); do kill -TERM "${MN_CTD_PID[$i]}" 2>/dev/null || true; done
    for ((i = MN_NODES; i >= 1; i--)); do lib_stop_pid "${MN_CTD_PID[$i]}" 50; done
    for ((i = 1; i <= MN_NODES; i++)); do lib_stop_pid "${MN_AGENT_PID[$i]}" 100; done
    lib_stop_pid "$MN_REG_PID"
    mn_cleanup
}

# ---------------------------------------------------------------- on its own
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    NF_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    # shellcheck source=tests/e2e/lib.sh
    source "$NF_HERE/lib.sh"
    # shellcheck source=tests/e2e/multinode.sh
    source "$NF_HERE/multinode.sh"
    mn_standalone tc=iproute2 nft=nftables faketime=faketime
    netfaults_main
fi
