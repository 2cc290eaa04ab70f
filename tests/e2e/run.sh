#!/usr/bin/env bash
# End-to-end test of the Pollen agent against real clients and a real registry.
#
#   sudo tests/e2e/run.sh
#
# Starts (all on 127.0.0.1, all private instances in a temp dir):
#   docker-registry (the upstream) <- pollen agent (the mirror) <- containerd/ctr,
#   dockerd (registry-mirrors), skopeo and Podman (registries.conf mirror).
# Builds test images with umoci (one layer of E2E_BIG_MIB MiB of random data),
# pushes them, pulls them through the agent with each client and checks every
# digest; then stops the registry and pulls again from the agent's cache alone;
# restarts the registry and runs a second agent whose data dir is a small tmpfs, to
# check what a disk-full error does to a pull of the big layer; finally (step g,
# multinode.sh) runs three agents, each in a network namespace of its own with its
# own containerd, and checks that the second and third pulls come from peers; and (step h,
# rollout.sh) eight such nodes pull one image at once from a registry behind a
# rate-limited link, whose egress must stay within 1.02 x the image's blob bytes. Steps i-m
# (image.sh, sites.sh, lazy.sh, killloop.sh, netfaults.sh) follow; tests/e2e/README.md lists them.
#
# Environment:
#   POLLEN_BIN    agent binary (default: target/debug/pollen, built with cargo)
#   E2E_BIG_MIB   size of the big random layer in MiB (default 256)
#   E2E_FULL_MIB  size of the tmpfs for the disk-full step in MiB (default 64; must be
#                 smaller than the big layer and larger than the config blob)
#   E2E_KEEP=1    keep the temp dir (and everything in it) after the run
#   E2E_NO_BUILD=1  do not run `cargo build` even if POLLEN_BIN is unset
#   E2E_SKIP_MULTINODE=1  skip step g; its own settings are described in multinode.sh
#   E2E_SKIP_ROLLOUT=1    skip step h; its own settings are described in rollout.sh
#   E2E_SKIP_IMAGE=1      skip step i (the release image run by containerd; image.sh)
#   E2E_SKIP_SITES=1      skip step j (two sites behind thin links and a parent; sites.sh)
#   E2E_SKIP_LAZY=1       skip step k (an eStargz layer read by range through two agents; lazy.sh)
#   E2E_SKIP_KILL=1       skip step l (SIGKILL at random points of a pull; killloop.sh)
#   E2E_SKIP_NETFAULT=1   skip step m (a link cut mid-pull, a partition; netfaults.sh)
#
# Prints `e2e: N passed, M failed` as its last line; exits non-zero on any failure.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$HERE/lib.sh"
# shellcheck source=tests/e2e/multinode.sh
source "$HERE/multinode.sh"
# shellcheck source=tests/e2e/rollout.sh
source "$HERE/rollout.sh"
# shellcheck source=tests/e2e/image.sh
source "$HERE/image.sh"
# shellcheck source=tests/e2e/sites.sh
source "$HERE/sites.sh"
# shellcheck source=tests/e2e/lazy.sh
source "$HERE/lazy.sh"
# shellcheck source=tests/e2e/killloop.sh
source "$HERE/killloop.sh"
# shellcheck source=tests/e2e/netfaults.sh
source "$HERE/netfaults.sh"

BIG_MIB=${E2E_BIG_MIB:-256}
FULL_MIB=${E2E_FULL_MIB:-64}
CLIENT_TIMEOUT=${E2E_CLIENT_TIMEOUT:-300}

PASSED=0
FAILED=0
T=""
AGENT_LOG=""
REGISTRY_PID=""
AGENT_PID=""


on_error() {
    printf 'e2e: unexpected error (exit %s) at line %s: %s\n' "$1" "$2" "$3" >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

cleanup() {
    local rc=$?
    set +eE
    trap - ERR
    lib_step "cleanup"
    image_cleanup
    lib_stop_all
    mn_cleanup
    if [ -n "$T" ] && [ -d "$T" ]; then
        lib_umount_under "$T"
        if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
            if [ -n "$AGENT_LOG" ] && [ -f "$AGENT_LOG" ]; then
                echo "---- last 60 lines of the agent log ($AGENT_LOG) ----"
                tail -n 60 "$AGENT_LOG"
                echo "---- end of agent log ----"
            fi
            local keep
            keep=$(mktemp -d /tmp/pollen-e2e-logs.XXXXXX)
            find "$T" -maxdepth 2 -name '*.log' -exec cp {} "$keep/" \; 2>/dev/null
            mn_keep_logs "$keep/multinode" "$T/mn"
            mn_keep_logs "$keep/rollout" "$T/ro"
            mn_keep_logs "$keep/sites" "$T/si"
            mn_keep_logs "$keep/netfaults" "$T/nf"
            echo "logs kept in $keep"
        fi
        if [ "${E2E_KEEP:-0}" = "1" ]; then
            echo "E2E_KEEP=1: leaving $T"
        else
            rm -rf "$T"
        fi
    fi
    if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then
        FAILED=1
    fi
    echo
    echo "e2e: $PASSED passed, $FAILED failed"
    if [ "$FAILED" -ne 0 ]; then exit 1; fi
    exit 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "e2e: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- preflight
lib_step "preflight"
lib_is_root || die "must run as root (containerd and dockerd need it)"
lib_ensure_tools docker-registry=docker-registry skopeo=skopeo containerd=containerd ctr=containerd \
    umoci=umoci dockerd=docker.io podman=podman curl=curl jq=jq ss=iproute2 tc=iproute2 nft=nftables faketime=faketime openssl=openssl ctr-remote=stargz-snapshotter ||
    die "required tools are missing"
# The docker.io package's CLI matches its dockerd; prefer it over any other docker on PATH.
if [ -x /usr/bin/docker ]; then DOCKER_CLI=/usr/bin/docker; else DOCKER_CLI=$(command -v docker) || die "no docker CLI"; fi

if [ -z "${POLLEN_BIN:-}" ]; then
    POLLEN_BIN="$(lib_target_dir "$REPO")/debug/pollen"
    if [ "${E2E_NO_BUILD:-0}" = "1" ]; then
        :
    elif command -v cargo >/dev/null 2>&1; then
        echo "building the agent: cargo build -j2 -p pollen"
        (cd "$REPO" && cargo build -j2 -p pollen) || die "cargo build failed"
    else
        # e.g. under sudo, whose PATH has no ~/.cargo/bin: use what was built before.
        echo "cargo not on PATH: using the existing $POLLEN_BIN (set POLLEN_BIN to choose another)"
    fi
fi
[ -x "$POLLEN_BIN" ] || die "agent binary not found: $POLLEN_BIN"
echo "agent binary: $POLLEN_BIN"

T=$(mktemp -d /tmp/pollen-e2e.XXXXXX)
echo "temp dir: $T"
mkdir -p "$T/logs"

lib_pick_port 5000 REG_PORT
lib_pick_port 5300 AGENT_PORT
lib_pick_port 5400 METRICS_PORT
REG="127.0.0.1:$REG_PORT"
AGENT="127.0.0.1:$AGENT_PORT"
METRICS="127.0.0.1:$METRICS_PORT"
echo "registry $REG, agent $AGENT, agent metrics $METRICS"

# ---------------------------------------------------------------- registry
lib_step "start docker-registry on $REG"
lib_write_registry_config "$T/registry" "$REG_PORT"
lib_start_registry "$T/registry" "$REG_PORT" || die "docker-registry did not start"
REG_LOG="$T/registry/registry.log"
pass "docker-registry answers GET /v2/"

# ---------------------------------------------------------------- images
lib_step "build test images with umoci (big layer: $BIG_MIB MiB of random data)"
SRC="$T/src"
mkdir -p "$SRC"
echo "hello from pollen e2e" >"$SRC/hello.txt"
head -c 4M /dev/urandom >"$SRC/mid.bin"
head -c "${BIG_MIB}M" /dev/urandom >"$SRC/big.bin"
head -c 1M /dev/urandom >"$SRC/small.bin"
OCI="$T/oci"
umoci init --layout "$OCI"
umoci new --image "$OCI:big"
umoci config --image "$OCI:big" --config.cmd /bin/true --author pollen-e2e
umoci insert --image "$OCI:big" "$SRC/hello.txt" /etc/pollen/hello.txt
umoci insert --image "$OCI:big" "$SRC/mid.bin" /opt/pollen/mid.bin
umoci insert --image "$OCI:big" "$SRC/big.bin" /opt/pollen/big.bin
umoci new --image "$OCI:small"
umoci config --image "$OCI:small" --config.cmd /bin/true --author pollen-e2e
umoci insert --image "$OCI:small" "$SRC/hello.txt" /etc/pollen/hello.txt
umoci insert --image "$OCI:small" "$SRC/small.bin" /opt/pollen/small.bin
rm -f "$SRC"/*.bin
pass "umoci built images big (3 layers) and small (2 layers, one shared with big)"

lib_step "push images to the registry with skopeo"
for img in big small; do
    for repo in test/$img library/$img; do
        skopeo copy -q --dest-tls-verify=false "oci:$OCI:$img" "docker://$REG/$repo:v1" >"$T/logs/push.log" 2>&1 ||
            { cat "$T/logs/push.log"; die "skopeo push of $repo failed"; }
        echo "pushed $REG/$repo:v1"
    done
done

# Expected digests, read back from the registry directly (not through the agent).
declare -A MANIFEST_DIGEST CONFIG_DIGEST LAYERS BLOB_SIZE
for img in big small; do
    skopeo inspect --raw --tls-verify=false "docker://$REG/test/$img:v1" >"$T/$img.manifest.json"
    MANIFEST_DIGEST[$img]="sha256:$(lib_sha256_file "$T/$img.manifest.json")"
    CONFIG_DIGEST[$img]=$(jq -r .config.digest "$T/$img.manifest.json")
    LAYERS[$img]=$(jq -r '.layers[].digest' "$T/$img.manifest.json" | tr '\n' ' ')
    while read -r d s; do BLOB_SIZE[$d]=$s; done < <(jq -r '(.config, .layers[]) | "\(.digest) \(.size)"' "$T/$img.manifest.json")
    lib_dig=$(skopeo inspect --tls-verify=false "docker://$REG/library/$img:v1" | jq -r .Digest)
    check "registry: test/$img:v1 and library/$img:v1 have manifest ${MANIFEST_DIGEST[$img]}" \
        [ "$lib_dig" = "${MANIFEST_DIGEST[$img]}" ] || die "pushed images differ"
    echo "  $img: manifest ${MANIFEST_DIGEST[$img]} config ${CONFIG_DIGEST[$img]}"
    echo "  $img: layers ${LAYERS[$img]}"
done
# Every distinct blob (configs and layers) of both images.
mapfile -t ALL_BLOBS < <(printf '%s\n' "${!BLOB_SIZE[@]}" | sort)
# Where the registry log stood before any client pulled: requests after this
# line were made by the agent (or by clients bypassing it).
REG_LOG_MARK=$(wc -l <"$REG_LOG")

# ---------------------------------------------------------------- agent
lib_step "start the agent on $AGENT"
AGENT_DATA="$T/agent-data"
AGENT_LOG="$T/logs/agent.log"
lib_start_agent "$POLLEN_BIN" "$AGENT_DATA" "$AGENT_PORT" "$METRICS_PORT" "$AGENT_LOG" \
    "http://$REG" "$REG=http://$REG" ||
    die "the agent did not become ready"
pass "agent /readyz answers 200"
check "agent /healthz answers 200" curl -fsS -o /dev/null "http://$METRICS/healthz" || true
check "agent GET /v2/ answers 200" curl -fsS -o /dev/null "http://$AGENT/v2/" || true

# ---------------------------------------------------------------- helpers
# logged LOGFILE CMD [ARG...]: runs CMD (bounded by CLIENT_TIMEOUT) with its output in LOGFILE.
logged() {
    local logf=$1
    shift
    timeout "$CLIENT_TIMEOUT" "$@" >"$logf" 2>&1
}
not() { ! "$@"; }
# free_dirs DIR...: removes what a finished step verified, so the run's peak disk use stays
# near two copies of each image (CI machines have small disks; the whole run once hit ENOSPC).
free_dirs() {
    local d
    for d in "$@"; do
        lib_umount_under "$d"
        rm -rf "$d"
    done
    echo "  freed $*; $(df -m --output=avail "$T" | tail -n 1 | tr -d ' ') MiB free under $T"
}
ctr_() { ctr --address "$CTD_SOCK" "$@"; }

# start_containerd NAME: private containerd with its own root/state/socket; sets CTD_DIR, CTD_SOCK.
start_containerd() {
    CTD_DIR="$T/$1"
    CTD_SOCK="$CTD_DIR/containerd.sock"
    mkdir -p "$CTD_DIR/certs.d/$REG"
    cat >"$CTD_DIR/config.toml" <<TOML
version = 2
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD_SOCK"
TOML
    # The hosts.toml is Pollen's own (`pollen containerd-config`): what the real containerd
    # reads here is what users get.
    "$POLLEN_BIN" containerd-config --registry "http://$REG" --config-path "$CTD_DIR/certs.d" \
        --agent "http://$AGENT" --containerd-config "$CTD_DIR/config.toml" \
        >"$T/logs/containerd-config-$1.log" 2>&1 ||
        die "pollen containerd-config failed: $(cat "$T/logs/containerd-config-$1.log")"
    lib_start_bg "containerd-$1" "$T/logs/containerd-$1.log" containerd --config "$CTD_DIR/config.toml"
    CTD_PID=$LIB_LAST_PID
    if ! lib_wait_cmd 150 ctr_ version; then
        tail -n 30 "$T/logs/containerd-$1.log" >&2
        die "containerd $1 did not start"
    fi
}

# ctr_pull_and_verify IMG LABEL: pulls $REG/test/IMG:v1 with ctr through the
# agent (hosts.toml mirror) and checks the image and content store.
ctr_pull_and_verify() {
    local img=$1 label=$2 ref="$REG/test/$1:v1" logf="$T/logs/ctr-pull-$1-$2.log" got d
    if ! check "$label: ctr images pull $ref" \
        logged "$logf" ctr --address "$CTD_SOCK" images pull --plain-http --hosts-dir "$CTD_DIR/certs.d" "$ref"; then
        tail -n 20 "$logf"
        return 0
    fi
    got=$(ctr_ images ls | awk -v r="$ref" '$1 == r { print $3 }')
    check "$label: containerd image $ref has manifest digest ${MANIFEST_DIGEST[$img]}" \
        [ "$got" = "${MANIFEST_DIGEST[$img]}" ] || echo "    got: '$got'"
    ctr_ content ls >"$T/logs/ctr-content-$img-$label.txt"
    # shellcheck disable=SC2086 # LAYERS holds space-separated digests
    for d in "${MANIFEST_DIGEST[$img]}" "${CONFIG_DIGEST[$img]}" ${LAYERS[$img]}; do
        check "$label: content store has $d with matching sha256" \
            content_ok "$T/logs/ctr-content-$img-$label.txt" "$d" || true
    done
}

# content_ok LISTING DIGEST: DIGEST is in LISTING (`ctr content ls` output) and
# the bytes containerd stored hash to it.
content_ok() {
    local list=$1 d=$2 sum
    awk '{ print $1 }' "$list" | grep -qx "$d" || { echo "    $d not in content store"; return 1; }
    sum=$(ctr_ content get "$d" | sha256sum | cut -d' ' -f1)
    [ "sha256:$sum" = "$d" ] || { echo "    content $d hashes to sha256:$sum"; return 1; }
}

# agent_blob_ok DIGEST: the agent's data dir holds the blob and its bytes hash to its name.
agent_blob_ok() {
    local d=$1 f="$AGENT_DATA/blobs/sha256/${1#sha256:}" sum
    # A client has its last byte once the digest verifies; the agent's fsync and rename into
    # blobs/ follow a moment later: give them up to 10 s.
    lib_wait_cmd 50 test -f "$f" || { echo "    missing $f"; return 1; }
    sum=$(lib_sha256_file "$f")
    [ "sha256:$sum" = "$d" ] || { echo "    $f hashes to sha256:$sum"; return 1; }
}

# upstream_blob_bytes DIGEST: bytes the registry sent in GET responses for the
# blob since REG_LOG_MARK (combined access-log lines), and the request count.
upstream_blob_bytes() {
    tail -n "+$((REG_LOG_MARK + 1))" "$REG_LOG" | awk -F'"' -v d="$1" '
        $2 ~ ("^GET /v2/.*/blobs/" d " ") { split($3, a, " "); if (a[1] ~ /^2/) { n++; b += a[2] } }
        END { printf "%d %d\n", b, n }'
}

# ---------------------------------------------------------------- a. containerd
lib_step "a. containerd + ctr pull through the agent (hosts.toml mirror)"
start_containerd ctd1
for img in big small; do ctr_pull_and_verify "$img" ctd1; done

lib_step "a2. pollen containerd-config --check against containerd's own default config"
containerd config default >"$T/containerd-default.toml" 2>/dev/null
ctd_check() {
    "$POLLEN_BIN" containerd-config --check --registry "http://$REG" --config-path "$CTD_DIR/certs.d" \
        --agent "http://$AGENT" --containerd-config "$1" >"$T/logs/containerd-check.log" 2>&1
}
check "--check fails on \`containerd config default\` (config_path unset: the silent failure)" \
    not ctd_check "$T/containerd-default.toml" || cat "$T/logs/containerd-check.log"
sed "s|config_path = \"\"|config_path = \"$CTD_DIR/certs.d\"|" "$T/containerd-default.toml" >"$T/containerd-set.toml"
check "--check passes once config_path is set and the hosts.toml is in place" \
    ctd_check "$T/containerd-set.toml" || cat "$T/logs/containerd-check.log"

# ---------------------------------------------------------------- b. agent cache
lib_step "b. the bytes came through the agent: its data dir holds every blob"
for img in big small; do
    # shellcheck disable=SC2086 # LAYERS holds space-separated digests
    for d in "${CONFIG_DIGEST[$img]}" ${LAYERS[$img]}; do
        check "agent data dir has $img blob $d (sha256 matches name)" agent_blob_ok "$d" || true
    done
done
bad=0
nfiles=0
while IFS= read -r -d '' f; do
    name=$(basename "$f")
    [[ "$name" =~ ^[0-9a-f]{64}$ ]] || continue
    nfiles=$((nfiles + 1))
    [ "$(lib_sha256_file "$f")" = "$name" ] || { echo "    corrupt cache file $f"; bad=$((bad + 1)); }
done < <(find "$AGENT_DATA/blobs/sha256" -type f -print0 2>/dev/null)
check "all $nfiles files under agent data dir blobs/sha256/ hash to their names" [ "$bad" -eq 0 ] || true
if curl -fsS "http://$METRICS/metrics" >"$T/logs/metrics-after-ctr.txt"; then
    pass "agent /metrics answers 200 ($(grep -vc '^#' "$T/logs/metrics-after-ctr.txt") samples)"
    grep -v '^#' "$T/logs/metrics-after-ctr.txt" | sed -n '1,25s/^/    /p'
else
    fail "agent /metrics answers 200"
fi

# ---------------------------------------------------------------- c. Docker
lib_step "c. Docker Engine pulls big:v1 with registry-mirrors = [agent]"
DK="$T/dk"
mkdir -p "$DK/cli"
cat >"$DK/daemon.json" <<JSON
{"data-root": "$DK/root", "exec-root": "$DK/exec", "pidfile": "$DK/dockerd.pid",
 "hosts": ["unix://$DK/docker.sock"], "iptables": false, "ip-forward": false, "bridge": "none"}
JSON
cp "$DK/daemon.json" "$DK/daemon.json.orig"
# The mirror settings are merged in by `pollen docker-config`, every other key kept.
check "pollen docker-config --check fails before the merge" \
    not "$POLLEN_BIN" docker-config --check --daemon-json "$DK/daemon.json" --agent "http://$AGENT" || true
check "pollen docker-config merges registry-mirrors into daemon.json" \
    logged "$T/logs/docker-config.log" "$POLLEN_BIN" docker-config --daemon-json "$DK/daemon.json" --agent "http://$AGENT" ||
    cat "$T/logs/docker-config.log"
check "pollen docker-config --check passes after it" \
    "$POLLEN_BIN" docker-config --check --daemon-json "$DK/daemon.json" --agent "http://$AGENT" || true
export DOCKER_CONFIG="$DK/cli"
docker_() { "$DOCKER_CLI" -H "unix://$DK/docker.sock" "$@"; }
lib_start_bg dockerd "$T/logs/dockerd.log" dockerd --config-file "$DK/daemon.json" --containerd "$CTD_SOCK"
DOCKERD_PID=$LIB_LAST_PID
if lib_wait_cmd 300 docker_ version; then
    pass "dockerd started"
    for img in big small; do
        if check "docker pull $img:v1 (Docker Hub name, served by the mirror)" \
            logged "$T/logs/docker-pull-$img.log" "$DOCKER_CLI" -H "unix://$DK/docker.sock" pull "$img:v1"; then
            id=$(docker_ image inspect "$img:v1" --format '{{.Id}}')
            check "docker image $img:v1 id $id equals config digest ${CONFIG_DIGEST[$img]}" \
                [ "$id" = "${CONFIG_DIGEST[$img]}" ] || true
            rd=$(docker_ image inspect "$img:v1" --format '{{range .RepoDigests}}{{println .}}{{end}}')
            check "docker image $img:v1 RepoDigests has $img@${MANIFEST_DIGEST[$img]}" \
                grep -qx "$img@${MANIFEST_DIGEST[$img]}" <<<"$rd" || echo "    RepoDigests: $rd"
        else
            tail -n 20 "$T/logs/docker-pull-$img.log"
        fi
    done
else
    tail -n 30 "$T/logs/dockerd.log"
    fail "dockerd started"
fi
lib_stop_pid "$DOCKERD_PID" 300
lib_umount_under "$DK"
"$POLLEN_BIN" docker-config --restore --daemon-json "$DK/daemon.json" >/dev/null
check "pollen docker-config --restore puts back the original daemon.json" \
    cmp -s "$DK/daemon.json" "$DK/daemon.json.orig" || true
free_dirs "$DK/root" "$DK/exec"

# ---------------------------------------------------------------- d. skopeo
lib_step "d. skopeo copy through the agent (registries.conf mirror) to an oci: layout"
cat >"$T/registries.conf" <<CONF
[[registry]]
prefix = "$REG"
location = "$REG"
insecure = true
[[registry.mirror]]
location = "$AGENT"
insecure = true
CONF
# skopeo_copy_and_verify IMG DESTDIR LABEL
skopeo_copy_and_verify() {
    local img=$1 dest=$2 label=$3 logf="$T/logs/skopeo-$1-$3.log" mdig bad=0 f d
    if ! check "$label: skopeo copy docker://$REG/test/$img:v1 oci:$dest:$img" \
        logged "$logf" skopeo --registries-conf "$T/registries.conf" copy \
        "docker://$REG/test/$img:v1" "oci:$dest:$img"; then
        tail -n 20 "$logf"
        return 0
    fi
    mdig=$(jq -r --arg t "$img" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$dest/index.json")
    check "$label: oci layout manifest for $img is ${MANIFEST_DIGEST[$img]}" [ "$mdig" = "${MANIFEST_DIGEST[$img]}" ] ||
        echo "    got $mdig"
    for f in "$dest"/blobs/sha256/*; do
        [ "$(lib_sha256_file "$f")" = "$(basename "$f")" ] || { echo "    $f does not hash to its name"; bad=1; }
    done
    # shellcheck disable=SC2086 # LAYERS holds space-separated digests
    for d in "${CONFIG_DIGEST[$img]}" ${LAYERS[$img]}; do
        [ -f "$dest/blobs/sha256/${d#sha256:}" ] || { echo "    missing blob $d"; bad=1; }
    done
    check "$label: every oci layout blob of $img is present and hashes to its name" [ "$bad" -eq 0 ] || true
}
for img in big small; do skopeo_copy_and_verify "$img" "$T/skopeo-oci" skopeo; done

# The same with the registries.conf `pollen registries-config` writes: a Docker Hub mirror
# (the agent's default upstream stands in for Docker Hub here, as for Docker above).
"$POLLEN_BIN" registries-config --file "$T/registries-hub.conf" --agent "http://$AGENT" >/dev/null ||
    die "pollen registries-config failed"
check "skopeo copy docker://docker.io/library/small:v1 through the registries-config mirror" \
    logged "$T/logs/skopeo-hub.log" skopeo --registries-conf "$T/registries-hub.conf" copy \
    "docker://docker.io/library/small:v1" "oci:$T/skopeo-hub:small" ||
    tail -n 20 "$T/logs/skopeo-hub.log"
free_dirs "$T/skopeo-oci" "$T/skopeo-hub"

lib_step "d2. blob HEAD and Range GET through the agent"
BIG_LAYER=$(jq -r '.layers | max_by(.size) | .digest' "$T/big.manifest.json")
BIG_SIZE=${BLOB_SIZE[$BIG_LAYER]}
head_len=$(curl -fsS -I "http://$AGENT/v2/test/big/blobs/$BIG_LAYER?ns=$REG" | tr -d '\r' |
    awk -F': ' 'tolower($1) == "content-length" { print $2 }') || head_len=""
check "HEAD big layer through the agent: Content-Length $BIG_SIZE" [ "$head_len" = "$BIG_SIZE" ] ||
    echo "    got '$head_len'"
range_ok() { [ "$1" = 206 ] && cmp -s "$T/range.agent" "$T/range.reg"; }
for range in 0-1023 1000000-1999999 "$((BIG_SIZE - 100))-$((BIG_SIZE - 1))"; do
    code=$(curl -sS -o "$T/range.agent" -w '%{http_code}' -H "Range: bytes=$range" \
        "http://$AGENT/v2/test/big/blobs/$BIG_LAYER?ns=$REG") || code="error"
    # The expected bytes come from the local OCI layout (no extra registry traffic).
    first=${range%-*}
    last=${range#*-}
    dd if="$OCI/blobs/sha256/${BIG_LAYER#sha256:}" of="$T/range.reg" bs=1M status=none \
        iflag=skip_bytes,count_bytes skip="$first" count="$((last - first + 1))"
    check "Range bytes=$range through the agent: 206 and the right bytes" \
        range_ok "$code" ||
        echo "    status $code, $(stat -c %s "$T/range.agent" 2>/dev/null || echo 0) bytes"
done

# ---------------------------------------------------------------- d3. Podman
lib_step "d3. Podman (rootful, vfs in a temp root) pulls a Docker Hub name through the agent"
# Podman reads the registries.conf `pollen registries-config` wrote (CONTAINERS_REGISTRIES_CONF);
# its storage lives under $T only. docker.io stands for the agent's default upstream, as above.
PODMAN_ROOT="$T/podman"
PODMAN=(env -u DOCKER_CONFIG "CONTAINERS_REGISTRIES_CONF=$T/registries-hub.conf" podman
    --root "$PODMAN_ROOT/root" --runroot "$PODMAN_ROOT/run" --storage-driver vfs
    --cgroup-manager cgroupfs --events-backend file --tmpdir "$PODMAN_ROOT/tmp")
# served_bytes: blob and manifest bytes the agent has served its clients so far.
served_bytes() {
    curl -fsS "http://$METRICS/metrics" | awk '$1 ~ /^pollen_served_bytes(_total)?({|$)/ { s += $2 } END { printf "%d\n", s }'
}
# registry_blob_gets: blob GETs in the registry's log after line $1.
registry_blob_gets() {
    tail -n "+$(($1 + 1))" "$REG_LOG" | grep -c '"GET /v2/[^ ]*/blobs/' || true
}
mkdir -p "$PODMAN_ROOT/tmp"
podman_mark=$(wc -l <"$REG_LOG")
served_before=$(served_bytes)
if check "podman pull docker.io/library/big:v1 through the registries-config mirror" \
    logged "$T/logs/podman-pull.log" "${PODMAN[@]}" pull docker.io/library/big:v1; then
    podman_digest=$("${PODMAN[@]}" image inspect --format '{{.Digest}}' docker.io/library/big:v1 2>>"$T/logs/podman-pull.log") || podman_digest=""
    check "podman: the image's manifest digest is ${MANIFEST_DIGEST[big]}" \
        [ "$podman_digest" = "${MANIFEST_DIGEST[big]}" ] || echo "    got '$podman_digest'"
    podman_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' docker.io/library/big:v1 2>>"$T/logs/podman-pull.log") || podman_id=""
    check "podman: the image's id is its config digest ${CONFIG_DIGEST[big]}" \
        [ "sha256:$podman_id" = "${CONFIG_DIGEST[big]}" ] || echo "    got '$podman_id'"
    # Every layer was unpacked from bytes that hashed to the manifest's digests (Podman checks
    # each blob it reads); their sum crossed the agent, and none came from the registry.
    layer_bytes=0
    for d in ${LAYERS[big]}; do layer_bytes=$((layer_bytes + BLOB_SIZE[$d])); done
    served=$(($(served_bytes) - served_before))
    check "podman: the agent served at least the image's $layer_bytes layer bytes ($served)" \
        [ "$served" -ge "$layer_bytes" ] || true
    gets=$(registry_blob_gets "$podman_mark")
    check "podman: the registry served no blob while Podman pulled ($gets GETs)" [ "$gets" -eq 0 ] || true
else
    tail -n 20 "$T/logs/podman-pull.log"
fi
free_dirs "$PODMAN_ROOT"

# ---------------------------------------------------------------- e. cache only
lib_step "e. each blob fetched from the upstream exactly once"
for d in "${ALL_BLOBS[@]}"; do
    read -r bytes n < <(upstream_blob_bytes "$d")
    check "upstream sent $d once: $bytes bytes in $n GET(s), blob size ${BLOB_SIZE[$d]}" \
        [ "$bytes" = "${BLOB_SIZE[$d]}" ] || true
done

lib_step "e2. the agent down: containerd falls back to the registry (hosts.toml server)"
"$POLLEN_BIN" containerd-config --registry "http://$REG" --config-path "$T/dead-certs.d" \
    --agent "http://127.0.0.1:9" --containerd-config "$CTD_DIR/config.toml" >/dev/null 2>&1 ||
    die "pollen containerd-config failed for the dead-agent hosts dir"
check "ctr pulls library/small:v1 with nothing listening at the mirror's address" \
    logged "$T/logs/ctr-fallback.log" ctr --address "$CTD_SOCK" images pull --plain-http --hosts-dir "$T/dead-certs.d" "$REG/library/small:v1" ||
    tail -n 20 "$T/logs/ctr-fallback.log"
check "pollen containerd-config --restore removes what it wrote" \
    "$POLLEN_BIN" containerd-config --restore --config-path "$T/dead-certs.d" || true
check "the dead-agent hosts dir is empty again" [ -z "$(ls -A "$T/dead-certs.d")" ] || true

lib_step "e. stop the registry; pull again from the agent cache alone"
lib_stop_pid "$REGISTRY_PID"
registry_down() { ! curl -fsS -o /dev/null --max-time 2 "http://$REG/v2/" 2>/dev/null; }
check "registry is stopped" registry_down || true
# dockerd is gone: stop the first containerd and start a fresh one with an empty content store.
lib_stop_pid "$CTD_PID"
free_dirs "$CTD_DIR/root" "$CTD_DIR/state"
start_containerd ctd2
for img in big small; do ctr_pull_and_verify "$img" ctd2-cache-only; done
for img in big small; do skopeo_copy_and_verify "$img" "$T/skopeo-oci-2" skopeo-cache-only; done
free_dirs "$T/skopeo-oci-2"

lib_step "agent health after the run"
check "agent process is still running" lib_alive "$AGENT_PID" || true
no_panic() { ! grep -qi "panicked" "$AGENT_LOG"; }
check "agent log has no panic" no_panic || true
if curl -fsS "http://$METRICS/metrics" >"$T/logs/metrics-final.txt"; then
    echo "  agent metrics at the end:"
    grep -v '^#' "$T/logs/metrics-final.txt" | sed -n '1,30s/^/    /p'
fi

# ---------------------------------------------------------------- f. disk full
lib_step "f. disk full: a second agent whose data dir is a ${FULL_MIB} MiB tmpfs pulls the big layer"
# The registry was stopped in e: start it again on the same port and data dir (keep the old log).
mv "$REG_LOG" "$T/registry/registry-1.log"
lib_start_registry "$T/registry" "$REG_PORT" || die "docker-registry did not restart"
check "docker-registry answers GET /v2/ again" curl -fsS -o /dev/null "http://$REG/v2/" || true
AGENT1_PID=$AGENT_PID
lib_pick_port 5300 FULL_PORT
lib_pick_port 5400 FULL_METRICS_PORT
FULL="127.0.0.1:$FULL_PORT"
FULL_DATA="$T/full-data"
FULL_LOG="$T/logs/agent-full.log"
mkdir -p "$FULL_DATA"
# Unmounted by the EXIT trap (lib_umount_under "$T") if anything below fails.
mount -t tmpfs -o "size=${FULL_MIB}m" tmpfs "$FULL_DATA" || die "mount tmpfs on $FULL_DATA failed"
# --cache-size far above the tmpfs, so that the quota does not evict first.
AGENT_CACHE_SIZE=10GiB lib_start_agent "$POLLEN_BIN" "$FULL_DATA" "$FULL_PORT" "$FULL_METRICS_PORT" "$FULL_LOG" \
    "http://$REG" "$REG=http://$REG" ||
    die "the disk-full agent did not become ready"
FULL_PID=$AGENT_PID
AGENT_PID=$AGENT1_PID
pass "disk-full agent on $FULL (data dir: ${FULL_MIB} MiB tmpfs, --cache-size 10GiB) is ready"

BIG_HEX=${BIG_LAYER#sha256:}
full_rc=0
: >"$T/full.headers"
full_out=$(curl -sS -o "$T/full.body" -D "$T/full.headers" --max-time 120 -w '%{http_code} %{size_download}' \
    "http://$FULL/v2/test/big/blobs/$BIG_LAYER?ns=$REG" 2>"$T/full.curl-err") || full_rc=$?
read -r full_code full_size <<<"$full_out"
full_len=$(tr -d '\r' <"$T/full.headers" | awk -F': ' 'tolower($1) == "content-length" { print $2 }' | tail -n 1)
echo "  GET big layer ($BIG_SIZE bytes) through the disk-full agent: curl exit $full_rc, HTTP ${full_code:-none}," \
    "Content-Length ${full_len:-none}, $full_size bytes received; curl: $(tr '\n' ' ' <"$T/full.curl-err")"
not_complete() { ! { [ "$full_rc" -eq 0 ] && [ "$full_code" = 200 ] && [ "$full_size" = "$BIG_SIZE" ]; }; }
check "disk full: the big layer is not delivered complete (error status, or aborted body)" not_complete || true
# A blob the disk cannot hold is refused before its first byte, so a runtime goes on to the
# registry instead of receiving half a body (docs/decisions.md, "Disk full").
refused_up_front() { [ "$full_code" = 507 ] && grep -q "no room for a blob" "$T/full.body"; }
check "disk full: refused up front with 507 Insufficient Storage and an error naming the disk (HTTP ${full_code:-none})" \
    refused_up_front || head -c 300 "$T/full.body" | sed 's/^/    /'
check "disk full: the response ended (curl did not time out after 120 s)" [ "$full_rc" -ne 28 ] || true
# The agent may clear its partial blob just after the response ends: allow it up to 5 s.
# (Downloads go to partial/<hex>/; tmp/ is for manifests.)
tmp_empty() {
    [ -z "$(find "$FULL_DATA/tmp" "$FULL_DATA/partial" -mindepth 1 -print -quit 2>/dev/null)" ]
}
lib_wait_cmd 25 tmp_empty || true
no_big_blob() { [ ! -e "$FULL_DATA/blobs/sha256/$BIG_HEX" ]; }
check "disk full: no blobs/sha256/<hex> file for the big layer" no_big_blob || true
check "disk full: the data dir's tmp/ and partial/ are empty (no partial file left)" tmp_empty || true
echo "  files on the tmpfs now ($(df -k --output=used "$FULL_DATA" | tail -n 1 | tr -d ' ') KiB used):"
find "$FULL_DATA" -type f -printf '    %P %s bytes\n'
check "disk full: the agent process is still running" lib_alive "$FULL_PID" || true
SMALL_BLOB=${CONFIG_DIGEST[big]}
small_ok() {
    local code sum
    code=$(curl -sS -o "$T/full.small" --max-time 30 -w '%{http_code}' \
        "http://$FULL/v2/test/big/blobs/$SMALL_BLOB?ns=$REG") || { echo "    curl failed"; return 1; }
    sum=$(lib_sha256_file "$T/full.small")
    if [ "$code" != 200 ] || [ "sha256:$sum" != "$SMALL_BLOB" ]; then
        echo "    HTTP $code, $(stat -c %s "$T/full.small") bytes hashing to sha256:$sum"
        return 1
    fi
}
check "disk full: afterwards the config blob $SMALL_BLOB is served with the right sha256" small_ok || true
check "disk full: the agent process is still running after that" lib_alive "$FULL_PID" || true
echo "  last lines of the disk-full agent's log:"
tail -n 8 "$FULL_LOG" | sed 's/\x1b\[[0-9;]*m//g; s/^/    /'
# Space returns (the filesystem grows): the same agent, without a restart, fetches, serves and
# keeps the big layer.
mount -o "remount,size=$((BIG_MIB + 64))m" "$FULL_DATA" || die "remounting $FULL_DATA bigger failed"
recovered() {
    local code
    code=$(curl -sS -o "$T/full.big" --max-time 120 -w '%{http_code}' \
        "http://$FULL/v2/test/big/blobs/$BIG_LAYER?ns=$REG") || { echo "    curl failed"; return 1; }
    if [ "$code" != 200 ] || [ "sha256:$(lib_sha256_file "$T/full.big")" != "$BIG_LAYER" ]; then
        echo "    HTTP $code, $(stat -c %s "$T/full.big") bytes"
        return 1
    fi
    [ "$(lib_sha256_file "$FULL_DATA/blobs/sha256/$BIG_HEX" 2>/dev/null)" = "$BIG_HEX" ] ||
        { echo "    the layer was served but not kept"; return 1; }
}
check "disk full: once there is room, the same agent serves the big layer with the right sha256 and keeps it" \
    recovered || true
rm -f "$T/full.big"
lib_stop_pid "$FULL_PID"
lib_umount_under "$FULL_DATA"

# ---------------------------------------------------------------- g. multi-node
if [ "${E2E_SKIP_MULTINODE:-0}" = "1" ]; then
    echo "E2E_SKIP_MULTINODE=1: step g (multi-node) skipped"
else
    multinode_main
fi

# ---------------------------------------------------------------- h. rollout
if [ "${E2E_SKIP_ROLLOUT:-0}" = "1" ]; then
    echo "E2E_SKIP_ROLLOUT=1: step h (rollout behind a rate-limited upstream) skipped"
else
    rollout_main
fi

# ---------------------------------------------------------------- i. the image
if [ "${E2E_SKIP_IMAGE:-0}" = "1" ]; then
    echo "E2E_SKIP_IMAGE=1: step i (the release image under containerd) skipped"
else
    image_main
fi

# ---------------------------------------------------------------- j. sites
if [ "${E2E_SKIP_SITES:-0}" = "1" ]; then
    echo "E2E_SKIP_SITES=1: step j (sites behind thin links) skipped"
else
    si_main
fi

# ---------------------------------------------------------------- k. lazy pulling
if [ "${E2E_SKIP_LAZY:-0}" = "1" ]; then
    echo "E2E_SKIP_LAZY=1: step k (lazy pulling of an eStargz layer) skipped"
else
    lazy_main
fi

# ---------------------------------------------------------------- l. SIGKILL loop
if [ "${E2E_SKIP_KILL:-0}" = "1" ]; then
    echo "E2E_SKIP_KILL=1: step l (SIGKILL at random points of a pull) skipped"
else
    kill_main
fi

# ---------------------------------------------------------------- m. network faults
if [ "${E2E_SKIP_NETFAULT:-0}" = "1" ]; then
    echo "E2E_SKIP_NETFAULT=1: step m (a link cut, a partition) skipped"
else
    netfaults_main
fi
