//! Errors, split by who is to blame: the peer (ban it), the connection, or this side.

use std::fmt;

/// What went wrong reading or writing the protocol.
///
/// The variants say who is at fault, because that decides what the caller does: a peer that
/// produced [`FrameTooLarge`](Self::FrameTooLarge), [`Decode`](Self::Decode) or
/// [`Invalid`](Self::Invalid) broke the protocol and is banned (see [`Self::is_peer_fault`]);
/// [`Io`](Self::Io) may just be a dropped connection; [`Encode`](Self::Encode) is a bug here.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream failed or ended early (a frame cut short is `UnexpectedEof`). Not proof of
    /// malice: connections drop.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix (or piece length) above the limit; refused before anything was
    /// allocated or read for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    /// The payload is not a well-formed encoding of any message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// A well-formed message that breaks a rule of the protocol (a limit, an invariant, a
    /// length that disagrees with the geometry).
    #[error("protocol violation: {0}")]
    Invalid(String),
    /// This side tried to send a message that breaks the protocol's limits: a bug here, not
    /// the peer's fault, and nothing was written.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl ProtoError {
    /// True when the peer broke the protocol: the caller should drop the session and ban the
    /// peer's `PeerId` (for the blob, or outright). I/O errors and local encoding bugs are not
    /// peer faults.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            ProtoError::FrameTooLarge { .. } | ProtoError::Decode(_) | ProtoError::Invalid(_)
        )
    }

    pub(crate) fn invalid(msg: impl fmt::Display) -> ProtoError {
        ProtoError::Invalid(msg.to_string())
    }
}

/// Why a piece geometry cannot be used. Returned by the constructors (a local configuration or
/// a blob too big for the protocol) and, as [`ProtoError::Invalid`], when a peer sends one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The piece size is outside `MIN_PIECE_SIZE..=MAX_PIECE_SIZE`.
    #[error("piece size {piece_size} is outside {min}..={max}", min = crate::MIN_PIECE_SIZE, max = crate::MAX_PIECE_SIZE)]
    PieceSizeOutOfRange { piece_size: u32 },
    /// The blob would need more than `MAX_PIECES` pieces of this size.
    #[error("a blob of {size} bytes needs more than {max} pieces of {piece_size} bytes", max = crate::MAX_PIECES)]
    TooManyPieces { size: u64, piece_size: u32 },
}

impl From<GeometryError> for ProtoError {
    fn from(e: GeometryError) -> ProtoError {
        ProtoError::invalid(e)
    }
}

/// Prefix that marks a serde error raised by one of this crate's validating `TryFrom`
/// conversions, so the codec can report it as [`ProtoError::Invalid`] rather than
/// [`ProtoError::Decode`]. serde's own messages never start with it.
pub(crate) const VIOLATION_PREFIX: &str = "protocol violation: ";

/// The error type of the validating `TryFrom` conversions behind `#[serde(try_from)]`.
#[derive(Debug)]
pub(crate) struct Violation(pub(crate) String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VIOLATION_PREFIX}{}", self.0)
    }
}

impl From<GeometryError> for Violation {
    fn from(e: GeometryError) -> Violation {
        Violation(e.to_string())
    }
}

impl From<ProtoError> for Violation {
    fn from(e: ProtoError) -> Violation {
        match e {
            ProtoError::Invalid(msg) => Violation(msg),
            other => Violation(other.to_string()),
        }
    }
}
