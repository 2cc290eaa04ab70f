//! The swarm key: a 32-byte secret shared by every node of a cluster. Every connection proves
//! it inside the security handshake ([`crate::proof`]) before any protocol runs, so a host
//! without the key cannot open a stream, put a record in the DHT or act as a tracker.
//!
//! The file format is the one go-libp2p and IPFS use (`ipfs-swarm-key-gen` writes it):
//!
//! ```text
//! /key/swarm/psk/1.0.0/
//! /base16/
//! <64 hex digits>
//! ```
//!
//! Parsing is strict (exactly these three lines, an optional final newline, nothing else) and
//! the file must not be accessible to other users: a key anyone on the host can read admits
//! anyone on the host.

use std::fmt;
use std::io::Read;
use std::path::Path;

use libp2p::pnet::PreSharedKey;

/// The first line of a key file.
pub const KEY_FILE_HEADER: &str = "/key/swarm/psk/1.0.0/";
/// The second line: the only encoding supported.
pub const KEY_FILE_ENCODING: &str = "/base16/";
/// Bytes of key material.
pub const KEY_BYTES: usize = 32;
/// A key file is about 95 bytes; reading stops well before anything large is allocated.
const MAX_KEY_FILE_BYTES: u64 = 512;

/// A swarm key that is wrong, unreadable or too exposed; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The shared secret of a private swarm. `Debug` shows only its fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SwarmKey([u8; KEY_BYTES]);

impl SwarmKey {
    /// A new random key, from the kernel's random source.
    pub fn generate() -> std::io::Result<SwarmKey> {
        let mut bytes = [0u8; KEY_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(SwarmKey(bytes))
    }

    /// A key from its 32 bytes (tests; a real key comes from a file or [`SwarmKey::generate`]).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> SwarmKey {
        SwarmKey(bytes)
    }

    /// Parses the text of a key file (see the module doc for the format).
    pub fn parse(text: &str) -> Result<SwarmKey, KeyError> {
        let body = text.strip_suffix('\n').unwrap_or(text);
        let body = body.strip_suffix('\r').unwrap_or(body);
        let lines: Vec<&str> = body.split('\n').map(|l| l.trim_end_matches('\r')).collect();
        let [header, encoding, hex] = lines.as_slice() else {
            return Err(KeyError(format!(
                "expected exactly 3 lines ({KEY_FILE_HEADER}, {KEY_FILE_ENCODING}, 64 hex digits), found {}",
                lines.len()
            )));
        };
        if *header != KEY_FILE_HEADER {
            return Err(KeyError(format!(
                "the first line must be {KEY_FILE_HEADER}"
            )));
        }
        if *encoding != KEY_FILE_ENCODING {
            return Err(KeyError(format!(
                "the second line must be {KEY_FILE_ENCODING} (the only encoding supported)"
            )));
        }
        parse_hex(hex).map(SwarmKey)
    }

    /// Reads and parses a key file, refusing one that other users can read or write.
    pub fn load(path: &Path) -> Result<SwarmKey, KeyError> {
        let named = |what: String| KeyError(format!("swarm key file {}: {what}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| named(e.to_string()))?;
        let meta = file.metadata().map_err(|e| named(e.to_string()))?;
        if !meta.is_file() {
            return Err(named("not a regular file".into()));
        }
        check_mode(&meta).map_err(named)?;
        let mut text = String::new();
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| named(format!("not a text key file: {e}")))?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(named(format!(
                "longer than {MAX_KEY_FILE_BYTES} bytes; a key file is 3 short lines"
            )));
        }
        SwarmKey::parse(&text).map_err(|e| named(format!("{e}; make one with `pollen swarm-key`")))
    }

    /// The key in the file format (the secret itself: write it only to a protected file).
    pub fn to_key_file(&self) -> String {
        PreSharedKey::new(self.0).to_key_file()
    }

    /// A 16-byte fingerprint (go-libp2p's), safe to log: equal keys have equal fingerprints.
    pub fn fingerprint(&self) -> String {
        PreSharedKey::new(self.0).fingerprint().to_string()
    }

    /// The secret itself, for [`crate::proof`] only.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmKey(fingerprint {})", self.fingerprint())
    }
}

/// Other users must not read or write the key. Group access is allowed: Kubernetes gives
/// secret volumes to the pod's `fsGroup`, and a group is something the operator chose.
#[cfg(unix)]
fn check_mode(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "mode {mode:03o} lets every user of this host read or change the key (anyone holding it can join the swarm); run chmod 600 on it"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

fn parse_hex(hex: &str) -> Result<[u8; KEY_BYTES], KeyError> {
    let digits = hex.as_bytes();
    if digits.len() != KEY_BYTES * 2 {
        return Err(KeyError(format!(
            "the third line must be {} hex digits, found {} bytes",
            KEY_BYTES * 2,
            digits.len()
        )));
    }
    let mut key = [0u8; KEY_BYTES];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let digit = |i: usize| pair.get(i).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (digit(0), digit(1)) else {
            return Err(KeyError(
                "the third line must contain only hex digits (0-9, a-f)".into(),
            ));
        };
        *byte = hi << 4 | lo;
    }
    Ok(key)
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const GOOD: &str = "/key/swarm/psk/1.0.0/\n/base16/\n000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

    #[test]
    fn round_trips_the_standard_format() {
        let key = SwarmKey::generate().unwrap();
        let text = key.to_key_file();
        assert!(text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        assert_eq!(SwarmKey::parse(&text).unwrap(), key);
        assert_ne!(SwarmKey::generate().unwrap(), key);
        let parsed = SwarmKey::parse(GOOD).unwrap();
        assert_eq!(parsed.to_key_file(), GOOD);
        assert_eq!(SwarmKey::parse(GOOD.trim_end()).unwrap(), parsed);
        assert_eq!(
            SwarmKey::parse(&GOOD.replace('\n', "\r\n")).unwrap(),
            parsed
        );
        assert!(!format!("{parsed:?}").contains("0102030405"));
    }

    #[test]
    fn refuses_anything_else() {
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        for bad in [
            String::new(),
            "\n".into(),
            hex.into(),
            format!("/key/swarm/psk/1.0.0/\n/base64/\n{hex}\n"),
            format!("/key/swarm/psk/2.0.0/\n/base16/\n{hex}\n"),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\nextra\n"),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n\n"),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", &hex[2..]),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}00\n"),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}zz\n", &hex[2..]),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}é\n", &hex[2..]),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n {}\n", &hex[1..]),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n+{}\n", &hex[1..]),
        ] {
            assert!(SwarmKey::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_names_the_file_and_refuses_world_access() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("swarm.key");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(GOOD.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            SwarmKey::load(&path).unwrap(),
            SwarmKey::parse(GOOD).unwrap()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(SwarmKey::load(&path).is_ok());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SwarmKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("swarm.key") && e.contains("chmod 600"), "{e}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "x".repeat(4096)).unwrap();
        let e = SwarmKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
        std::fs::write(&path, "garbage").unwrap();
        let e = SwarmKey::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("swarm.key") && e.contains("pollen swarm-key"),
            "{e}"
        );
        let e = SwarmKey::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
