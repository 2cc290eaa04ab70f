#!/usr/bin/env bash
# Builds the Pollen image without Docker and without a base image: the static agent binary,
# CA roots, nsswitch.conf, passwd/group and the data dir, as one layer, with umoci into an OCI
# layout; optionally pushes it with skopeo. The layout is the one deploy/docker/Dockerfile
# builds and the Helm chart runs (entrypoint /usr/local/bin/pollen, `agent`, uid 65532, data
# in /var/lib/pollen).
#
#   sudo deploy/docker/build-image.sh --push REGISTRY/pollen:0.1.0
#
# Options:
#   --push REF     push the image to REF (docker:// reference without the scheme)
#   --insecure     push over plain HTTP / without TLS verification (a test registry)
#   --layout DIR   the OCI layout to write (default: target/image/pollen-oci)
#   --tag TAG      the tag inside the layout (default: the crate version)
#   --binary PATH  use this statically linked binary instead of building one
# Needs root (the files' owners go into the layer as they are on disk), cargo (unless
# --binary), umoci, readelf and, for --push, skopeo. Prints the image's manifest digest.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PUSH="" INSECURE=0 LAYOUT="" TAG="" BINARY=""
while [ $# -gt 0 ]; do
    case "$1" in
    --push) PUSH=${2:?--push needs a reference}; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    --layout) LAYOUT=${2:?--layout needs a directory}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a tag}; shift 2 ;;
    --binary) BINARY=${2:?--binary needs a path}; shift 2 ;;
    -h | --help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "build-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run it as root (sudo): the layer keeps the files' owners, and /var/lib/pollen must belong to uid 65532"
for tool in umoci readelf; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: apt-get install umoci binutils"
done
[ -z "$PUSH" ] || command -v skopeo >/dev/null 2>&1 || die "skopeo is missing (needed for --push): apt-get install skopeo"

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)
TAG=${TAG:-$VERSION}
LAYOUT=${LAYOUT:-$REPO/target/image/pollen-oci}

if [ -z "$BINARY" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH (or pass --binary)"
    triple=$(rustc -vV | sed -n 's/^host: //p')
    echo "building the static agent: cargo build --release --locked -p pollen --target $triple"
    # --target keeps build scripts and proc-macros dynamic; only the binary is static.
    (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -j2 -p pollen --target "$triple")
    BINARY="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/$triple/release/pollen"
fi
[ -x "$BINARY" ] || die "no agent binary at $BINARY"
if readelf -d "$BINARY" | grep -q '(NEEDED)' || readelf -lW "$BINARY" | grep -q 'program interpreter'; then
    die "$BINARY is not statically linked (build it with RUSTFLAGS=\"-C target-feature=+crt-static\" and --target)"
fi
"$BINARY" --version >/dev/null || die "$BINARY --version failed"

work=$(mktemp -d /tmp/pollen-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
install -D -m 0755 "$BINARY" "$root/usr/local/bin/pollen"
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/pollen"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/var/lib/pollen"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'pollen:x:65532:65532:pollen:/var/lib/pollen:/sbin/nologin' >"$root/etc/passwd"
printf 'root:x:0:\npollen:x:65532:\n' >"$root/etc/group"
# The agent trusts the Mozilla roots compiled into it; the bundle is for `--ca-file
# /etc/ssl/certs/ca-certificates.crt` (the same roots, updated with the image).
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || die "$bundle is missing: apt-get install ca-certificates"
install -m 0644 "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"

rm -rf "$LAYOUT"
mkdir -p "$(dirname "$LAYOUT")"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$TAG"
umoci insert --image "$LAYOUT:$TAG" "$root" /
umoci config --image "$LAYOUT:$TAG" --os linux --architecture amd64 \
    --config.entrypoint /usr/local/bin/pollen --config.cmd agent \
    --config.user 65532:65532 --config.env POLLEN_DATA_DIR=/var/lib/pollen \
    --config.exposedports 65001/tcp --config.exposedports 65002/tcp --config.exposedports 65003/tcp \
    --config.label org.opencontainers.image.title=pollen \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --author "Pollen build-image.sh"
umoci gc --layout "$LAYOUT"
digest=$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "$LAYOUT/index.json" | head -n 1)
echo "image $LAYOUT:$TAG, manifest $digest"

if [ -n "$PUSH" ]; then
    tls=()
    [ "$INSECURE" -eq 1 ] && tls=(--dest-tls-verify=false)
    skopeo copy -q "${tls[@]}" "oci:$LAYOUT:$TAG" "docker://$PUSH"
    echo "pushed $PUSH ($digest)"
fi
