#!/usr/bin/env bash
# Benchmark: pull one 1 GiB blob (random, incompressible) with curl
#   1. directly from docker-registry,
#   2. through the Pollen agent, cold (agent restarted with an empty data dir before every run),
#   3. through the Pollen agent, warm (blob already in the agent's cache).
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
#   BENCH_KEEP=1 keep the temp dir
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"

OUT=${1:-}
RUNS=${BENCH_RUNS:-5}
MIB=${BENCH_MIB:-1024}
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

if [ -z "${POLLEN_BIN:-}" ]; then
    POLLEN_BIN="$(lib_target_dir "$REPO")/release/pollen"
    lib_log "building the release binary: cargo build --release -j2 -p pollen"
    (cd "$REPO" && cargo build --release -j2 -p pollen) >&2 || die "cargo build --release failed"
fi
[ -x "$POLLEN_BIN" ] || die "agent binary not found: $POLLEN_BIN"

T=$(mktemp -d /tmp/pollen-bench.XXXXXX)
lib_pick_port 5000 REG_PORT
lib_pick_port 5300 AGENT_PORT
lib_pick_port 5400 METRICS_PORT
REG="127.0.0.1:$REG_PORT"
AGENT="127.0.0.1:$AGENT_PORT"

lib_write_registry_config "$T/registry" "$REG_PORT"
lib_start_registry "$T/registry" "$REG_PORT" >&2 || die "docker-registry did not start"

lib_log "generating a ${MIB} MiB random blob"
head -c "${MIB}M" /dev/urandom >"$T/blob.bin"
SIZE=$(stat -c %s "$T/blob.bin")
DIGEST="sha256:$(lib_sha256_file "$T/blob.bin")"
NAME=bench/big

# upload_blob FILE DIGEST: monolithic upload (POST then PUT ?digest=).
upload_blob() {
    local file=$1 digest=$2 loc sep
    loc=$(curl -fsS -X POST -o /dev/null -D - "http://$REG/v2/$NAME/blobs/uploads/" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "location" { print $2 }')
    [ -n "$loc" ] || return 1
    case "$loc" in /*) loc="http://$REG$loc" ;; esac
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' -T "$file" "$loc${sep}digest=$digest" -o /dev/null
}
lib_log "pushing the blob ($DIGEST, $SIZE bytes) and a manifest as $REG/$NAME:v1"
upload_blob "$T/blob.bin" "$DIGEST" || die "blob upload failed"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$DIGEST" >"$T/config.json"
CONFIG_DIGEST="sha256:$(lib_sha256_file "$T/config.json")"
upload_blob "$T/config.json" "$CONFIG_DIGEST" || die "config upload failed"
jq -cn --arg c "$CONFIG_DIGEST" --argjson cs "$(stat -c %s "$T/config.json")" --arg l "$DIGEST" --argjson ls "$SIZE" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $l, size: $ls}]}' >"$T/manifest.json"
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$T/manifest.json" "http://$REG/v2/$NAME/manifests/v1" -o /dev/null || die "manifest push failed"
rm -f "$T/blob.bin"

DIRECT_URL="http://$REG/v2/$NAME/blobs/$DIGEST"
AGENT_URL="http://$AGENT/v2/$NAME/blobs/$DIGEST?ns=127.0.0.1%3A$REG_PORT"

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

# agent_stats PID: prints "VmHWM_kB cpu_s user_s sys_s" of a running process.
agent_stats() {
    local pid=$1 hwm
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    # Fields 14 and 15 of /proc/PID/stat: utime, stime (the comm field has no spaces here).
    awk -v h="$hwm" -v hz="$(getconf CLK_TCK)" '{ printf "%s %.2f %.2f %.2f\n", h, ($14 + $15) / hz, $14 / hz, $15 / hz }' "/proc/$pid/stat"
}

start_agent() {
    rm -rf "$T/agent-data"
    lib_start_agent "$POLLEN_BIN" "$T/agent-data" "$AGENT_PORT" "$METRICS_PORT" "$T/agent.log" \
        "http://$REG" "$REG=http://$REG" >&2 || die "the agent did not become ready"
}

# ---------------------------------------------------------------- runs
lib_log "direct from docker-registry: 1 warm-up + $RUNS runs"
fetch "$DIRECT_URL" warmup
for ((i = 1; i <= RUNS; i++)); do fetch "$DIRECT_URL" direct; done

lib_log "through the agent, cold (fresh agent, empty data dir): $RUNS runs"
for ((i = 1; i <= RUNS; i++)); do
    start_agent
    fetch "$AGENT_URL" cold
    agent_stats "$AGENT_PID" >>"$T/cold.stats"
    lib_stop_pid "$AGENT_PID"
    if [ "$i" -eq 1 ]; then
        f="$T/agent-data/blobs/sha256/${DIGEST#sha256:}"
        if [ -f "$f" ] && [ "sha256:$(lib_sha256_file "$f")" = "$DIGEST" ]; then
            lib_log "  the agent's cached copy hashes to $DIGEST"
        else
            die "the agent's data dir has no correct copy at $f"
        fi
    fi
done

lib_log "through the agent, warm: 1 filling run + $RUNS runs"
start_agent
fetch "$AGENT_URL" fill
got=$(curl -fsS "$AGENT_URL" | sha256sum | cut -d' ' -f1)
[ "sha256:$got" = "$DIGEST" ] || die "warm response hashes to sha256:$got, expected $DIGEST"
for ((i = 1; i <= RUNS; i++)); do fetch "$AGENT_URL" warm; done
agent_stats "$AGENT_PID" >"$T/warm.stats"
lib_stop_pid "$AGENT_PID"

# ---------------------------------------------------------------- report
# median FILE COLUMN
median() {
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minmax() { awk -v c="$2" '{ print $c }' "$1" | sort -g | sed -n '1p;$p' | paste -sd' '; }

D_T=$(median "$T/direct.times" 1)
row() {
    local label=$1 file=$2 t ttfb mm
    t=$(median "$file" 1)
    ttfb=$(median "$file" 2)
    mm=$(minmax "$file" 1)
    awk -v l="$label" -v t="$t" -v f="$ttfb" -v s="$SIZE" -v d="$D_T" -v mm="$mm" 'BEGIN {
        split(mm, m, " ")
        printf "| %s | %.3f (%.3f–%.3f) | %.0f | %.2f | %.1f | %.2f× |\n", l, t, m[1], m[2], s / t / 1e6, s / t / 1e9, f * 1000, t / d }'
}
HWM_MED=$(median "$T/cold.stats" 1)
HWM_MAX=$(awk '{ print $1 }' "$T/cold.stats" | sort -g | tail -n 1)
CPU_MED=$(median "$T/cold.stats" 2)
USR_MED=$(median "$T/cold.stats" 3)
SYS_MED=$(median "$T/cold.stats" 4)
read -r WARM_HWM WARM_CPU _ _ <"$T/warm.stats"

report() {
    echo "## pull-1gib: one ${MIB} MiB blob over loopback"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), $(docker-registry --version 2>/dev/null | awk '{ print $1, $3 }'), agent \`$POLLEN_BIN\`."
    echo "Blob: $SIZE bytes of /dev/urandom, $DIGEST. Client: curl, body discarded. Median of $RUNS runs (min–max in brackets)."
    echo
    echo "| scenario | time s | MB/s | GB/s | first byte ms | time vs direct |"
    echo "| --- | --- | --- | --- | --- | --- |"
    row "direct from docker-registry" "$T/direct.times"
    row "agent, cold (empty cache)" "$T/cold.times"
    row "agent, warm (cached)" "$T/warm.times"
    echo
    awk -v m="$HWM_MED" -v x="$HWM_MAX" -v c="$CPU_MED" -v u="$USR_MED" -v s="$SYS_MED" -v wm="$WARM_HWM" -v wc="$WARM_CPU" -v runs="$RUNS" 'BEGIN {
        printf "Agent peak RSS (VmHWM), cold runs: median %.1f MiB, max %.1f MiB; agent CPU per cold run: median %.2f s (user %.2f s, sys %.2f s).\n", m / 1024, x / 1024, c, u, s
        printf "Warm agent after 1 filling + %d warm runs: VmHWM %.1f MiB, CPU %.2f s in total.\n", runs, wm / 1024, wc }'
}
report | tee "${OUT:-/dev/null}"
