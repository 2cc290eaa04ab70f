//! A share of a split fetch, fetched from the upstream beside the peer download: the node
//! takes the other shares from their fetchers meanwhile instead of after its own (part 7:
//! share fetchers finished last, a share's time after everyone else).

use super::PeerPhase;
use crate::error::FetchError;
use crate::p2p::tracker::{Assignment, TrackerLink};
use crate::sink::{Appender, Sink};
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use tokio::time::Instant;

/// A share of a split fetch on its way from the upstream: gives back its appender (the
/// writer's cursor and the pieces it appended).
pub(super) type ShareTask<'a> =
    Pin<Box<dyn Future<Output = (Appender, Result<(), FetchError>)> + Send + 'a>>;

impl PeerPhase<'_> {
    /// The caller's upstream fetch was split: this node fetches `pieces` beside the peer
    /// download when the phase runs again.
    pub fn give_share(&mut self, size: u64, pieces: Range<u32>) {
        self.shares.push_back((size, pieces, false));
    }

    /// Starts fetching a share from the upstream beside the peer download (opening the blob
    /// first if no peer did: on the size this node trusts, else on the tracker's claim,
    /// which the upstream's first answer then has to match).
    pub(super) async fn start_share(
        &mut self,
        size: u64,
        pieces: Range<u32>,
        sink: &mut Option<Sink>,
        coordination: &Option<(TrackerLink, Assignment)>,
    ) -> Result<(), FetchError> {
        let s = match sink {
            Some(s) => s,
            None => {
                let (size, confirmed) = match self.fetch.trusted_size().await {
                    Some((trusted, _)) => (trusted, true),
                    None => (size, false),
                };
                let geometry = self.fetch.geometry_of(size)?;
                let s = sink.insert(self.fetch.start_sink_with(geometry, confirmed).await?);
                self.adopt_sink(s);
                s
            }
        };
        if let Some((link, _)) = coordination {
            link.set_fetching();
        }
        let (fetch, mut app, range) = (self.fetch, s.appender(), pieces.clone());
        self.share_task = Some(Box::pin(async move {
            let result = fetch.fetch_share(&mut app, &range).await;
            (app, result)
        }));
        self.fetching_share = Some(pieces);
        Ok(())
    }

    /// The share's last byte is appended (or its fetch failed, which fails the download).
    pub(super) fn on_share_done(
        &mut self,
        app: Appender,
        result: Result<(), FetchError>,
        sink: &mut Option<Sink>,
        coordination: &Option<(TrackerLink, Assignment)>,
    ) -> Result<(), FetchError> {
        self.share_task = None;
        self.fetching_share = None;
        result?;
        if let Some(s) = sink.as_mut() {
            s.absorb(app);
            if let Some((link, _)) = coordination {
                link.set_pieces(s.have.count_ones());
            }
        }
        // The share's end is progress; its length says nothing of the swarm's pace.
        self.x.stall.restart(Instant::now().into_std());
        Ok(())
    }
}
