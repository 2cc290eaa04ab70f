//! Manifests and indexes as an upstream or a peer sends them: the walk to the blobs they name
//! (`pollen_oci::manifest_content`), platform matching, and the media type a peer's manifest
//! is stored with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_oci::{manifest_content, platform_matches, ManifestContent};

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = manifest_content(data) {
        match content {
            ManifestContent::Index(platforms) => {
                for p in &platforms {
                    let _ = platform_matches(&p.platform, "linux/amd64");
                    let _ = platform_matches("linux/arm64", &p.platform);
                }
            }
            ManifestContent::Image(blobs) => assert!(!blobs.is_empty()),
        }
    }
    if let Some(t) = pollen_agent::fuzzing::manifest_media_type(data) {
        assert!(pollen_oci::is_manifest_media_type(&t));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some((a, b)) = s.split_once('\n') {
            let _ = platform_matches(a, b);
        }
    }
});
