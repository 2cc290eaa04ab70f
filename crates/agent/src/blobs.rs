//! Blobs: one upstream fetch per digest however many clients ask, streamed to all of them.
//!
//! The first request for a missing blob starts a download task (a [`BlobFetch`]) and registers an [`Inflight`]
//! under the digest; later requests join it. The task gets the pieces from peers first
//! ([`crate::p2p`]) and the rest from the upstream ([`crate::transfer`]), one range request
//! per run of missing pieces; the blob's writer ([`crate::sink`]) publishes the progress on a
//! watch channel and clients read the file behind it ([`crate::follow`]). A transfer that breaks is resumed
//! with a `Range` request. The task runs on its own, so a client that hangs up does not
//! cancel the fetch for the others (or for the cache).

use crate::error::FetchError;
use crate::fetch::BlobFetch;
use crate::inflight::{Inflight, Owner, Progress};
use crate::Ctx;
use pollen_oci::Digest;
use pollen_store::Kind;
use pollen_upstream::Route;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::warn;

/// A receiver for a blob: already complete when cached, else following its one fetch. Content
/// fetched with a client's own credentials (private) reaches the receiver only after the
/// upstream confirmed that this client may read it from this repository ([`crate::access`]);
/// until then the receiver says `Connecting`, and a refusal comes as `Failed` with the
/// upstream's answer (its 401 challenge intact). The flag says whether the blob was cached.
pub(crate) fn open(
    ctx: &Arc<Ctx>,
    route: Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
) -> (watch::Receiver<Progress>, bool) {
    if !ctx.private.contains(&digest) {
        let opened = open_now(ctx, &route, digest, client_auth.clone());
        // The blob may have become private meanwhile (another client's fetch with its own
        // credentials, joined or just committed): only the fetch this call started (with
        // this client's credentials, confirmed by its own upstream answer) needs no check.
        if opened.started || !ctx.private.contains(&digest) {
            if !opened.other_owner {
                return (opened.rx, opened.cached);
            }
            let (tx, rx) = watch::channel(Progress::Connecting);
            let joined = Joined::new(ctx, route, digest, client_auth);
            tokio::spawn(joined.follow(opened, tx));
            return (rx, false);
        }
    }
    let cached = ctx.store.contains(Kind::Blob, &digest);
    let (tx, rx) = watch::channel(Progress::Connecting);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let path = format!("blobs/{digest}");
        let auth = client_auth.as_ref();
        let confirmed = crate::access::confirm(&ctx, &route, path, &digest, auth);
        if let Err(e) = confirmed.await {
            tx.send_replace(Progress::Failed(e));
            return;
        }
        let opened = open_now(&ctx, &route, digest, client_auth.clone());
        Joined::new(&ctx, route, digest, client_auth)
            .follow(opened, tx)
            .await;
    });
    (rx, cached)
}

/// A client following a blob through a receiver of its own: after its access check, or
/// because the fetch it joined uses other credentials or another repository.
struct Joined {
    ctx: Arc<Ctx>,
    route: Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
}

impl Joined {
    fn new(
        ctx: &Arc<Ctx>,
        route: Route,
        digest: Digest,
        client_auth: Option<http::HeaderValue>,
    ) -> Joined {
        let ctx = ctx.clone();
        Joined {
            ctx,
            route,
            digest,
            client_auth,
        }
    }

    /// Passes the blob's progress on to `to`. When the fetch joined was another client's and
    /// the upstream refused it (401, 403, 404: its credentials or repository, not ours), the
    /// blob is opened once more with this client's own.
    async fn follow(self, opened: Opened, to: watch::Sender<Progress>) {
        let mut retry = opened.other_owner;
        let mut from = opened.rx;
        loop {
            let progress = from.borrow_and_update().clone();
            if let Progress::Failed(e) = &progress {
                if retry && e.is_refusal() {
                    retry = false;
                    let (ctx, route) = (&self.ctx, &self.route);
                    from = open_now(ctx, route, self.digest, self.client_auth.clone()).rx;
                    continue;
                }
            }
            let last = matches!(progress, Progress::Done(_) | Progress::Failed(_));
            to.send_replace(progress);
            if last {
                return;
            }
            tokio::select! {
                changed = from.changed() => if changed.is_err() { return },
                _ = to.closed() => return,
            }
        }
    }
}

struct Opened {
    rx: watch::Receiver<Progress>,
    /// Complete in the store already.
    cached: bool,
    /// This call started the fetch (with its client's credentials).
    started: bool,
    /// The fetch joined is another request's, with other credentials or another repository.
    other_owner: bool,
}

/// [`open`] without the access check.
fn open_now(
    ctx: &Arc<Ctx>,
    route: &Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
) -> Opened {
    let done = |blob| Opened {
        rx: watch::channel(Progress::Done(Arc::new(blob))).1,
        cached: true,
        started: false,
        other_owner: false,
    };
    if let Some(blob) = ctx.store.get(Kind::Blob, &digest) {
        return done(blob);
    }
    let entry = ctx.blobs.entry(digest);
    if let dashmap::Entry::Occupied(e) = &entry {
        let owner = e.get().owner();
        return Opened {
            rx: e.get().subscribe(),
            cached: false,
            started: false,
            other_owner: *owner != Owner::of(route, client_auth.as_ref()),
        };
    }
    if client_auth.is_some() && !ctx.private.mark(digest, &route.registry) {
        // Fetching content that could not be recorded as private would share it with peers
        // after a crash: refuse instead.
        let e = FetchError::Store("cannot record that a blob is private".into());
        return Opened {
            rx: watch::channel(Progress::Failed(e)).1,
            cached: false,
            started: false,
            other_owner: false,
        };
    }
    let (tx, rx) = watch::channel(Progress::Connecting);
    let owner = Owner::of(route, client_auth.as_ref());
    let inflight = Arc::new(Inflight::new(tx.clone(), owner));
    entry.insert(inflight.clone());
    // The fetch that registered just before us may have committed between our store lookup
    // and the insert: look again now that we own the slot.
    if let Some(blob) = ctx.store.get(Kind::Blob, &digest) {
        tx.send_replace(Progress::Done(Arc::new(blob)));
        ctx.blobs.remove(&digest);
        return Opened {
            rx,
            cached: true,
            started: false,
            other_owner: false,
        };
    }
    let ctx = ctx.clone();
    let route = route.clone();
    tokio::spawn(async move {
        // A lazy range writing pieces of this blob finishes first (`lazy/`).
        let _writing = ctx.lazy.writers.lock(digest).await;
        let lazy_sources = ctx.lazy.whole_fetch_starts(&digest, ctx.peers());
        let fetch = BlobFetch {
            store: &ctx.store,
            origin: &ctx.origin,
            peers: ctx.peers(),
            metrics: &ctx.metrics,
            sizes: &ctx.sizes,
            max_blob_size: ctx.cfg.max_blob_size,
            disk_room_check: ctx.cfg.disk_room_check,
            private: &ctx.private,
            stopping: &ctx.stopping,
            route: &route,
            digest,
            client_auth,
            inflight: &inflight,
            upstream_size: Arc::default(),
            lazy_sources,
        };
        let outcome = fetch.run().await;
        // Out of the table before the outcome is told: a joiner that opens the blob again
        // on hearing of a failure (with its own credentials) starts a new fetch, not this one.
        ctx.blobs.remove(&digest);
        match outcome {
            Ok(blob) => {
                tx.send_replace(Progress::Done(Arc::new(blob)));
            }
            Err(e) => {
                if matches!(e, FetchError::Corrupt(_)) {
                    ctx.metrics.digest_mismatch.inc();
                }
                warn!(%digest, registry = %route.registry, error = ?e, "blob fetch failed");
                tx.send_replace(Progress::Failed(e));
                ctx.peers().unprovide(digest);
            }
        }
    });
    Opened {
        rx,
        cached: false,
        started: true,
        other_owner: false,
    }
}
