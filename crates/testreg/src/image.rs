//! Building a minimal but well-formed OCI image (config + manifest) around
//! caller-supplied layer bytes.

use bytes::Bytes;

use crate::util::sha256_digest;

/// Media type of the manifests produced by `push_image`.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config produced by `push_image`.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type `push_image` declares for every layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Returns `(config, manifest)` for an image whose layers have the given
/// `(digest, size)` pairs (digests are computed once, by the caller, since
/// layers can be hundreds of MiB).
///
/// Layers are opaque to this crate (tests use arbitrary bytes, not real
/// gzipped tars), so the config's `diff_ids` reuse the layer digests. That
/// keeps the config valid JSON of the right shape; nothing the registry
/// path checks depends on `diff_ids` being the uncompressed digests.
pub(crate) fn build(layers: &[(String, u64)]) -> (Bytes, Bytes) {
    let layer_digests: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": layer_digests },
    });
    let config = Bytes::from(config.to_string());
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, size)| serde_json::json!({ "mediaType": OCI_LAYER_GZIP, "digest": d, "size": size }))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256_digest(&config),
            "size": config.len(),
        },
        "layers": layer_descs,
    });
    (config, Bytes::from(manifest.to_string()))
}
