#!/usr/bin/env bash
# shellcheck shell=bash
# Multi-node end-to-end step: several agents, each on a "host" of its own (a network namespace),
# sharing blob pieces over the swarm.
#
#   sudo tests/e2e/multinode.sh        # on its own (builds the agent like run.sh does)
#   sudo tests/e2e/run.sh              # sources this file and runs it as step g
#
# Network: one namespace holds a bridge (the "switch") and the upstream docker-registry on the
# bridge's address MN_NET.1; every node is a namespace with a veth into the bridge at MN_NET.1N.
# Nothing is created in the root namespace: deleting the namespaces deletes every link.
# The helpers (mn_*) are shared with step h (rollout.sh), which calls mn_config for six nodes and
# a registry in a namespace of its own behind a rate-limited link.
# On each node: `pollen agent` (mirror on the node's 127.0.0.1:65001, admin on 127.0.0.1:65002,
# swarm on MN_NET.1N:65003, --bootstrap to node 1) and a private containerd whose hosts.toml names
# the node-local agent as the registry's mirror; `ctr images pull` runs on the node.
#
#   1. node 1 pulls an image with a random layer of E2E_P2P_MIB MiB (only node 1's agent asks the
#      registry for its blobs);
#   2. node 2 pulls it: every blob comes from node 1's pieces, so node 2's agent got no blob bytes
#      from the registry (its pollen_upstream_bytes_total is at most the manifest bytes it
#      fetched, and the registry's access log has no blob GET from node 2's address), its
#      pollen_peer_bytes_received_total is at least the layer size, and node 1's
#      pollen_peer_bytes_sent_total is above zero;
#   3. node 3 resolves the tag through its agent (manifests are not shared between peers), the
#      registry is stopped, and node 3's containerd pulls the image from node 1's and node 2's
#      pieces alone.
# Every pulled image is checked as in step a (image digest, every blob in the content store
# hashes to its digest).
#
# Environment (besides run.sh's POLLEN_BIN, E2E_KEEP, E2E_NO_BUILD):
#   E2E_P2P_MIB      size of the random layer in MiB (default 32)
#   E2E_P2P_NET      the /24 of the test network, three octets (default 10.77.0); it exists only
#                    inside the namespaces this script creates
#   E2E_P2P_TIMEOUT  bound on each pull, in seconds (default 90)
#   E2E_P2P_RUST_LOG RUST_LOG of the agents (default info)

MN_MIB=${E2E_P2P_MIB:-32}
MN_TIMEOUT=${E2E_P2P_TIMEOUT:-90}
MN_AGENT_PORT=65001
MN_ADMIN_PORT=65002
MN_P2P_PORT=65003
MN_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Namespaces created so far (deleted by mn_cleanup), and the process ids in them.
MN_NETNS=()
MN_REG_PID=""
MN_DIR=""

# mn_config PREFIX NET NODES IMAGE REGISTRY_NS: the topology and names of one multi-node step
# (step g and step h, rollout.sh, each call it before mn_net_up). Namespaces are named
# PREFIX-sw (the switch), PREFIX-nN (the nodes), PREFIX-reg; NET is the /24 (three octets);
# IMAGE the repository:tag pulled; REGISTRY_NS `switch` puts the registry in the switch
# namespace on the bridge's address NET.1, `own` in a namespace of its own on NET.2 with a
# veth (eth0 there, vreg in the switch) of its own, so that its link can be shaped and measured.
# Also sets the agents' RUST_LOG (MN_RUST_LOG) to E2E_P2P_RUST_LOG or info, and forgets the
# previous step's process ids.
mn_config() {
    MN_PREFIX=$1
    MN_NET=$2
    MN_NODES=$3
    MN_SW="$MN_PREFIX-sw"
    case "$5" in
        own) MN_REG_NS="$MN_PREFIX-reg" MN_REG_IP="$MN_NET.2" ;;
        *) MN_REG_NS=$MN_SW MN_REG_IP="$MN_NET.1" ;;
    esac
    MN_REG="$MN_REG_IP:5000"
    MN_REF="$MN_REG/$4"
    MN_RUST_LOG=${E2E_P2P_RUST_LOG:-info}
    MN_LAYER_MIBS=("$MN_MIB")
    MN_REG_PID=""
    declare -gA MN_AGENT_PID=() MN_CTD_PID=() MN_PEER_ID=()
}

mn_ns() { printf '%s-n%s' "$MN_PREFIX" "$1"; }
mn_ip() { printf '%s.1%s' "$MN_NET" "$1"; }
# mn_in NS CMD...: runs CMD on "host" NS.
mn_in() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}
# mn_admin N PATH: GET of the admin endpoint of node N's agent.
mn_admin() { mn_in "$(mn_ns "$1")" curl -fsS --max-time 5 "http://127.0.0.1:$MN_ADMIN_PORT$2"; }
# mn_metric N NAME: the value of an unlabelled metric of node N's agent (empty if absent).
mn_metric() {
    mn_admin "$1" /metrics 2>/dev/null | awk -v n="$2" '$1 == n { v = $2 } END { if (v != "") printf "%.0f\n", v }'
}
mn_ctr() {
    local n=$1
    shift
    mn_in "$(mn_ns "$n")" ctr --address "$MN_DIR/n$n/ctd/containerd.sock" "$@"
}

# mn_cleanup: deletes the namespaces (and so the bridge and every veth). Processes must be
# stopped first (lib_stop_all); anything of ours still inside one is killed by its id.
mn_cleanup() {
    local ns pid i
    for ((i = ${#MN_NETNS[@]} - 1; i >= 0; i--)); do
        ns=${MN_NETNS[i]}
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            lib_log "killing pid $pid left in namespace $ns: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || lib_log "could not delete namespace $ns"
    done
    MN_NETNS=()
}

# mn_keep_logs DEST [DIR]: copies the logs (agents, containerds, ctr, registry) of the step whose
# directory is DIR (default MN_DIR, the step running last) into DEST.
mn_keep_logs() {
    local dir=${2:-$MN_DIR}
    [ -n "$dir" ] && [ -d "$dir/logs" ] || return 0
    mkdir -p "$1"
    cp -r "$dir/logs/." "$1/" 2>/dev/null
    cp "$dir/registry/registry.log" "$1/" 2>/dev/null
    return 0
}

# mn_wait_http NS URL TRIES PID: polls URL from NS every 0.2 s until it answers 2xx; fails
# early if PID has exited.
mn_wait_http() {
    local ns=$1 url=$2 tries=$3 pid=$4 i
    for ((i = 0; i < tries; i++)); do
        mn_in "$ns" curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
        if ! lib_alive "$pid"; then
            lib_log "process $pid exited while waiting for $url"
            return 1
        fi
        sleep 0.2
    done
    lib_log "timed out waiting for $url in $ns"
    return 1
}

# mn_add_host NS IP PEER: a "host": namespace NS with eth0 at IP/24, the other end of its veth
# (PEER) on the bridge in the switch namespace.
mn_add_host() {
    ip netns add "$1" || return 1
    MN_NETNS+=("$1")
    ip -n "$1" link set lo up &&
        ip -n "$1" link add eth0 type veth peer name "$3" netns "$MN_SW" &&
        ip -n "$MN_SW" link set "$3" master br0 &&
        ip -n "$MN_SW" link set "$3" up &&
        ip -n "$1" addr add "$2/24" dev eth0 &&
        ip -n "$1" link set eth0 up
}

# mn_net_up: the switch namespace with the bridge at MN_NET.1/24, one namespace per node, and
# the registry's own one if mn_config asked for it.
mn_net_up() {
    local i
    ip netns add "$MN_SW" || return 1
    MN_NETNS+=("$MN_SW")
    ip -n "$MN_SW" link set lo up &&
        ip -n "$MN_SW" link add br0 type bridge &&
        ip -n "$MN_SW" addr add "$MN_NET.1/24" dev br0 &&
        ip -n "$MN_SW" link set br0 up || return 1
    if [ "$MN_REG_NS" != "$MN_SW" ]; then
        mn_add_host "$MN_REG_NS" "$MN_REG_IP" vreg || return 1
    fi
    for ((i = 1; i <= MN_NODES; i++)); do
        mn_add_host "$(mn_ns "$i")" "$(mn_ip "$i")" "v$i" || return 1
    done
}

# mn_check_reach: every node opens a TCP connection to the registry across the bridge (a check
# each; dies if one cannot).
mn_check_reach() {
    local i
    reach() { mn_in "$(mn_ns "$1")" bash -c "exec 3<>/dev/tcp/$MN_REG_IP/5000" 2>/dev/null; }
    for ((i = 1; i <= MN_NODES; i++)); do
        check "node $i ($(mn_ip "$i"), namespace $(mn_ns "$i")) reaches the registry on $MN_REG across the bridge" reach "$i" ||
            die "multi-node: the test network does not work"
    done
}

# mn_registry_config: MN_DIR/registry/config.yml for docker-registry on MN_REG, storing under
# MN_DIR/registry/data (kept if it exists: a restart keeps its storage and settings).
mn_registry_config() {
    local dir="$MN_DIR/registry"
    mkdir -p "$dir/data"
    [ -f "$dir/config.yml" ] || cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $MN_REG
YML
}

# mn_start_registry: docker-registry in MN_REG_NS on MN_REG, data under MN_DIR/registry.
mn_start_registry() {
    local dir="$MN_DIR/registry"
    mn_registry_config
    lib_start_bg mn-registry "$dir/registry.log" ip netns exec "$MN_REG_NS" docker-registry serve "$dir/config.yml"
    MN_REG_PID=$LIB_LAST_PID
    mn_wait_http "$MN_REG_NS" "http://$MN_REG/v2/" 150 "$MN_REG_PID" || { tail -n 20 "$dir/registry.log" >&2; return 1; }
}

# mn_start_agent N [EXTRA ARGS...]: node N's agent, with the run's swarm key; the others
# bootstrap to node 1.
mn_start_agent() {
    mn_launch_agent "$@" && mn_wait_agent "$1"
}

# mn_launch_agent N [EXTRA ARGS...]: starts node N's agent as mn_start_agent does, without
# waiting for it (a DaemonSet starts every agent at once: cluster.sh launches them all, then
# waits for each with mn_wait_agent).
mn_launch_agent() {
    local n=$1 ns data log extra=()
    shift
    ns=$(mn_ns "$n")
    data="$MN_DIR/n$n/agent"
    log="$MN_DIR/logs/agent-n$n.log"
    mkdir -p "$data"
    # One swarm key for the whole run, made at the first start (an existing file is kept).
    "$POLLEN_BIN" swarm-key --out "$MN_DIR/swarm.key" 2>/dev/null || return 1
    extra+=(--swarm-key "$MN_DIR/swarm.key")
    [ "$n" -eq 1 ] || extra+=(--bootstrap "/ip4/$(mn_ip 1)/tcp/$MN_P2P_PORT")
    RUST_LOG=$MN_RUST_LOG lib_start_bg "agent-n$n" "$log" ip netns exec "$ns" "$POLLEN_BIN" agent \
        --listen "127.0.0.1:$MN_AGENT_PORT" \
        --metrics-listen "127.0.0.1:$MN_ADMIN_PORT" \
        --control-socket "$data/control.sock" \
        --data-dir "$data" \
        --upstream "http://$MN_REG" \
        --registry "$MN_REG=http://$MN_REG" \
        --cache-size 4GiB \
        --log-format text \
        --p2p true \
        --p2p-listen "/ip4/$(mn_ip "$n")/tcp/$MN_P2P_PORT" \
        --mdns false \
        "${extra[@]}" "$@"
    MN_AGENT_PID[$n]=$LIB_LAST_PID
}

# mn_wait_agent N: node N's agent answers /readyz (its log's tail on stderr if it never does).
mn_wait_agent() {
    local n=$1
    if ! mn_wait_http "$(mn_ns "$n")" "http://127.0.0.1:$MN_ADMIN_PORT/readyz" 300 "${MN_AGENT_PID[$n]}"; then
        tail -n 30 "$MN_DIR/logs/agent-n$n.log" >&2
        return 1
    fi
}

# mn_start_containerd N: a private containerd on node N whose hosts.toml names the node-local
# agent as the mirror of MN_REG (the registry stays the fallback, as on a real node).
mn_start_containerd() {
    local n=$1 d="$MN_DIR/n$1/ctd" i
    mkdir -p "$d/certs.d/$MN_REG"
    cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
TOML
    cat >"$d/certs.d/$MN_REG/hosts.toml" <<TOML
server = "http://$MN_REG"
[host."http://127.0.0.1:$MN_AGENT_PORT"]
  capabilities = ["pull", "resolve"]
TOML
    lib_start_bg "containerd-n$n" "$MN_DIR/logs/containerd-n$n.log" ip netns exec "$(mn_ns "$n")" containerd --config "$d/config.toml"
    MN_CTD_PID[$n]=$LIB_LAST_PID
    for ((i = 0; i < 150; i++)); do
        mn_ctr "$n" version >/dev/null 2>&1 && return 0
        lib_alive "${MN_CTD_PID[$n]}" || break
        sleep 0.2
    done
    tail -n 20 "$MN_DIR/logs/containerd-n$n.log" >&2
    return 1
}

# mn_build_image: image MN_REF (a small file, then one layer of random data per entry of
# MN_LAYER_MIBS, in MiB), pushed to the registry; sets MN_MANIFEST, MN_CONFIG, MN_LAYERS, MN_BIG,
# MN_BIG_SIZE, MN_BLOB_SIZE and MN_MANIFEST_FILE.
mn_build_image() {
    local oci="$MN_DIR/oci" src="$MN_DIR/src" d s i
    mkdir -p "$src"
    echo "hello from the pollen multi-node e2e ($$)" >"$src/hello.txt"
    {
        umoci init --layout "$oci" &&
            umoci new --image "$oci:img" &&
            umoci config --image "$oci:img" --config.cmd /bin/true --author pollen-e2e-multinode &&
            umoci insert --image "$oci:img" "$src/hello.txt" /etc/pollen/hello.txt || return 1
        for i in "${!MN_LAYER_MIBS[@]}"; do
            head -c "${MN_LAYER_MIBS[i]}M" /dev/urandom >"$src/big.bin" &&
                umoci insert --image "$oci:img" "$src/big.bin" "/opt/pollen/layer$i.bin" || return 1
        done
    } >"$MN_DIR/logs/umoci.log" 2>&1 || { cat "$MN_DIR/logs/umoci.log" >&2; return 1; }
    rm -rf "$src"
    mn_in "$MN_SW" skopeo copy -q --dest-tls-verify=false "oci:$oci:img" "docker://$MN_REF" \
        >"$MN_DIR/logs/push.log" 2>&1 || { cat "$MN_DIR/logs/push.log" >&2; return 1; }
    MN_MANIFEST_FILE="$MN_DIR/image.manifest.json"
    mn_in "$MN_SW" skopeo inspect --raw --tls-verify=false "docker://$MN_REF" >"$MN_MANIFEST_FILE" || return 1
    MN_MANIFEST="sha256:$(lib_sha256_file "$MN_MANIFEST_FILE")"
    MN_CONFIG=$(jq -r .config.digest "$MN_MANIFEST_FILE")
    mapfile -t MN_LAYERS < <(jq -r '.layers[].digest' "$MN_MANIFEST_FILE")
    MN_BIG=$(jq -r '.layers | max_by(.size) | .digest' "$MN_MANIFEST_FILE")
    declare -gA MN_BLOB_SIZE=()
    while read -r d s; do MN_BLOB_SIZE[$d]=$s; done < <(jq -r '(.config, .layers[]) | "\(.digest) \(.size)"' "$MN_MANIFEST_FILE")
    MN_BIG_SIZE=${MN_BLOB_SIZE[$MN_BIG]}
}

# mn_upstream_bytes IP KIND [DIGEST]: bytes the registry sent to IP in 2xx GET responses for
# KIND (blobs or manifests; DIGEST narrows blobs to one), and the request count, from its
# access log ("IP - - [date] "GET path HTTP/1.1" status bytes ...").
mn_upstream_bytes() {
    awk -F'"' -v ip="$1" -v k="$2" -v d="${3:-}" '
        index($1, ip " ") == 1 && $2 ~ ("^GET /v2/.*/" k "/" d) { split($3, a, " "); if (a[1] ~ /^2/) { n++; b += a[2] } }
        END { printf "%d %d\n", b, n }' "$MN_DIR/registry/registry.log"
}

# mn_pull N REF LOGFILE: ctr images pull of REF on node N through its agent, bounded by
# MN_TIMEOUT; its exit status.
mn_pull() {
    # timeout runs inside the namespace (ip netns exec execs it), so it reaches ctr itself.
    mn_in "$(mn_ns "$1")" timeout "$MN_TIMEOUT" ctr --address "$MN_DIR/n$1/ctd/containerd.sock" \
        images pull --plain-http --hosts-dir "$MN_DIR/n$1/ctd/certs.d" "$2" >"$3" 2>&1
}

# mn_pull_and_verify N LABEL REF: ctr pull of REF on node N through its agent, then the checks
# of step a (mn_verify).
mn_pull_and_verify() {
    local n=$1 label=$2 ref=$3 logf="$MN_DIR/logs/ctr-pull-n$1.log" t0 rc=0
    t0=$EPOCHREALTIME
    mn_pull "$n" "$ref" "$logf" || rc=$?
    MN_PULL_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if ! check "$label: ctr images pull $ref on node $n through its agent (${MN_PULL_SECS} s)" [ "$rc" -eq 0 ]; then
        tail -n 20 "$logf" | sed 's/^/    /'
        return 1
    fi
    mn_verify "$n" "$label" "$ref"
}

# mn_verify N LABEL REF: node N's containerd has image REF with the manifest digest MN_MANIFEST,
# and its content store has the manifest, config and every layer, each hashing to its digest.
mn_verify() {
    local n=$1 label=$2 ref=$3 got d sum bad=0
    got=$(mn_ctr "$n" images ls | awk -v r="$ref" '$1 == r { print $3 }')
    check "$label: node $n's image has manifest digest $MN_MANIFEST" [ "$got" = "$MN_MANIFEST" ] || echo "    got: '$got'"
    mn_ctr "$n" content ls >"$MN_DIR/logs/ctr-content-n$n.txt"
    for d in "$MN_MANIFEST" "$MN_CONFIG" "${MN_LAYERS[@]}"; do
        if ! awk '{ print $1 }' "$MN_DIR/logs/ctr-content-n$n.txt" | grep -qx "$d"; then
            echo "    $d not in node $n's content store"
            bad=1
            continue
        fi
        sum=$(mn_ctr "$n" content get "$d" | sha256sum | cut -d' ' -f1)
        [ "sha256:$sum" = "$d" ] || { echo "    $d hashes to sha256:$sum in node $n's content store"; bad=1; }
    done
    check "$label: node $n's content store has the manifest, config and ${#MN_LAYERS[@]} layers, each hashing to its digest" \
        [ "$bad" -eq 0 ] || true
}

# mn_peer_of N M: node N's agent is connected to node M's (by peer id).
mn_peer_of() { mn_admin "$1" /status | jq -e --arg p "${MN_PEER_ID[$2]}" '.peers | index($p) != null' >/dev/null; }
# mn_provides N COUNT: node N's agent announces at least COUNT blobs.
mn_provides() { mn_admin "$1" /status | jq -e --argjson c "$2" '.provided_blobs >= $c' >/dev/null; }
mn_no_panic() { ! grep -qi panicked "$1"; }
# mn_ge A B: integer A >= B (A may be empty).
mn_ge() { [ -n "$1" ] && [ "$1" -ge "$2" ]; }
mn_le() { [ -n "$1" ] && [ "$1" -le "$2" ]; }

# mn_blob_log N DIGEST: what node N's agent logged when it finished the blob (bytes, from_peers).
mn_blob_log() {
    sed 's/\x1b\[[0-9;]*m//g' "$MN_DIR/logs/agent-n$1.log" |
        grep "blob fetched and verified" | grep -F "$2" | grep -oE '(bytes|from_peers|secs)=[0-9.]+' | paste -sd' ' || true
}

# mn_node_report N: the agent's counters, for the log.
mn_node_report() {
    local n=$1 up pr ps
    up=$(mn_metric "$n" pollen_upstream_bytes_total)
    pr=$(mn_metric "$n" pollen_peer_bytes_received_total)
    ps=$(mn_metric "$n" pollen_peer_bytes_sent_total)
    printf '    node %s (%s): upstream_bytes %s, peer_bytes_received %s, peer_bytes_sent %s\n' \
        "$n" "$(mn_ip "$n")" "${up:-?}" "${pr:-?}" "${ps:-?}"
}

# mn_no_blob_from_registry N: the registry's log has no 2xx blob GET from node N's address.
mn_no_blob_from_registry() {
    local b c
    read -r b c < <(mn_upstream_bytes "$(mn_ip "$1")" blobs)
    [ "$c" -eq 0 ] && return 0
    echo "    the registry sent $b blob bytes in $c GET(s) to node $1:"
    grep -F "$(mn_ip "$1") " "$MN_DIR/registry/registry.log" | grep '/blobs/' | tail -n 5 | sed 's/^/      /'
    return 1
}

# mn_agent_blob_bytes_zero N: node N's agent counted no blob bytes from the upstream: its
# pollen_upstream_bytes_total (blob bodies, and manifest bodies) is at most the manifest bytes
# the registry sent it.
mn_agent_blob_bytes_zero() {
    local n=$1 up mb mc
    up=$(mn_metric "$n" pollen_upstream_bytes_total)
    read -r mb mc < <(mn_upstream_bytes "$(mn_ip "$n")" manifests)
    if mn_le "$up" "$mb"; then return 0; fi
    echo "    pollen_upstream_bytes_total ${up:-missing} > $mb manifest bytes in $mc GET(s): blob bytes came from the upstream"
    return 1
}

multinode_main() {
    local n i b c up pr ps sent_total
    # Namespace names carry our PID, so two runs (or other tests) never share one.
    mn_config "pollen-e2e-$$" "${E2E_P2P_NET:-10.77.0}" 3 test/p2p:v1 switch
    lib_step "g. multi-node: $MN_NODES agents in network namespaces share pieces (random layer: $MN_MIB MiB)"
    command -v ip >/dev/null 2>&1 || die "multi-node: ip (iproute2) is missing"
    if ! "$POLLEN_BIN" agent --help 2>/dev/null | grep -q -- '--p2p-listen'; then
        die "multi-node: $POLLEN_BIN has no --p2p-listen flag (the agent was built without the swarm flags)"
    fi
    MN_DIR="$T/mn"
    mkdir -p "$MN_DIR/logs"

    mn_net_up || die "multi-node: setting up the namespaces failed"
    mn_start_registry || die "multi-node: docker-registry on $MN_REG did not start"
    mn_check_reach

    mn_build_image || die "multi-node: building or pushing the image failed"
    pass "umoci built test/p2p:v1 (layers: ${#MN_LAYERS[@]}, largest $MN_BIG of $MN_BIG_SIZE bytes), pushed to $MN_REG"

    for ((i = 1; i <= MN_NODES; i++)); do
        mn_start_agent "$i" || die "multi-node: node $i's agent did not become ready"
        MN_PEER_ID[$i]=$(mn_admin "$i" /status | jq -r '.peer_id // empty')
        check "node $i: agent ready, peer id ${MN_PEER_ID[$i]:-none}" [ -n "${MN_PEER_ID[$i]}" ] ||
            die "multi-node: node $i's agent has no peer id (is peer-to-peer off?)"
        mn_start_containerd "$i" || die "multi-node: node $i's containerd did not start"
    done
    pass "containerd runs on each of the $MN_NODES nodes"
    for ((i = 2; i <= MN_NODES; i++)); do
        check "node $i's agent is connected to node 1's (bootstrap)" lib_wait_cmd 100 mn_peer_of "$i" 1 || true
    done

    # ---- node 1: from the registry
    mn_pull_and_verify 1 "node 1" "$MN_REF" || die "multi-node: the first pull failed"
    read -r b c < <(mn_upstream_bytes "$(mn_ip 1)" blobs "$MN_BIG")
    check "node 1's agent fetched the big layer from the registry once ($b bytes in $c GET(s))" \
        [ "$b" = "$MN_BIG_SIZE" ] || true
    mn_node_report 1
    local nblobs=$((1 + ${#MN_LAYERS[@]}))
    check "node 1's agent announces the image's $nblobs blobs (status provided_blobs)" \
        lib_wait_cmd 100 mn_provides 1 "$nblobs" || true

    # ---- node 2: from node 1's pieces
    mn_pull_and_verify 2 "node 2" "$MN_REF" || true
    echo "  node 2's agent on the big layer: $(mn_blob_log 2 "$MN_BIG")"
    check "node 2: the registry sent no blob to node 2's address (access log)" mn_no_blob_from_registry 2 || true
    check "node 2: pollen_upstream_bytes_total counts no blob bytes (at most the manifest bytes)" \
        mn_agent_blob_bytes_zero 2 || true
    pr=$(mn_metric 2 pollen_peer_bytes_received_total)
    check "node 2: pollen_peer_bytes_received_total ${pr:-missing} >= big layer $MN_BIG_SIZE" mn_ge "$pr" "$MN_BIG_SIZE" || true
    ps=$(mn_metric 1 pollen_peer_bytes_sent_total)
    check "node 1: pollen_peer_bytes_sent_total ${ps:-missing} > 0" mn_ge "$ps" 1 || true
    mn_node_report 1
    mn_node_report 2

    # ---- node 3: registry down, peers only
    if [ "$MN_NODES" -ge 3 ]; then
        check "node 2's agent announces the image's $nblobs blobs" lib_wait_cmd 100 mn_provides 2 "$nblobs" || true
        lib_stop_pid "$MN_REG_PID"
        down() { ! mn_in "$MN_SW" curl -fsS -o /dev/null --max-time 2 "http://$MN_REG/v2/" 2>/dev/null; }
        check "the registry is stopped" down || true
        # By digest: a tag can only be resolved by the registry, a manifest by digest comes from
        # peers like a blob. Node 3 never pulled from the registry; it may have resolved the
        # tag for node 1's pull, as the tag's tracker (every agent is one by default), so its
        # upstream counter may hold that manifest, never a blob.
        mn_pull_and_verify 3 "node 3, registry stopped" "$MN_REG/test/p2p@$MN_MANIFEST" || true
        echo "  node 3's agent on the big layer: $(mn_blob_log 3 "$MN_BIG")"
        pr=$(mn_metric 3 pollen_peer_bytes_received_total)
        check "node 3: pollen_peer_bytes_received_total ${pr:-missing} >= big layer $MN_BIG_SIZE" mn_ge "$pr" "$MN_BIG_SIZE" || true
        check "node 3: the registry sent no blob to node 3's address (access log)" mn_no_blob_from_registry 3 || true
        check "node 3: pollen_upstream_bytes_total counts no blob bytes (at most the manifest bytes the registry sent it)" \
            mn_agent_blob_bytes_zero 3 || true
        sent_total=0
        for ((i = 1; i <= MN_NODES; i++)); do
            mn_node_report "$i"
            ps=$(mn_metric "$i" pollen_peer_bytes_sent_total)
            sent_total=$((sent_total + ${ps:-0}))
        done
        check "all agents together sent ${sent_total} piece bytes >= 2 x big layer (node 2's and node 3's copies)" \
            mn_ge "$sent_total" "$((2 * MN_BIG_SIZE))" || true
    fi

    for ((i = 1; i <= MN_NODES; i++)); do
        check "node $i: agent still running" lib_alive "${MN_AGENT_PID[$i]}" || true
        check "node $i: agent log has no panic" mn_no_panic "$MN_DIR/logs/agent-n$i.log" || true
    done

    # Stop what runs in the namespaces, then remove them (the EXIT trap does both on failure).
    for ((i = MN_NODES; i >= 1; i--)); do
        lib_stop_pid "${MN_CTD_PID[$i]}" 150
        lib_stop_pid "${MN_AGENT_PID[$i]}"
    done
    mn_cleanup
    no_ns() { ! ip netns list | grep -q "^$MN_PREFIX-"; }
    check "multi-node: every namespace is gone" no_ns || true
}

# ---------------------------------------------------------------- on its own
# mn_standalone [TOOL=PACKAGE...]: what a step needs to run as a script of its own (the caller
# then runs multinode_main, or rollout.sh's rollout_main): root check, the tools (with the extra
# ones given), the agent's build, a temp dir T, the pass/fail counters, and an EXIT trap that
# stops every process (by PID), deletes the namespaces and keeps the logs on failure.
mn_standalone() {
    set -Eeuo pipefail
    REPO=$(cd "$MN_HERE/../.." && pwd)
    PASSED=0
    FAILED=0
    T=""
    die() {
        echo "e2e: $*" >&2
        exit 1
    }
    trap 'printf "e2e: unexpected error (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR
    trap mn_main_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    lib_step "preflight"
    lib_is_root || die "must run as root (network namespaces, containerd)"
    lib_ensure_tools docker-registry=docker-registry skopeo=skopeo containerd=containerd ctr=containerd \
        umoci=umoci curl=curl jq=jq ip=iproute2 "$@" || die "required tools are missing"
    if [ -z "${POLLEN_BIN:-}" ]; then
        POLLEN_BIN="$(lib_target_dir "$REPO")/debug/pollen"
        if [ "${E2E_NO_BUILD:-0}" != "1" ] && command -v cargo >/dev/null 2>&1; then
            echo "building the agent: cargo build -j2 -p pollen"
            (cd "$REPO" && cargo build -j2 -p pollen) || die "cargo build failed"
        fi
    fi
    [ -x "$POLLEN_BIN" ] || die "agent binary not found: $POLLEN_BIN"
    echo "agent binary: $POLLEN_BIN"
    T=$(mktemp -d /tmp/pollen-e2e.XXXXXX)
    echo "temp dir: $T"
}

# mn_main_cleanup: mn_standalone's EXIT trap.
mn_main_cleanup() {
    local rc=$? f keep
    set +eE
    trap - ERR
    lib_step "cleanup"
    lib_stop_all
    mn_cleanup
    if [ -n "$T" ] && [ -d "$T" ]; then
        lib_umount_under "$T"
        if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
            for f in "$MN_DIR"/logs/agent-n*.log; do
                [ -f "$f" ] || continue
                echo "---- last 25 lines of $f ----"
                tail -n 25 "$f" | sed 's/\x1b\[[0-9;]*m//g'
            done
            keep=$(mktemp -d /tmp/pollen-e2e-logs.XXXXXX)
            mn_keep_logs "$keep"
            echo "logs kept in $keep"
        fi
        if [ "${E2E_KEEP:-0}" = "1" ]; then echo "E2E_KEEP=1: leaving $T"; else rm -rf "$T"; fi
    fi
    [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ] && FAILED=1
    echo
    echo "e2e: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] || exit 1
    exit 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # shellcheck source=tests/e2e/lib.sh
    source "$MN_HERE/lib.sh"
    mn_standalone
    multinode_main
fi
