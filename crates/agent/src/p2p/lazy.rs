//! Lazy ranges from peers (`crate::lazy`): the pieces covering a short range of a blob this
//! node neither holds nor fetches whole, taken from a peer that holds them before this node's
//! upstream is asked, so a cluster whose nodes start the same container reads each range
//! from the registry once.
//!
//! Who holds them: the blob's providers (nodes that hold it whole or are fetching it) and the
//! nodes that read ranges of it lazily themselves, which announce under a key of their own
//! ([`lazy_key`]). Under the blob's own key they would be taken for holders by a tracker's
//! fetcher, which then waits for pieces they do not have (`download/connect.rs`).
//!
//! What is believed: a piece is requested only once its hash is known from the same peer,
//! which vouches for it (the complete map of a node that verified the whole blob, or hashes a
//! node computed from its own upstream's bytes; never hashes it took from others), and every
//! piece is checked against it. A piece that fails, or hashes that contradict each other,
//! are that peer's fault: it is banned for the blob. That is a member's word, not the blob's
//! digest (docs/trust-model.md, "Ranges"); `--lazy-from-peers false` leaves ranges to the
//! upstream alone.

use super::peer_task::open_stream;
use super::P2p;
use crate::fetch::PeerPieces;
use pollen_oci::Digest;
use pollen_peer::{Event, Session, SessionError};
use pollen_proto::{HashedPiece, PartialPieceMap, PieceGeometry};
use pollen_swarm::PeerId;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;
use tracing::debug;

/// How long the lookup of holders may take. Inside a cluster a lookup that finds nobody ends
/// after a few round trips; this caps one held up by peers that do not answer, since every
/// lazy range pays it before the upstream is asked.
const LOOKUP: Duration = Duration::from_millis(300);
/// How long one holder has to deliver a range's pieces (stream, hashes, slot, pieces). A
/// lazy range is a container waiting to start: past this the upstream is asked instead.
const HOLDER_WAIT: Duration = Duration::from_secs(2);
/// Holders asked, one after the other, before the upstream.
const HOLDERS_ASKED: usize = 2;

/// The Kademlia key under which a node offers the pieces it read lazily of `digest`
/// (`proto/PROTOCOL.md`, "Lazy ranges").
pub fn lazy_key(digest: &Digest) -> Digest {
    Digest::of(format!("pollen lazy ranges v1\0{digest}").as_bytes())
}

/// The pieces `wanted` from the first holder that delivers them all in time; `None` when
/// nobody does.
pub(crate) async fn fetch(
    p2p: &P2p,
    digest: Digest,
    geometry: PieceGeometry,
    wanted: RangeInclusive<u32>,
) -> Option<PeerPieces> {
    for peer in holders(p2p, &digest).await {
        let asked = from_holder(p2p, peer, digest, geometry, wanted.clone());
        match tokio::time::timeout(HOLDER_WAIT, asked).await {
            Ok(Ok(got)) => return Some(got),
            Ok(Err(Failed::Fault(why))) => p2p.bans.ban(digest, peer, &why),
            Ok(Err(Failed::NotHere(why))) => {
                debug!(%digest, %peer, why, "a holder did not serve a lazy range")
            }
            Err(_) => debug!(%digest, %peer, "a holder was too slow for a lazy range"),
        }
    }
    None
}

/// Up to [`HOLDERS_ASKED`] peers that announced the blob or ranges of it, not banned for it.
async fn holders(p2p: &P2p, digest: &Digest) -> Vec<PeerId> {
    let lookup = |key: Digest| async move {
        match tokio::time::timeout(LOOKUP, p2p.node.find_providers(&key)).await {
            Ok(Ok(found)) => found,
            _ => Vec::new(),
        }
    };
    let (whole, ranges) = tokio::join!(lookup(*digest), lookup(lazy_key(digest)));
    let me = p2p.node.peer_id();
    let mut out: Vec<PeerId> = Vec::new();
    for peer in whole.into_iter().chain(ranges) {
        if peer != me && !out.contains(&peer) && !p2p.bans.is_banned(digest, &peer) {
            out.push(peer);
        }
    }
    out.truncate(HOLDERS_ASKED);
    out
}

enum Failed {
    /// The peer broke the protocol or sent a piece its own hashes refute: ban it.
    Fault(String),
    /// Unreachable, refused, without the pieces, or closed: ask someone else.
    NotHere(String),
}

impl From<SessionError> for Failed {
    fn from(e: SessionError) -> Failed {
        match e.is_peer_fault() {
            true => Failed::Fault(e.to_string()),
            false => Failed::NotHere(e.to_string()),
        }
    }
}

/// One session with `peer` for the pieces `wanted`, each verified against the hash `peer`
/// vouched for before it was asked for.
async fn from_holder(
    p2p: &P2p,
    peer: PeerId,
    digest: Digest,
    geometry: PieceGeometry,
    wanted: RangeInclusive<u32>,
) -> Result<PeerPieces, Failed> {
    let (stream, _) = open_stream(p2p, peer).await.map_err(Failed::NotHere)?;
    let (mut session, have) = Session::open(stream, digest, &p2p.cfg.session).await?;
    if have.geometry != geometry {
        // Both cut the blob by the size a verified manifest gave and the cluster's piece
        // size: another geometry is a peer with another size or setting, not a liar.
        session.close().await;
        return Err(Failed::NotHere("another geometry".into()));
    }
    if !wanted.clone().all(|i| have.bitfield.get(i)) {
        session.close().await;
        return Err(Failed::NotHere(
            "does not hold every piece of the range".into(),
        ));
    }
    session
        .request_map()
        .map_err(|e| Failed::NotHere(e.to_string()))?;
    let mut map = PartialPieceMap::new(digest, geometry);
    let mut got: BTreeMap<u32, HashedPiece> = BTreeMap::new();
    let mut next = *wanted.start();
    let mut unchoked = false;
    let count = wanted.clone().count();
    while got.len() < count {
        match session.next_event().await? {
            Event::Map(m) => map
                .insert(0, m.hashes())
                .map_err(|e| Failed::Fault(e.to_string()))?,
            Event::Hashes { first, hashes } => map
                .insert(first, &hashes)
                .map_err(|e| Failed::Fault(e.to_string()))?,
            Event::SignedHashes {
                producer,
                first,
                hashes,
                signatures,
            } => {
                // Only the range's own hashes are checked and taken (a handful of
                // signatures, not the whole run).
                let signed = crate::proofs::Signed {
                    producer: producer.into(),
                    signatures,
                };
                let inside = |i: u32| wanted.contains(&i);
                crate::proofs::check(&digest, &geometry, first, &hashes, &signed, inside)
                    .map_err(Failed::Fault)?;
                for (i, hash) in (first..).zip(&hashes).filter(|(i, _)| inside(*i)) {
                    map.insert(i, std::slice::from_ref(hash))
                        .map_err(|e| Failed::Fault(e.to_string()))?;
                }
            }
            Event::Unchoked => unchoked = true,
            Event::Choked { .. } => {
                // Everything outstanding was dropped: ask again once unchoked.
                unchoked = false;
                next = first_missing(&wanted, &got);
            }
            Event::Piece { index, bytes } => {
                let piece = tokio::task::spawn_blocking(move || HashedPiece::new(index, bytes))
                    .await
                    .map_err(|e| Failed::NotHere(e.to_string()))?;
                if !map.verify_hashed(&piece) {
                    return Err(Failed::Fault(format!(
                        "piece {index} does not match the hash it vouched for"
                    )));
                }
                got.insert(index, piece);
            }
            Event::Have(_) | Event::HaveMore(_) => {}
        }
        let hashed = wanted.clone().all(|i| map.hash(i).is_some());
        while unchoked && hashed && next <= *wanted.end() {
            if !got.contains_key(&next) {
                // Charged when asked for, as every download from peers is (`--download-limit`).
                let len = geometry.len_of(next).unwrap_or(0);
                p2p.downloads.acquire(u64::from(len)).await;
                if session.request(next).is_err() {
                    break;
                }
            }
            next += 1;
        }
    }
    session.close().await;
    let hashes = wanted
        .clone()
        .map(|i| map.hash(i).copied())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Failed::NotHere("a hash went missing".into()))?;
    Ok(PeerPieces {
        peer,
        first: *wanted.start(),
        hashes,
        pieces: got.into_values().collect(),
    })
}

/// The first piece of `wanted` not received yet.
fn first_missing(wanted: &RangeInclusive<u32>, got: &BTreeMap<u32, HashedPiece>) -> u32 {
    wanted
        .clone()
        .find(|i| !got.contains_key(i))
        .unwrap_or(*wanted.end())
}
