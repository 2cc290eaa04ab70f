//! Preheat: fetch an image's blobs into the cluster before a rollout needs them.
//!
//! The agent asked (`pollen preheat`, through its admin endpoint) resolves the image itself
//! (tag → index → the platform manifests asked for → config and layers), which also caches the
//! manifests here, then has the targets fetch every blob: the seeds (agents announcing the
//! seed role), or, with `all_nodes`, every agent it is connected to and itself. A target fetches
//! a blob exactly as a pull would, so a tracker coordinates it and peers supply what they have.
//! Progress comes back as [`PreheatEvent`]s, one stream per target and blob
//! (`/pollen/preheat/1`).

use crate::blobs;
use crate::inflight::Progress;
use crate::p2p::tracker::{jittered, JOIN_BACKOFF};
use crate::p2p::P2p;
use crate::{manifests, Ctx};
use pollen_oci::{
    manifest_content, platform_matches, Digest, ImageRef, ManifestContent, Reference,
};
use pollen_proto::{
    read_preheat_reply, read_preheat_request, write_preheat_reply, write_preheat_request,
    PreheatReply, PreheatRequest, PREHEAT_PROTOCOL,
};
use pollen_swarm::PeerId;
use pollen_upstream::Route;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::timeout;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, info, warn};

/// How often a target reports how far a blob is.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Blob fetches a preheat runs at once, all targets together.
const PARALLEL: usize = 4;
/// The bound on a target that stops reporting.
const SILENCE: Duration = Duration::from_secs(120);
/// How long a refused preheat stream is read for the request before the refusal is sent.
const BUSY_READ: Duration = Duration::from_secs(5);
/// Events queued for the client; a client that stops reading stalls the preheat.
const EVENT_QUEUE: usize = 64;

/// What to preheat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PreheatSpec {
    /// `[HOST/]NAME[:TAG|@DIGEST]`, as for `docker pull`.
    pub image: String,
    /// `os/arch[/variant]`; empty: this node's platform.
    pub platforms: Vec<String>,
    /// Every connected agent fetches the blobs, not only the seeds.
    pub all_nodes: bool,
}

/// What a preheat reports, in order: `Plan`, then `Progress`/`Done` per target and blob, then
/// `Finished` (or `Failed` if the image could not be resolved).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PreheatEvent {
    Plan {
        blobs: Vec<String>,
        targets: Vec<String>,
    },
    Progress {
        target: String,
        digest: String,
        have: u64,
        size: u64,
    },
    Done {
        target: String,
        digest: String,
        ok: bool,
        message: String,
    },
    Finished {
        ok: usize,
        failed: usize,
    },
    Failed {
        message: String,
    },
}

/// Starts a preheat; its events arrive on the returned channel.
pub(crate) fn start(ctx: Arc<Ctx>, spec: PreheatSpec) -> mpsc::Receiver<PreheatEvent> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        if let Err(message) = run(&ctx, &spec, &tx).await {
            warn!(image = %spec.image, error = %message, "preheat failed");
            let _ = tx.send(PreheatEvent::Failed { message }).await;
        }
    });
    rx
}

async fn run(
    ctx: &Arc<Ctx>,
    spec: &PreheatSpec,
    tx: &mpsc::Sender<PreheatEvent>,
) -> Result<(), String> {
    let image = ImageRef::parse(&spec.image).map_err(|e| format!("image {:?}: {e}", spec.image))?;
    let route = Route::resolve(
        ctx.origin.current().config(),
        image.registry.as_deref(),
        &image.name,
    )
    .map_err(|e| e.to_string())?;
    let blobs = resolve(ctx, &route, &image.reference, &spec.platforms).await?;
    let targets = targets(ctx, spec.all_nodes).await;
    let me = ctx.peers().swarm().map(|p| p.node.peer_id());
    let name = |t: &Option<PeerId>| t.map_or("this node".to_string(), |p| p.to_string());
    let plan = PreheatEvent::Plan {
        blobs: blobs.iter().map(|d| d.to_string()).collect(),
        targets: targets.iter().map(name).collect(),
    };
    if tx.send(plan).await.is_err() {
        return Ok(());
    }
    info!(image = %spec.image, blobs = blobs.len(), targets = targets.len(), "preheating");
    let slots = Arc::new(Semaphore::new(PARALLEL));
    let mut jobs = Vec::new();
    for target in &targets {
        for digest in &blobs {
            let (ctx, image, route, tx, slots) = (
                ctx.clone(),
                image.clone(),
                route.clone(),
                tx.clone(),
                slots.clone(),
            );
            let (target, digest, label) = (*target, *digest, name(target));
            let local = target.is_none() || target == me;
            jobs.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let report = Reporter {
                    tx: &tx,
                    target: label,
                    digest,
                };
                let result = match target.filter(|_| !local) {
                    None => fetch_here(&ctx, route, digest, &report).await,
                    Some(peer) => fetch_there(&ctx, peer, &image, digest, &report).await,
                };
                report.done(result).await
            }));
        }
    }
    let (mut ok, mut failed) = (0, 0);
    for job in jobs {
        match job.await {
            Ok(true) => ok += 1,
            _ => failed += 1,
        }
    }
    let _ = tx.send(PreheatEvent::Finished { ok, failed }).await;
    Ok(())
}

/// The blobs of the image for the platforms asked for (this node's when none).
async fn resolve(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    platforms: &[String],
) -> Result<Vec<Digest>, String> {
    let top = manifests::get(ctx, route, reference, None)
        .await
        .map_err(|e| format!("resolving {reference}: {e:?}"))?;
    let manifests = match manifest_content(&top.body)? {
        ManifestContent::Image(blobs) => return Ok(blobs),
        ManifestContent::Index(entries) => entries,
    };
    let wanted: Vec<String> = match platforms {
        [] => vec![format!("linux/{}", local_arch())],
        some => some.to_vec(),
    };
    let mut blobs = Vec::new();
    for m in manifests
        .iter()
        .filter(|m| wanted.iter().any(|w| platform_matches(&m.platform, w)))
    {
        let platform = manifests::get(ctx, route, &Reference::Digest(m.digest), None)
            .await
            .map_err(|e| format!("platform manifest {}: {e:?}", m.digest))?;
        match manifest_content(&platform.body)? {
            ManifestContent::Image(b) => {
                for d in b {
                    if !blobs.contains(&d) {
                        blobs.push(d);
                    }
                }
            }
            ManifestContent::Index(_) => return Err("an index inside an index".into()),
        }
    }
    if blobs.is_empty() {
        let have: Vec<_> = manifests.iter().map(|m| m.platform.as_str()).collect();
        return Err(format!(
            "no manifest for {wanted:?} in the index (it has {have:?})"
        ));
    }
    Ok(blobs)
}

/// The OCI name of this machine's architecture.
fn local_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The seeds (or every connected agent, and this one); this node alone when there are none.
async fn targets(ctx: &Ctx, all_nodes: bool) -> Vec<Option<PeerId>> {
    let Some(p2p) = ctx.peers().swarm() else {
        return vec![None];
    };
    let me = p2p.node.peer_id();
    let mut out: Vec<Option<PeerId>> = if all_nodes {
        let mut peers: Vec<_> = p2p.node.connected_peers().await.unwrap_or_default();
        peers.push(me);
        peers.into_iter().map(Some).collect()
    } else {
        let mut seeds = p2p
            .node
            .find_providers(&crate::p2p::seed_key())
            .await
            .unwrap_or_default();
        if p2p.cfg.seed {
            seeds.push(me);
        }
        seeds.into_iter().map(Some).collect()
    };
    if out.is_empty() {
        out.push(Some(me));
    }
    out.sort();
    out.dedup();
    out
}

/// Sends one target's progress on one blob to the client.
struct Reporter<'a> {
    tx: &'a mpsc::Sender<PreheatEvent>,
    target: String,
    digest: Digest,
}

impl Reporter<'_> {
    async fn progress(&self, have: u64, size: u64) {
        let _ = self
            .tx
            .send(PreheatEvent::Progress {
                target: self.target.clone(),
                digest: self.digest.to_string(),
                have,
                size,
            })
            .await;
    }

    async fn done(&self, result: Result<(), String>) -> bool {
        let ok = result.is_ok();
        let _ = self
            .tx
            .send(PreheatEvent::Done {
                target: self.target.clone(),
                digest: self.digest.to_string(),
                ok,
                message: result.err().unwrap_or_default(),
            })
            .await;
        ok
    }
}

/// Fetches a blob on this node as a pull would, reporting progress until it is stored.
async fn fetch_here(
    ctx: &Arc<Ctx>,
    route: Route,
    digest: Digest,
    report: &Reporter<'_>,
) -> Result<(), String> {
    let (rx, _) = blobs::open(ctx, route, digest, None);
    follow(rx, |have, size| report.progress(have, size)).await
}

/// Watches a blob's progress, calling `on_progress` every [`PROGRESS_EVERY`], until it is
/// stored (`Ok`) or its fetch failed.
async fn follow<F, Fut>(mut rx: watch::Receiver<Progress>, on_progress: F) -> Result<(), String>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let (have, size) = match &*rx.borrow_and_update() {
            Progress::Done(_) => return Ok(()),
            Progress::Failed(e) => return Err(format!("{e:?}")),
            Progress::Connecting => (0, 0),
            Progress::Streaming { size, written, .. } => (*written, *size),
        };
        on_progress(have, size).await;
        if let Ok(Err(_)) = timeout(PROGRESS_EVERY, rx.changed()).await {
            // The fetch task ended; its last word decides.
            return match &*rx.borrow() {
                Progress::Done(_) => Ok(()),
                Progress::Failed(e) => Err(format!("{e:?}")),
                _ => Err("the fetch ended without a result".into()),
            };
        }
    }
}

/// Has `peer` fetch a blob, relaying its progress. A stream that breaks before the first
/// reply is opened again on the tracker joins' schedule (libp2p-stream drops inbound streams that arrive in a burst, and a
/// preheat opens one per blob at once; docs/decisions.md): asking again is harmless, the
/// target joins its own fetch in flight.
async fn fetch_there(
    ctx: &Ctx,
    peer: PeerId,
    image: &ImageRef,
    digest: Digest,
    report: &Reporter<'_>,
) -> Result<(), String> {
    let p2p = ctx.peers().swarm().ok_or("peer-to-peer is off")?;
    let req = PreheatRequest::Fetch {
        registry: image.registry.clone(),
        name: image.name.as_str().to_string(),
        digest,
    };
    let mut last = String::new();
    for delay in JOIN_BACKOFF {
        tokio::time::sleep(jittered(delay)).await;
        let stream = p2p
            .node
            .open_stream_on(peer, PREHEAT_PROTOCOL)
            .await
            .map_err(|e| e.to_string())?;
        let (mut r, mut w) = tokio::io::split(stream.compat());
        if let Err(e) = write_preheat_request(&mut w, &req).await {
            last = e.to_string();
            continue;
        }
        let mut answered = false;
        loop {
            match timeout(SILENCE, read_preheat_reply(&mut r)).await {
                Err(_) => return Err(format!("no word from the target for {SILENCE:?}")),
                Ok(Err(e)) if answered => return Err(e.to_string()),
                Ok(Ok(None)) if answered => return Err("the target closed the stream".into()),
                Ok(Err(e)) => {
                    last = e.to_string();
                    break;
                }
                Ok(Ok(None)) => {
                    last = "the target closed the stream".into();
                    break;
                }
                Ok(Ok(Some(PreheatReply::Progress { have, size }))) => {
                    answered = true;
                    report.progress(have, size).await
                }
                Ok(Ok(Some(PreheatReply::Done { ok: true, .. }))) => return Ok(()),
                Ok(Ok(Some(PreheatReply::Done { message, .. }))) => return Err(message),
            }
        }
    }
    Err(format!("the stream to the target kept breaking: {last}"))
}

/// Serves preheat requests from other agents until the swarm stops.
pub(crate) async fn serve_loop(ctx: Arc<Ctx>, p2p: Arc<P2p>) {
    let mut incoming = match p2p.node.incoming_streams_on(PREHEAT_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot accept preheat requests");
            return;
        }
    };
    let per_peer = crate::confine::PerPeer::new(crate::confine::MAX_PREHEATS_PER_PEER);
    while let Some((peer, stream)) = incoming.next().await {
        let ctx = ctx.clone();
        let ticket = per_peer.enter(peer);
        tokio::spawn(async move {
            let Some(_ticket) = ticket else {
                debug!(%peer, "refusing a preheat: this peer has too many running here");
                // Its request is read (briefly) so the answer reaches it as an answer.
                let (mut r, mut w) = tokio::io::split(stream.compat());
                let _ = timeout(BUSY_READ, read_preheat_request(&mut r)).await;
                let busy = PreheatReply::Done {
                    ok: false,
                    message: "busy: too many preheats from this peer".into(),
                };
                let _ = timeout(SILENCE, write_preheat_reply(&mut w, &busy)).await;
                return;
            };
            if let Err(e) = serve_one(&ctx, peer, stream).await {
                debug!(%peer, error = %e, "preheat request failed");
            }
        });
    }
}

/// One peer's preheat request: only for a registry in this node's configuration, and the
/// peer learns only whether it worked (the cause stays in this node's log).
async fn serve_one(
    ctx: &Arc<Ctx>,
    peer: PeerId,
    stream: pollen_swarm::Stream,
) -> Result<(), String> {
    let (mut r, mut w) = tokio::io::split(stream.compat());
    let req = timeout(SILENCE, read_preheat_request(&mut r))
        .await
        .map_err(|_| "no request".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("closed before the request")?;
    let PreheatRequest::Fetch {
        registry,
        name,
        digest,
    } = req;
    let result = async {
        let Some(route) =
            crate::confine::peer_route(ctx.origin.current().config(), registry.as_deref(), &name)
        else {
            warn!(%peer, registry = ?registry, "refusing a peer's preheat for a registry not configured here");
            return Err(crate::confine::REFUSED.to_string());
        };
        let (rx, _) = blobs::open(ctx, route, digest, None);
        let w = tokio::sync::Mutex::new(&mut w);
        follow(rx, |have, size| {
            let w = &w;
            async move {
                let reply = PreheatReply::Progress {
                    have: have.min(size),
                    size,
                };
                let _ = timeout(SILENCE, write_preheat_reply(&mut **w.lock().await, &reply)).await;
            }
        })
        .await
        .map_err(|e| {
            warn!(%peer, %digest, error = %e, "a peer's preheat failed here");
            crate::confine::FAILED.to_string()
        })
    }
    .await;
    let done = PreheatReply::Done {
        ok: result.is_ok(),
        message: result.err().unwrap_or_default(),
    };
    timeout(SILENCE, write_preheat_reply(&mut w, &done))
        .await
        .map_err(|_| "the asker stopped reading".to_string())?
        .map_err(|e| e.to_string())
}
