//! Admission by the swarm key without a second cipher.
//!
//! Until part 8 the key was libp2p's private network: XSalsa20 over every byte, under TLS's
//! own AES-GCM. `salsa20` has only a portable backend (about 0.5 GB/s per core here), so the
//! key cost each node about 2 CPU-seconds per GiB and capped a connection near 0.33 GB/s
//! (`docs/transport.md`). Now the key is proved inside the security handshake instead:
//! - **TLS**: right after the handshake each side sends an HMAC-SHA256, under the key, of a
//!   value exported from this TLS session (RFC 8446 §7.5) and of its role, and checks the
//!   other's before anything else is read or written. A proof is bound to its session and
//!   direction, so it cannot be replayed on another connection or reflected back.
//! - **noise**: the handshake's prologue is an HMAC of the key; a peer with another prologue
//!   fails the handshake itself.
//!
//! Either way a host without the key never gets a stream, a DHT record or a tracker role.
//! What it can still do, unlike under the private network, is complete a TLS (or noise)
//! handshake and so learn this node's PeerId; the connection limits bound what that costs.

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ring::hmac;

use crate::key::SwarmKey;

/// Bytes of a proof (HMAC-SHA256).
pub const PROOF_BYTES: usize = 32;

/// The TLS exporter label: any other use of the exporter gets other bytes.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-pollen-swarm-key-v1";

/// Which end of the connection: each proves its own role, so a proof reflected back fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"pollen swarm key proof v1: dialer",
            Role::Listener => b"pollen swarm key proof v1: listener",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Listener,
            Role::Listener => Role::Dialer,
        }
    }
}

fn mac_key(key: &SwarmKey) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key.secret())
}

fn message(exported: &[u8; PROOF_BYTES], role: Role) -> Vec<u8> {
    let mut msg = role.label().to_vec();
    msg.extend_from_slice(exported);
    msg
}

/// The noise prologue for this key: both ends must hold the same to finish a handshake.
pub fn noise_prologue(key: &SwarmKey) -> Vec<u8> {
    hmac::sign(&mac_key(key), b"pollen swarm key noise prologue v1")
        .as_ref()
        .to_vec()
}

/// Sends this side's proof for the session `exported` from and checks the other side's.
/// Bounded by the transport's upgrade timeout, like the handshake before it.
pub async fn exchange<S>(
    stream: &mut S,
    key: &SwarmKey,
    exported: &[u8; PROOF_BYTES],
    role: Role,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let k = mac_key(key);
    let mine = hmac::sign(&k, &message(exported, role));
    stream.write_all(mine.as_ref()).await?;
    stream.flush().await?;
    let mut theirs = [0u8; PROOF_BYTES];
    stream.read_exact(&mut theirs).await?;
    // Constant time: a mismatch says nothing about how close a guess was.
    hmac::verify(&k, &message(exported, role.other()), &theirs).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the peer did not prove this swarm's key",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::io::Cursor;

    fn key(byte: u8) -> SwarmKey {
        SwarmKey::from_bytes([byte; 32])
    }

    /// Whether `role` accepts `theirs` as the other side's proof. The cursor starts with room
    /// for this side's own proof (written first, over it), then holds `theirs` to be read.
    async fn accepts(k: &SwarmKey, exported: [u8; 32], role: Role, theirs: &[u8]) -> bool {
        let mut bytes = vec![0u8; PROOF_BYTES];
        bytes.extend_from_slice(theirs);
        let mut io = Cursor::new(bytes);
        exchange(&mut io, k, &exported, role).await.is_ok()
    }

    /// The proof `role` sends (the read after it fails on the empty cursor).
    async fn proof_of(k: &SwarmKey, exported: [u8; 32], role: Role) -> Vec<u8> {
        let mut io = Cursor::new(Vec::new());
        let _ = exchange(&mut io, k, &exported, role).await;
        io.into_inner()
    }

    #[tokio::test]
    async fn the_same_key_and_session_is_accepted() {
        let k = key(7);
        let dialer = proof_of(&k, [1; 32], Role::Dialer).await;
        assert_eq!(dialer.len(), PROOF_BYTES);
        assert!(accepts(&k, [1; 32], Role::Listener, &dialer).await);
    }

    #[tokio::test]
    async fn another_key_another_session_or_a_reflected_proof_is_refused() {
        let k = key(7);
        let dialer = proof_of(&k, [1; 32], Role::Dialer).await;
        assert!(!accepts(&key(8), [1; 32], Role::Listener, &dialer).await);
        assert!(!accepts(&k, [2; 32], Role::Listener, &dialer).await);
        // The dialer's own proof sent back to it.
        assert!(!accepts(&k, [1; 32], Role::Dialer, &dialer).await);
        // A keyless peer's next bytes (multistream-select for the muxer), or too few bytes.
        let junk = b"\x13/multistream/1.0.0\n\x0d/yamux/1.0.0\n";
        assert!(!accepts(&k, [1; 32], Role::Listener, junk).await);
        assert!(!accepts(&k, [1; 32], Role::Listener, &dialer[..31]).await);
    }

    #[test]
    fn prologues_differ_by_key() {
        assert_eq!(noise_prologue(&key(1)), noise_prologue(&key(1)));
        assert_ne!(noise_prologue(&key(1)), noise_prologue(&key(2)));
    }
}
