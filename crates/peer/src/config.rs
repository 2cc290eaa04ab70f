//! Deadlines and the geometry rule shared by both sides of a session.

use std::time::Duration;

/// Default [`SessionConfig::stall_timeout`]: the agent's upstream `--idle-timeout` default,
/// for the same job (a transfer that stopped moving).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`SessionConfig::idle_timeout`]: long enough for a downloader to wait for the
/// next `HaveMore` of a peer still fetching from the upstream, short enough that a forgotten
/// session does not hold a stream (and an upload slot) for long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Default [`SessionConfig::slot_timeout`]: a choked downloader learns within this long that
/// it should look elsewhere (`Error Busy`) instead of waiting on a busy uploader.
pub const DEFAULT_SLOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadlines and rules for one session, uploader or downloader. Every wait on the peer is
/// bounded by one of these; none of them is a deadline for a whole piece, because a 64 MiB
/// piece on a slow or rate-limited link legitimately takes long while bytes keep moving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// While the peer owes us something (the answer to `Interest`, an outstanding piece or the
    /// map we asked for, the rest of a frame, or room to write ours), the longest it may go
    /// without moving a byte. Must exceed the gaps an uploader's rate limit puts between the
    /// chunks of one session.
    pub stall_timeout: Duration,
    /// The longest a session may sit with nothing owed either way: an uploader with no request
    /// queued ends the session (closing the stream) after this long without a request; a
    /// downloader with nothing outstanding gets [`crate::SessionError::Timeout`] from
    /// `next_event` after this long without a message.
    pub idle_timeout: Duration,
    /// How long an uploader session over the node's session cap stays choked, waiting for an
    /// upload slot, before it answers `Error Busy` and ends.
    pub slot_timeout: Duration,
    /// The piece size override this node uses (`PieceGeometry::choose`); it must be the same on
    /// every agent, so a downloader refuses a peer whose geometry differs. `None`: automatic.
    pub piece_size: Option<u32>,
    /// The largest blob size a peer's `Have` may claim; more is a protocol fault (the
    /// agent's `--max-blob-size`).
    pub max_blob_size: u64,
    /// The stream speaks `/pollen/pieces/3`: an uploader sends hashes signed by their
    /// producers, passed-on ones too (`Reply::SignedHashes`); `false` on the legacy id,
    /// whose peers know only `PieceHashes`.
    pub signed_hashes: bool,
}

/// Default [`SessionConfig::max_blob_size`] (the agent's default `--max-blob-size`).
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 64 << 30;

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            slot_timeout: DEFAULT_SLOT_TIMEOUT,
            piece_size: None,
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            signed_hashes: true,
        }
    }
}

/// `t + d`, saturating at a far future instead of panicking on overflow, so a configured
/// `Duration::MAX` means "no deadline in practice" rather than a crash.
pub(crate) fn after(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_deadlines_saturate() {
        let now = tokio::time::Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }
}
