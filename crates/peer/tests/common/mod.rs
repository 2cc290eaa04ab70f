//! Shared test helpers: blobs, configs, a served stream, a downloading loop, fake peers.
#![allow(dead_code)]

use bytes::Bytes;
use pollen_oci::Digest;
use pollen_peer::testing::MemorySource;
use pollen_peer::{
    serve, verify, Event, Have, RequestError, ServeSummary, Session, SessionConfig, SessionError,
    UploadLimits,
};
use pollen_proto::{
    read_request, write_reply, Bitfield, PartialPieceMap, PieceGeometry, PieceMap, PieceMapId,
    Reply, Request, MAX_OUTSTANDING_REQUESTS, MIN_PIECE_SIZE,
};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{duplex, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Piece size of every test blob: the smallest the protocol allows, so blobs stay small.
pub const PS: u32 = MIN_PIECE_SIZE;

/// Small enough that a piece never fits in the pipe at once: reads and writes interleave.
pub const PIPE: usize = 16 * 1024;

/// Backstop for every test wait (virtual time in paused tests).
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);

pub fn cfg() -> SessionConfig {
    SessionConfig {
        stall_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        slot_timeout: Duration::from_secs(10),
        piece_size: Some(PS),
        ..SessionConfig::default()
    }
}

/// `len` bytes that differ from piece to piece.
pub fn blob(len: usize) -> Bytes {
    let mut x = 0x9e37_79b9_u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub fn geometry(len: usize) -> PieceGeometry {
    PieceGeometry::new(len as u64, PS).unwrap()
}

/// Fails the test if `f` takes longer than [`TEST_DEADLINE`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, f)
        .await
        .expect("test deadline")
}

/// A downloader's end of a stream served by `serve` on a task.
pub fn serve_one(
    source: &Arc<MemorySource>,
    limits: &Arc<UploadLimits>,
) -> (DuplexStream, JoinHandle<Result<ServeSummary, SessionError>>) {
    let (client, server) = duplex(PIPE);
    let source = source.clone();
    let limits = limits.clone();
    let task = tokio::spawn(async move { serve(server, source, limits, &cfg()).await });
    (client, task)
}

/// A session opened against a new server of `source` under `limits` (the server's task too).
pub async fn open_served(
    source: &Arc<MemorySource>,
    limits: &Arc<UploadLimits>,
    digest: Digest,
) -> (
    Session,
    Have,
    JoinHandle<Result<ServeSummary, SessionError>>,
) {
    let (stream, server) = serve_one(source, limits);
    let (session, have) = within(Session::open(stream, digest, &cfg())).await.unwrap();
    (session, have, server)
}

/// What [`download`] saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub max_outstanding: usize,
    pub have_more: usize,
    pub hashes: usize,
    pub maps: usize,
}

/// Downloads every piece from `session`, keeping the pipeline full, verifying each piece
/// against the map: `known` if the test already got it, else the one (complete or growing)
/// the peer sends; finally checks the blob's digest. `progress` gets the number of pieces
/// received after each one.
pub async fn download(
    session: &mut Session,
    have: &Have,
    known: Option<PieceMap>,
    progress: Option<&watch::Sender<u32>>,
) -> Result<(Bytes, Stats), SessionError> {
    let g = have.geometry;
    let digest = *session.digest();
    let mut partial = PartialPieceMap::new(digest, g);
    let mut full = known;
    let mut pieces: Vec<Option<Bytes>> = vec![None; g.count() as usize];
    let mut asked = BTreeSet::new();
    let mut received = 0u32;
    let mut stats = Stats::default();
    session.request_map().unwrap();
    loop {
        // Keep the pipeline full with pieces the peer has and we lack.
        let wanted: Vec<u32> = session
            .peer_has()
            .iter_ones()
            .filter(|&i| pieces[i as usize].is_none() && !asked.contains(&i))
            .collect();
        for i in wanted {
            match session.request(i) {
                Ok(()) => {
                    asked.insert(i);
                }
                Err(RequestError::TooMany | RequestError::Choked) => break,
                Err(e) => panic!("request {i}: {e}"),
            }
        }
        assert!(session.outstanding() <= MAX_OUTSTANDING_REQUESTS);
        stats.max_outstanding = stats.max_outstanding.max(session.outstanding());
        if received == g.count() {
            break;
        }
        match session.next_event().await? {
            Event::Map(m) => {
                stats.maps += 1;
                full = Some(m);
            }
            Event::Hashes { first, hashes } | Event::SignedHashes { first, hashes, .. } => {
                stats.hashes += 1;
                partial.insert(first, &hashes).unwrap();
            }
            Event::Piece { index, bytes } => {
                let ok = match &full {
                    Some(m) => verify(m, index, &bytes),
                    None => verify(&partial, index, &bytes),
                };
                assert!(ok, "piece {index} fails the map");
                assert!(asked.remove(&index), "piece {index} was not asked for");
                let slot = &mut pieces[index as usize];
                assert!(slot.is_none(), "piece {index} twice");
                *slot = Some(bytes);
                received += 1;
                if let Some(p) = progress {
                    p.send_replace(received);
                }
            }
            Event::HaveMore(_) => stats.have_more += 1,
            Event::Choked { dropped } => {
                for i in dropped {
                    asked.remove(&i);
                }
            }
            Event::Unchoked | Event::Have(_) => {}
        }
    }
    let data: Vec<u8> = pieces.into_iter().flatten().flatten().collect();
    assert_eq!(Digest::of(&data), digest, "the blob fails its digest");
    Ok((data.into(), stats))
}

/// A fake uploader's end, after it answered `Interest` with `have`.
pub async fn fake_uploader(
    digest: Digest,
    have: Reply,
) -> (Result<(Session, Have), SessionError>, DuplexStream) {
    let (client, mut server) = duplex(PIPE);
    let peer = async move {
        let req = read_request(&mut server).await.unwrap();
        assert_eq!(req, Some(Request::Interest { digest }));
        write_reply(&mut server, &have).await.unwrap();
        server
    };
    let cfg = cfg();
    tokio::join!(Session::open(client, digest, &cfg), peer)
}

/// A `Have` for a blob of `len` bytes: a seed with `map_id`, or holding nothing.
pub fn have_reply(len: usize, map_id: Option<PieceMapId>) -> Reply {
    let g = geometry(len);
    match map_id {
        Some(id) => Reply::Have {
            geometry: g,
            bitfield: Bitfield::full(&g),
            complete: true,
            map_id: Some(id),
        },
        None => Reply::Have {
            geometry: g,
            bitfield: Bitfield::new(&g),
            complete: false,
            map_id: None,
        },
    }
}

/// A fake seed for `data`: the session (unchoked) and the fake's end of the stream.
pub async fn fake_seed(data: &Bytes) -> (Session, DuplexStream, PieceMap) {
    let digest = Digest::of(data);
    let map = PieceMap::of(digest, geometry(data.len()), data).unwrap();
    let (open, mut server) = fake_uploader(digest, have_reply(data.len(), Some(map.id()))).await;
    let (mut session, _) = open.unwrap();
    write_reply(&mut server, &Reply::Unchoked).await.unwrap();
    assert_eq!(within(session.next_event()).await.unwrap(), Event::Unchoked);
    (session, server, map)
}
