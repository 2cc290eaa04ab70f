#!/usr/bin/env bash
# The soak's puller (benches/soak.sh): one pull of REPO:TAG through the node's agent the way a
# runtime does it (the manifest by tag, then the config and every layer at once), each object
# hashed as it streams and compared with its digest (the manifest with the digest the registry
# gave it at push time: the soak's tags never move). Nothing is stored.
#
#   soak-pull.sh AGENT REGISTRY QUERY REPO:TAG MANIFEST_DIGEST
#
# AGENT is the node's agent (http://127.0.0.1:65001), QUERY appended to every request to it
# (ns=HOST%3APORT); REGISTRY the upstream itself (http://HOST:PORT), the runtime's fallback
# (containerd's hosts.toml `server`): an object the agent fails (connection refused while it
# restarts, an HTTP error, a transfer cut short) is fetched from the registry directly; up to 3
# rounds of agent-then-registry, 2 s and 4 s apart, per object.
#
# An object the agent answered with 200 and a complete body (curl exit 0) that does not hash to
# its digest is CORRUPT: its bytes are counted as corrupt bytes delivered, and the object is then
# fetched from the registry like a failure (so the pull may still complete; its result stays
# `corrupt`). A transfer curl reports as broken (exit != 0) or an HTTP error is a failure, not a
# corruption: the runtime notices it and falls back.
#
# Prints one line:
#   RESULT SECONDS BYTES AGENT_BYTES REGISTRY_BYTES CORRUPT_BYTES FALLBACK_OBJECTS DETAIL
# RESULT: ok (every object verified, all from the agent), fallback (every object verified, at
# least one from the registry directly), corrupt (the agent delivered a wrong object), fail
# (some object verified by neither path). BYTES = AGENT_BYTES + REGISTRY_BYTES, verified bytes.
# The caller bounds the whole pull with `timeout` (the deadline): on its SIGTERM this prints
# `deadline ...` with the objects still in flight (which path, since when) and exits 124.
set -uo pipefail
agent=$1 registry=$2 query=$3 ref=$4 mdigest=$5
repo=${ref%:*} tag=${ref##*:}
accept='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
t0=${EPOCHREALTIME/./}
hash_cmd=(sha256sum)
command -v openssl >/dev/null 2>&1 && hash_cmd=(openssl dgst -sha256 -r)

dir=$(mktemp -d "${TMPDIR:-/tmp}/soak-pull.XXXXXX")
trap 'rm -rf "$dir"' EXIT

elapsed() { local u=${EPOCHREALTIME/./}; printf '%d.%02d' $(((u - t0) / 1000000)) $(((u - t0) / 10000 % 100)); }

on_deadline() {
    local f pending=""
    for f in "$dir"/*.state; do
        [ -e "$f" ] || continue
        [ -e "${f%.state}.result" ] && continue
        pending+="$(basename "${f%.state}")=$(cat "$f");"
    done
    echo "deadline $(elapsed) 0 0 0 $(cat "$dir"/*.corrupt 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }') 0 pending:${pending:-none}"
    exit 124
}
trap on_deadline TERM

# get NAME URL: one GET, its body hashed as it streams (the manifest's also kept in
# manifest.body, to be parsed once it verified); sets rc, code, size, sum, err.
get() {
    local name=$1 url=$2 keep=/dev/null
    [ "$name" = manifest ] && keep="$dir/manifest.body"
    curl -sS --connect-timeout 10 -L -H "Accept: $accept" -w '%{stderr}@@ %{http_code} %{size_download}\n' \
        "$url" 2>"$dir/$name.err" | tee "$keep" | "${hash_cmd[@]}" >"$dir/$name.sum"
    rc=${PIPESTATUS[0]}
    read -r code size < <(awk '$1 == "@@" { c = $2; s = $3 } END { printf "%d %.0f\n", c, s }' "$dir/$name.err")
    sum="sha256:$(cut -d' ' -f1 "$dir/$name.sum")"
    err=$(grep -v '^@@ ' "$dir/$name.err" | head -n 1 | cut -c1-80 | tr ' ,' '_;')
}

# object NAME KIND REF DIGEST: the object through the agent, else from the registry; writes
# NAME.result ("ok agent SIZE", "ok registry SIZE WHY" or "fail WHY": WHY the failed attempts),
# NAME.corrupt (bytes of wrong bodies).
object() {
    local name=$1 kind=$2 oref=$3 digest=$4 round why=""
    local rc code size sum err
    for round in 1 2 3; do
        echo "agent:r$round@$(elapsed)s" >"$dir/$name.state"
        get "$name" "$agent/v2/$repo/$kind/$oref?$query"
        if [ "$rc" -eq 0 ] && [ "$code" = 200 ]; then
            if [ "$sum" = "$digest" ]; then
                echo "ok agent $size" >"$dir/$name.result"
                return 0
            fi
            echo "$size $digest $sum http=$code round=$round" >>"$dir/$name.corrupt"
            why+="agent:corrupt(${size}B/got=$sum);"
        else
            why+="agent:rc=$rc/http=$code/${err:-};"
        fi
        echo "registry:r$round@$(elapsed)s" >"$dir/$name.state"
        get "$name" "$registry/v2/$repo/$kind/$oref"
        if [ "$rc" -eq 0 ] && [ "$code" = 200 ]; then
            if [ "$sum" = "$digest" ]; then
                echo "ok registry $size $why" >"$dir/$name.result"
                return 0
            fi
            why+="registry:hash=$sum;"
        else
            why+="registry:rc=$rc/http=$code/${err:-};"
        fi
        [ "$round" -lt 3 ] && sleep $((2 * round))
    done
    echo "fail $why" >"$dir/$name.result"
    return 1
}

# summary DETAIL: the line, from every NAME.result and NAME.corrupt.
summary() {
    local verdict
    verdict=$(cat "$dir"/*.result 2>/dev/null | awk '
        $1 == "ok" && $2 == "agent" { a += $3 }
        $1 == "ok" && $2 == "registry" { r += $3; f++ }
        $1 != "ok" { bad++ }
        END { printf "%s %.0f %.0f %.0f %d", (bad ? "fail" : (f ? "fallback" : "ok")), a + r, a, r, f }')
    local res bytes ab rb fb cb
    read -r res bytes ab rb fb <<<"$verdict"
    cb=$(cat "$dir"/*.corrupt 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }')
    [ "$cb" -gt 0 ] && res=corrupt
    echo "$res $(elapsed) $bytes $ab $rb $cb $fb $1"
}

# The manifest by tag.
if ! object manifest manifests "$tag" "$mdigest"; then
    summary "manifest:$(cut -d' ' -f2- "$dir/manifest.result")"
    exit 1
fi
# manifest.body holds the body that verified (the last attempt's).
mapfile -t blobs < <(jq -r '.config.digest, .layers[].digest' "$dir/manifest.body" 2>/dev/null)
[ "${#blobs[@]}" -ge 2 ] || { echo "fail parse" >"$dir/parse.result"; summary "manifest:not-an-image-manifest"; exit 1; }

for i in "${!blobs[@]}"; do
    object "b$i" blobs "${blobs[i]}" "${blobs[i]}" &
done
wait
detail=""
for i in "${!blobs[@]}"; do
    r=$(cat "$dir/b$i.result" 2>/dev/null || echo "fail no-result")
    case "$r" in
        ok\ agent\ *) ;;
        ok\ registry\ *) detail+="${blobs[i]:7:12}:fallback:${r#ok registry * }" ;;
        *) detail+="${blobs[i]:7:12}:${r#fail };" ;;
    esac
done
case "$(cat "$dir/manifest.result")" in ok\ registry\ *) detail="manifest:fallback:$(cut -d' ' -f4- "$dir/manifest.result")$detail" ;; esac
[ -n "$(cat "$dir"/*.corrupt 2>/dev/null)" ] && detail+="corrupt:$(cat "$dir"/*.corrupt | tr ' \n' ':;')"
summary "${detail:--}"
