//! Image references as people type them (`ubuntu:22.04`, `ghcr.io/org/app@sha256:…`), and the
//! walk from a manifest to the blobs it names, for `pollen preheat`.

use crate::{Digest, Name, NameError, Reference};
use serde::Deserialize;

/// Docker Hub, the registry of names without a host.
pub const DOCKER_HUB: &str = "docker.io";

/// `[HOST[:PORT]/]NAME[:TAG|@DIGEST]`; a missing host is Docker Hub, a missing reference
/// `latest`, as `docker pull` reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `None` for Docker Hub (the agent's default upstream); otherwise `host[:port]`.
    pub registry: Option<String>,
    pub name: Name,
    pub reference: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, NameError> {
        let (rest, reference) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Reference::Digest(digest.parse()?)),
            None => match s.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                Some((rest, tag)) => (rest, Reference::parse(tag)?),
                None => (s, Reference::Tag("latest".into())),
            },
        };
        let (registry, path) = match rest.split_once('/') {
            // The first component is a host when it looks like one, as docker reads it.
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_ascii_lowercase()), path)
            }
            _ => (None, rest),
        };
        let registry = registry.filter(|r| r != DOCKER_HUB && r != "index.docker.io");
        Ok(ImageRef {
            registry,
            name: Name::parse(path)?,
            reference,
        })
    }
}

/// One entry of an index: a platform's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformManifest {
    pub digest: Digest,
    /// `os/architecture[/variant]`, e.g. `linux/arm64/v8`; empty when the index does not say.
    pub platform: String,
}

/// What a manifest names: for an index, the platform manifests; for an image manifest, the
/// config and layer blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestContent {
    Index(Vec<PlatformManifest>),
    Image(Vec<Digest>),
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Shape {
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

/// Reads a manifest's JSON: an index (or Docker manifest list) or an image manifest.
pub fn manifest_content(body: &[u8]) -> Result<ManifestContent, String> {
    let shape: Shape = serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    let digest = |d: &Descriptor| {
        d.digest
            .parse::<Digest>()
            .map_err(|e| format!("descriptor digest {:?}: {e}", d.digest))
    };
    if let Some(manifests) = shape.manifests {
        let mut out = Vec::with_capacity(manifests.len());
        for m in &manifests {
            let platform = m
                .platform
                .as_ref()
                .map_or(String::new(), |p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                });
            out.push(PlatformManifest {
                digest: digest(m)?,
                platform,
            });
        }
        return Ok(ManifestContent::Index(out));
    }
    let mut blobs = Vec::new();
    if let Some(c) = &shape.config {
        blobs.push(digest(c)?);
    }
    for l in shape.layers.iter().flatten() {
        blobs.push(digest(l)?);
    }
    if blobs.is_empty() {
        return Err("manifest names neither platform manifests nor blobs".into());
    }
    Ok(ManifestContent::Image(blobs))
}

/// Whether a platform from an index matches one asked for (`linux/arm64` matches
/// `linux/arm64/v8`).
pub fn platform_matches(have: &str, want: &str) -> bool {
    have == want
        || have
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_as_docker_does() {
        let r = ImageRef::parse("ubuntu").unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.name.as_str(), "ubuntu");
        assert_eq!(r.reference, Reference::Tag("latest".into()));
        let r = ImageRef::parse("docker.io/library/redis:7").unwrap();
        assert_eq!((r.registry, r.name.as_str()), (None, "library/redis"));
        let r = ImageRef::parse("localhost:5000/app:v1").unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(r.reference, Reference::Tag("v1".into()));
        let d = Digest::of(b"x");
        let r = ImageRef::parse(&format!("ghcr.io/org/app@{d}")).unwrap();
        assert_eq!(r.registry.as_deref(), Some("ghcr.io"));
        assert_eq!(r.name.as_str(), "org/app");
        assert_eq!(r.reference, Reference::Digest(d));
        let r = ImageRef::parse("org/app:1.2").unwrap();
        assert_eq!((r.registry, r.name.as_str()), (None, "org/app"));
        for bad in ["", "UPPER/case", "app:", "app@sha256:zz", "ghcr.io/"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn walks_indexes_and_manifests() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let index = format!(
            r#"{{"manifests":[{{"digest":"{a}","platform":{{"os":"linux","architecture":"amd64"}}}},
               {{"digest":"{b}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let ManifestContent::Index(p) = manifest_content(index.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(p[1].platform, "linux/arm64/v8");
        assert!(platform_matches(&p[1].platform, "linux/arm64"));
        assert!(!platform_matches("linux/arm64", "linux/arm"));
        let image = format!(
            r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"{c}"}}]}}"#
        );
        assert_eq!(
            manifest_content(image.as_bytes()).unwrap(),
            ManifestContent::Image(vec![a, b, c])
        );
        assert!(manifest_content(b"{}").is_err());
        assert!(manifest_content(br#"{"layers":[{"digest":"md5:x"}]}"#).is_err());
    }
}
