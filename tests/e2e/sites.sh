#!/usr/bin/env bash
# shellcheck shell=bash
# Step j: sites behind thin links (docs/sites.md). A registry and a parent agent sit in the
# region; two sites of E2E_SITES_NODES nodes each reach the region over a link shaped to
# E2E_SITES_RATE in both directions. Every site agent names the parent first in its upstream
# list (with a token as its Basic password, and the parent's CA) and the origin second.
#
#   sudo tests/e2e/sites.sh            # on its own (builds the agent like run.sh does)
#   sudo tests/e2e/run.sh              # sources this file and runs it as step j
#
# Network (multinode.sh's helpers): the region switch namespace (bridge at NET.1) holds the
# docker-registry's namespace (NET.2) and the parent's (NET.4); each site has a switch namespace
# of its own whose bridge is joined to the region's by a veth pair (la/ra, lb/rb) shaped with
# `tc tbf rate RATE` on both ends; site A's nodes are NET.11.., site B's follow. Each site is a
# swarm of its own (its own swarm key, bootstrapped to its first node). Nothing is created in the
# root namespace.
#
#   1. every node of both sites pulls the image at once: each pull verifies (as in step g); each
#      site link carried at most 1.02 x the image's blob bytes + a fixed allowance towards its
#      site (the link's tx_bytes in the region's namespace), and the registry sent at most as
#      much in all (its eth0's tx_bytes);
#   2. a second image, all nodes at once again; the parent is killed once a site link has carried
#      E2E_SITES_KILL_AFTER bytes of it: every pull still verifies, and the registry's log shows
#      blob GETs from site nodes (they went on from the origin).
#
# Environment (besides run.sh's POLLEN_BIN, E2E_KEEP, E2E_NO_BUILD):
#   E2E_SITES_NODES       nodes per site (default 4)
#   E2E_SITES_RATE        tbf rate of each site link, both ways (default 20mbit)
#   E2E_SITES_LAYERS_MIB  the random layers of each image, in MiB (default "6 3")
#   E2E_SITES_NET         the /24 of the test network, three octets (default 10.80.0)
#   E2E_SITES_TIMEOUT     bound on each pull, in seconds (default 180)
#   E2E_SITES_KILL_AFTER  bytes a site link carries of the second image before the parent is
#                         killed (default 1000000)
#   E2E_SKIP_SITES=1      skips this step in run.sh

SI_NODES=${E2E_SITES_NODES:-4}
SI_RATE=${E2E_SITES_RATE:-20mbit}
read -r -a SI_LAYER_MIBS <<<"${E2E_SITES_LAYERS_MIB:-6 3}"
SI_NET=${E2E_SITES_NET:-10.80.0}
SI_TIMEOUT=${E2E_SITES_TIMEOUT:-180}
SI_KILL_AFTER=${E2E_SITES_KILL_AFTER:-1000000}
# Manifests (a few per node, through the parent or from the origin) and HTTP, TLS and TCP/IP
# framing on top of the blobs' bytes: fixed before the pulls.
SI_ALLOWANCE=262144
SI_PARENT_PID=""

# si_names: the parent's namespace and address, from mn_config's prefix and network (also used
# by benches/cluster.sh's `sites` scenario, whose cache host has NET.3).
si_names() {
    SI_PARENT_NS="$MN_PREFIX-parent"
    SI_PARENT_IP="$MN_NET.4"
    SI_PARENT="$SI_PARENT_IP:8443"
}

# si_sw SITE: the switch namespace of SITE (a or b).
si_sw() { printf '%s-s%s' "$MN_PREFIX" "$1"; }

# si_site N: the site (a or b) of node N.
si_site() { if [ "$1" -le "$SI_NODES" ]; then echo a; else echo b; fi; }
# si_first N: the first node of node N's site.
si_first() { if [ "$1" -le "$SI_NODES" ]; then echo 1; else echo $((SI_NODES + 1)); fi; }

# si_net_up: the region (mn_net_up with the registry in its own namespace and no nodes), the
# parent, and both sites with their shaped links and nodes.
si_net_up() {
    local nodes=$MN_NODES region=$MN_SW site sw n
    MN_NODES=0
    mn_net_up || return 1
    MN_NODES=$nodes
    mn_add_host "$SI_PARENT_NS" "$SI_PARENT_IP" vpar || return 1
    for site in a b; do
        sw=$(si_sw "$site")
        ip netns add "$sw" || return 1
        MN_NETNS+=("$sw")
        ip -n "$sw" link set lo up &&
            ip -n "$sw" link add br0 type bridge &&
            ip -n "$sw" link set br0 up &&
            ip -n "$region" link add "l$site" type veth peer name "r$site" netns "$sw" &&
            ip -n "$region" link set "l$site" master br0 &&
            ip -n "$region" link set "l$site" up &&
            ip -n "$sw" link set "r$site" master br0 &&
            ip -n "$sw" link set "r$site" up &&
            tc -n "$region" qdisc add dev "l$site" root tbf rate "$SI_RATE" burst 32kb latency 100ms &&
            tc -n "$sw" qdisc add dev "r$site" root tbf rate "$SI_RATE" burst 32kb latency 100ms || return 1
    done
    for ((n = 1; n <= MN_NODES; n++)); do
        MN_SW=$(si_sw "$(si_site "$n")")
        mn_add_host "$(mn_ns "$n")" "$(mn_ip "$n")" "v$n" || { MN_SW=$region; return 1; }
    done
    MN_SW=$region
}

# si_link_tx SITE: bytes the region sent towards SITE over its link.
si_link_tx() { mn_in "$MN_SW" cat "/sys/class/net/l$1/statistics/tx_bytes"; }
si_registry_tx() { mn_in "$MN_REG_NS" cat /sys/class/net/eth0/statistics/tx_bytes; }

# si_pki: a CA, the parent's certificate for its address, and the sites' token.
si_pki() {
    local d="$MN_DIR/pki"
    mkdir -p "$d"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
            -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=pollen e2e region CA" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout "$d/parent.key" -out "$d/parent.csr" -subj "/CN=$SI_PARENT_IP" &&
            printf 'subjectAltName=IP:%s\n' "$SI_PARENT_IP" >"$d/ext.cnf" &&
            openssl x509 -req -in "$d/parent.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
                -CAcreateserial -days 1 -extfile "$d/ext.cnf" -out "$d/parent.pem"
    } >"$MN_DIR/logs/openssl.log" 2>&1 || { cat "$MN_DIR/logs/openssl.log" >&2; return 1; }
    openssl rand -hex 24 >"$d/token"
    cp "$d/token" "$d/tokens"
    chmod 600 "$d/token" "$d/tokens"
    cat >"$MN_DIR/site.toml" <<TOML
ca_files = ["$d/ca.pem"]

[[credentials]]
host = "$SI_PARENT"
username = "site"
password_file = "$d/token"
TOML
}

si_start_parent() {
    local data="$MN_DIR/parent"
    rm -rf "$data"
    mkdir -p "$data"
    lib_start_bg parent "$MN_DIR/logs/parent.log" ip netns exec "$SI_PARENT_NS" "$POLLEN_BIN" agent \
        --listen "127.0.0.1:$MN_AGENT_PORT" --metrics-listen "127.0.0.1:$MN_ADMIN_PORT" \
        --control-socket "$data/control.sock" --data-dir "$data" --p2p false \
        --upstream "http://$MN_REG" --registry "$MN_REG=http://$MN_REG" \
        --serve-listen "$SI_PARENT" --serve-tls-cert "$MN_DIR/pki/parent.pem" \
        --serve-tls-key "$MN_DIR/pki/parent.key" --serve-tokens "$MN_DIR/pki/tokens" --log-format text
    SI_PARENT_PID=$LIB_LAST_PID
    mn_wait_http "$SI_PARENT_NS" "http://127.0.0.1:$MN_ADMIN_PORT/readyz" 150 "$SI_PARENT_PID" ||
        { tail -n 20 "$MN_DIR/logs/parent.log" >&2; return 1; }
}

# si_launch_agent N: node N's agent: its site's swarm key and first node, the parent first in
# its upstream list, the origin second.
si_launch_agent() {
    local n=$1 ns data first key
    ns=$(mn_ns "$n")
    data="$MN_DIR/n$n/agent"
    first=$(si_first "$n")
    key="$MN_DIR/swarm-$(si_site "$n").key"
    mkdir -p "$data"
    "$POLLEN_BIN" swarm-key --out "$key" 2>/dev/null || return 1
    local extra=(--swarm-key "$key")
    [ "$n" -eq "$first" ] || extra+=(--bootstrap "/ip4/$(mn_ip "$first")/tcp/$MN_P2P_PORT")
    RUST_LOG=$MN_RUST_LOG lib_start_bg "agent-n$n" "$MN_DIR/logs/agent-n$n.log" ip netns exec "$ns" "$POLLEN_BIN" agent \
        --config "$MN_DIR/site.toml" \
        --listen "127.0.0.1:$MN_AGENT_PORT" --metrics-listen "127.0.0.1:$MN_ADMIN_PORT" \
        --control-socket "$data/control.sock" --data-dir "$data" --cache-size 4GiB --log-format text \
        --upstream "http://$MN_REG" --registry "$MN_REG=https://$SI_PARENT,http://$MN_REG" \
        --p2p true --p2p-listen "/ip4/$(mn_ip "$n")/tcp/$MN_P2P_PORT" --mdns false "${extra[@]}"
    MN_AGENT_PID[$n]=$LIB_LAST_PID
}

# si_pull_all LABEL: every node pulls MN_REF at once; their exit statuses in SI_RC.
si_pull_all() {
    local n pids=()
    for ((n = 1; n <= MN_NODES; n++)); do
        mn_pull "$n" "$MN_REF" "$MN_DIR/logs/ctr-pull-$1-n$n.log" &
        pids[n]=$!
    done
    SI_PULLING=("${pids[@]}")
}

# si_wait_pulls LABEL: waits for the pulls si_pull_all started and checks each.
si_wait_pulls() {
    local label=$1 n rc
    for ((n = 1; n <= MN_NODES; n++)); do
        rc=0
        wait "${SI_PULLING[n - 1]}" || rc=$?
        if check "$label: node $n (site $(si_site "$n")) pulled $MN_REF" [ "$rc" -eq 0 ]; then
            mn_verify "$n" "$label" "$MN_REF"
        else
            tail -n 10 "$MN_DIR/logs/ctr-pull-$label-n$n.log" | sed 's/^/    /'
        fi
    done
}

# si_blob_bytes: the image's blob bytes (config and layers).
si_blob_bytes() {
    local d total=0
    for d in "${!MN_BLOB_SIZE[@]}"; do total=$((total + MN_BLOB_SIZE[$d])); done
    echo "$total"
}

si_main() {
    lib_step "j. sites: two sites of $SI_NODES nodes behind $SI_RATE links pull through a parent agent"
    mn_config si "$SI_NET" $((2 * SI_NODES)) "sites/app:v1" own
    si_names
    MN_LAYER_MIBS=("${SI_LAYER_MIBS[@]}")
    MN_TIMEOUT=$SI_TIMEOUT
    MN_DIR="$T/si"
    mkdir -p "$MN_DIR/logs"
    si_net_up || die "sites: the test network could not be set up"
    mn_start_registry || die "sites: docker-registry did not start"
    mn_build_image || die "sites: building or pushing the image failed"
    si_pki || die "sites: making the certificates failed"
    si_start_parent || die "sites: the parent agent did not start"
    pass "the parent serves sites on https://$SI_PARENT (token auth), the registry is http://$MN_REG"
    local n
    for ((n = 1; n <= MN_NODES; n++)); do si_launch_agent "$n" || die "sites: agent $n did not start"; done
    for ((n = 1; n <= MN_NODES; n++)); do
        mn_wait_agent "$n" || die "sites: agent $n is not ready"
        mn_start_containerd "$n" || die "sites: containerd $n did not start"
    done

    local blobs a0 b0 r0 a1 b1 r1 bound t0
    blobs=$(si_blob_bytes)
    bound=$(awk -v f="$blobs" -v a="$SI_ALLOWANCE" 'BEGIN { printf "%d", f * 1.02 + a }')
    a0=$(si_link_tx a) b0=$(si_link_tx b) r0=$(si_registry_tx)
    t0=$EPOCHREALTIME
    si_pull_all one
    si_wait_pulls one
    a1=$(si_link_tx a) b1=$(si_link_tx b) r1=$(si_registry_tx)
    ratio() { awk -v x="$1" -v f="$blobs" 'BEGIN { printf "%.4f", x / f }'; }
    echo "  all pulls ended after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s; image blobs $blobs bytes, bound $bound"
    echo "  towards site a $(ratio $((a1 - a0))) x the blobs, site b $(ratio $((b1 - b0))) x, registry egress $(ratio $((r1 - r0))) x"
    check "site a's link carried $((a1 - a0)) bytes towards the site (<= 1.02 x blobs + $SI_ALLOWANCE)" \
        [ $((a1 - a0)) -le "$bound" ] || true
    check "site b's link carried $((b1 - b0)) bytes towards the site (<= 1.02 x blobs + $SI_ALLOWANCE)" \
        [ $((b1 - b0)) -le "$bound" ] || true
    check "the registry sent $((r1 - r0)) bytes in all (<= 1.02 x blobs + $SI_ALLOWANCE)" \
        [ $((r1 - r0)) -le "$bound" ] || true
    for ((n = 1; n <= MN_NODES; n++)); do
        check "sites: no blob went from the registry to node $n" mn_no_blob_from_registry "$n" || true
    done

    lib_step "j2. the parent killed mid-pull: the sites finish from the origin"
    MN_REF="$MN_REG/sites/app:v2"
    rm -rf "$MN_DIR/oci"
    mn_build_image || die "sites: building or pushing the second image failed"
    a0=$(si_link_tx a)
    si_pull_all two
    local i
    for ((i = 0; i < 600; i++)); do
        [ $(($(si_link_tx a) - a0)) -ge "$SI_KILL_AFTER" ] && break
        sleep 0.05
    done
    echo "  killing the parent after site a's link carried $(($(si_link_tx a) - a0)) bytes of the second image"
    lib_stop_pid "$SI_PARENT_PID"
    si_wait_pulls two
    local from_origin=0 b c
    for ((n = 1; n <= MN_NODES; n++)); do
        read -r b c < <(mn_upstream_bytes "$(mn_ip "$n")" blobs)
        from_origin=$((from_origin + c))
    done
    check "sites: site nodes fetched blobs from the origin after the parent died ($from_origin GETs)" \
        [ "$from_origin" -gt 0 ] || true
    for ((n = 1; n <= MN_NODES; n++)); do
        check "sites: agent $n is alive with no panic in its log" \
            lib_alive "${MN_AGENT_PID[$n]}" || true
        check "sites: agent $n's log has no panic" mn_no_panic "$MN_DIR/logs/agent-n$n.log" || true
    done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    # shellcheck source=tests/e2e/lib.sh
    source "$HERE/lib.sh"
    # shellcheck source=tests/e2e/multinode.sh
    source "$HERE/multinode.sh"
    mn_standalone tc=iproute2 openssl=openssl
    si_main
fi
