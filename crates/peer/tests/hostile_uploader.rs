//! Hostile and broken uploaders, written by hand against the wire, and the real downloader:
//! it blames them precisely, refuses before reading what it did not ask for, and never waits
//! longer than its deadlines.

mod common;

use common::*;
use pollen_oci::Digest;
use pollen_peer::{Event, RequestError, Session, SessionError};
use pollen_proto::{
    read_request, write_piece, write_piece_header, write_reply, Bitfield, ErrorCode, PieceGeometry,
    PieceMap, Reply, Request,
};
use std::time::Duration;
use tokio::io::{duplex, AsyncWriteExt};
use tokio::time::Instant;

fn assert_fault(res: Result<Event, SessionError>, needle: &str) {
    match res {
        Err(e @ SessionError::PeerFault(_)) => {
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
        }
        other => panic!("expected a peer fault ({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_piece_of_the_wrong_length_is_refused_before_its_body() {
    let data = blob(2 * PS as usize);
    let (mut session, mut peer, _) = fake_seed(&data).await;
    session.request(0).unwrap();
    assert_eq!(
        within(read_request(&mut peer)).await.unwrap(),
        Some(Request::GetPiece { index: 0 })
    );
    // Only the header: the body would never come, so a session that waited for it would hang.
    write_piece_header(&mut peer, 0, 100).await.unwrap();
    peer.flush().await.unwrap();
    assert_fault(within(session.next_event()).await, "geometry");
    assert!(matches!(
        within(session.next_event()).await,
        Err(SessionError::Closed)
    ));
}

#[tokio::test]
async fn garbage_and_oversized_frames_are_peer_faults() {
    let data = blob(2 * PS as usize);
    let (mut session, mut peer, _) = fake_seed(&data).await;
    peer.write_all(&[5, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .unwrap();
    assert_fault(within(session.next_event()).await, "undecodable");

    let (mut session, mut peer, _) = fake_seed(&data).await;
    peer.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert_fault(within(session.next_event()).await, "exceeds");
}

#[tokio::test]
async fn a_piece_never_requested_is_a_fault() {
    let data = blob(2 * PS as usize);
    let (mut session, mut peer, _) = fake_seed(&data).await;
    write_piece_header(&mut peer, 1, PS).await.unwrap();
    peer.flush().await.unwrap();
    assert_fault(within(session.next_event()).await, "never requested");

    let (mut session, mut peer, _) = fake_seed(&data).await;
    write_piece_header(&mut peer, 9, PS).await.unwrap();
    peer.flush().await.unwrap();
    assert_fault(within(session.next_event()).await, "past the blob");
}

#[tokio::test]
async fn a_cancelled_piece_that_comes_anyway_is_dropped() {
    let data = blob(3 * PS as usize);
    let (mut session, mut peer, map) = fake_seed(&data).await;
    session.request(0).unwrap();
    session.request(1).unwrap();
    assert!(session.cancel(0));
    for expected in [
        Request::GetPiece { index: 0 },
        Request::GetPiece { index: 1 },
        Request::Cancel { index: 0 },
    ] {
        assert_eq!(
            within(read_request(&mut peer)).await.unwrap(),
            Some(expected)
        );
    }
    // The cancelled piece was already on its way.
    write_piece(&mut peer, 0, &data[..PS as usize])
        .await
        .unwrap();
    write_piece(&mut peer, 1, &data[PS as usize..2 * PS as usize])
        .await
        .unwrap();
    match within(session.next_event()).await.unwrap() {
        Event::Piece { index: 1, bytes } => assert!(map.verify_piece(1, &bytes)),
        other => panic!("unexpected {other:?}"),
    }
    // Asking again for a cancelled piece works, and a duplicate answer is dropped too.
    session.request(0).unwrap();
    write_piece(&mut peer, 0, &data[..PS as usize])
        .await
        .unwrap();
    write_piece(&mut peer, 0, &data[..PS as usize])
        .await
        .unwrap();
    // A HaveMore of a piece already known is no news either.
    write_reply(&mut peer, &Reply::HaveMore { indices: vec![2] })
        .await
        .unwrap();
    write_reply(&mut peer, &Reply::Unchoked).await.unwrap();
    assert!(matches!(
        within(session.next_event()).await.unwrap(),
        Event::Piece { index: 0, .. }
    ));
    assert_eq!(within(session.next_event()).await.unwrap(), Event::Unchoked);
}

#[tokio::test]
async fn announcements_and_maps_are_checked() {
    let data = blob(3 * PS as usize);
    let digest = Digest::of(&data);
    let g = geometry(data.len());
    let map = PieceMap::of(digest, g, &data).unwrap();

    // HaveMore past the blob.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    write_reply(&mut peer, &Reply::HaveMore { indices: vec![3] })
        .await
        .unwrap();
    assert_fault(within(session.next_event()).await, "out of range");

    // A map nobody asked for.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    write_reply(&mut peer, &Reply::PieceMap(map.clone()))
        .await
        .unwrap();
    assert_fault(within(session.next_event()).await, "nobody asked");

    // A map other than the advertised one.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    session.request_map().unwrap();
    let mut forged = map.hashes().to_vec();
    forged[1][0] ^= 1;
    let forged = PieceMap::new(digest, g, forged).unwrap();
    write_reply(&mut peer, &Reply::PieceMap(forged))
        .await
        .unwrap();
    assert_fault(within(session.next_event()).await, "not the advertised");

    // A map of another blob.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    session.request_map().unwrap();
    let other = PieceMap::new(Digest::of(b"other"), g, map.hashes().to_vec()).unwrap();
    write_reply(&mut peer, &Reply::PieceMap(other))
        .await
        .unwrap();
    assert_fault(within(session.next_event()).await, "another blob");

    // Hashes past the end, from a fetching peer (gaps are fine: several fetch a blob).
    let (open, mut peer) = fake_uploader(digest, have_reply(data.len(), None)).await;
    let (mut session, _) = open.unwrap();
    session.request_map().unwrap();
    let hashes = map.hashes().to_vec();
    write_reply(
        &mut peer,
        &Reply::PieceHashes {
            first: 0,
            hashes: hashes[..1].to_vec(),
        },
    )
    .await
    .unwrap();
    write_reply(
        &mut peer,
        &Reply::PieceHashes {
            first: 2,
            hashes: hashes[1..].to_vec(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        within(session.next_event()).await.unwrap(),
        Event::Hashes { first: 0, .. }
    ));
    assert_fault(within(session.next_event()).await, "past");

    // A second Have with another geometry.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    write_reply(&mut peer, &have_reply(data.len() + 1, None))
        .await
        .unwrap();
    assert_fault(within(session.next_event()).await, "geometry");
}

#[tokio::test]
async fn the_first_have_is_checked_against_the_digest_and_geometry_rule() {
    let data = blob(3 * PS as usize);
    let digest = Digest::of(&data);
    // Pieces of 128 KiB where every agent uses 64 KiB.
    let g = PieceGeometry::new(data.len() as u64, 2 * PS).unwrap();
    let have = Reply::Have {
        geometry: g,
        bitfield: Bitfield::new(&g),
        complete: false,
        map_id: None,
    };
    let (open, _peer) = fake_uploader(digest, have).await;
    assert!(matches!(open, Err(SessionError::PeerFault(m)) if m.contains("differs")));

    // A non-empty blob for the empty digest, and an empty one for another digest.
    let (open, _peer) = fake_uploader(Digest::of(b""), have_reply(data.len(), None)).await;
    assert!(matches!(open, Err(SessionError::PeerFault(m)) if m.contains("cannot have digest")));
    let (open, _peer) = fake_uploader(digest, have_reply(0, None)).await;
    assert!(matches!(open, Err(SessionError::PeerFault(_))));

    // Something other than Have first.
    let (open, _peer) = fake_uploader(digest, Reply::Unchoked).await;
    assert!(matches!(open, Err(SessionError::PeerFault(m)) if m.contains("before Have")));

    // A busy peer.
    let (open, _peer) = fake_uploader(digest, Reply::error(ErrorCode::Busy, "full")).await;
    assert!(matches!(open, Err(SessionError::Refused(ErrorCode::Busy))));
}

#[tokio::test]
async fn choked_drops_outstanding_requests_and_an_error_ends_the_session() {
    let data = blob(3 * PS as usize);
    let (mut session, mut peer, _) = fake_seed(&data).await;
    session.request(0).unwrap();
    session.request(2).unwrap();
    write_reply(&mut peer, &Reply::Choked).await.unwrap();
    assert_eq!(
        within(session.next_event()).await.unwrap(),
        Event::Choked {
            dropped: vec![0, 2]
        }
    );
    assert_eq!(session.outstanding(), 0);
    assert_eq!(session.request(1), Err(RequestError::Choked));
    // A late piece of a dropped request is tolerated and dropped.
    write_piece(&mut peer, 2, &data[2 * PS as usize..])
        .await
        .unwrap();
    write_reply(&mut peer, &Reply::Unchoked).await.unwrap();
    assert_eq!(within(session.next_event()).await.unwrap(), Event::Unchoked);
    session.request(1).unwrap();
    write_reply(
        &mut peer,
        &Reply::error(ErrorCode::Internal, "disk on fire"),
    )
    .await
    .unwrap();
    let err = within(session.next_event()).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::Internal)),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_uploader_times_out_within_the_deadline() {
    let data = blob(2 * PS as usize);
    let stall = cfg().stall_timeout;

    // Silent after a request.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    session.request(0).unwrap();
    assert!(within(read_request(&mut peer)).await.unwrap().is_some());
    let start = Instant::now();
    let err = within(session.next_event()).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout), "{err}");
    let took = start.elapsed();
    assert!(
        took >= stall && took <= stall + Duration::from_millis(100),
        "{took:?}"
    );

    // Silent halfway through a piece: the deadline counts from the last byte.
    let (mut session, mut peer, _) = fake_seed(&data).await;
    session.request(1).unwrap();
    write_piece_header(&mut peer, 1, PS).await.unwrap();
    peer.write_all(&data[PS as usize..PS as usize + 1000])
        .await
        .unwrap();
    tokio::time::sleep(stall / 2).await;
    peer.write_all(&data[PS as usize + 1000..PS as usize + 2000])
        .await
        .unwrap();
    let start = Instant::now();
    let err = within(session.next_event()).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout), "{err}");
    let took = start.elapsed();
    assert!(
        took >= stall && took <= stall + Duration::from_millis(100),
        "{took:?}"
    );

    // Nothing owed: the longer idle deadline applies.
    let (mut session, _peer, _) = fake_seed(&data).await;
    let start = Instant::now();
    assert!(matches!(
        within(session.next_event()).await,
        Err(SessionError::Timeout)
    ));
    let took = start.elapsed();
    let idle = cfg().idle_timeout;
    assert!(
        took >= idle && took <= idle + Duration::from_millis(100),
        "{took:?}"
    );

    // A peer that never answers Interest.
    let (client, _silent) = duplex(PIPE);
    let start = Instant::now();
    let open = within(Session::open(client, Digest::of(&data), &cfg())).await;
    assert!(matches!(open, Err(SessionError::Timeout)));
    assert!(start.elapsed() <= stall + Duration::from_millis(100));
}
