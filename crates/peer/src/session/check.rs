//! What the downloader checks in each reply beyond its decoding: everything that needs the
//! session's context (PROTOCOL.md, "What a receiver must verify", point 1).

use super::{Event, Have, Session};
use crate::config::SessionConfig;
use crate::error::SessionError;
use pollen_oci::Digest;
use pollen_proto::{PieceGeometry, Reply};
use tracing::debug;

impl Session {
    /// Applies one reply to the session; `None` when it is no news to the caller.
    pub(super) fn on_reply(&mut self, reply: Reply) -> Result<Option<Event>, SessionError> {
        let count = self.geometry.count();
        let event = match reply {
            Reply::Have {
                geometry,
                bitfield,
                complete,
                map_id,
            } => {
                if geometry != self.geometry {
                    return Err(SessionError::fault("a new Have with another geometry"));
                }
                self.have = bitfield.clone();
                self.complete = complete;
                self.map_id = map_id;
                Event::Have(Have {
                    geometry,
                    bitfield,
                    complete,
                    map_id,
                })
            }
            Reply::HaveMore { indices } => {
                let mut new = Vec::new();
                for index in indices {
                    let added = self
                        .have
                        .set(index)
                        .map_err(|e| SessionError::fault(format!("HaveMore: {e}")))?;
                    if added {
                        new.push(index);
                    }
                }
                if new.is_empty() {
                    return Ok(None);
                }
                Event::HaveMore(new)
            }
            Reply::PieceMap(map) => {
                if !self.map_asked {
                    return Err(SessionError::fault("a piece map nobody asked for"));
                }
                if map.digest() != &self.digest || map.geometry() != &self.geometry {
                    return Err(SessionError::fault(
                        "a piece map of another blob or geometry",
                    ));
                }
                let id = map.id();
                if self.map_id != Some(id) {
                    return Err(SessionError::fault(format!(
                        "piece map {id} is not the advertised {:?}",
                        self.map_id
                    )));
                }
                self.map_pending = false;
                Event::Map(map)
            }
            Reply::PieceHashes { first, hashes } => {
                self.take_hashes("piece hashes", first, hashes.len(), count)?;
                Event::Hashes { first, hashes }
            }
            Reply::SignedHashes {
                producer,
                first,
                hashes,
                signatures,
            } => {
                self.take_hashes("signed hashes", first, hashes.len(), count)?;
                Event::SignedHashes {
                    producer,
                    first,
                    hashes,
                    signatures,
                }
            }
            Reply::Choked => {
                self.choked = true;
                let mut pending = self.shared.pending();
                let dropped: Vec<u32> =
                    std::mem::take(&mut pending.requested).into_iter().collect();
                pending.stale.extend(&dropped);
                Event::Choked { dropped }
            }
            Reply::Unchoked => {
                self.choked = false;
                Event::Unchoked
            }
            Reply::Error { code, message } => {
                debug!(digest = %self.digest, ?code, %message, "peer ended the session");
                return Err(SessionError::Refused(code));
            }
            // The reader turns every piece header into `Incoming::Piece` or an error.
            Reply::Piece { index, .. } => {
                return Err(SessionError::Internal(format!(
                    "piece {index} header reached the session"
                )))
            }
        };
        Ok(Some(event))
    }

    /// A run of `len` hashes from piece `first` (`what` names the reply): asked for, and
    /// inside the blob. Any range, since several nodes fetch parts of a blob; whether the
    /// hashes agree with the ones known is the map's to check.
    fn take_hashes(
        &mut self,
        what: &str,
        first: u32,
        len: usize,
        count: u32,
    ) -> Result<(), SessionError> {
        if !self.map_asked {
            return Err(SessionError::fault(format!("{what} nobody asked for")));
        }
        let end = u64::from(first) + len as u64;
        if end > u64::from(count) {
            return Err(SessionError::fault(format!(
                "{what} run to {end}, past {count}"
            )));
        }
        self.map_pending = false;
        Ok(())
    }
}

/// Checks the first `Have` against what this node knows before any piece moves: the geometry
/// must be the one this node would choose for that size (an agent mixing pieces of two
/// geometries could not use them), and an empty blob is exactly the blob of the empty digest.
pub(super) fn check_have(
    digest: &Digest,
    have: &Have,
    cfg: &SessionConfig,
) -> Result<(), SessionError> {
    let size = have.geometry.size();
    if size > cfg.max_blob_size {
        return Err(SessionError::fault(format!(
            "the peer's blob size {size} is over the limit of {} bytes",
            cfg.max_blob_size
        )));
    }
    let ours = PieceGeometry::choose(size, cfg.piece_size)
        .map_err(|e| SessionError::fault(format!("the peer's blob size {size}: {e}")))?;
    if have.geometry != ours {
        return Err(SessionError::fault(format!(
            "geometry {:?} differs from this node's {ours:?}",
            have.geometry
        )));
    }
    if (size == 0) != (*digest == Digest::of(b"")) {
        return Err(SessionError::fault(format!(
            "a blob of {size} bytes cannot have digest {digest}"
        )));
    }
    Ok(())
}

/// A reply's name for messages (never its contents: a map is 2 MiB).
pub(super) fn kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Have { .. } => "Have",
        Reply::HaveMore { .. } => "HaveMore",
        Reply::PieceMap(_) => "PieceMap",
        Reply::PieceHashes { .. } => "PieceHashes",
        Reply::SignedHashes { .. } => "SignedHashes",
        Reply::Piece { .. } => "Piece",
        Reply::Choked => "Choked",
        Reply::Unchoked => "Unchoked",
        Reply::Error { .. } => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_proto::Bitfield;

    fn have(size: u64) -> Have {
        let geometry = PieceGeometry::choose(size, None).unwrap();
        Have {
            bitfield: Bitfield::new(&geometry),
            geometry,
            complete: false,
            map_id: None,
        }
    }

    #[test]
    fn a_claimed_size_over_the_limit_is_a_peer_fault() {
        let digest = Digest::of(b"some blob");
        let cfg = SessionConfig::default();
        let claim = check_have(&digest, &have(4 << 40), &cfg).unwrap_err();
        assert!(claim.is_peer_fault(), "{claim}");
        assert!(check_have(&digest, &have(cfg.max_blob_size), &cfg).is_ok());
        let tight = SessionConfig {
            max_blob_size: 1 << 20,
            ..SessionConfig::default()
        };
        assert!(check_have(&digest, &have(2 << 20), &tight)
            .unwrap_err()
            .is_peer_fault());
    }
}
