#!/usr/bin/env bash
# shellcheck shell=bash
# Step k of tests/e2e/run.sh (sourced there): lazy pulling with a real eStargz image. The test
# builds an image with one layer (a large random file and three small ones), converts it with
# `ctr-remote image convert --estargz --oci` (Debian's stargz-snapshotter) and pushes it; then
# two fresh agents, the second bootstrapped to the first, are each read the way the stargz
# snapshotter reads a layer before starting a container: the manifest, the layer's footer
# (its last 51 bytes, which name the table of contents' offset), the table of contents
# (stargz.index.json) and three files, each by range. Checks: every file's bytes are the
# original's; B's reads came from A (the registry sent nothing for them, and B counted its
# ranges as from peers); the registry and the peers together moved less than a tenth of the
# layer. Printed: the time to the first file through each agent, against a whole pull of the
# layer through a third agent.
#
# Uses run.sh's REG, T, POLLEN_BIN, check/pass/logged, start_containerd, lib.sh. Settings:
#   E2E_LAZY_MIB     size of the large random file in MiB (default 64)
#   E2E_SKIP_LAZY=1  skip the step

LZ_MIB=${E2E_LAZY_MIB:-64}
LZ_FILES=(a.txt b.bin c.bin)

# lz_get PORT PATH OUT [RANGE]: GET through the agent on PORT (with the registry's ns), into OUT.
lz_get() {
    local port=$1 path=$2 out=$3 range=${4:-}
    local args=(-fsS --max-time 60 -o "$out")
    [ -n "$range" ] && args+=(-H "Range: bytes=$range")
    curl "${args[@]}" -H "Accept: application/vnd.oci.image.manifest.v1+json" \
        "http://127.0.0.1:$port$path?ns=$REG"
}

# lz_read PORT LABEL: reads the layer LZ_LAYER through the agent on PORT as the snapshotter
# does; sets LZ_FIRST_FILE_SECS (from the manifest request to the first file's bytes).
lz_read() {
    local port=$1 d="$T/lazy/$2" t0 off toc_end name entry from to bad=0
    mkdir -p "$d"
    t0=$EPOCHREALTIME
    lz_get "$port" /v2/test/lazy/manifests/esgz "$d/manifest" || { echo "    manifest failed"; return 1; }
    lz_get "$port" "/v2/test/lazy/blobs/$LZ_LAYER" "$d/footer" -51 || { echo "    footer failed"; return 1; }
    off=$(grep -aoE '[0-9a-f]{16}STARGZ' "$d/footer" | head -n 1 | cut -c1-16)
    [ -n "$off" ] || { echo "    no eStargz footer in the last 51 bytes"; return 1; }
    toc_end=$((LZ_SIZE - 52))
    lz_get "$port" "/v2/test/lazy/blobs/$LZ_LAYER" "$d/toc.gz" "$((16#$off))-$toc_end" || { echo "    TOC failed"; return 1; }
    gunzip -c "$d/toc.gz" 2>/dev/null | tar -xO stargz.index.json >"$d/toc.json" 2>/dev/null ||
        { echo "    the TOC does not unpack"; return 1; }
    for name in "${LZ_FILES[@]}"; do
        entry=$(jq -c --arg n "opt/lazy/$name" '.entries[] | select(.name == $n and .type == "reg")' "$d/toc.json")
        from=$(jq -r '.offset' <<<"$entry")
        # The file's gzip member ends where the next entry's starts (or at the TOC).
        to=$(jq -r --argjson o "$from" '[.entries[] | select(.offset != null and .offset > $o) | .offset] | min // empty' "$d/toc.json")
        [ -n "$to" ] || to=$((16#$off))
        lz_get "$port" "/v2/test/lazy/blobs/$LZ_LAYER" "$d/$name.gz" "$from-$((to - 1))" || { echo "    $name failed"; bad=1; continue; }
        # The member holds the file's data (its tar header is in the member before), then the
        # tar padding.
        gunzip -c "$d/$name.gz" 2>/dev/null | head -c "$(jq -r '.size' <<<"$entry")" >"$d/$name" || true
        [ -n "${LZ_FIRST_FILE_SECS:-}" ] || LZ_FIRST_FILE_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
        cmp -s "$d/$name" "$T/lazy/src/$name" || { echo "    $name differs from the original"; bad=1; }
    done
    [ "$bad" -eq 0 ]
}

# lz_registry_layer_bytes: bytes the registry sent for LZ_LAYER since LZ_MARK (its access log).
lz_registry_layer_bytes() {
    tail -n "+$((LZ_MARK + 1))" "$REG_LOG" | awk -F'"' -v d="$LZ_LAYER" '
        $2 ~ ("^GET /v2/.*/blobs/" d) { split($3, a, " "); if (a[1] ~ /^2/) b += a[2] } END { printf "%d\n", b }'
}

# lz_metric PORT NAME: the value of metric NAME (with its labels) on the admin port PORT.
lz_metric() {
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 + 0 }'
}

# lz_from_a MOVED AFTER_A FROM_PEERS: B's reads cost the registry nothing and some came from peers.
lz_from_a() {
    [ "$1" -eq "$2" ] && [ "$3" -ge 1 ]
}

lazy_main() {
    lib_step "k. lazy pulling: an eStargz layer read the way the snapshotter reads it, through two agents"
    local src="$T/lazy/src" oci="$T/lazy/oci" ref="$REG/test/lazy" pa pma pb pmb pc pmc p2a p2b p2c
    mkdir -p "$src" "$T/lazy/root"
    head -c "${LZ_MIB}M" /dev/urandom >"$src/big.bin"
    echo "read first by the entrypoint" >"$src/a.txt"
    head -c 65536 /dev/urandom >"$src/b.bin"
    head -c 300000 /dev/urandom >"$src/c.bin"
    cp "$src"/* "$T/lazy/root/"
    {
        umoci init --layout "$oci" && umoci new --image "$oci:v1" &&
            umoci config --image "$oci:v1" --config.cmd /bin/true --author pollen-e2e-lazy &&
            umoci insert --image "$oci:v1" "$T/lazy/root" /opt/lazy &&
            skopeo copy -q --dest-tls-verify=false "oci:$oci:v1" "docker://$ref:v1"
    } >"$T/logs/lazy-build.log" 2>&1 || { tail -n 20 "$T/logs/lazy-build.log"; check "the lazy test image is built and pushed" false; return 0; }
    start_containerd ctd-lazy
    local conv="$T/logs/lazy-convert.log"
    if ! check "ctr-remote converts $ref:v1 to eStargz ($ref:esgz) and pushes it" \
        logged "$conv" bash -c "ctr-remote --address '$CTD_SOCK' image pull --plain-http '$ref:v1' &&
            ctr-remote --address '$CTD_SOCK' image convert --estargz --oci '$ref:v1' '$ref:esgz' &&
            ctr-remote --address '$CTD_SOCK' image push --plain-http '$ref:esgz'"; then
        tail -n 20 "$conv"
        lib_stop_pid "$CTD_PID"
        return 0
    fi
    lib_stop_pid "$CTD_PID"
    skopeo inspect --raw --tls-verify=false "docker://$ref:esgz" >"$T/lazy/manifest.json"
    LZ_LAYER=$(jq -r '.layers | max_by(.size) | .digest' "$T/lazy/manifest.json")
    LZ_SIZE=$(jq -r '.layers | max_by(.size) | .size' "$T/lazy/manifest.json")
    local toc
    toc=$(jq -r '.layers | max_by(.size) | .annotations["containerd.io/snapshot/stargz/toc.digest"] // empty' "$T/lazy/manifest.json")
    check "the converted layer is eStargz ($LZ_SIZE bytes, TOC digest ${toc:-missing})" [ -n "$toc" ] || return 0

    lib_pick_port 5300 pa && lib_pick_port 5400 pma && lib_pick_port 5500 p2a
    lib_start_agent "$POLLEN_BIN" "$T/lazy/a" "$pa" "$pma" "$T/logs/agent-lazy-a.log" "http://$REG" "$REG=http://$REG" \
        --p2p-listen "/ip4/127.0.0.1/tcp/$p2a" || { check "lazy: agent A starts" false; return 0; }
    lib_pick_port 5300 pb && lib_pick_port 5400 pmb && lib_pick_port 5500 p2b
    lib_start_agent "$POLLEN_BIN" "$T/lazy/b" "$pb" "$pmb" "$T/logs/agent-lazy-b.log" "http://$REG" "$REG=http://$REG" \
        --p2p-listen "/ip4/127.0.0.1/tcp/$p2b" --bootstrap "/ip4/127.0.0.1/tcp/$p2a" || { check "lazy: agent B starts" false; return 0; }
    LZ_MARK=$(wc -l <"$REG_LOG")
    LZ_FIRST_FILE_SECS=""
    check "agent A: footer, TOC and three files of the eStargz layer, by range, with the original bytes" lz_read "$pa" a || true
    local first=$LZ_FIRST_FILE_SECS after_a
    after_a=$(lz_registry_layer_bytes)
    # B looks A's pieces up in Kademlia. A announced them after its first range (the put to
    # B, its only peer, takes a round trip on loopback); its four later reads came after.
    LZ_FIRST_FILE_SECS=""
    check "agent B: the same, with the original bytes" lz_read "$pb" b || true
    local first_b=$LZ_FIRST_FILE_SECS
    # What moved: the layer's bytes from the registry, and everything the agents got from peers.
    local moved peers=0 p m from_peers
    moved=$(lz_registry_layer_bytes)
    for p in "$pma" "$pmb"; do
        m=$(lz_metric "$p" pollen_peer_bytes_received_total)
        peers=$((peers + ${m:-0}))
    done
    from_peers=$(lz_metric "$pmb" 'pollen_lazy_ranges_total{source="peers"}')
    echo "  the registry sent $after_a bytes of the layer for A's reads and $((moved - after_a)) for B's; peers moved $peers bytes (B's ranges and the manifest)"
    check "lazy: B's reads came from A ($from_peers ranges from peers, $((moved - after_a)) bytes from the registry)" \
        lz_from_a "$moved" "$after_a" "${from_peers:-0}" || true
    check "lazy: both agents' reads moved $((moved + peers)) bytes of the $LZ_SIZE-byte layer (< 10 %)" \
        [ $((moved + peers)) -lt $((LZ_SIZE / 10)) ] || true

    # A whole pull of the layer through a third agent, for the time to compare with.
    lib_pick_port 5300 pc && lib_pick_port 5400 pmc && lib_pick_port 5500 p2c
    lib_start_agent "$POLLEN_BIN" "$T/lazy/c" "$pc" "$pmc" "$T/logs/agent-lazy-c.log" "http://$REG" "$REG=http://$REG" \
        --p2p-listen "/ip4/127.0.0.1/tcp/$p2c" || { check "lazy: agent C starts" false; return 0; }
    local t0 whole
    t0=$EPOCHREALTIME
    lz_get "$pc" /v2/test/lazy/manifests/esgz "$T/lazy/c-manifest" &&
        lz_get "$pc" "/v2/test/lazy/blobs/$LZ_LAYER" "$T/lazy/c-layer"
    whole=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
    check "lazy: the whole layer through agent C hashes to its digest" \
        [ "sha256:$(lib_sha256_file "$T/lazy/c-layer")" = "$LZ_LAYER" ] || true
    echo "  time to the first file (manifest, footer, TOC, a.txt): through agent A (from the registry) ${first:-?} s, through agent B (from A) ${first_b:-?} s; the whole $LZ_SIZE-byte layer through agent C: $whole s"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "lazy.sh runs as step k of tests/e2e/run.sh (it needs its registry and helpers)" >&2
    exit 2
fi
