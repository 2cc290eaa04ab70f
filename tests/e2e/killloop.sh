#!/usr/bin/env bash
# shellcheck shell=bash
# Step l of tests/e2e/run.sh (sourced there): SIGKILL at random points of a pull, in a loop.
# Each run uploads a new random blob (1-24 MiB) to the test registry, starts a pull of it
# through the agent, kills the agent with SIGKILL after a random 0-E2E_KILL_MAX_MS ms (before
# its first byte, mid-transfer, while it writes, hashes, records state.json, commits or
# renames, or after), and then checks the state it left:
#   - every file under blobs/sha256/ hashes to its name (a crash never leaves a blob that
#     looks complete and is not);
#   - the agent restarts on the same data dir and becomes ready;
#   - a whole pull of the blob through it hashes to its digest, and the registry sent less
#     than twice the blob for it (a partial left by the kill is resumed or dropped, never
#     trusted wrongly: the digest check covers both).
# Every earlier blob is checked again at the end. Printed: runs, how many kills left a partial,
# and how many left the blob complete.
#
# Uses run.sh's REG, T, POLLEN_BIN and helpers. Settings:
#   E2E_KILL_RUNS    kill points (default 25; the recorded count: E2E_KILL_RUNS=200)
#   E2E_KILL_MAX_MS  latest kill point after the pull starts, in ms (default 200)
#   E2E_SKIP_KILL=1  skip the step

KL_MAX_MS=${E2E_KILL_MAX_MS:-200}

# kl_start: the agent on KL_DATA (peer-to-peer off: the kill points are in the fetch and the
# store), ready.
kl_start() {
    lib_start_agent "$POLLEN_BIN" "$KL_DATA" "$KL_PORT" "$KL_MPORT" "$T/logs/agent-kill.log" \
        "http://$REG" "$REG=http://$REG" --p2p false
}

# kl_blobs_verify [NEWER]: every blob file (changed since file NEWER, if given) hashes to its
# name; prints the bad ones.
kl_blobs_verify() {
    local f bad=0
    for f in "$KL_DATA"/blobs/sha256/*; do
        [ -z "${1:-}" ] || [ "$f" -nt "$1" ] || continue
        # Blobs only: their piece-hash sidecars (<hex>.pieces) have names of their own.
        [[ "$(basename "$f")" =~ ^[0-9a-f]{64}$ ]] || continue
        [ "$(lib_sha256_file "$f")" = "$(basename "$f")" ] || { echo "    $f does not hash to its name"; bad=1; }
    done
    [ "$bad" -eq 0 ]
}

# kl_registry_bytes DIGEST: bytes the registry sent for DIGEST (2xx GETs) in its whole log.
kl_registry_bytes() {
    awk -F'"' -v d="$1" '$2 ~ ("^GET /v2/.*/blobs/" d " ") { split($3, a, " "); if (a[1] ~ /^2/) b += a[2] } END { printf "%d\n", b }' "$REG_LOG"
}

kill_main() {
    local runs=${E2E_KILL_RUNS:-25}
    lib_step "l. SIGKILL at $runs random points of a pull; after each, the data dir verifies and the pull completes"
    KL_DATA="$T/kill-data"
    lib_pick_port 5300 KL_PORT
    lib_pick_port 5400 KL_MPORT
    local i size digest hex ms pid partials=0 complete=0 bad=0 sent main_pid=$AGENT_PID
    local -a digests=()
    kl_start || { check "kill loop: the agent starts" false; return 0; }
    for ((i = 1; i <= runs; i++)); do
        size=$(((RANDOM % 24 + 1) * 1048576 + RANDOM))
        head -c "$size" /dev/urandom >"$T/kill.blob"
        touch -d "-1 second" "$T/kill.mark"
        hex=$(lib_sha256_file "$T/kill.blob")
        digest="sha256:$hex"
        lib_upload_blob "$REG" test/kill "$T/kill.blob" "$digest" || { echo "    upload $i failed"; bad=1; break; }
        digests+=("$digest")
        curl -sS -o /dev/null --max-time 60 "http://127.0.0.1:$KL_PORT/v2/test/kill/blobs/$digest?ns=$REG" 2>/dev/null &
        pid=$!
        ms=$((RANDOM % (KL_MAX_MS + 1)))
        sleep "$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')"
        kill -KILL "$AGENT_PID" 2>/dev/null
        wait "$AGENT_PID" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        [ -d "$KL_DATA/partial/$hex" ] && partials=$((partials + 1))
        [ -f "$KL_DATA/blobs/sha256/$hex" ] && complete=$((complete + 1))
        # Blob files written or renamed since the last run's check (all of them at the end).
        if ! kl_blobs_verify "$T/kill.mark"; then
            echo "    run $i (killed after $ms ms, blob of $size bytes): a blob file does not verify"
            bad=1
            break
        fi
        if ! kl_start; then
            echo "    run $i (killed after $ms ms): the agent did not start again on its data dir"
            bad=1
            break
        fi
        curl -fsS -o "$T/kill.got" --max-time 60 "http://127.0.0.1:$KL_PORT/v2/test/kill/blobs/$digest?ns=$REG" || true
        if [ "sha256:$(lib_sha256_file "$T/kill.got")" != "$digest" ]; then
            echo "    run $i (killed after $ms ms, blob of $size bytes): the pull after the restart is wrong"
            bad=1
            break
        fi
        sent=$(kl_registry_bytes "$digest")
        if [ "$sent" -gt $((2 * size)) ]; then
            echo "    run $i (killed after $ms ms): the registry sent $sent bytes for a $size-byte blob"
            bad=1
            break
        fi
    done
    check "kill loop: $((i - 1)) of $runs kill points left verified blobs, a ready agent and a right pull ($partials left a partial, $complete a complete blob)" \
        [ "$bad" -eq 0 ] || true
    local d left=0
    for d in "${digests[@]}"; do
        curl -fsS -o "$T/kill.got" --max-time 60 "http://127.0.0.1:$KL_PORT/v2/test/kill/blobs/$d?ns=$REG" || true
        [ "sha256:$(lib_sha256_file "$T/kill.got")" = "$d" ] || left=$((left + 1))
    done
    check "kill loop: all ${#digests[@]} blobs pull right at the end" [ "$left" -eq 0 ] || true
    check "kill loop: every blob file still verifies" kl_blobs_verify || true
    rm -f "$T/kill.blob" "$T/kill.got" "$T/kill.mark"
    lib_stop_pid "$AGENT_PID"
    AGENT_PID=$main_pid
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "killloop.sh runs as step l of tests/e2e/run.sh; for 200 runs: E2E_KILL_RUNS=200 E2E_SKIP_MULTINODE=1 E2E_SKIP_ROLLOUT=1 sudo tests/e2e/run.sh" >&2
    exit 2
fi
