//! The vocabulary of the OCI Distribution pull API, parsed strictly.
//!
//! Everything a client or an upstream sends is hostile until it has passed through one of these
//! types: a [`Digest`] is a validated `sha256:<64 hex>`, a [`Name`] a validated repository path,
//! a [`Reference`] a tag or a digest. Code past the parsing boundary never re-checks them.

mod digest;
mod error;
mod image;
mod media;
mod name;

pub use digest::{Digest, DigestError, Hasher};
pub use error::{ErrorCode, OciError};
pub use image::{
    manifest_content, platform_matches, ImageRef, ManifestContent, PlatformManifest, DOCKER_HUB,
};
pub use media::{is_manifest_media_type, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
pub use name::{Name, NameError, Reference};
