//! Repository names and references, validated to the OCI Distribution grammar.

use crate::{Digest, DigestError};
use std::fmt;

/// Longest repository name the spec allows; also bounds what a path can make us allocate.
const MAX_NAME_LEN: usize = 255;
/// Longest tag the spec allows.
const MAX_TAG_LEN: usize = 128;

/// A repository name such as `library/busybox`.
///
/// Validated against `[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*`, which rules
/// out `..`, empty components and anything that could escape a path or a URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

/// Why a name or reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is not valid (lowercase letters, digits, separators ._- and /, at most 255 characters)")]
    InvalidName,
    #[error("tag is not valid (letters, digits, ._- , at most 128 characters, not starting with . or -)")]
    InvalidTag,
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl Name {
    pub fn parse(s: &str) -> Result<Name, NameError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(NameError::InvalidName);
        }
        if !s.split('/').all(valid_component) {
            return Err(NameError::InvalidName);
        }
        Ok(Name(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub's implicit `library/` namespace: `busybox` means `library/busybox` there.
    ///
    /// A name too long to take the prefix (over 247 characters) stays as it is, so the result
    /// is always a valid name: no repository can have the prefixed one (over 255 characters),
    /// and the registry refuses the request as it would have anyway (found by fuzzing).
    pub fn with_library_prefix(&self) -> Name {
        const PREFIX: &str = "library/";
        if self.0.contains('/') || self.0.len() + PREFIX.len() > MAX_NAME_LEN {
            self.clone()
        } else {
            Name(format!("{PREFIX}{}", self.0))
        }
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators: '.', '_', '__', or one or more '-'; never two different ones in a row.
    let mut prev_sep: Option<u8> = None;
    let mut run = 0usize;
    for &x in b {
        if alnum(x) {
            prev_sep = None;
            run = 0;
            continue;
        }
        match (x, prev_sep) {
            (b'.', None) => {}
            (b'_', None) | (b'_', Some(b'_')) if run < 2 => {}
            (b'-', None) | (b'-', Some(b'-')) => {}
            _ => return false,
        }
        prev_sep = Some(x);
        run += 1;
    }
    true
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest request names: a mutable tag, or immutable content.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            return Ok(Reference::Digest(s.parse()?));
        }
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if ok {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(NameError::InvalidTag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/busybox",
            "a/b/c",
            "my-org/my_app",
            "x.y__z",
            "a--b",
            "0",
        ] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/", "a/", "/a", "a//b", "..", "a/../b", "A", "a_-b", "a___b", "-a", "a.", "a/.b",
            "a b", "a%2fb", "a\0b",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
        assert!(Name::parse(&"a".repeat(256)).is_err());
        assert_eq!(
            Name::parse("busybox")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "library/busybox"
        );
        assert_eq!(
            Name::parse("x/y").unwrap().with_library_prefix().as_str(),
            "x/y"
        );
    }

    /// Fuzzing regression (`fuzz/` target `oci_names`): a valid 248-character name became a
    /// 256-character, invalid one with the `library/` prefix.
    #[test]
    fn library_prefix_keeps_the_name_valid() {
        let input = concat!(
            "v1.4.3.3-rcoooooooooooooooooooooooooooonoooooooooooooos3.3-rc1.4.3.3-rcooooooooo",
            "ooooooooooooooooooonoooooooooooooos3.3-rcooooooooooooooooooooooooooooooooooooooo",
            "ooooooonhab924ooo2oooooooooooooooooooooooooooonoooooooooooooos3.3-rc1.4.3.3-rcoo",
            "ooooooo7"
        );
        assert_eq!(input.len(), 248);
        let name = Name::parse(input).unwrap();
        let prefixed = name.with_library_prefix();
        assert_eq!(Name::parse(prefixed.as_str()).as_ref(), Ok(&prefixed));
        let just_fits = Name::parse(&"a".repeat(247)).unwrap().with_library_prefix();
        assert_eq!(just_fits.as_str().len(), 255);
        assert!(just_fits.as_str().starts_with("library/"));
    }

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("v1.0_rc-1").unwrap(),
            Reference::Tag("v1.0_rc-1".into())
        );
        assert!(matches!(
            Reference::parse(&Digest::of(b"").to_string()).unwrap(),
            Reference::Digest(_)
        ));
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "..",
            &"t".repeat(129),
            "sha256:zz",
            "x y",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Reference::parse("sha512:abc"),
            Err(NameError::Digest(DigestError::UnsupportedAlgorithm(_)))
        ));
    }
}
