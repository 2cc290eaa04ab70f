//! Splitting a blob's upstream fetch across several members.
//!
//! One fetcher alone brings each byte into the swarm through its own upload, so new bytes
//! enter at that one node's rate however fast the registry is (the peer-bound case of
//! benches/README.md). When the fetcher reports the blob's size (`Sized`), the tracker picks up
//! to [`MAX_FETCHERS`] members: the fetcher and members that are not busy with another fetch
//! (seeds first, then the earliest to join). It cuts the blob into stripes of at least
//! `--split-min` bytes, up to [`MAX_ROUNDS`] per fetcher, and deals them out in turn, so the
//! fetchers move through the blob side by side from its start: the part every node holds from
//! byte 0 grows with the whole swarm's rate, and with it what clients can read and the
//! blob's digest hashed so far (with one contiguous range each, three quarters of a 1 GiB
//! blob were hashed, by agent and client, after the last byte arrived: 13 s of 61 on the
//! 2-core benchmark). The fetcher's first stripe is the start, which it is already streaming.
//! Each stripe still leaves the registry once, so egress stays at the blob's size; new bytes
//! enter at the sum of the fetchers' uploads. A stripe whose member dies goes to another
//! member, which fetches only the pieces of it that it does not hold.

use super::{same_rack, BlobSwarm, Push, Swarms};
use pollen_oci::Digest;
use pollen_proto::{TrackerReply, MAX_TRACKER_PEERS};
use std::collections::HashSet;
use std::ops::Range;
use std::time::Instant;

/// Most members fetching parts of one blob at once: more parallel range requests than this
/// rarely speed up a registry, and every downloader needs a session with each of them (they
/// vouch for their ranges' hashes).
pub const MAX_FETCHERS: usize = 4;
/// Most stripes per fetcher: each is a range request of its own, and with this many the part
/// of the blob behind the readable start is at most an eighth of it.
pub const MAX_ROUNDS: usize = 8;
/// How long the tracker waits at most after `Sized` before it splits: in a rollout the other
/// nodes ask for the blob within a moment of the first, and only members can take shares. It
/// splits at once when enough members are there to take every part ([`Swarms::split_ready`]):
/// the fetcher's first range is a 4 MiB probe, done in tens of milliseconds, and the registry
/// then stood idle for the rest of the wait (pollen-sim, Kraken's set-up at 600 nodes: no
/// peer-to-peer flow before 0.3 s).
pub const SPLIT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// The default smallest range worth its own fetcher (`--split-min`): below it the extra
/// request and sessions cost more than the upload they add.
pub const MIN_SHARE: u64 = 8 << 20;

/// One range of a split fetch and the member fetching it (`None`: nobody left to take it).
pub(super) struct Share {
    pub range: Range<u32>,
    pub owner: Option<u64>,
}

/// `count` pieces cut into `parts` contiguous ranges whose lengths differ by at most one.
pub fn cut(count: u32, parts: usize) -> Vec<Range<u32>> {
    let parts = u32::try_from(parts)
        .unwrap_or(u32::MAX)
        .clamp(1, count.max(1));
    let (base, extra) = (count / parts, count % parts);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..parts {
        let len = base + u32::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

fn fetch_range(size: u64, range: &Range<u32>) -> TrackerReply {
    TrackerReply::FetchRange {
        size,
        first: range.start,
        end: range.end,
    }
}

/// What a fetcher reports once it knows the blob (`TrackerRequest::Sized`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sized {
    pub size: u64,
    pub count: u32,
    /// Whether the upstream answers range requests (otherwise the fetch is not split).
    pub ranges: bool,
}

impl Swarms {
    /// The most members a blob of `size` bytes is split across.
    fn most_parts(&self, size: u64) -> usize {
        let by_size = usize::try_from(size / self.split_min.max(1)).unwrap_or(usize::MAX);
        MAX_FETCHERS.min(by_size)
    }

    /// Whether the fetcher `id` of `digest`, which just reported `blob`, can be answered now
    /// rather than after [`SPLIT_WAIT`]: the fetch is not split, or members that are free to
    /// take a part are there for every part. Waiting longer would only let a seed that joins
    /// meanwhile take a part in place of a member that is not one.
    pub fn split_ready(&self, digest: &Digest, id: u64, blob: Sized) -> bool {
        if !blob.ranges || self.split_min == 0 {
            return true;
        }
        let Some(swarm) = self.blobs.get(digest) else {
            return true;
        };
        let wanted = self.most_parts(blob.size).saturating_sub(1);
        self.helpers(digest, swarm, id).len() >= wanted
    }

    /// The members of `swarm` (the swarm of `digest`) free to take a part of fetcher `id`'s
    /// split, seeds first, then in the order they joined: not busy, and not fetching (part of)
    /// another blob, which they carry into the swarm now.
    fn helpers(&self, digest: &Digest, swarm: &BlobSwarm, id: u64) -> Vec<(bool, u64)> {
        let busy: HashSet<&[u8]> = self
            .blobs
            .iter()
            .filter(|(d, _)| *d != digest)
            .flat_map(|(_, s)| s.fetching_members().map(|m| m.peer.as_slice()))
            .collect();
        let mut helpers: Vec<(bool, u64)> = swarm
            .members
            .iter()
            .filter(|(mid, m)| **mid != id && !m.busy && !busy.contains(m.peer.as_slice()))
            .map(|(mid, m)| (!m.seed, *mid))
            .collect();
        helpers.sort_unstable();
        helpers
    }

    /// The fetcher `id` of `digest` learnt the blob's size: splits the fetch if it is worth it
    /// and returns this member's own range (the whole blob when it is not split).
    pub fn sized(
        &mut self,
        now: Instant,
        digest: &Digest,
        id: u64,
        blob: Sized,
        out: &mut Vec<Push>,
    ) -> TrackerReply {
        let Sized {
            size,
            count,
            ranges,
        } = blob;
        let whole = fetch_range(size, &(0..count));
        let most = self.most_parts(size);
        let helpers = match self.blobs.get(digest) {
            Some(swarm) => self.helpers(digest, swarm, id),
            None => return whole,
        };
        let Some(swarm) = self.blobs.get_mut(digest) else {
            return whole;
        };
        if swarm.fetcher != Some(id) || !swarm.shares.is_empty() {
            return swarm
                .shares
                .iter()
                .find(|s| s.owner == Some(id))
                .map_or(whole, |s| fetch_range(size, &s.range));
        }
        swarm.size = Some(size);
        swarm.count = count;
        let (parts, rounds) = match ranges && self.split_min > 0 {
            true => {
                let by_size = usize::try_from(size / self.split_min).unwrap_or(usize::MAX);
                let parts = most.min(1 + helpers.len()).max(1);
                (parts, MAX_ROUNDS.min(by_size / parts).max(1))
            }
            false => (1, 1),
        };
        let owners: Vec<u64> = std::iter::once(id)
            .chain(helpers.into_iter().map(|(_, mid)| mid))
            .take(parts)
            .collect();
        swarm.shares = cut(count, parts.saturating_mul(rounds))
            .into_iter()
            .zip(owners.iter().copied().cycle())
            .map(|(range, owner)| super::Share {
                range,
                owner: Some(owner),
            })
            .collect();
        // In order: each member fetches its stripes front to back. The fetcher's first one is
        // this call's answer; its others follow as pushes.
        for share in swarm.shares.iter().skip(1) {
            if let Some(owner) = share.owner.filter(|o| swarm.members.contains_key(o)) {
                out.push((owner, fetch_range(size, &share.range)));
            }
        }
        if parts > 1 {
            swarm.name_fetchers(out);
        }
        swarm.start_rates(now);
        swarm
            .shares
            .first()
            .map_or(whole, |s| fetch_range(size, &s.range))
    }
}

impl BlobSwarm {
    /// The members fetching from the upstream now: the fetcher and the owners of shares.
    pub(super) fn fetching_members(&self) -> impl Iterator<Item = &super::Member> {
        let owners = self.shares.iter().filter_map(|s| s.owner);
        self.fetcher
            .into_iter()
            .chain(owners)
            .filter_map(|id| self.members.get(&id))
    }

    /// Tells every member which members fetch parts of the blob (they hold each piece first),
    /// and which of those share its rack.
    fn name_fetchers(&self, out: &mut Vec<Push>) {
        let mut owners: Vec<&super::Member> = Vec::new();
        for o in self.shares.iter().filter_map(|s| s.owner) {
            if let Some(m) = self.members.get(&o) {
                if !owners.iter().any(|x| x.peer == m.peer) {
                    owners.push(m);
                }
            }
        }
        for (mid, member) in &self.members {
            let named: Vec<&super::Member> = owners
                .iter()
                .copied()
                .filter(|o| o.peer != member.peer)
                .take(MAX_TRACKER_PEERS)
                .collect();
            let near: Vec<Vec<u8>> = named
                .iter()
                .filter(|o| same_rack(o, member))
                .map(|o| o.peer.clone())
                .collect();
            if !named.is_empty() {
                let peers = named.iter().map(|o| o.peer.clone()).collect();
                out.push((*mid, TrackerReply::Peers { peers }));
            }
            if !near.is_empty() {
                out.push((*mid, TrackerReply::Near { peers: near }));
            }
        }
    }

    /// Member `gone` left without the whole blob: its unfinished shares go to the best
    /// remaining member (not fetching already, not busy with another blob, seeds first, then
    /// the most pieces), which
    /// fetches what of them it lacks. Returns whether `gone` owned a share.
    pub(super) fn hand_on_shares(&mut self, gone: u64, out: &mut Vec<Push>) -> bool {
        let Some(size) = self.size else {
            return false;
        };
        let mut owned = false;
        for i in 0..self.shares.len() {
            if self.shares.get(i).and_then(|s| s.owner) != Some(gone) {
                continue;
            }
            owned = true;
            let fetching: HashSet<u64> = self.shares.iter().filter_map(|s| s.owner).collect();
            let next = self
                .members
                .iter()
                .filter(|(mid, _)| **mid != gone)
                .max_by_key(|(mid, m)| {
                    (
                        !fetching.contains(mid),
                        !m.busy,
                        m.seed,
                        m.pieces,
                        std::cmp::Reverse(**mid),
                    )
                })
                .map(|(mid, _)| *mid);
            let Some(share) = self.shares.get_mut(i) else {
                continue;
            };
            share.owner = next;
            if let Some(mid) = next {
                out.push((mid, fetch_range(size, &share.range)));
                if self.fetcher == Some(gone) {
                    self.fetcher = Some(mid);
                }
            }
        }
        if owned && self.fetcher == Some(gone) {
            self.fetcher = None;
        }
        owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_every_piece_once_and_differ_by_at_most_one() {
        for (count, parts) in [(10, 3), (3, 4), (1, 1), (512, 4), (7, 0)] {
            let ranges = cut(count, parts);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(count));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            let lens: Vec<u32> = ranges.iter().map(|r| r.len() as u32).collect();
            assert!(lens.iter().all(|l| *l >= 1), "{count} in {parts}: {lens:?}");
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
        assert_eq!(cut(3, 4).len(), 3, "never more ranges than pieces");
    }
}
