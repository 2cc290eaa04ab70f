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
# and how many left the blob complete. Then each of the store's named crash points (between the
# last write and the rename, sidecars, state.json: kl_targeted) is armed once with
# POLLEN_CRASH_AT and the same state is checked.
#
# Uses run.sh's REG, T, POLLEN_BIN and helpers. Settings:
#   E2E_KILL_RUNS    kill points (default 25; the recorded count: E2E_KILL_RUNS=200)
#   E2E_KILL_MAX_MS  latest kill point after the pull starts, in ms (default 200)
#   E2E_SKIP_KILL=1  skip the step

KL_MAX_MS=${E2E_KILL_MAX_MS:-200}
KL_ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'

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

# kl_armed_run POINT TRIGGER...: starts the agent with crash point POINT armed
# (POLLEN_CRASH_AT, crates/store/src/crash.rs), runs the request TRIGGER, and succeeds only
# if the agent died of SIGKILL there (exit status 137): a point that was never reached fails.
kl_armed_run() {
    local point=$1 status=0
    shift
    POLLEN_CRASH_AT=$point kl_start || return 1
    "$@" >/dev/null 2>&1 || true
    # The trigger's connection broke when the agent died; it is a zombie (or gone) by now, or
    # within 30 s.
    lib_wait_cmd 150 kl_dead "$AGENT_PID" || { echo "    $point: the agent is still running"; return 1; }
    wait "$AGENT_PID" 2>/dev/null || status=$?
    [ "$status" -eq 137 ] || { echo "    $point: the agent exited with $status, not SIGKILL's 137"; return 1; }
}

# kl_dead PID: the process has exited (a zombie not yet reaped counts).
kl_dead() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 0
    [ -z "$state" ] || [ "$state" = Z ]
}

# kl_get PATH [CURL ARGS...]: GET PATH from the kill loop's agent into $T/kill.got.
kl_get() {
    local path=$1
    shift
    curl -fsS -o "$T/kill.got" --max-time 60 "$@" "http://127.0.0.1:$KL_PORT/v2/$path?ns=$REG"
}

# kl_new_blob: a new random blob of 8-24 MiB in the registry (test/kill); sets KL_DIGEST, KL_SIZE.
kl_new_blob() {
    KL_SIZE=$(((RANDOM % 16 + 8) * 1048576 + RANDOM))
    head -c "$KL_SIZE" /dev/urandom >"$T/kill.blob"
    KL_DIGEST="sha256:$(lib_sha256_file "$T/kill.blob")"
    lib_upload_blob "$REG" test/kill "$T/kill.blob" "$KL_DIGEST"
}

kl_got_is() { [ "sha256:$(lib_sha256_file "$T/kill.got")" = "$1" ]; }

# kl_get_is DIGEST PATH [CURL ARGS...]: GET PATH; the body hashes to DIGEST.
kl_get_is() {
    local digest=$1
    shift
    kl_get "$@" && kl_got_is "$digest"
}

# kl_two_ranges R1 R2: the big manifest (the agent learns the layer's size from it), then two
# short ranges of the big layer, each read lazily and kept with a checkpoint.
kl_two_ranges() {
    kl_get test/big/manifests/v1 -H "Accept: $KL_ACCEPT" &&
        kl_get "test/big/blobs/$BIG_LAYER" -H "Range: bytes=$1" &&
        kl_get "test/big/blobs/$BIG_LAYER" -H "Range: bytes=$2"
}

# kl_range_is FIRST-LAST: GET that range of the big layer; the bytes are the layout's.
kl_range_is() {
    kl_get "test/big/blobs/$BIG_LAYER" -H "Range: bytes=$1" && kl_range_ok "${1%-*}" "${1#*-}"
}

# kl_range_ok FIRST LAST: $T/kill.got holds bytes FIRST..LAST of the big layer.
kl_range_ok() {
    dd if="$OCI/blobs/sha256/${BIG_LAYER#sha256:}" of="$T/kill.want" bs=1M status=none \
        iflag=skip_bytes,count_bytes skip="$1" count="$(($2 - $1 + 1))"
    cmp -s "$T/kill.got" "$T/kill.want"
}

# kl_targeted: SIGKILL at each named crash point of the store, one run each: between a
# manifest's or a blob's last write and its rename, after a blob's rename (its partial dir not
# yet removed), while a blob's piece-hash sidecar, a manifest's media-type sidecar or a
# partial's state.json is replaced (the temp file durable, the rename not done). After each:
# every blob file verifies, the agent restarts on the data dir, and the request is answered
# right. The state.json point is the second checkpoint of a lazily read layer: the first
# checkpoint's range must then be served again with no byte from the registry (the partial
# resumed), and the whole layer must verify.
kl_targeted() {
    local point ok=0 total=0 before sent r1="0-1048575" r2="104857600-105906175" manifest
    for point in mediatype.before_rename manifest.before_rename pieces.before_rename \
        blob.before_rename blob.after_rename state.before_rename:2; do
        total=$((total + 1))
        touch -d "-1 second" "$T/kill.mark"
        case "$point" in
            mediatype.*) manifest=small ;;
            manifest.*) manifest=big ;;
            state.*) manifest="" ;;
            *) manifest=""; kl_new_blob || { echo "    $point: upload failed"; break; } ;;
        esac
        if [ -n "$manifest" ]; then
            kl_armed_run "$point" kl_get "test/$manifest/manifests/v1" -H "Accept: $KL_ACCEPT" || break
        elif [[ "$point" == state.* ]]; then
            # The agent learns the layer's size from the manifest; two short ranges, each kept
            # with a checkpoint, the second one killed.
            kl_armed_run "$point" kl_two_ranges "$r1" "$r2" || break
        else
            kl_armed_run "$point" kl_get "test/kill/blobs/$KL_DIGEST" || break
        fi
        kl_blobs_verify "$T/kill.mark" || { echo "    $point: a blob file does not verify"; break; }
        kl_start || { echo "    $point: the agent did not start again on its data dir"; break; }
        if [ -n "$manifest" ]; then
            kl_get_is "${MANIFEST_DIGEST[$manifest]}" "test/$manifest/manifests/v1" -H "Accept: $KL_ACCEPT" ||
                { echo "    $point: the manifest of $manifest after the restart is wrong"; break; }
        elif [[ "$point" == state.* ]]; then
            kl_get test/big/manifests/v1 -H "Accept: $KL_ACCEPT" >/dev/null || true
            before=$(kl_registry_bytes "$BIG_LAYER")
            kl_range_is "$r1" ||
                { echo "    $point: range $r1 after the restart is wrong"; break; }
            sent=$(($(kl_registry_bytes "$BIG_LAYER") - before))
            [ "$sent" -eq 0 ] || { echo "    $point: range $r1 (checkpointed before the kill) cost the registry $sent bytes"; break; }
            kl_get_is "$BIG_LAYER" "test/big/blobs/$BIG_LAYER" ||
                { echo "    $point: the whole layer after the restart is wrong"; break; }
        else
            kl_get_is "$KL_DIGEST" "test/kill/blobs/$KL_DIGEST" ||
                { echo "    $point: the blob after the restart is wrong"; break; }
            sent=$(kl_registry_bytes "$KL_DIGEST")
            [ "$sent" -le $((2 * KL_SIZE)) ] || { echo "    $point: the registry sent $sent bytes for $KL_SIZE"; break; }
        fi
        lib_stop_pid "$AGENT_PID"
        ok=$((ok + 1))
    done
    check "kill points: $ok of $total named crash points (last write to rename, sidecars, state.json) left verified blobs, a ready agent and right answers" \
        [ "$ok" -eq "$total" ] || true
    kl_start || true
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
    lib_stop_pid "$AGENT_PID"
    kl_targeted
    check "kill loop: every blob file still verifies" kl_blobs_verify || true
    rm -f "$T/kill.blob" "$T/kill.got" "$T/kill.mark" "$T/kill.want"
    lib_stop_pid "$AGENT_PID"
    AGENT_PID=$main_pid
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "killloop.sh runs as step l of tests/e2e/run.sh; for 200 runs: E2E_KILL_RUNS=200 E2E_SKIP_MULTINODE=1 E2E_SKIP_ROLLOUT=1 sudo tests/e2e/run.sh" >&2
    exit 2
fi
