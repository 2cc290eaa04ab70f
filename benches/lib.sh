# shellcheck shell=bash
# Helpers shared by the single-agent benchmarks (p2p-1gib.sh, pull-1gib.sh): what the machine
# can do with the same bytes (the floor every figure is read against), and flame graphs.
# Sourced after tests/e2e/lib.sh.

# bench_floor FILE DIR OUT: times the floor for FILE's bytes and appends "tool wall user sys"
# lines to OUT: SHA-256 of FILE from the page cache with `openssl dgst -sha256` (SHA-NI: what
# the agent's hash runs at) and with coreutils' `sha256sum` (Debian's is portable C, ~4x
# slower), `b3sum` (the piece hashes), each run twice and the second counted; then `dd bs=1M`
# of a new file of FILE's size in DIR (through the page cache) and the same with
# `oflag=direct`, both deleted again.
bench_floor() {
    local file=$1 dir=$2 out=$3 mib name
    mib=$(($(stat -c %s "$file") >> 20))
    TIMEFORMAT='%R %U %S'
    for name in openssl-sha256 sha256sum b3sum; do
        local cmd=("$name" "$file")
        [ "$name" = openssl-sha256 ] && cmd=(openssl dgst -sha256 "$file")
        if ! command -v "${cmd[0]}" >/dev/null; then
            lib_log "floor: ${cmd[0]} is not installed (Debian: apt-get install ${cmd[0]}); its row is left out"
            continue
        fi
        "${cmd[@]}" >/dev/null
        { time "${cmd[@]}" >/dev/null; } 2>"$dir/floor.t"
        echo "$name $(cat "$dir/floor.t")" >>"$out"
    done
    sync
    { time dd if=/dev/zero of="$dir/floor.dd" bs=1M count="$mib" status=none; } 2>"$dir/floor.t"
    echo "dd-page-cache $(cat "$dir/floor.t")" >>"$out"
    rm -f "$dir/floor.dd"
    sync
    { time dd if=/dev/zero of="$dir/floor.dd" bs=1M count="$mib" oflag=direct status=none; } 2>"$dir/floor.t"
    echo "dd-direct $(cat "$dir/floor.t")" >>"$out"
    rm -f "$dir/floor.dd" "$dir/floor.t"
    unset TIMEFORMAT
}

# bench_floor_table OUT SIZE: the floor lines of OUT as a Markdown table, per GiB of SIZE bytes.
bench_floor_table() {
    echo "| floor (same bytes, same machine) | wall s/GiB | CPU s/GiB (user + sys) | GB/s |"
    echo "| --- | --- | --- | --- |"
    awk -v s="$2" '{ g = s / 1073741824
        printf "| `%s` | %.3f | %.3f (%.3f + %.3f) | %.2f |\n", $1, $2 / g, ($3 + $4) / g, $3 / g, $4 / g, s / $2 / 1e9 }' "$1"
}

# bench_floor_cpu OUT: CPU seconds of SHA-256 (openssl's, else sha256sum's) + b3sum in OUT:
# what any receiver of these bytes must spend.
bench_floor_cpu() {
    awk '{ c[$1] = $3 + $4 } END {
        sha = ("openssl-sha256" in c) ? c["openssl-sha256"] : c["sha256sum"]
        printf "%.3f\n", sha + c["b3sum"] }' "$1"
}

# bench_flame PERF_DATA PID TITLE OUT.svg: a flame graph of one process in a `perf record -g`
# file (inferno: `cargo install inferno`); skipped with a note when inferno is missing.
bench_flame() {
    local data=$1 pid=$2 title=$3 svg=$4
    if ! command -v inferno-collapse-perf >/dev/null || ! command -v inferno-flamegraph >/dev/null; then
        lib_log "no flame graph for $title: inferno is not installed (cargo install inferno)"
        return 0
    fi
    perf script -i "$data" --pid "$pid" 2>/dev/null | inferno-collapse-perf --all 2>/dev/null |
        inferno-flamegraph --title "$title" --width 1600 >"$svg" 2>/dev/null ||
        lib_log "flame graph for $title failed"
}
