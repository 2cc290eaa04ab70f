# shellcheck shell=bash
# Shared helpers for tests/e2e/run.sh and benches/pull-1gib.sh.
#
# Everything here talks only to 127.0.0.1 and only to processes the calling
# script started itself. Processes are tracked by PID (never by name) and are
# stopped by `lib_cleanup`, which the callers run from an EXIT trap.

# PIDs of background processes started through lib_start_bg, in start order,
# and a parallel array of their names (for messages).
LIB_PIDS=()
LIB_PID_NAMES=()
# Ports handed out by lib_pick_port in this run (so two picks never collide).
LIB_PICKED_PORTS=()

lib_log() { printf '%s\n' "$*" >&2; }

lib_step() { printf '\n==== %s ====\n' "$*"; }

lib_is_root() { [ "$(id -u)" -eq 0 ]; }

# lib_ensure_tools TOOL=PACKAGE ...: installs the packages of missing tools
# (as root, with apt-get); fails if a tool is still missing afterwards.
lib_ensure_tools() {
    local spec tool pkg missing=()
    for spec in "$@"; do
        tool=${spec%%=*}
        pkg=${spec#*=}
        if ! command -v "$tool" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    # De-duplicate.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if ! lib_is_root; then
        lib_log "missing packages: ${missing[*]} (not root: cannot install them)"
        return 1
    fi
    lib_log "installing: ${missing[*]}"
    local aptlog
    aptlog=$(mktemp /tmp/pollen-apt.XXXXXX)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        rm -f "$aptlog"
        lib_log "apt-get install failed"
        return 1
    fi
    rm -f "$aptlog"
    for spec in "$@"; do
        tool=${spec%%=*}
        if ! command -v "$tool" >/dev/null 2>&1; then
            lib_log "tool still missing after install: $tool"
            return 1
        fi
    done
}

lib_port_in_use() {
    ss -Htln "( sport = :$1 )" 2>/dev/null | grep -q .
}

# lib_pick_port BASE: prints the first port >= BASE that nobody listens on and
# that this run has not handed out yet. Call as `lib_pick_port 5000 VAR`
# (assigns VAR) so the picked list survives (no subshell).
lib_pick_port() {
    local base=$1 __var=$2 p q used
    for ((p = base; p < base + 500; p++)); do
        used=0
        for q in "${LIB_PICKED_PORTS[@]}"; do
            if [ "$q" = "$p" ]; then used=1; break; fi
        done
        [ "$used" -eq 1 ] && continue
        lib_port_in_use "$p" && continue
        LIB_PICKED_PORTS+=("$p")
        printf -v "$__var" '%s' "$p"
        return 0
    done
    lib_log "no free port in $base..$((base + 499))"
    return 1
}

# lib_start_bg NAME LOGFILE CMD [ARG...]: starts CMD in the background with
# stdout+stderr to LOGFILE; sets LIB_LAST_PID.
lib_start_bg() {
    local name=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 </dev/null &
    LIB_LAST_PID=$!
    LIB_PIDS+=("$LIB_LAST_PID")
    LIB_PID_NAMES+=("$name")
    lib_log "started $name (pid $LIB_LAST_PID): $*"
}

# lib_stop_pid PID [TIMEOUT_TENTHS]: SIGTERM, wait up to the timeout (default
# 15 s), then SIGKILL. Reaps the process if it is our child.
lib_stop_pid() {
    local pid=$1 tenths=${2:-150} i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < tenths; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            # A zombie child still answers kill -0; wait reaps it below.
            if [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = "Z" ]; then break; fi
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != "Z" ]; then
            lib_log "pid $pid did not stop on SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    # Forget it.
    local n=${#LIB_PIDS[@]} j
    for ((j = 0; j < n; j++)); do
        if [ "${LIB_PIDS[j]:-}" = "$pid" ]; then LIB_PIDS[j]=""; fi
    done
}

# lib_alive PID: the process exists and is not a zombie.
lib_alive() {
    kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != "Z" ]
}

# lib_wait_http URL TRIES [PID]: polls URL (every 0.2 s, at most TRIES times)
# until it answers 2xx; fails early if PID (the server) has exited.
lib_wait_http() {
    local url=$1 tries=$2 pid=${3:-} i
    for ((i = 0; i < tries; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        if [ -n "$pid" ] && ! lib_alive "$pid"; then
            lib_log "process $pid exited while waiting for $url"
            return 1
        fi
        sleep 0.2
    done
    lib_log "timed out waiting for $url"
    return 1
}

# lib_wait_cmd TRIES CMD...: polls CMD (every 0.2 s) until it succeeds.
lib_wait_cmd() {
    local tries=$1 i
    shift
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

# lib_umount_under DIR: unmounts everything mounted at or below DIR (deepest first).
lib_umount_under() {
    local dir=$1 m
    [ -n "$dir" ] || return 0
    # Field 5 of mountinfo is the mount point (octal-escaped).
    while read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || lib_log "could not unmount $m"
    done < <(awk -v d="$dir" '{ mp=$5; gsub(/\\040/, " ", mp); if (mp == d || index(mp, d "/") == 1) print mp }' /proc/self/mountinfo | sort -r)
}

# lib_stop_all: stops every process started with lib_start_bg, newest first.
lib_stop_all() {
    local i pid
    for ((i = ${#LIB_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${LIB_PIDS[i]}
        [ -n "$pid" ] || continue
        lib_log "stopping ${LIB_PID_NAMES[i]} (pid $pid)"
        lib_stop_pid "$pid"
    done
}

# lib_write_registry_config DIR PORT: writes DIR/config.yml for a private
# docker-registry instance storing under DIR/data and listening on PORT.
lib_write_registry_config() {
    local dir=$1 port=$2
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
}

# lib_start_registry DIR PORT: starts docker-registry, waits for /v2/;
# sets REGISTRY_PID. Log in DIR/registry.log.
lib_start_registry() {
    local dir=$1 port=$2
    [ -f "$dir/config.yml" ] || lib_write_registry_config "$dir" "$port"
    lib_start_bg registry "$dir/registry.log" docker-registry serve "$dir/config.yml"
    REGISTRY_PID=$LIB_LAST_PID
    lib_wait_http "http://127.0.0.1:$port/v2/" 150 "$REGISTRY_PID" || {
        tail -n 30 "$dir/registry.log" >&2
        return 1
    }
}

# lib_start_agent BIN DATA_DIR LISTEN_PORT METRICS_PORT LOGFILE UPSTREAM_URL
#                 REGISTRY_MAP [EXTRA ARGS...]:
# starts `pollen agent` (REGISTRY_MAP is HOST=URL), waits for /readyz on the
# metrics port; sets AGENT_PID. Unless EXTRA ARGS say otherwise (--p2p, --p2p-listen),
# the swarm listens on 127.0.0.1 on a free port (its default, 0.0.0.0:65003, would
# reach beyond this machine and clash with a second agent).
lib_start_agent() {
    local bin=$1 data=$2 port=$3 mport=$4 logfile=$5 upstream=$6 regmap=$7 a p2p_port
    shift 7
    mkdir -p "$data"
    for a in "$@"; do
        case "$a" in --p2p | --p2p=* | --p2p-listen | --p2p-listen=*) p2p_port=none ;; esac
    done
    if [ -z "${p2p_port:-}" ]; then
        lib_pick_port 5500 p2p_port || return 1
        set -- --p2p-listen "/ip4/127.0.0.1/tcp/$p2p_port" "$@"
    fi
    lib_start_bg agent "$logfile" "$bin" agent \
        --listen "127.0.0.1:$port" \
        --data-dir "$data" \
        --upstream "$upstream" \
        --registry "$regmap" \
        --cache-size "${AGENT_CACHE_SIZE:-20GiB}" \
        --metrics-listen "127.0.0.1:$mport" \
        --control-socket "$data/control.sock" \
        --log-format text "$@"
    AGENT_PID=$LIB_LAST_PID
    if ! lib_wait_http "http://127.0.0.1:$mport/readyz" 300 "$AGENT_PID"; then
        lib_log "agent did not become ready; last log lines:"
        tail -n 40 "$logfile" >&2 || true
        return 1
    fi
}

# lib_target_dir REPO: prints cargo's target dir (CARGO_TARGET_DIR if set, relative to REPO).
lib_target_dir() {
    local t=${CARGO_TARGET_DIR:-target}
    case "$t" in /*) printf '%s\n' "$t" ;; *) printf '%s\n' "$1/$t" ;; esac
}

# lib_release_pollen REPO: sets POLLEN_BIN to the release agent binary, building it unless
# POLLEN_BIN is set already; returns non-zero when there is no binary.
lib_release_pollen() {
    if [ -z "${POLLEN_BIN:-}" ]; then
        POLLEN_BIN="$(lib_target_dir "$1")/release/pollen"
        lib_log "building the release binary: cargo build --release -j2 -p pollen"
        (cd "$1" && cargo build --release -j2 -p pollen) >&2 || return 1
    fi
    [ -x "$POLLEN_BIN" ]
}

# lib_sha256_file FILE: prints the hex sha256 of FILE.
lib_sha256_file() { sha256sum "$1" | cut -d' ' -f1; }

# lib_upload_blob REGISTRY NAME FILE DIGEST: pushes FILE as blob DIGEST of repository NAME to
# REGISTRY (host:port) with a monolithic upload (POST, then PUT ?digest=).
lib_upload_blob() {
    local reg=$1 name=$2 file=$3 digest=$4 loc sep
    loc=$(curl -fsS -X POST -o /dev/null -D - "http://$reg/v2/$name/blobs/uploads/" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "location" { print $2 }')
    [ -n "$loc" ] || return 1
    case "$loc" in /*) loc="http://$reg$loc" ;; esac
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' -T "$file" "$loc${sep}digest=$digest" -o /dev/null
}

# lib_push_image REGISTRY NAME TAG FILE: pushes FILE (one layer) with a config and an OCI
# manifest as NAME:TAG; prints the layer's digest. FILE is left in place.
lib_push_image() {
    local reg=$1 name=$2 tag=$3 file=$4 dir digest cdigest
    dir=$(mktemp -d "${TMPDIR:-/tmp}/pollen-push.XXXXXX")
    digest="sha256:$(lib_sha256_file "$file")"
    lib_upload_blob "$reg" "$name" "$file" "$digest" || { rm -rf "$dir"; return 1; }
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$digest" >"$dir/config.json"
    cdigest="sha256:$(lib_sha256_file "$dir/config.json")"
    lib_upload_blob "$reg" "$name" "$dir/config.json" "$cdigest" || { rm -rf "$dir"; return 1; }
    jq -cn --arg c "$cdigest" --argjson cs "$(stat -c %s "$dir/config.json")" --arg l "$digest" --argjson ls "$(stat -c %s "$file")" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
        layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $l, size: $ls}]}' >"$dir/manifest.json"
    curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$dir/manifest.json" "http://$reg/v2/$name/manifests/$tag" -o /dev/null || { rm -rf "$dir"; return 1; }
    rm -rf "$dir"
    printf '%s\n' "$digest"
}

# lib_proc_stats PID: prints "VmHWM_kB cpu_s user_s sys_s" of a running process.
lib_proc_stats() {
    local pid=$1 hwm
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    # Fields 14 and 15 of /proc/PID/stat: utime, stime (the comm field has no spaces here).
    awk -v h="$hwm" -v hz="$(getconf CLK_TCK)" '{ printf "%s %.2f %.2f %.2f\n", h, ($14 + $15) / hz, $14 / hz, $15 / hz }' "/proc/$pid/stat"
}

# lib_median FILE COLUMN: the median of a column of numbers.
lib_median() {
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# lib_minmax FILE COLUMN: "min max" of a column of numbers.
lib_minmax() { awk -v c="$2" '{ print $c }' "$1" | sort -g | sed -n '1p;$p' | paste -sd' '; }

# pass/fail/check: the e2e's verdict lines, counted in PASSED and FAILED (the caller sets both
# to 0 first). check DESCRIPTION CMD [ARG...] runs CMD and counts a pass or a failure.
pass() { PASSED=$((PASSED + 1)); printf '  ok   %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf '  FAIL %s\n' "$*"; }
check() {
    local desc=$1
    shift
    if "$@"; then pass "$desc"; else fail "$desc"; return 1; fi
}
