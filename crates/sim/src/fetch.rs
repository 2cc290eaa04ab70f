//! Registry requests: the tracker's fetcher (a probe range, `Sized`, then its share or the
//! whole blob), shares of a split fetch, and fall-backs. Each request's first byte comes
//! after `--registry-latency`; its pieces then stream over one connection from the registry,
//! through the registry's uplink (shared by every request) to the node.

use crate::topo::End;
use crate::world::{nanos, Ev, Owner, Phase, ToTracker, Why, World};
use std::time::Duration;

/// The agent's first request of a coordinated fetch (`transfer.rs` PROBE_RANGE).
const PROBE_RANGE: u64 = 4 << 20;
/// How long the fetcher waits for the tracker's answer to `Sized` (`SIZED_TIMEOUT`).
const SIZED_TIMEOUT: Duration = Duration::from_secs(1);

impl World {
    /// The tracker made this node the fetcher.
    pub(crate) fn become_fetcher(&mut self, n: usize, layer: usize) {
        let g = self.geometry(self.blob_of(n, layer));
        let splittable = self.s.split_min > 0 && g.size() >= self.s.split_min.saturating_mul(2);
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        f.phase = Phase::Upstream;
        let missing: Vec<u32> = f.have.iter_missing().collect();
        let pieces = if splittable {
            f.probing = true;
            let probe = u32::try_from(PROBE_RANGE.div_ceil(u64::from(g.piece_size()))).unwrap_or(1);
            missing.into_iter().filter(|i| *i < probe.max(1)).collect()
        } else {
            missing
        };
        self.start_upstream(n, layer, Why::Fetcher, pieces);
    }

    /// Asks the registry for `pieces` (in order, one request).
    pub(crate) fn start_upstream(&mut self, n: usize, layer: usize, why: Why, pieces: Vec<u32>) {
        let path = self.topo.path(End::Registry, n);
        let needs_conn = self
            .fetch(n, layer)
            .is_some_and(|f| f.upstream_conn.is_none());
        let conn = needs_conn.then(|| self.open_conn(&path, Owner::Upstream { node: n, layer }));
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if let Some(c) = conn {
            f.upstream_conn = Some(c);
        }
        f.fetching = true;
        f.upstream = Some((pieces, why));
        *self.stats.upstream_requests.entry(why).or_default() += 1;
        let epoch = self.epoch(n);
        let delay = nanos(self.s.registry_latency);
        self.after(
            delay,
            Ev::UpstreamData {
                node: n,
                epoch,
                layer,
            },
        );
    }

    /// The response's first byte: the blob opens here, and its pieces start streaming.
    pub(crate) fn upstream_data(&mut self, n: usize, layer: usize) {
        let g = self.geometry(self.blob_of(n, layer));
        let now = self.now;
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        let have = f.have.clone();
        // The agent super-seeds what it appends from the upstream.
        f.claims.activate(&have);
        let report = f.probing;
        if report {
            f.awaiting_share = true;
        }
        let (Some((pieces, _)), Some(conn)) = (f.upstream.clone(), f.upstream_conn) else {
            return;
        };
        for &i in &pieces {
            let len = u64::from(g.len_of(i).unwrap_or(0));
            self.net.send(now, conn, len, u64::from(i));
        }
        if report {
            let sized = pollen_core::tracker::Sized {
                size: g.size(),
                count: g.count(),
                ranges: true,
            };
            self.send_tracker(n, layer, ToTracker::Sized(sized));
            let epoch = self.epoch(n);
            self.after(
                nanos(SIZED_TIMEOUT),
                Ev::ShareTimeout {
                    node: n,
                    epoch,
                    layer,
                },
            );
        }
        if pieces.is_empty() {
            self.upstream_done(n, layer);
        }
    }

    pub(crate) fn piece_from_upstream(&mut self, n: usize, layer: usize, piece: u32) {
        let len = u64::from(
            self.geometry(self.blob_of(n, layer))
                .len_of(piece)
                .unwrap_or(0),
        );
        if let Some(node) = self.nodes.get_mut(n) {
            node.received += len;
        }
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        let Some((pieces, _)) = f.upstream.as_mut() else {
            return;
        };
        pieces.retain(|i| *i != piece);
        let finished = pieces.is_empty();
        self.store(n, layer, piece, false);
        if finished {
            self.upstream_done(n, layer);
        }
    }

    fn upstream_done(&mut self, n: usize, layer: usize) {
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        let why = f.upstream.take().map(|(_, why)| why);
        if f.phase == Phase::Done {
            return;
        }
        match why {
            Some(Why::Fetcher) if f.probing => {
                f.probing = false;
                if !f.awaiting_share {
                    self.after_probe(n, layer);
                }
            }
            Some(Why::Share) => self.check(n, layer),
            _ => {
                // A fall-back or the whole blob: anything left (a piece refused) again.
                let missing: Vec<u32> = f.have.iter_missing().collect();
                if !missing.is_empty() {
                    self.start_upstream(n, layer, Why::NoPeers, missing);
                }
            }
        }
    }

    /// The probe is done and the tracker answered (or did not in time): fetch this node's
    /// share beside the peers, or the whole blob.
    pub(crate) fn after_probe(&mut self, n: usize, layer: usize) {
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        let count = f.have.count();
        match f.answer.take().filter(|r| r.start > 0 || r.end < count) {
            Some(share) => {
                f.shares.push_front((share, false));
                self.enter_peers(n, layer);
            }
            None => {
                let missing: Vec<u32> = f.have.iter_missing().collect();
                if missing.is_empty() {
                    return;
                }
                self.start_upstream(n, layer, Why::Fetcher, missing);
            }
        }
    }

    pub(crate) fn share_timeout(&mut self, n: usize, layer: usize) {
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.awaiting_share {
            f.awaiting_share = false;
            if !f.probing {
                self.after_probe(n, layer);
            }
        }
    }
}
