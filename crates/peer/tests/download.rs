//! Both sides together over `tokio::io::duplex`: whole downloads from seeds and from a blob
//! still being fetched, cancel, refusals.

mod common;

use common::*;
use pollen_oci::Digest;
use pollen_peer::testing::MemorySource;
use pollen_peer::{Event, RequestError, ServeEnd, Session, SessionError, UploadLimits};
use pollen_proto::{ErrorCode, PartialPieceMap, MAX_OUTSTANDING_REQUESTS};
use std::sync::Arc;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_download_from_a_seed_with_pipelining() {
    let data = blob(40 * PS as usize + 12_345); // 41 pieces, the last one short
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::default());
    let (stream, server) = serve_one(&source, &limits);

    let (mut session, have) = within(Session::open(stream, seed.digest(), &cfg()))
        .await
        .unwrap();
    assert!(have.complete);
    assert_eq!(have.map_id, Some(seed.map().id()));
    assert_eq!(have.geometry, seed.geometry());
    let (got, stats) = within(download(&mut session, &have, None, None))
        .await
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(stats.maps, 1, "a seed answers with the whole map");
    assert_eq!(
        stats.max_outstanding, MAX_OUTSTANDING_REQUESTS,
        "requests are pipelined"
    );
    within(session.close()).await;

    let summary = within(server).await.unwrap().unwrap();
    assert_eq!(summary.end, ServeEnd::NotInterested);
    assert_eq!(summary.pieces_sent, 41);
    assert_eq!(summary.bytes_sent, data.len() as u64);
    assert_eq!(limits.bytes_sent(), data.len() as u64);
    assert_eq!(seed.reads(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_from_a_blob_still_being_fetched() {
    let data = blob(12 * PS as usize + 1);
    let count = 13;
    let source = MemorySource::new();
    let fetching = source.add_empty(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::default());
    let (stream, server) = serve_one(&source, &limits);

    let (mut session, have) = within(Session::open(stream, fetching.digest(), &cfg()))
        .await
        .unwrap();
    assert!(!have.complete);
    assert_eq!(have.map_id, None);
    assert_eq!(have.bitfield.count_ones(), 0);

    // The "upstream fetch": the next piece (and its hash) appears only once the downloader
    // has the previous one, so every piece is announced separately, while it downloads.
    let (progress, mut seen) = watch::channel(0u32);
    let f = fetching.clone();
    let filler = tokio::spawn(async move {
        for k in 1..=count {
            f.fetch(k);
            seen.wait_for(|&n| n >= k).await.unwrap();
        }
        f.complete();
    });
    let (got, stats) = within(download(&mut session, &have, None, Some(&progress)))
        .await
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(stats.maps, 0, "no complete map while fetching");
    assert!(
        stats.hashes >= count as usize,
        "hashes pushed as they grow: {stats:?}"
    );
    assert!(
        stats.have_more >= count as usize,
        "pieces announced as they arrive: {stats:?}"
    );
    within(filler).await.unwrap();

    // Completion is announced with a Have that carries the id of the map we assembled.
    let mut partial = PartialPieceMap::new(fetching.digest(), fetching.geometry());
    partial.insert(0, fetching.map().hashes()).unwrap();
    let expected = partial.finish().unwrap().id();
    loop {
        match within(session.next_event()).await.unwrap() {
            Event::Have(h) => {
                assert!(h.complete);
                assert_eq!(h.map_id, Some(expected));
                break;
            }
            Event::HaveMore(_) | Event::Hashes { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(session.peer_complete());
    within(session.close()).await;
    assert_eq!(
        within(server).await.unwrap().unwrap().pieces_sent,
        u64::from(count)
    );
}

#[tokio::test]
async fn a_peer_downloading_from_others_vouches_for_no_hashes() {
    let data = blob(3 * PS as usize);
    let source = MemorySource::new();
    let partial = source.add_empty(data.clone(), geometry(data.len()));
    partial.set_map_id(Some(partial.map().id()));
    partial.add_piece(1);
    let limits = Arc::new(UploadLimits::default());
    let (stream, _server) = serve_one(&source, &limits);

    let (mut session, have) = within(Session::open(stream, partial.digest(), &cfg()))
        .await
        .unwrap();
    assert_eq!(have.map_id, Some(partial.map().id()));
    assert_eq!(have.bitfield.iter_ones().collect::<Vec<_>>(), vec![1]);
    session.request_map().unwrap();
    let mut got_hashes = false;
    let mut unchoked = false;
    while !(got_hashes && unchoked) {
        match within(session.next_event()).await.unwrap() {
            Event::Hashes { first: 0, hashes } => {
                assert!(hashes.is_empty());
                got_hashes = true;
            }
            Event::Unchoked => unchoked = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(session.request(0), Err(RequestError::NotAnnounced));
    session.request(1).unwrap();
    match within(session.next_event()).await.unwrap() {
        Event::Piece { index: 1, bytes } => assert!(partial.map().verify_piece(1, &bytes)),
        other => panic!("unexpected {other:?}"),
    }
    partial.add_piece(2);
    assert_eq!(
        within(session.next_event()).await.unwrap(),
        Event::HaveMore(vec![2])
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_requests_are_not_served() {
    let data = blob(8 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    // One piece per second: piece 0 is still being sent when the cancel arrives.
    let limits = Arc::new(UploadLimits::new(4, u64::from(PS)));
    let (stream, server) = serve_one(&source, &limits);
    let (mut session, _) = within(Session::open(stream, seed.digest(), &cfg()))
        .await
        .unwrap();
    assert_eq!(within(session.next_event()).await.unwrap(), Event::Unchoked);

    for i in 0..4 {
        session.request(i).unwrap();
    }
    assert!(session.cancel(2));
    assert!(!session.cancel(2), "no longer outstanding");
    assert!(!session.cancel(7), "never asked");
    assert_eq!(session.outstanding(), 3);
    let mut order = Vec::new();
    for _ in 0..3 {
        match within(session.next_event()).await.unwrap() {
            Event::Piece { index, bytes } => {
                assert!(seed.map().verify_piece(index, &bytes));
                order.push(index);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(order, vec![0, 1, 3]);
    session.request(4).unwrap();
    assert!(matches!(
        within(session.next_event()).await.unwrap(),
        Event::Piece { index: 4, .. }
    ));
    within(session.close()).await;
    let summary = within(server).await.unwrap().unwrap();
    assert_eq!(
        summary.pieces_sent, 4,
        "the uploader skipped the cancelled piece"
    );
}

#[tokio::test]
async fn unknown_blob_is_refused() {
    let source = MemorySource::new();
    let limits = Arc::new(UploadLimits::default());
    let (stream, server) = serve_one(&source, &limits);
    let digest = Digest::of(b"not here");
    let err = within(Session::open(stream, digest, &cfg()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::UnknownBlob)),
        "{err}"
    );
    assert!(!err.is_peer_fault());
    let summary = within(server).await.unwrap().unwrap();
    assert_eq!(
        (summary.digest, summary.end),
        (digest, ServeEnd::UnknownBlob)
    );
}

#[tokio::test]
async fn an_empty_blob_has_nothing_to_fetch() {
    let source = MemorySource::new();
    let seed = source.add_complete(bytes::Bytes::new(), geometry(0));
    let limits = Arc::new(UploadLimits::default());
    let (stream, _server) = serve_one(&source, &limits);
    let (mut session, have) = within(Session::open(stream, seed.digest(), &cfg()))
        .await
        .unwrap();
    assert_eq!(have.geometry.count(), 0);
    assert!(have.complete);
    let (got, _) = within(download(&mut session, &have, None, None))
        .await
        .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn a_failing_source_ends_the_session_with_internal() {
    let data = blob(2 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(2 * PS as usize));
    let limits = Arc::new(UploadLimits::default());
    let (stream, server) = serve_one(&source, &limits);
    let (mut session, _) = within(Session::open(stream, seed.digest(), &cfg()))
        .await
        .unwrap();
    assert_eq!(within(session.next_event()).await.unwrap(), Event::Unchoked);
    seed.fail_reads(true);
    session.request(0).unwrap();
    let err = within(session.next_event()).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::Internal)),
        "{err}"
    );
    assert!(matches!(
        within(session.next_event()).await,
        Err(SessionError::Closed)
    ));
    assert_eq!(session.request(1), Err(RequestError::Closed));
    let err = within(server).await.unwrap().unwrap_err();
    assert!(matches!(err, SessionError::Internal(_)), "{err}");
}
