//! One peer of a blob's download as the download loop sees it, and the bookkeeping over all of
//! them (piece availability, this node's random piece order).

use super::peer_task::PeerTask;
use pollen_proto::Bitfield;
use tokio::time::Instant;

/// Most piece requests kept outstanding per peer: enough to keep a fast link busy while each
/// piece is verified and written. A peer gets as many as it delivers in [`PIPELINE_SECONDS`]
/// (at least one), so a busy or slow peer — the fetcher everyone asks at first — does not
/// hold pieces hostage that other peers will soon have (docs/tracker.md).
const REQUESTS_PER_PEER: usize = 4;
/// Most piece bytes requested ahead per peer: the pieces in flight are buffered in memory, and
/// an overridden piece size can be up to 64 MiB, so the count alone could hold 256 MiB in
/// flight per peer.
const PIPELINE_BYTES: u64 = 16 << 20;
/// Most piece bytes a download holds in flight over all its peers: requested and not yet
/// received, or received and not yet written. Each is a buffer in memory, so without this a
/// node downloading from many peers at once would hold [`PIPELINE_BYTES`] for each. 48 MiB is
/// 3 peers at full pipeline, and covers a 4 ms round trip at 100 Gbit/s.
const DOWNLOAD_BYTES: u64 = 48 << 20;
/// How much of a peer's measured rate is kept requested ahead.
const PIPELINE_SECONDS: f64 = 1.0;

/// One peer's session in the download.
pub(crate) struct Slot {
    pub task: PeerTask,
    pub has: Option<Bitfield>,
    pub unchoked: bool,
    pub outstanding: usize,
    /// Piece bytes this peer delivered, since its first request.
    pub delivered: u64,
    pub first_request: Option<Instant>,
}

impl Slot {
    /// Requests to keep outstanding: what the peer delivers in [`PIPELINE_SECONDS`].
    pub fn pipeline(&self, piece_len: u64) -> usize {
        let Some(since) = self.first_request else {
            return 1;
        };
        let secs = since.elapsed().as_secs_f64().max(0.05);
        let ahead = self.delivered as f64 / secs * PIPELINE_SECONDS / piece_len.max(1) as f64;
        (ahead.ceil() as usize).clamp(1, pipeline_cap(piece_len))
    }
}

/// Most requests outstanding per peer for pieces of `piece_len` bytes: [`REQUESTS_PER_PEER`],
/// fewer where that many would hold more than [`PIPELINE_BYTES`], never none.
fn pipeline_cap(piece_len: u64) -> usize {
    pieces_within(PIPELINE_BYTES, piece_len).clamp(1, REQUESTS_PER_PEER)
}

/// Whole pieces of `piece_len` bytes within `bytes`.
fn pieces_within(bytes: u64, piece_len: u64) -> usize {
    usize::try_from(bytes / piece_len.max(1)).unwrap_or(usize::MAX)
}

/// A random rank per piece (std's randomly keyed hasher: no extra dependency for a shuffle).
pub(crate) fn random_order(count: u32) -> Vec<u64> {
    use std::hash::{BuildHasher, RandomState};
    let keyed = RandomState::new();
    (0..count).map(|i| keyed.hash_one(i)).collect()
}

/// Whether `has` holds a piece this node lacks and no peer in sight held: the swarm moved on.
pub(crate) fn brings_new(availability: &[u16], has: &Bitfield, mine: &Bitfield) -> bool {
    has.iter_ones()
        .any(|i| !mine.get(i) && availability.get(i as usize) == Some(&0))
}

/// Adds (`delta` 1) or removes (-1) a peer's pieces from the availability counts.
pub(crate) fn count(availability: &mut [u16], has: &Bitfield, delta: i32) {
    for i in has.iter_ones() {
        if let Some(a) = availability.get_mut(i as usize) {
            *a = if delta > 0 {
                a.saturating_add(1)
            } else {
                a.saturating_sub(1)
            };
        }
    }
}

/// Most pieces of `piece_len` bytes a download keeps in flight over all its peers (see
/// [`DOWNLOAD_BYTES`]), never fewer than one peer's full pipeline.
pub(crate) fn download_cap(piece_len: u64) -> usize {
    pieces_within(DOWNLOAD_BYTES, piece_len).max(pipeline_cap(piece_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_holds_at_most_its_bytes_but_always_one_piece() {
        const MIB: u64 = 1 << 20;
        assert_eq!(pipeline_cap(MIB), REQUESTS_PER_PEER);
        assert_eq!(pipeline_cap(4 * MIB), 4);
        assert_eq!(pipeline_cap(8 * MIB), 2);
        assert_eq!(pipeline_cap(64 * MIB), 1);
        assert_eq!(pipeline_cap(0), REQUESTS_PER_PEER);
    }

    #[test]
    fn a_download_holds_at_most_its_bytes_over_all_peers_but_one_full_pipeline() {
        const MIB: u64 = 1 << 20;
        assert_eq!(download_cap(MIB), 48);
        assert_eq!(download_cap(4 * MIB), 12);
        assert_eq!(download_cap(64 * MIB), 1);
        assert_eq!(download_cap(16 * MIB), 3);
        assert_eq!(download_cap(0), 48 << 20);
    }
}
