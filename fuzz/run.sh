#!/usr/bin/env bash
# Builds and runs every fuzz target for a given time:
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 10)
#
# Coverage-guided libFuzzer targets built with cargo-fuzz (`cargo install cargo-fuzz --locked`)
# on the stable toolchain: RUSTC_BOOTSTRAP=1 lets it pass the -Z flags it needs (sanitizer and
# coverage instrumentation). Each target's corpus grows in fuzz/corpus/<target> (git-ignored),
# seeded from fuzz/seeds/<target> (committed); a crash lands in fuzz/artifacts/<target>/.
# Prints the executions per target and in total; exits 1 on any crash (or a target that would
# not run), 2 if the build failed.
#
# Environment:
#   FUZZ_TARGETS="a b"   only these targets (default: all, as `cargo fuzz list` prints them)
#   FUZZ_JOBS=N          targets run N at a time (default 1)
#   FUZZ_SANITIZER=s     address (default) or none (about twice the executions per second;
#                        the code under test is safe Rust)
#   FUZZ_NICE=N          nice level of the fuzzing processes (default 0)
#   FUZZ_NO_BUILD=1      use the binaries already built
#   FUZZ_LOGS=DIR        keep each target's libFuzzer log in DIR (default: a temporary directory)
#   FUZZ_RUNS=N          stop each target after N executions (SECONDS_PER_TARGET stays the cap)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")" || exit 2
secs=${1:-10}
case "$secs" in '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}
nice_level=${FUZZ_NICE:-0}
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
    exit 2
fi
# -O: optimised; -a: debug assertions and overflow checks on, so an overflow is a crash.
build_flags=(-O -a -s "$sanitizer")
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
    start=$SECONDS
    if ! cargo fuzz build "${build_flags[@]}"; then
        echo "fuzz/run.sh: building the fuzz targets failed" >&2
        exit 2
    fi
    echo "fuzz/run.sh: built in $((SECONDS - start)) s"
fi
if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi
bin_dir="target/x86_64-unknown-linux-gnu/release"
logs=${FUZZ_LOGS:-$(mktemp -d /tmp/pollen-fuzz-logs.XXXXXX)}
mkdir -p "$logs"

# One target: libFuzzer for $secs seconds over its corpus and seeds. A per-input timeout of
# 10 s turns a hang into a crash; 4 GiB of RSS is far above what any input may take (the
# address sanitizer's quarantine alone holds 256 MiB).
run_target() {
    local t=$1 max_len=4096
    # The stateful targets' inputs are action lists: a few hundred actions reach every state.
    case "$t" in peer_*) max_len=512 ;; esac
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
    nice -n "$nice_level" "$bin_dir/$t" "corpus/$t" "seeds/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len="$max_len" \
        ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"$logs/$t.log" 2>&1
    echo $? >"$logs/$t.rc"
}

start=$SECONDS
running=0
for t in "${targets[@]}"; do
    if [ ! -x "$bin_dir/$t" ]; then
        echo "fuzz/run.sh: no binary for $t (build first)" >&2
        echo 127 >"$logs/$t.rc"
        continue
    fi
    run_target "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

status=0
total=0
printf '%-16s %14s %8s %10s  %s\n' target executions seconds exec/s result
for t in "${targets[@]}"; do
    rc=$(cat "$logs/$t.rc" 2>/dev/null || echo 127)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" 2>/dev/null | tail -n 1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$logs/$t.log" 2>/dev/null | tail -n 1)
    execs=${execs:-0}
    took=${took:-$secs}
    total=$((total + execs))
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="CRASH (exit $rc): see fuzz/artifacts/$t/ and the log below"
        status=1
    fi
    printf '%-16s %14s %8s %10s  %s\n' "$t" "$execs" "$took" "$((execs / (took > 0 ? took : 1)))" "$result"
done
printf '%-16s %14s %8s\n' total "$total" "$((SECONDS - start))"
if [ "$status" -ne 0 ]; then
    for t in "${targets[@]}"; do
        if [ "$(cat "$logs/$t.rc" 2>/dev/null || echo 127)" -ne 0 ]; then
            echo "---- $t (last 40 lines of its log)"
            tail -n 40 "$logs/$t.log"
        fi
    done
fi
[ -n "${FUZZ_LOGS:-}" ] || rm -rf "$logs"
exit "$status"
