//! Digests, repository names, references and image references (`pollen-oci`): what a client's
//! request path, a preheat and a peer name content with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_oci::{Digest, ImageRef, Name, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = s.parse::<Digest>() {
        // Canonical: what is accepted prints back to itself and parses to the same digest.
        assert_eq!(d.to_string(), s);
        assert_eq!(Digest::from_hex(&d.hex()).ok(), Some(d));
    }
    if let Ok(d) = Digest::from_hex(s) {
        assert_eq!(d.hex(), s);
    }
    if let Ok(n) = Name::parse(s) {
        assert_eq!(n.as_str(), s);
        assert!(!s.contains("..") && !s.starts_with('/') && !s.contains("//"));
        assert!(Name::parse(n.with_library_prefix().as_str()).is_ok());
    }
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.to_string(), s);
        assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r));
    }
    if let Ok(i) = ImageRef::parse(s) {
        assert!(Name::parse(i.name.as_str()).is_ok());
        assert!(Reference::parse(&i.reference.to_string()).is_ok());
    }
});
