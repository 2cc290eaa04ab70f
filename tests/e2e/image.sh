#!/usr/bin/env bash
# Step i of tests/e2e/run.sh (sourced there): the release image, built by
# deploy/docker/build-image.sh and pushed to the test registry, runs under containerd
# (`ctr run --net-host`, the data dir bind-mounted, the image's own user and entrypoint) as the
# node's agent, and the node's containerd pulls an image through it.
#
# Uses run.sh's REG, T, POLLEN_BIN, the helpers check/pass/logged/start_containerd/
# ctr_pull_and_verify, and lib.sh. Settings:
#   E2E_IMAGE_BINARY  a statically linked agent to put in the image (default: the script
#                     builds one: a release build with --target, several minutes)
#   E2E_SKIP_IMAGE=1  skip the step

IMG_CONTAINER=pollen-agent-e2e
IMG_SOCK=""

# ctr against the image step's containerd.
img_ctr() { ctr --address "$IMG_SOCK" "$@"; }

# Stops the agent's container if it is still there (the EXIT trap calls this before the
# containerd it runs under is stopped): its shim would outlive containerd otherwise.
image_cleanup() {
    [ -n "$IMG_SOCK" ] && [ -S "$IMG_SOCK" ] || return 0
    img_ctr task kill -s KILL "$IMG_CONTAINER" >/dev/null 2>&1 || true
    lib_wait_cmd 50 not img_task_running || true
    img_ctr task delete "$IMG_CONTAINER" >/dev/null 2>&1 || true
    img_ctr container delete "$IMG_CONTAINER" >/dev/null 2>&1 || true
    pkill -f -- "-address $IMG_SOCK" 2>/dev/null || true
}

# img_build LAYOUT REF [ARGS...]: build-image.sh into LAYOUT, pushed to REF, logged; bounded by
# E2E_BUILD_TIMEOUT (default 1800 s), not the clients' timeout: a cold release build on a
# 2-core machine takes longer than a pull may (it once took more than 300 s here).
img_build() {
    local layout=$1 ref=$2
    shift 2
    timeout "${E2E_BUILD_TIMEOUT:-1800}" "$REPO/deploy/docker/build-image.sh" "$@" \
        --layout "$layout" --tag e2e --push "$ref" --insecure >"$T/logs/build-image.log" 2>&1
}

# The agent's task is running.
img_task_running() { img_ctr task ls | awk -v c="$IMG_CONTAINER" '$1 == c { print $3 }' | grep -qx RUNNING; }

image_main() {
    lib_step "i. the release image (deploy/docker/build-image.sh) runs as the node's agent under containerd"
    local ref="$REG/pollen:e2e" layout="$T/image-oci" build=() port mport p2p data="$T/image-data"
    local saved_agent=$AGENT served owner
    [ -n "${E2E_IMAGE_BINARY:-}" ] && build=(--binary "$E2E_IMAGE_BINARY")
    if ! check "build-image.sh builds the image and pushes it to $ref" \
        img_build "$layout" "$ref" "${build[@]}"; then
        tail -n 20 "$T/logs/build-image.log"
        return 0
    fi
    lib_pick_port 5300 port
    lib_pick_port 5400 mport
    lib_pick_port 5500 p2p
    # The node's containerd names the containerised agent as its mirror.
    AGENT="127.0.0.1:$port"
    start_containerd ctd-image
    AGENT=$saved_agent
    IMG_SOCK=$CTD_SOCK
    check "ctr pulls the agent's image $ref from the registry" \
        logged "$T/logs/ctr-pull-image.log" ctr --address "$IMG_SOCK" images pull --plain-http "$ref" ||
        { tail -n 20 "$T/logs/ctr-pull-image.log"; return 0; }
    mkdir -p "$data"
    chown 65532:65532 "$data"
    # The image's entrypoint and user; only the ports and the upstream are set, as a node's
    # DaemonSet pod sets them.
    if ! check "ctr run --net-host $ref as $IMG_CONTAINER, data dir bind-mounted" \
        logged "$T/logs/ctr-run-image.log" ctr --address "$IMG_SOCK" run -d --net-host \
        --log-uri "file://$T/logs/agent-image.log" \
        --mount "type=bind,src=$data,dst=/var/lib/pollen,options=rbind:rw" \
        "$ref" "$IMG_CONTAINER" /usr/local/bin/pollen agent \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
        --p2p-listen "/ip4/127.0.0.1/tcp/$p2p" \
        --upstream "http://$REG" --registry "$REG=http://$REG" --log-format text; then
        tail -n 20 "$T/logs/ctr-run-image.log"
        return 0
    fi
    if ! check "the containerised agent answers /readyz" lib_wait_http "http://127.0.0.1:$mport/readyz" 300; then
        tail -n 30 "$T/logs/agent-image.log" 2>/dev/null
        return 0
    fi
    AGENT="127.0.0.1:$port"
    for img in big small; do ctr_pull_and_verify "$img" image-agent; done
    AGENT=$saved_agent
    local d bad=0
    # shellcheck disable=SC2086 # LAYERS holds space-separated digests
    for d in "${CONFIG_DIGEST[big]}" ${LAYERS[big]}; do
        [ "$(lib_sha256_file "$data/blobs/sha256/${d#sha256:}" 2>/dev/null)" = "${d#sha256:}" ] ||
            { echo "    $d is not in the container's data dir, or does not hash to its name"; bad=1; }
    done
    check "the container's data dir (uid 65532) holds every blob of big:v1, each hashing to its name" \
        [ "$bad" -eq 0 ] || true
    served=$(curl -fsS "http://127.0.0.1:$mport/metrics" |
        awk '$1 ~ /^pollen_served_bytes(_total)?({|$)/ { s += $2 } END { printf "%d\n", s }')
    check "the containerised agent served the pulls ($served bytes)" [ "$served" -gt 0 ] || true
    owner=$(stat -c %u "$data/blobs" 2>/dev/null || echo none)
    check "the agent ran as the image's user 65532 (owner of blobs/: $owner)" [ "$owner" = 65532 ] || true
    check "the agent's task is still running" img_task_running || true
    img_ctr task kill -s TERM "$IMG_CONTAINER" >/dev/null 2>&1 || true
    check "the agent's task exits on SIGTERM within 10 s" lib_wait_cmd 50 not img_task_running || true
    check "the containerised agent's log has no panic" not grep -qi "panicked" "$T/logs/agent-image.log" || true
    image_cleanup
    lib_stop_pid "$CTD_PID"
}
