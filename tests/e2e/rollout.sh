#!/usr/bin/env bash
# shellcheck shell=bash
# Step h: a rollout. Eight nodes (E2E_ROLLOUT_NODES; the issue asks for at least six) pull the
# same image at the same moment while the upstream registry sits behind a rate-limited link, and
# the registry's egress on that link is measured against the issue's bound: at most 1.02 x the
# image's blob bytes, plus a small fixed allowance for manifests and HTTP headers.
#
#   sudo tests/e2e/rollout.sh          # on its own (builds the agent like run.sh does)
#   sudo tests/e2e/run.sh              # sources this file and runs it as step h
#
# Network (multinode.sh's helpers, `mn_config ... own`): a switch namespace with a bridge at
# NET.1; the docker-registry in a namespace of its own at NET.2, whose veth (eth0 there) is
# shaped with `tc qdisc add dev eth0 root tbf rate RATE burst 256kb latency 50ms` (its egress:
# everything the registry sends); nodes 1..N in namespaces at NET.11... Nothing is created in
# the root namespace: deleting the namespaces deletes every link and the qdisc.
# On every node: `pollen agent` (nodes 1..E2E_ROLLOUT_TRACKERS with --tracker true, the others
# with --tracker false, every other node --bootstrap to node 1) and a private containerd whose
# hosts.toml names the node-local agent as the registry's mirror. The client is `ctr images pull` (fetch and unpack), as in step
# g: one containerd per node is light enough here.
#
#   1. the image (a small file and E2E_ROLLOUT_LAYERS_MIB random layers) is pushed before any
#      agent starts;
#   2. every agent is ready and connected to every tracker, with a non-empty Kademlia routing
#      table (polled on /status, bounded);
#   3. the registry's eth0 counters (/sys/class/net/eth0/statistics, read inside its namespace)
#      and the tbf qdisc's are read; all N pulls start at once (background jobs, each bounded by
#      E2E_ROLLOUT_TIMEOUT); the counters are read again when all have ended;
#   4. checks: every pull succeeded and verifies (mn_verify: image digest, every blob in the
#      content store hashes to its digest); egress <= 1.02 x blob bytes + allowance; every agent
#      alive, no panic, and each exits within 10 s of SIGTERM. Printed: the ratio egress / blob
#      bytes, each node's time to finish, its pollen_upstream_bytes_total,
#      pollen_peer_bytes_received_total and pollen_peer_bytes_sent_total, which node fetched
#      which blob from the registry (access log) and why (the agents' "fetching from the
#      upstream reason=..." lines), and what the trackers coordinated.
#
# Egress is eth0's tx_bytes delta. A veth counts a GSO packet (up to 64 KiB of TCP payload) once,
# with one set of headers: the 66 header bytes per packet (Ethernet 14, IPv4 20, TCP 32 with
# timestamps) cost about 0.15 % here and come out of the 2 %. The qdisc counts every segment's
# headers, as frames on a 1500-byte-MTU wire would be: about 4.6 % more than the payload for any
# TCP transfer, so that figure is printed, not checked. Both, less 66 bytes per packet, give the
# same TCP payload, which is printed next to the access log's body bytes.
# The allowance, fixed before the pulls, does not count on manifests being shared between peers
# (docs/tracker.md): every node's agent may ask the registry for the manifest itself, up to
# RO_MANIFEST_REQS_PER_NODE responses each with a body of the manifest's size; one response per
# blob (the cluster fetches each once); every response up to RO_HEADER_ALLOWANCE bytes of status
# line and headers (the registry's measured sizes, about 360-400 bytes, are checked to fit).
#
# Environment (besides run.sh's POLLEN_BIN, E2E_KEEP, E2E_NO_BUILD):
#   E2E_ROLLOUT_NODES      nodes pulling at once (default 8, at least 6 for the issue)
#   E2E_ROLLOUT_TRACKERS   trackers: nodes 1..K get --tracker true (default 2)
#   E2E_ROLLOUT_LAYERS_MIB sizes of the random layers in MiB (default "24 16 8")
#   E2E_ROLLOUT_RATE       tbf rate of the registry's link (default 100mbit)
#   E2E_ROLLOUT_NET        the /24 of the test network, three octets (default 10.78.0)
#   E2E_ROLLOUT_TIMEOUT    bound on each pull, in seconds (default 120)
#   E2E_ROLLOUT_RUST_LOG   RUST_LOG of the agents (default info,pollen_agent=debug)
#   E2E_SKIP_ROLLOUT=1     skips this step in run.sh

RO_NODES=${E2E_ROLLOUT_NODES:-8}
RO_TRACKERS=${E2E_ROLLOUT_TRACKERS:-2}
read -r -a RO_LAYER_MIBS <<<"${E2E_ROLLOUT_LAYERS_MIB:-24 16 8}"
RO_RATE=${E2E_ROLLOUT_RATE:-100mbit}
RO_NET=${E2E_ROLLOUT_NET:-10.78.0}
RO_TIMEOUT=${E2E_ROLLOUT_TIMEOUT:-120}
RO_RUST_LOG=${E2E_ROLLOUT_RUST_LOG:-info,pollen_agent=debug}
# The issue's bound on the upstream's egress, in thousandths of the blob bytes. Not a setting.
RO_BOUND_PERMILLE=1020
# Allowance per upstream HTTP response for its status line and headers, and how many manifest
# responses each node's agent may need: one is what is seen (a GET of the tag); four leave room
# for a HEAD, a GET by digest and one retry without counting on the agent's tag cache.
RO_HEADER_ALLOWANCE=1024
RO_MANIFEST_REQS_PER_NODE=4

# ro_link_counters: "tx_bytes tx_packets qdisc_bytes qdisc_packets" of the registry's eth0, read
# inside its namespace (ip netns exec mounts that namespace's /sys).
ro_link_counters() {
    local tb tp qb qp
    tb=$(mn_in "$MN_REG_NS" cat /sys/class/net/eth0/statistics/tx_bytes) || return 1
    tp=$(mn_in "$MN_REG_NS" cat /sys/class/net/eth0/statistics/tx_packets) || return 1
    read -r qb qp < <(tc -n "$MN_REG_NS" -s -j qdisc show dev eth0 |
        jq -r '.[] | select(.kind == "tbf") | "\(.bytes) \(.packets)"') || return 1
    printf '%s %s %s %s\n' "$tb" "$tp" "$qb" "$qp"
}

# ro_header_bytes PATH: the size of the registry's status line and headers for a HEAD of PATH,
# asked from the switch namespace.
ro_header_bytes() {
    mn_in "$MN_SW" curl -fsS -I -o /dev/null --max-time 5 -w '%{size_header}' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$MN_REG$1"
}

# ro_sees_trackers N: node N's agent is connected to every tracker (nodes 1..RO_TRACKERS other
# than itself) and its Kademlia routing table is not empty, so its tracker lookup has someone to ask.
ro_sees_trackers() {
    local n=$1 t st
    st=$(mn_admin "$n" /status) || return 1
    jq -e '.routing_table_peers >= 1' >/dev/null <<<"$st" || return 1
    for ((t = 1; t <= RO_TRACKERS; t++)); do
        [ "$t" -eq "$n" ] && continue
        jq -e --arg p "${MN_PEER_ID[$t]}" '.peers | index($p) != null' >/dev/null <<<"$st" || return 1
    done
}

# ro_is_tracker N: node N's agent says it has the tracker role.
ro_is_tracker() { mn_admin "$1" /status | jq -e '.roles | index("tracker") != null' >/dev/null; }

# ro_pull_job N: node N's pull (mn_pull), bounded by MN_TIMEOUT; writes "rc start end" (epoch
# seconds) to MN_DIR/logs/pull-nN.time.
ro_pull_job() {
    local n=$1 t0 rc=0
    t0=$EPOCHREALTIME
    mn_pull "$n" "$MN_REF" "$MN_DIR/logs/ctr-pull-n$n.log" || rc=$?
    printf '%s %s %s\n' "$rc" "$t0" "$EPOCHREALTIME" >"$MN_DIR/logs/pull-n$n.time"
}

# ro_node_of IP: the node number of a test-network address (or the address itself).
ro_node_of() {
    local i
    for ((i = 1; i <= MN_NODES; i++)); do
        [ "$1" = "$(mn_ip "$i")" ] && { printf 'node %s' "$i"; return 0; }
    done
    printf '%s' "$1"
}

# ro_registry_report MARK: what the registry sent after line MARK of its access log: for each
# blob, the GETs (by node, status, bytes); and the manifest requests per node.
ro_registry_report() {
    local mark=$1 d ip st by
    echo "  registry responses during the rollout (access log):"
    for d in "$MN_CONFIG" "${MN_LAYERS[@]}"; do
        printf '    blob %s (%s bytes):' "${d:7:12}" "${MN_BLOB_SIZE[$d]}"
        while read -r ip st by; do
            printf ' [%s: %s %s bytes]' "$(ro_node_of "$ip")" "$st" "$by"
        done < <(tail -n "+$((mark + 1))" "$MN_DIR/registry/registry.log" |
            awk -F'"' -v d="$d" '$2 ~ ("^GET /v2/.*/blobs/" d " ") { split($1, a, " "); split($3, b, " "); print a[1], b[1], b[2] }')
        echo
    done
    tail -n "+$((mark + 1))" "$MN_DIR/registry/registry.log" |
        awk -F'"' '$2 ~ /^(GET|HEAD) \/v2\/.*\/manifests\// { split($1, a, " "); split($2, r, " "); split($3, b, " "); n[a[1]]++; by[a[1]] += (r[1] == "GET" ? b[2] : 0) }
            END { for (ip in n) print ip, n[ip], by[ip] }' | sort |
        while read -r ip c by; do
            printf '    manifests: %s: %s request(s), %s body bytes\n' "$(ro_node_of "$ip")" "$c" "$by"
        done
}

# ro_upstream_reasons N: node N's agent's "fetching from the upstream" lines (digest, reason).
ro_upstream_reasons() {
    sed 's/\x1b\[[0-9;]*m//g' "$MN_DIR/logs/agent-n$1.log" | grep "fetching from the upstream" |
        sed -E 's/^.*(digest=sha256:[0-9a-f]{12})[0-9a-f]*/\1/' || true
}

# ro_stop_agents: SIGTERM to every agent at once; each must exit within 10 s (a check per
# node; the threads of one that does not are printed, then lib_stop_pid kills it).
ro_stop_agents() {
    local i pid t0 left t
    local -A took=()
    for ((i = 1; i <= MN_NODES; i++)); do kill -TERM "${MN_AGENT_PID[$i]}" 2>/dev/null || true; done
    t0=$EPOCHREALTIME
    for ((left = 100; left > 0; left--)); do
        for ((i = 1; i <= MN_NODES; i++)); do
            [ -z "${took[$i]:-}" ] && ! lib_alive "${MN_AGENT_PID[$i]}" &&
                took[$i]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
        done
        [ "${#took[@]}" -eq "$MN_NODES" ] && break
        sleep 0.1
    done
    for ((i = 1; i <= MN_NODES; i++)); do
        pid=${MN_AGENT_PID[$i]}
        if ! check "node $i: agent exits on SIGTERM within 10 s${took[$i]:+ (${took[$i]} s)}" [ -n "${took[$i]:-}" ]; then
            echo "    its last log lines and threads (name, state, wchan):"
            tail -n 5 "$MN_DIR/logs/agent-n$i.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/      /'
            for t in /proc/"$pid"/task/*; do
                printf '      %s %s %s\n' "$(cat "$t/comm" 2>/dev/null)" "$(awk '{ print $3 }' "$t/stat" 2>/dev/null)" "$(cat "$t/wchan" 2>/dev/null)"
            done | sort | uniq -c | sed 's/^/  /'
        fi
        lib_stop_pid "$pid"
    done
}

rollout_main() {
    local i n rc t0 t1 t_launch spread nblobs blob_sum manifest_size h_manifest h_blob allowance bound
    local tb0 tp0 qb0 qp0 tb1 tp1 qb1 qp1 egress packets qbytes ratio mark up pr ps secs fetchers
    local d repo line body
    local -A job=() RO_RC=() RO_SECS=()
    mn_config "pollen-ro-$$" "$RO_NET" "$RO_NODES" test/rollout:v1 own
    MN_LAYER_MIBS=("${RO_LAYER_MIBS[@]}")
    MN_RUST_LOG=$RO_RUST_LOG
    MN_TIMEOUT=$RO_TIMEOUT
    lib_step "h. rollout: $MN_NODES nodes pull at once; the registry behind a $RO_RATE link (layers: ${MN_LAYER_MIBS[*]} MiB)"
    command -v tc >/dev/null 2>&1 || die "rollout: tc (iproute2) is missing"
    if ! "$POLLEN_BIN" agent --help 2>/dev/null | grep -q -- '--tracker'; then
        die "rollout: $POLLEN_BIN has no --tracker flag"
    fi
    if [ "$MN_NODES" -lt 2 ] || [ "$RO_TRACKERS" -lt 1 ] || [ "$RO_TRACKERS" -gt "$MN_NODES" ]; then
        die "rollout: E2E_ROLLOUT_NODES ($MN_NODES) must be >= 2 and E2E_ROLLOUT_TRACKERS ($RO_TRACKERS) in 1..nodes"
    fi
    MN_DIR="$T/ro"
    mkdir -p "$MN_DIR/logs"

    mn_net_up || die "rollout: setting up the namespaces failed"
    mn_in "$MN_REG_NS" tc qdisc add dev eth0 root tbf rate "$RO_RATE" burst 256kb latency 50ms ||
        die "rollout: tc tbf on the registry's link failed"
    check "the registry's link is shaped: $(tc -n "$MN_REG_NS" qdisc show dev eth0 | sed -n 1p)" \
        mn_in "$MN_REG_NS" sh -c 'tc qdisc show dev eth0 | grep -q "^qdisc tbf"' || true
    mn_start_registry || die "rollout: docker-registry on $MN_REG did not start"
    mn_check_reach

    # ---- the image, pushed before any agent starts
    mn_build_image || die "rollout: building or pushing the image failed"
    nblobs=$((1 + ${#MN_LAYERS[@]}))
    blob_sum=0
    for d in "$MN_CONFIG" "${MN_LAYERS[@]}"; do blob_sum=$((blob_sum + MN_BLOB_SIZE[$d])); done
    manifest_size=$(stat -c %s "$MN_MANIFEST_FILE")
    pass "umoci built $MN_REF: ${#MN_LAYERS[@]} layers and a config, $blob_sum blob bytes; manifest $manifest_size bytes"

    # ---- the allowance on top of 1.02 x the blob bytes, fixed before the pulls:
    # each node's agent may resolve and fetch the manifest from the registry itself (up to
    # RO_MANIFEST_REQS_PER_NODE responses, each with a body at most the manifest's size), the
    # cluster fetches each blob once (one response each); every response has a status line and
    # headers, allowed RO_HEADER_ALLOWANCE bytes (at least the measured size). TCP/IP and
    # Ethernet headers of the data segments are not in the allowance: they come out of the 2 %.
    repo=${MN_REF#*/}
    h_manifest=$(ro_header_bytes "/v2/${repo%:*}/manifests/${repo##*:}") || h_manifest=0
    h_blob=$(ro_header_bytes "/v2/${repo%:*}/blobs/$MN_BIG") || h_blob=0
    check "the registry's response headers fit the allowance of $RO_HEADER_ALLOWANCE bytes per response (manifest HEAD ${h_manifest:-?}, blob HEAD ${h_blob:-?} bytes)" \
        mn_le "$((h_manifest > h_blob ? h_manifest : h_blob))" "$RO_HEADER_ALLOWANCE" || true
    allowance=$((MN_NODES * RO_MANIFEST_REQS_PER_NODE * (manifest_size + RO_HEADER_ALLOWANCE) + nblobs * RO_HEADER_ALLOWANCE))
    bound=$(((blob_sum * RO_BOUND_PERMILLE + 999) / 1000 + allowance))
    echo "  bound on the registry's egress: 1.02 x $blob_sum + $allowance = $bound bytes" \
        "(allowance: $MN_NODES nodes x $RO_MANIFEST_REQS_PER_NODE manifest responses x ($manifest_size + $RO_HEADER_ALLOWANCE) + $nblobs blob responses x $RO_HEADER_ALLOWANCE)"

    # ---- agents and containerds
    for ((i = 1; i <= MN_NODES; i++)); do
        if [ "$i" -le "$RO_TRACKERS" ]; then
            mn_start_agent "$i" --tracker true || die "rollout: node $i's agent did not become ready"
        else
            # Named trackers only (every agent is one by default since part 7; this step
            # tests the named set-up, crates/agent/tests/startup.rs the default).
            mn_start_agent "$i" --tracker false || die "rollout: node $i's agent did not become ready"
        fi
        MN_PEER_ID[$i]=$(mn_admin "$i" /status | jq -r '.peer_id // empty')
        [ -n "${MN_PEER_ID[$i]}" ] || die "rollout: node $i's agent has no peer id"
        mn_start_containerd "$i" || die "rollout: node $i's containerd did not start"
    done
    pass "$MN_NODES agents ready (peer ids known) and $MN_NODES containerds running"
    for ((i = 1; i <= RO_TRACKERS; i++)); do
        check "node $i's agent has the tracker role (/status roles)" ro_is_tracker "$i" || true
    done
    for ((i = 1; i <= MN_NODES; i++)); do
        check "node $i's agent sees the tracker(s): connected, routing table not empty (waited up to 20 s)" \
            lib_wait_cmd 100 ro_sees_trackers "$i" || true
    done

    # ---- all nodes pull at once
    mark=$(wc -l <"$MN_DIR/registry/registry.log")
    read -r tb0 tp0 qb0 qp0 < <(ro_link_counters) || die "rollout: cannot read the registry's link counters"
    t_launch=$EPOCHREALTIME
    for ((i = 1; i <= MN_NODES; i++)); do
        lib_start_bg "pull-n$i" "$MN_DIR/logs/pull-job-n$i.log" ro_pull_job "$i"
        job[$i]=$LIB_LAST_PID
    done
    # Bounded: each job's ctr runs under timeout MN_TIMEOUT. (lib_stop_pid then only forgets it.)
    for ((i = 1; i <= MN_NODES; i++)); do
        wait "${job[$i]}" || true
        lib_stop_pid "${job[$i]}"
    done
    read -r tb1 tp1 qb1 qp1 < <(ro_link_counters) || die "rollout: cannot read the registry's link counters"
    egress=$((tb1 - tb0))
    packets=$((tp1 - tp0))
    qbytes=$((qb1 - qb0))

    # ---- per node: the pull, its content, its counters
    spread=$(for ((i = 1; i <= MN_NODES; i++)); do awk '{ print $2 }' "$MN_DIR/logs/pull-n$i.time" 2>/dev/null; done |
        sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%.3f", b - a }')
    echo "  the $MN_NODES pulls started within $spread s of each other"
    printf '  %-7s %-12s %8s %14s %14s %14s\n' node address "time(s)" upstream_bytes peer_bytes_in peer_bytes_out
    for ((i = 1; i <= MN_NODES; i++)); do
        rc=x secs="?"
        if read -r rc t0 t1 <"$MN_DIR/logs/pull-n$i.time" 2>/dev/null; then
            secs=$(awk -v a="$t_launch" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        fi
        up=$(mn_metric "$i" pollen_upstream_bytes_total)
        pr=$(mn_metric "$i" pollen_peer_bytes_received_total)
        ps=$(mn_metric "$i" pollen_peer_bytes_sent_total)
        printf '  %-7s %-12s %8s %14s %14s %14s\n' "$i" "$(mn_ip "$i")" "$secs" "${up:-?}" "${pr:-?}" "${ps:-?}"
        RO_RC[$i]=$rc
        RO_SECS[$i]=$secs
    done
    for ((i = 1; i <= MN_NODES; i++)); do
        if check "node $i: ctr images pull $MN_REF through its agent finished in ${RO_SECS[$i]} s" [ "${RO_RC[$i]}" = 0 ]; then
            mn_verify "$i" "node $i" "$MN_REF"
        else
            tail -n 15 "$MN_DIR/logs/ctr-pull-n$i.log" | sed 's/^/    /'
        fi
    done

    # ---- the registry's egress on its link
    ratio=$(awk -v e="$egress" -v b="$blob_sum" 'BEGIN { printf "%.4f", e / b }')
    body=$(tail -n "+$((mark + 1))" "$MN_DIR/registry/registry.log" |
        awk -F'"' '$2 ~ /^GET / { split($3, b, " "); if (b[2] ~ /^[0-9]+$/) s += b[2] } END { printf "%d\n", s }')
    # Each packet (a GSO packet counts once on the veth, each of its segments once in the qdisc)
    # carries 66 header bytes: Ethernet 14, IPv4 20, TCP 20 + 12 of timestamp option.
    echo "  registry egress on its link (tx_bytes of eth0 in $MN_REG_NS): $egress bytes in $packets packets;" \
        "less 66 header bytes per packet: $((egress - 66 * packets)) bytes of TCP payload;" \
        "the access log counts $body body bytes in its responses"
    echo "  the tbf qdisc counted $qbytes bytes in $((qp1 - qp0)) segments (the frames of a 1500-byte MTU wire: ratio" \
        "$(awk -v e="$qbytes" -v b="$blob_sum" 'BEGIN { printf "%.4f", e / b }')); less 66 per segment: $((qbytes - 66 * (qp1 - qp0))) bytes of TCP payload"
    echo "  blob bytes $blob_sum: egress / blob bytes = $ratio"
    ro_registry_report "$mark"
    fetchers=0
    for ((i = 1; i <= MN_NODES; i++)); do
        while IFS= read -r line; do
            echo "    node $i fetched from the upstream: $line"
            fetchers=$((fetchers + 1))
        done < <(ro_upstream_reasons "$i")
    done
    [ "$fetchers" -gt 0 ] || echo "    (no agent logged \"fetching from the upstream\")"
    echo "  blobs coordinated by the tracker(s):"
    for ((i = 1; i <= RO_TRACKERS; i++)); do
        mn_admin "$i" /status | jq -r --arg n "$i" '.tracked_blobs[] | "    node \($n): \(.digest[7:19]) members \(.members) holders \(.holders) fetching \(.fetching)"' || true
    done
    check "registry egress $egress bytes <= 1.02 x $blob_sum blob bytes + $allowance = $bound (ratio $ratio)" \
        mn_le "$egress" "$bound" || true

    for ((i = 1; i <= MN_NODES; i++)); do
        check "node $i: agent still running" lib_alive "${MN_AGENT_PID[$i]}" || true
        check "node $i: agent log has no panic" mn_no_panic "$MN_DIR/logs/agent-n$i.log" || true
    done

    # The containerds all at once (one may take long to stop; they are not under test), then the
    # agents, which must stop promptly.
    for ((i = 1; i <= MN_NODES; i++)); do kill -TERM "${MN_CTD_PID[$i]}" 2>/dev/null || true; done
    for ((i = MN_NODES; i >= 1; i--)); do lib_stop_pid "${MN_CTD_PID[$i]}" 50; done
    ro_stop_agents
    lib_stop_pid "$MN_REG_PID"
    mn_cleanup
    no_ns() { ! ip netns list | grep -q "^$MN_PREFIX-"; }
    check "rollout: every namespace (and with them the bridge, veths and the qdisc) is gone" no_ns || true
}

# ---------------------------------------------------------------- on its own
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    RO_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    # shellcheck source=tests/e2e/lib.sh
    source "$RO_HERE/lib.sh"
    # shellcheck source=tests/e2e/multinode.sh
    source "$RO_HERE/multinode.sh"
    mn_standalone tc=iproute2
    rollout_main
fi
