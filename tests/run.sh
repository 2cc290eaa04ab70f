#!/usr/bin/env bash
# The project's one test command:
#
#   tests/run.sh
#
# 1. cargo fmt --all -- --check
# 2. cargo clippy --workspace --all-targets -j2 -- -D warnings
# 3. cargo test --workspace -j2
# 4. shellcheck of the test/bench/CI scripts (only if shellcheck is installed)
# 5. deploy/validate.sh: the Helm chart, manifests, alerts, dashboard, systemd unit and
#    Dockerfile (only if its tools are installed: .ci/run installs them as root)
# 6. tests/e2e/run.sh (real registry, containerd, Docker, skopeo), as root only
# 7. benches/cluster.sh --quick (the cluster benchmark on 4 emulated hosts: fails only on a
#    wrong digest or a node that never finishes, never on a timing), as root where `ip netns` works
# 8. fuzz/run.sh: every fuzz target for FUZZ_SECONDS (default 10) each, after building them
#    (cargo-fuzz on the stable toolchain; only if cargo-fuzz is installed: .ci/run installs it)
#
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
# Environment: SKIP_E2E=1 skips step 6, SKIP_BENCH=1 step 7, SKIP_FUZZ=1 step 8; SKIP_FMT=1 / SKIP_CLIPPY=1 / SKIP_SHELLCHECK=1 /
# SKIP_DEPLOY_LINT=1 skip those steps.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

declare -a RESULTS=()
STATUS=0

run_step() {
    local name=$1 start rc
    shift
    printf '\n######## %s: %s\n' "$name" "$*"
    start=$SECONDS
    "$@"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("$name: ok ($((SECONDS - start)) s)")
    else
        RESULTS+=("$name: FAILED (exit $rc, $((SECONDS - start)) s)")
        STATUS=1
    fi
}

skip_step() {
    printf '\n######## %s: skipped (%s)\n' "$1" "$2"
    RESULTS+=("$1: skipped ($2)")
}

if [ -n "${SKIP_FMT:-}" ]; then
    skip_step fmt "SKIP_FMT is set"
else
    run_step fmt cargo fmt --all -- --check
fi

if [ -n "${SKIP_CLIPPY:-}" ]; then
    skip_step clippy "SKIP_CLIPPY is set"
else
    run_step clippy cargo clippy --workspace --all-targets -j2 -- -D warnings
fi

run_step test cargo test --workspace -j2

SCRIPTS=(tests/run.sh tests/e2e/*.sh benches/*.sh .ci/run deploy/validate.sh fuzz/run.sh)
if [ -n "${SKIP_SHELLCHECK:-}" ]; then
    skip_step shellcheck "SKIP_SHELLCHECK is set"
elif ! command -v shellcheck >/dev/null 2>&1; then
    skip_step shellcheck "shellcheck is not installed"
else
    run_step shellcheck shellcheck -x "${SCRIPTS[@]}"
fi

if [ -n "${SKIP_DEPLOY_LINT:-}" ]; then
    skip_step deploy-lint "SKIP_DEPLOY_LINT is set"
elif ! deploy_tools=$(deploy/validate.sh --tools); then
    skip_step deploy-lint "$deploy_tools"
else
    run_step deploy-lint deploy/validate.sh
fi

if [ -n "${SKIP_E2E:-}" ]; then
    skip_step e2e "SKIP_E2E is set"
elif [ "$(id -u)" -ne 0 ]; then
    skip_step e2e "not root: tests/e2e/run.sh starts containerd and dockerd, which need root; run it with sudo"
else
    run_step e2e tests/e2e/run.sh
fi

# shellcheck disable=SC2317 # called through run_step
bench_quick() {
    local out rc target=${CARGO_TARGET_DIR:-target}
    case "$target" in /*) ;; *) target="$(pwd)/$target" ;; esac
    cargo build -j2 -p pollen || return 1
    out=$(mktemp -d /tmp/pollen-bench-quick.XXXXXX)
    POLLEN_BIN="$target/debug/pollen" benches/cluster.sh --quick --out "$out"
    rc=$?
    rm -rf "$out"
    return "$rc"
}

netns_works() {
    local probe="pollen-probe-$$"
    ip netns add "$probe" 2>/dev/null || return 1
    ip netns del "$probe"
}

if [ -n "${SKIP_BENCH:-}" ]; then
    skip_step bench-quick "SKIP_BENCH is set"
elif [ "$(id -u)" -ne 0 ]; then
    skip_step bench-quick "not root: the cluster benchmark needs network namespaces"
elif ! netns_works; then
    skip_step bench-quick "ip netns does not work here"
else
    run_step bench-quick bench_quick
fi

if [ -n "${SKIP_FUZZ:-}" ]; then
    skip_step fuzz "SKIP_FUZZ is set"
elif ! cargo fuzz --version >/dev/null 2>&1; then
    skip_step fuzz "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
else
    run_step fuzz fuzz/run.sh "${FUZZ_SECONDS:-10}"
fi

printf '\n######## summary\n'
printf '  %s\n' "${RESULTS[@]}"
if [ "$STATUS" -eq 0 ]; then
    echo "tests/run.sh: all steps succeeded"
else
    echo "tests/run.sh: some steps FAILED"
fi
exit "$STATUS"
