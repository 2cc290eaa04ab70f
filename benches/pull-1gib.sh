#!/usr/bin/env bash
# Benchmark: pull one 1 GiB blob (random, incompressible) with curl
#   1. directly from docker-registry,
#   2. through the Pollen agent, cold (agent restarted with an empty data dir before every run),
#   3. through the Pollen agent, warm (blob already in the agent's cache),
#   4. through a second docker-registry in proxy mode (pull-through cache, the classic
#      alternative: Distribution/Harbor proxy cache), cold (restarted with an empty data dir
#      before every run) and warm (blob already in its storage).
# Also measures, once, a "floor": writing a new MIB-sized file on the filesystem of the
# data dirs (dd without and with fsync, curl from the registry into a new file, dd
# overwriting an existing cached file), i.e. what any disk-caching mirror pays here.
#
#   benches/pull-1gib.sh [REPORT.md]
#
# Prints a Markdown report to stdout and, if REPORT.md is given, writes it there too.
# Everything runs on 127.0.0.1 in a temp dir that is removed at the end.
#
# Environment:
#   POLLEN_BIN   agent binary (default: target/release/pollen, built with `cargo build --release -j2 -p pollen`)
#   BENCH_RUNS   measured runs per scenario (default 5; the median is reported)
#   BENCH_MIB    blob size in MiB (default 1024)
#   BENCH_FLOOR_RUNS  repetitions of each floor measurement (default BENCH_RUNS; the median is reported)
#   BENCH_AGENT_ARGS  extra arguments for the agent (e.g. "--p2p false"; default: the agent's
#                defaults, peer-to-peer and the tracker role on), split on spaces
#   BENCH_KEEP=1 keep the temp dir
#
# Also reported: the agent's CPU seconds per GiB served, cold (median per run) and warm (over
# the warm runs), user and sys; and the hashing floor of the same bytes (benches/lib.sh:
# openssl SHA-256, sha256sum, b3sum of the agent's cached copy; dd with and without O_DIRECT).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"

OUT=${1:-}
RUNS=${BENCH_RUNS:-5}
MIB=${BENCH_MIB:-1024}
FLOOR_RUNS=${BENCH_FLOOR_RUNS:-$RUNS}
read -r -a EXTRA <<<"${BENCH_AGENT_ARGS:-}"
T=""

cleanup() {
    local rc=$?
    set +eE
    lib_stop_all
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ "$rc" -ne 0 ] && [ -f "$T/agent.log" ]; then
            echo "---- last 40 lines of the agent log ----" >&2
            tail -n 40 "$T/agent.log" >&2
        fi
        if [ "$rc" -ne 0 ] && [ -f "$T/proxy/registry.log" ]; then
            echo "---- last 20 lines of the proxy registry log ----" >&2
            tail -n 20 "$T/proxy/registry.log" >&2
        fi
        if [ "${BENCH_KEEP:-0}" = "1" ]; then lib_log "BENCH_KEEP=1: leaving $T"; else rm -rf "$T"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { lib_log "pull-1gib: $*"; exit 1; }

# ---------------------------------------------------------------- setup
lib_ensure_tools docker-registry=docker-registry curl=curl jq=jq ss=iproute2 || die "required tools are missing"

lib_release_pollen "$REPO" || die "no agent binary: cargo build --release failed or ${POLLEN_BIN:-POLLEN_BIN} is missing"

T=$(mktemp -d /tmp/pollen-bench.XXXXXX)
lib_pick_port 5000 REG_PORT
lib_pick_port 5300 AGENT_PORT
lib_pick_port 5400 METRICS_PORT
lib_pick_port 5100 PROXY_PORT
REG="127.0.0.1:$REG_PORT"
AGENT="127.0.0.1:$AGENT_PORT"
PROXY="127.0.0.1:$PROXY_PORT"

lib_write_registry_config "$T/registry" "$REG_PORT"
lib_start_registry "$T/registry" "$REG_PORT" >&2 || die "docker-registry did not start"
UPSTREAM_PID=$REGISTRY_PID

lib_log "generating a ${MIB} MiB random blob"
head -c "${MIB}M" /dev/urandom >"$T/blob.bin"
SIZE=$(stat -c %s "$T/blob.bin")
DIGEST="sha256:$(lib_sha256_file "$T/blob.bin")"
NAME=bench/big

lib_log "pushing the blob ($DIGEST, $SIZE bytes) and a manifest as $REG/$NAME:v1"
lib_push_image "$REG" "$NAME" v1 "$T/blob.bin" >/dev/null || die "pushing the blob and its manifest failed"
rm -f "$T/blob.bin"

HEX=${DIGEST#sha256:}
DIRECT_URL="http://$REG/v2/$NAME/blobs/$DIGEST"
AGENT_URL="http://$AGENT/v2/$NAME/blobs/$DIGEST?ns=127.0.0.1%3A$REG_PORT"
PROXY_URL="http://$PROXY/v2/$NAME/blobs/$DIGEST"
# Where each cache keeps its committed copy of the blob.
AGENT_FILE="$T/agent-data/blobs/sha256/$HEX"
PROXY_FILE="$T/proxy/data/docker/registry/v2/blobs/sha256/${HEX:0:2}/$HEX/data"

# fetch URL LABEL: one timed GET; appends "time_total ttfb" to $T/LABEL.times.
fetch() {
    local url=$1 label=$2 out code size total ttfb
    out=$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total} %{time_starttransfer}' "$url") ||
        die "$label: curl failed: $out"
    read -r code size total ttfb <<<"$out"
    [ "$code" = 200 ] || die "$label: HTTP $code"
    [ "$size" = "$SIZE" ] || die "$label: got $size bytes, expected $SIZE"
    echo "$total $ttfb" >>"$T/$label.times"
    lib_log "  $label: ${total}s (first byte after ${ttfb}s)"
}

proc_stats() { lib_proc_stats "$@"; }

# wait_file FILE: waits (up to 60 s, polling every 0.05 s) until a cache has committed
# its copy of the blob (both rename a finished temp file into place), so the stats below
# include the whole fill, not just the part that happened before the response ended.
wait_file() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [ -f "$1" ] && return 0
        sleep 0.05
    done
    die "no committed copy at $1 60 s after the response"
}

# since T0: seconds from the EPOCHREALTIME value T0 until now.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f\n", b - a }'; }

# check_copy FILE: the cached copy hashes to the digest.
check_copy() {
    if ! [ -f "$1" ] || [ "sha256:$(lib_sha256_file "$1")" != "$DIGEST" ]; then die "no correct copy at $1"; fi
    lib_log "  the cached copy $1 hashes to $DIGEST"
}

# Every start begins from an empty data dir; `sync` (outside the timed part) so that
# writeback left over from an earlier step does not land in the next run.
start_agent() {
    rm -rf "$T/agent-data"
    sync
    lib_start_agent "$POLLEN_BIN" "$T/agent-data" "$AGENT_PORT" "$METRICS_PORT" "$T/agent.log" \
        "http://$REG" "$REG=http://$REG" "${EXTRA[@]}" >&2 || die "the agent did not become ready"
}

# start_proxy: a second docker-registry, in proxy (pull-through cache) mode for the first
# one, with its own empty data dir and port; sets PROXY_PID.
start_proxy() {
    rm -rf "$T/proxy"
    lib_write_registry_config "$T/proxy" "$PROXY_PORT"
    printf 'proxy:\n  remoteurl: http://%s\n' "$REG" >>"$T/proxy/config.yml"
    sync
    lib_start_registry "$T/proxy" "$PROXY_PORT" >&2 || die "the proxy docker-registry did not start"
    # shellcheck disable=SC2034 # read through ${!pidvar} in measure
    PROXY_PID=$REGISTRY_PID
    REGISTRY_PID=$UPSTREAM_PID
}

# upstream_gets SINCE_LINE: GET requests for the blob that the upstream registry answered
# with 200 after line SINCE_LINE of its access log.
upstream_gets() {
    tail -n "+$(($1 + 1))" "$T/registry/registry.log" | grep -c "\"GET /v2/$NAME/blobs/$DIGEST HTTP/1.1\" 200 " || true
}
reg_log_lines() { wc -l <"$T/registry/registry.log"; }

# timed CMD [ARG...]: runs CMD, prints its wall-clock time in seconds.
timed() {
    local t0=$EPOCHREALTIME t1
    "$@" || die "floor: $* failed"
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}
curl_to_file() {
    local code
    code=$(curl -sS -o "$1" -w '%{http_code}' "$DIRECT_URL") && [ "$code" = 200 ] &&
        [ "$(stat -c %s "$1")" = "$SIZE" ]
}

# ---------------------------------------------------------------- runs
lib_log "direct from docker-registry: 1 warm-up + $RUNS runs"
fetch "$DIRECT_URL" warmup
for ((i = 1; i <= RUNS; i++)); do fetch "$DIRECT_URL" direct; done

lib_log "floor: writing a new ${MIB} MiB file next to the data dirs, $FLOOR_RUNS times each"
mkdir -p "$T/floor"
F="$T/floor/file"
for ((i = 1; i <= FLOOR_RUNS; i++)); do
    rm -f "$F"; sync
    timed dd if=/dev/zero of="$F" bs=1M count="$MIB" status=none >>"$T/floor-dd.times"
    # The same file again, now in the page cache: overwrite in place (no new pages).
    timed dd if=/dev/zero of="$F" bs=1M count="$MIB" conv=notrunc status=none >>"$T/floor-overwrite.times"
    rm -f "$F"; sync
    timed dd if=/dev/zero of="$F" bs=1M count="$MIB" conv=fsync status=none >>"$T/floor-fsync.times"
    rm -f "$F"; sync
    timed curl_to_file "$F" >>"$T/floor-curl.times"
    rm -f "$F"
done
sync
lib_log "  dd new: $(paste -sd' ' "$T/floor-dd.times"); dd overwrite: $(paste -sd' ' "$T/floor-overwrite.times")"
lib_log "  dd new + fsync: $(paste -sd' ' "$T/floor-fsync.times"); curl to new file: $(paste -sd' ' "$T/floor-curl.times")"

# measure NAME PREFIX START_FN PID_VAR URL FILE: cold runs (a fresh instance with an empty data dir
# each), then one filling run and the warm runs. Timings go to $T/PREFIX{cold,warm}.times, process
# figures to $T/PREFIX{cold,warm}.stats; the upstream GETs of the cold runs are left in UPSTREAM_GETS.
measure() {
    local name=$1 p=$2 start=$3 pidvar=$4 url=$5 file=$6 mark t0 got i
    lib_log "through $name, cold (fresh instance, empty data dir): $RUNS runs"
    mark=$(reg_log_lines)
    for ((i = 1; i <= RUNS; i++)); do
        "$start"
        t0=$EPOCHREALTIME
        fetch "$url" "${p}cold"
        wait_file "$file"
        since "$t0" >>"$T/${p}cold.fill"
        proc_stats "${!pidvar}" >>"$T/${p}cold.stats"
        lib_stop_pid "${!pidvar}"
        if [ "$i" -eq 1 ]; then check_copy "$file"; fi
    done
    UPSTREAM_GETS=$(upstream_gets "$mark")

    lib_log "through $name, warm: 1 filling run + $RUNS runs"
    "$start"
    fetch "$url" "${p}fill"
    wait_file "$file"
    got=$(curl -fsS "$url" | sha256sum | cut -d' ' -f1)
    [ "sha256:$got" = "$DIGEST" ] || die "warm response from $name hashes to sha256:$got, expected $DIGEST"
    proc_stats "${!pidvar}" >"$T/${p}fill.stats"
    for ((i = 1; i <= RUNS; i++)); do fetch "$url" "${p}warm"; done
    proc_stats "${!pidvar}" >"$T/${p}warm.stats"
    lib_stop_pid "${!pidvar}"
}

measure "the agent" "" start_agent AGENT_PID "$AGENT_URL" "$AGENT_FILE"
AGENT_UP=$UPSTREAM_GETS
lib_log "the hashing floor of the same bytes (the agent's copy, from the page cache)"
bench_floor "$AGENT_FILE" "$T" "$T/floor.rows"
measure "the docker-registry proxy" p start_proxy PROXY_PID "$PROXY_URL" "$PROXY_FILE"
PROXY_UP=$UPSTREAM_GETS

# ---------------------------------------------------------------- report
median() { lib_median "$@"; }
minmax() { lib_minmax "$@"; }

D_T=$(median "$T/direct.times" 1)
P_T=$(median "$T/pcold.times" 1)
# row LABEL FILE COLD: COLD=1 also fills the "vs proxy cold" column.
row() {
    local label=$1 file=$2 cold=$3 t ttfb mm
    t=$(median "$file" 1)
    ttfb=$(median "$file" 2)
    mm=$(minmax "$file" 1)
    awk -v l="$label" -v t="$t" -v f="$ttfb" -v s="$SIZE" -v d="$D_T" -v p="$P_T" -v c="$cold" -v mm="$mm" 'BEGIN {
        split(mm, m, " ")
        vp = c ? sprintf("%.2f×", p / t) : "—"
        printf "| %s | %.3f (%.3f–%.3f) | %.0f | %.2f | %.1f | %.2f× | %.2f× | %s |\n", l, t, m[1], m[2], s / t / 1e6, s / t / 1e9, f * 1000, t / d, d / t, vp }'
}
# stats_line WHO COLDFILE WARMFILE
stats_line() {
    local who=$1 hm hx c u s wh wc
    hm=$(median "$2" 1)
    hx=$(awk '{ print $1 }' "$2" | sort -g | tail -n 1)
    c=$(median "$2" 2)
    u=$(median "$2" 3)
    s=$(median "$2" 4)
    read -r wh wc _ _ <"$3"
    awk -v w="$who" -v m="$hm" -v x="$hx" -v c="$c" -v u="$u" -v s="$s" -v wm="$wh" -v wc="$wc" -v runs="$RUNS" 'BEGIN {
        printf "%s peak RSS (VmHWM), cold runs: median %.1f MiB, max %.1f MiB; %s CPU per cold run: median %.2f s (user %.2f s, sys %.2f s).\n", w, m / 1024, x / 1024, tolower(w), c, u, s
        printf "Warm %s after 1 filling + %d warm runs: VmHWM %.1f MiB, CPU %.2f s in total.\n", tolower(w), runs, wm / 1024, wc }'
}
# cpu_per_gib: the agent's CPU per GiB served, cold and warm, against the hashing floor.
cpu_per_gib() {
    local g f
    g=$(awk -v s="$SIZE" 'BEGIN { print s / 1073741824 }')
    f=$(bench_floor_cpu "$T/floor.rows")
    read -r _ fc fu fs <"$T/fill.stats"
    read -r _ wc wu ws <"$T/warm.stats"
    awk -v g="$g" -v f="$f" -v runs="$RUNS" -v c="$(median "$T/cold.stats" 2)" -v u="$(median "$T/cold.stats" 3)" \
        -v s="$(median "$T/cold.stats" 4)" -v fc="$fc" -v fu="$fu" -v fs="$fs" -v wc="$wc" -v wu="$wu" -v ws="$ws" 'BEGIN {
        printf "Agent CPU per GiB served: cold %.2f s (user %.2f, sys %.2f; %.2f x the hashing floor of %.2f s: SHA-256 + BLAKE3),", c / g, u / g, s / g, c / (f > 0 ? f : 1), f / g
        n = runs * g; printf " warm %.2f s (user %.2f, sys %.2f).\n", (wc - fc) / n, (wu - fu) / n, (ws - fs) / n }'
    echo
}
# floor_item LABEL FILE
floor_item() {
    local t mm
    t=$(median "$2" 1)
    mm=$(minmax "$2" 1)
    awk -v l="$1" -v t="$t" -v mm="$mm" -v s="$SIZE" 'BEGIN {
        split(mm, m, " "); printf "%s %.3f s (%.3f–%.3f, %.2f GB/s)", l, t, m[1], m[2], s / t / 1e9 }'
}

report() {
    echo "## pull-1gib: one ${MIB} MiB blob over loopback"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), $(docker-registry --version 2>/dev/null | awk '{ print $1, $3 }'), agent \`$POLLEN_BIN\`${EXTRA[*]:+ with \`${EXTRA[*]}\`}."
    echo "Blob: $SIZE bytes of /dev/urandom, $DIGEST. Client: curl, body discarded. Median of $RUNS runs (min–max in brackets)."
    echo "\"vs direct\" and \"vs proxy cold\" are throughput ratios (> 1 = faster)."
    echo
    echo "| scenario | time s | MB/s | GB/s | first byte ms | time vs direct | throughput vs direct | throughput vs proxy cold |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    row "direct from docker-registry" "$T/direct.times" 0
    row "agent, cold (empty cache)" "$T/cold.times" 1
    row "agent, warm (cached)" "$T/warm.times" 0
    row "docker-registry proxy (pull-through cache), cold" "$T/pcold.times" 1
    row "docker-registry proxy (pull-through cache), warm" "$T/pwarm.times" 0
    echo
    stats_line "Agent" "$T/cold.stats" "$T/warm.stats"
    cpu_per_gib
    stats_line "Proxy" "$T/pcold.stats" "$T/pwarm.stats"
    echo "Cold runs, from the request to the cache's copy being committed (renamed into place; 0.05 s polling after the response):" \
        "$(floor_item "agent" "$T/cold.fill"), $(floor_item "proxy" "$T/pcold.fill")." \
        "Cold stats above are read at that point. Upstream GETs of the blob during the $RUNS cold runs (200s in the registry's access log): agent $AGENT_UP, proxy $PROXY_UP."
    echo
    bench_floor_table "$T/floor.rows" "$SIZE"
    echo
    echo "Floor: writing a new ${MIB} MiB file on the data dirs' filesystem ($(findmnt -n -o FSTYPE,SOURCE --target "$T" | tr -s ' ')), median of $FLOOR_RUNS:" \
        "$(floor_item "\`dd bs=1M\`" "$T/floor-dd.times");" \
        "$(floor_item "\`dd bs=1M conv=fsync\`" "$T/floor-fsync.times");" \
        "$(floor_item "\`curl -o FILE\` from the registry" "$T/floor-curl.times");" \
        "for comparison, $(floor_item "overwriting the same, already cached file (\`dd conv=notrunc\`)" "$T/floor-overwrite.times")."
}
report | tee "${OUT:-/dev/null}"
