//! Media types the agent negotiates with upstreams.

/// What the agent asks upstreams for when fetching a manifest: every manifest and index type a
/// runtime may need, so one cached answer serves containerd, Docker and skopeo alike.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5";

/// Largest manifest the agent accepts from an upstream. Distribution itself refuses manifests
/// above 4 MiB, so anything larger is an attack or a broken upstream.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Whether an upstream's `Content-Type` is one a runtime understands as a manifest.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    let base = media_type.split(';').next().unwrap_or("").trim();
    matches!(
        base,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
            | "application/vnd.docker.distribution.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v1+prettyjws"
            | "application/json"
    )
}
