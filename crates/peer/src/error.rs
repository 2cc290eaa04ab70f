//! Why a session ended, split by what the caller does about it.

use pollen_proto::{ErrorCode, ProtoError};
use std::io;

/// Why a session (either side) failed.
///
/// The split is the caller's decision table: [`PeerFault`](Self::PeerFault) bans the peer's
/// `PeerId` for the blob; [`Timeout`](Self::Timeout), [`Io`](Self::Io) and
/// [`Closed`](Self::Closed) only end the session (connections drop, peers restart);
/// [`Refused`](Self::Refused) is the peer's considered answer (try another peer, or later);
/// [`Internal`](Self::Internal) is this node's problem.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer broke the protocol: garbage, an oversized frame, a message out of order, a
    /// piece of the wrong length or one never asked for, a map that does not match.
    #[error("peer broke the protocol: {0}")]
    PeerFault(String),
    /// The peer made no progress within the configured deadline.
    #[error("peer made no progress within the deadline")]
    Timeout,
    /// The stream failed (including a stream cut inside a frame or piece body).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream cleanly, or the session had already ended.
    #[error("session closed")]
    Closed,
    /// The uploader answered `Error` with this code; every `Error` is final.
    #[error("peer refused: {0:?}")]
    Refused(ErrorCode),
    /// Something failed on this side: a [`crate::PieceSource`] broke its contract or could not
    /// read a piece, or this side tried to send something unencodable (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// True when the peer is to blame: ban its `PeerId` for this blob.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, SessionError::PeerFault(_))
    }

    pub(crate) fn fault(msg: impl Into<String>) -> SessionError {
        SessionError::PeerFault(msg.into())
    }
}

impl From<ProtoError> for SessionError {
    fn from(e: ProtoError) -> SessionError {
        if e.is_peer_fault() {
            return SessionError::PeerFault(e.to_string());
        }
        match e {
            ProtoError::Io(e) => SessionError::Io(e),
            other => SessionError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_errors_keep_their_blame() {
        let fault: SessionError = ProtoError::Decode("x".into()).into();
        assert!(fault.is_peer_fault());
        let fault: SessionError = ProtoError::FrameTooLarge { len: 9, max: 1 }.into();
        assert!(fault.is_peer_fault());
        let io: SessionError = ProtoError::Io(io::ErrorKind::UnexpectedEof.into()).into();
        assert!(matches!(io, SessionError::Io(_)));
        let ours: SessionError = ProtoError::Encode("x".into()).into();
        assert!(matches!(ours, SessionError::Internal(_)));
        assert!(!ours.is_peer_fault());
    }
}
