#!/usr/bin/env bash
# The cluster benchmark's puller (benches/cluster.sh): pulls REPO:TAG from BASE the way a
# runtime does — the manifest by tag, then the config and every layer at once — hashing each
# blob with sha256sum as it streams and comparing it with its digest. Nothing is stored.
#
#   cluster-pull.sh BASE QUERY REPO:TAG T0
#
# BASE is http://HOST:PORT; QUERY is appended to every request (`ns=...` for an agent, `-` for
# none); T0 is the run's start ($EPOCHREALTIME). The last line printed is `ok SECONDS` (seconds
# from T0 to the last verified byte) or `fail REASON`.
set -uo pipefail
base=$1 query=$2 ref=$3 t0=$4
repo=${ref%:*} tag=${ref##*:}
q=""
[ "$query" != "-" ] && q="?$query"
accept='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'

manifest=$(curl -fsS --max-time 60 -H "Accept: $accept" "$base/v2/$repo/manifests/$tag$q") ||
    { echo "fail manifest: curl exit $?"; exit 1; }
mapfile -t digests < <(jq -r '.config.digest, .layers[].digest' <<<"$manifest") ||
    { echo "fail manifest: not an image manifest"; exit 1; }
[ "${#digests[@]}" -ge 2 ] || { echo "fail manifest: no layers"; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in "${!digests[@]}"; do
    (
        set -o pipefail
        sum=$(curl -fsS "$base/v2/$repo/blobs/${digests[i]}$q" | sha256sum | cut -d' ' -f1) || { echo "curl failed" >"$dir/$i"; exit 1; }
        if [ "sha256:$sum" = "${digests[i]}" ]; then echo ok >"$dir/$i"; else echo "hashes to sha256:$sum" >"$dir/$i"; fi
    ) &
done
wait
bad=0
for i in "${!digests[@]}"; do
    r=$(cat "$dir/$i" 2>/dev/null || echo "no result")
    [ "$r" = ok ] || { echo "blob ${digests[i]}: $r"; bad=1; }
done
[ "$bad" -eq 0 ] || { echo "fail a blob did not verify"; exit 1; }
echo "ok $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')"
