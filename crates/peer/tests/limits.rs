//! Node-wide upload limits through real sessions: the session cap (choke, wait, Busy) and the
//! byte rate, on tokio's paused clock where time matters.

mod common;

use common::*;
use pollen_core::upload::TURNOVER_TENURE;
use pollen_peer::testing::MemorySource;
use pollen_peer::{
    Event, RequestError, ServeEnd, Session, SessionError, UploadLimits, SLOT_YIELD_AFTER,
};
use pollen_proto::{read_reply, write_request, ErrorCode, Reply, Request};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn the_second_session_is_choked_while_the_first_runs() {
    let data = blob(6 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::new(1, 0));

    let (mut a, _, server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);

    let (mut b, have_b, server_b) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { dropped: vec![] }
    );
    assert!(b.is_choked());
    assert_eq!(b.request(0), Err(RequestError::Choked));
    // Choked, B still gets the map.
    b.request_map().unwrap();
    let Event::Map(map) = within(b.next_event()).await.unwrap() else {
        panic!("expected the map")
    };

    // A is served meanwhile, then leaves, and its slot goes to B.
    a.request(3).unwrap();
    assert!(matches!(
        within(a.next_event()).await.unwrap(),
        Event::Piece { index: 3, .. }
    ));
    within(a.close()).await;
    assert_eq!(within(server_a).await.unwrap().unwrap().pieces_sent, 1);
    assert_eq!(within(b.next_event()).await.unwrap(), Event::Unchoked);
    let (got, _) = within(download(&mut b, &have_b, Some(map), None))
        .await
        .unwrap();
    assert_eq!(got, data);
    within(b.close()).await;
    let summary = within(server_b).await.unwrap().unwrap();
    assert_eq!(
        (summary.end, summary.pieces_sent),
        (ServeEnd::NotInterested, 6)
    );
}

#[tokio::test(start_paused = true)]
async fn a_choked_session_gets_busy_when_no_slot_frees_up() {
    let data = blob(2 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(2 * PS as usize));
    // 1 KiB/s: A's piece takes a minute to send, so A's slot stays busy (not idle) throughout.
    let limits = Arc::new(UploadLimits::new(1, 1024));

    let (mut a, _, _server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    a.request(0).unwrap();

    let (mut b, _, server_b) = open_served(&source, &limits, seed.digest()).await;
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    let start = Instant::now();
    let err = within(b.next_event()).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::Busy)),
        "{err}"
    );
    let slot = cfg().slot_timeout;
    assert!(start.elapsed() >= slot && start.elapsed() <= slot + Duration::from_millis(100));
    assert_eq!(within(server_b).await.unwrap().unwrap().end, ServeEnd::Busy);
}

/// A session that holds the only slot and asks for nothing gives it up to one that waits,
/// and gets it back in turn: an idle downloader must not starve a node that asks later.
#[tokio::test(start_paused = true)]
async fn an_idle_slot_holder_yields_to_a_waiting_session() {
    let data = blob(3 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::new(1, 0));

    let (mut a, have_a, server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    let (mut b, have_b, _server_b) = open_served(&source, &limits, seed.digest()).await;
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    // A asks nothing: after SLOT_YIELD_AFTER it is choked and B unchoked, long before B's
    // slot deadline.
    let start = Instant::now();
    assert!(matches!(
        within(a.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    assert_eq!(within(b.next_event()).await.unwrap(), Event::Unchoked);
    assert!(start.elapsed() < cfg().slot_timeout);
    let (got, _) = within(download(&mut b, &have_b, None, None)).await.unwrap();
    assert_eq!(got, data);
    within(b.close()).await;
    // B left: A has the slot again and is served.
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    let (got, _) = within(download(&mut a, &have_a, None, None)).await.unwrap();
    assert_eq!(got, data);
    within(a.close()).await;
    assert_eq!(within(server_a).await.unwrap().unwrap().pieces_sent, 3);
}

/// With the waiting queue full, an idle holder still gives its slot up: the slot it frees takes
/// a session out of the queue. Kept, a fetcher's slots stayed with idle holders while the
/// sessions that needed its pieces waited (pollen-sim, 300 nodes).
#[tokio::test(start_paused = true)]
async fn an_idle_holder_yields_even_when_the_queue_is_full() {
    let data = blob(3 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::new(1, 0).with_max_waiting(1));
    let (mut a, _, _server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    let (mut b, have_b, _server_b) = open_served(&source, &limits, seed.digest()).await;
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    // The queue (one place) is full with B; A asks nothing and yields all the same.
    let start = Instant::now();
    assert!(matches!(
        within(a.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    assert_eq!(within(b.next_event()).await.unwrap(), Event::Unchoked);
    assert!(start.elapsed() < cfg().slot_timeout);
    let (got, _) = within(download(&mut b, &have_b, None, None)).await.unwrap();
    assert_eq!(got, data);
}

/// A session given a slot that another gave up keeps it for a while, so it can ask for pieces:
/// it is not handed on again at once because it asked for nothing before it had the slot.
#[tokio::test(start_paused = true)]
async fn a_slot_just_granted_is_not_given_up_at_once() {
    let data = blob(3 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::new(1, 0));
    let (mut a, _, _server_a) = open_served(&source, &limits, seed.digest()).await;
    let (mut b, _, _server_b) = open_served(&source, &limits, seed.digest()).await;
    let (stream_c, _server_c) = serve_one(&source, &limits);
    let _c = within(Session::open(stream_c, seed.digest(), &cfg()))
        .await
        .unwrap();
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    // A, idle, gives its slot up; B, first in the queue, gets it and keeps it for
    // SLOT_YIELD_AFTER even though A and C wait and B has asked for nothing yet.
    assert!(matches!(
        within(a.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    let yielded = Instant::now();
    assert_eq!(within(b.next_event()).await.unwrap(), Event::Unchoked);
    assert!(
        yielded.elapsed() < SLOT_YIELD_AFTER,
        "B was unchoked only {:?} after A gave the slot up",
        yielded.elapsed()
    );
    let granted = Instant::now();
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    assert!(
        granted.elapsed() >= SLOT_YIELD_AFTER,
        "B gave its slot up {:?} after getting it",
        granted.elapsed()
    );
}

/// A slot is held until its session ends: a node busy passing on a large layer must still
/// serve an image's small config blob at once, not after the layer's downloaders leave.
#[tokio::test]
async fn a_small_blob_is_served_while_every_slot_is_taken() {
    let source = MemorySource::new();
    let layer = blob(6 * PS as usize);
    let layer = source.add_complete(layer.clone(), geometry(layer.len()));
    let config = blob(385);
    let small = source.add_complete(config.clone(), geometry(config.len()));
    let limits = Arc::new(UploadLimits::new(1, 0));

    let (mut a, _, _server_a) = open_served(&source, &limits, layer.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);

    // The one slot is A's; a second session for the layer waits, one for the config does not.
    let (mut b, _, _server_b) = open_served(&source, &limits, layer.digest()).await;
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    let (mut c, have_c, server_c) = open_served(&source, &limits, small.digest()).await;
    assert_eq!(within(c.next_event()).await.unwrap(), Event::Unchoked);
    let (got, _) = within(download(&mut c, &have_c, None, None)).await.unwrap();
    assert_eq!(got, config);
    within(c.close()).await;
    assert_eq!(within(server_c).await.unwrap().unwrap().pieces_sent, 1);
    assert!(
        b.is_choked(),
        "the layer's second session still waits for A's slot"
    );

    // With uploads off (no slots), small blobs are refused too.
    let none = Arc::new(UploadLimits::new(0, 0));
    let (stream, _server) = serve_one(&source, &none);
    let err = within(Session::open(stream, small.digest(), &cfg()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::Busy)),
        "{err}"
    );
}

/// The queue is full of one session whose node said it holds slots elsewhere: a newcomer that
/// holds none takes its place, and it is told `Busy` (its node dials again later).
#[tokio::test(start_paused = true)]
async fn a_newcomer_displaces_a_waiting_session_served_elsewhere() {
    let data = blob(2 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(2 * PS as usize));
    // 1 KiB/s: A's piece takes a minute to send, so A's slot stays busy (not idle) throughout.
    let limits = Arc::new(UploadLimits::new(1, 1024).with_max_waiting(1));
    let (mut a, _, _server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    a.request(0).unwrap();

    let (mut b, _, server_b) = open_served(&source, &limits, seed.digest()).await;
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    b.holding(3).unwrap();
    // The map's reply comes after the uploader has read `Holding`.
    b.request_map().unwrap();
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Map(_)
    ));

    // C waits on trial; its `Holding` (none) decides: B, holding more, leaves.
    let (mut c, _, _server_c) = open_served(&source, &limits, seed.digest()).await;
    assert!(matches!(
        within(c.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    c.holding(0).unwrap();
    let err = within(b.next_event()).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::Busy)),
        "{err}"
    );
    assert_eq!(within(server_b).await.unwrap().unwrap().end, ServeEnd::Busy);
}

/// A holder still asking hands its slot over after a piece once it has held it for
/// `TURNOVER_TENURE`, when a waiting node holds at least `TURNOVER_GAP` fewer slots: the holder
/// hears `Choked` (the request it had queued dropped) and the poorer node `Unchoked`.
#[tokio::test(start_paused = true)]
async fn a_holder_still_asking_hands_its_slot_to_a_node_holding_far_fewer() {
    let data = blob(4 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(4 * PS as usize));
    // A piece takes 1.5 s to send: A's first crosses after its tenure, its second asked.
    let limits = Arc::new(UploadLimits::new(1, u64::from(PS) * 2 / 3));
    let (mut a, _, _server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);
    a.holding(4).unwrap();
    let (mut b, _, _server_b) = open_served(&source, &limits, seed.digest()).await;
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Choked { .. }
    ));
    b.holding(1).unwrap();
    // The map's reply comes after the uploader has read `Holding`.
    b.request_map().unwrap();
    assert!(matches!(
        within(b.next_event()).await.unwrap(),
        Event::Map(_)
    ));

    let asked = Instant::now();
    a.request(0).unwrap();
    a.request(1).unwrap();
    assert!(matches!(
        within(a.next_event()).await.unwrap(),
        Event::Piece { index: 0, .. }
    ));
    assert!(asked.elapsed() >= TURNOVER_TENURE, "{:?}", asked.elapsed());
    assert_eq!(
        within(a.next_event()).await.unwrap(),
        Event::Choked { dropped: vec![1] }
    );
    assert_eq!(within(b.next_event()).await.unwrap(), Event::Unchoked);
}

#[tokio::test]
async fn a_full_queue_answers_interest_with_busy() {
    // Two pieces: a blob of one small piece would be served without a slot.
    let data = blob(2 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(2 * PS as usize));
    let limits = Arc::new(UploadLimits::new(1, 0).with_max_waiting(0));

    let (mut a, _, _server_a) = open_served(&source, &limits, seed.digest()).await;
    assert_eq!(within(a.next_event()).await.unwrap(), Event::Unchoked);

    let (mut stream_b, server_b) = serve_one(&source, &limits);
    write_request(
        &mut stream_b,
        &Request::Interest {
            digest: seed.digest(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        within(read_reply(&mut stream_b)).await.unwrap(),
        Some(Reply::Error {
            code: ErrorCode::Busy,
            ..
        })
    ));
    assert_eq!(within(server_b).await.unwrap().unwrap().end, ServeEnd::Busy);

    // No slots at all: every session is refused.
    let none = Arc::new(UploadLimits::new(0, 0));
    let (stream, _server) = serve_one(&source, &none);
    let err = within(Session::open(stream, seed.digest(), &cfg()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SessionError::Refused(ErrorCode::Busy)),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_paces_piece_bytes() {
    let data = blob(32 * PS as usize); // 2 MiB
    let rate = 1_000_000u64;
    let source = MemorySource::new();
    let seed = source.add_complete(data.clone(), geometry(data.len()));
    let limits = Arc::new(UploadLimits::new(4, rate));

    let (mut session, have, server) = open_served(&source, &limits, seed.digest()).await;
    let start = Instant::now();
    let (got, _) = within(download(&mut session, &have, None, None))
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(got, data);
    let ideal = Duration::from_secs_f64(data.len() as f64 / rate as f64); // 2.097 s
    let tolerance = Duration::from_millis(100);
    assert!(
        took + tolerance >= ideal && took <= ideal + tolerance,
        "{took:?} for {ideal:?}"
    );

    // Two sessions share the rate: twice the bytes take twice the time.
    within(session.close()).await;
    within(server).await.unwrap().unwrap();
    let start = Instant::now();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (stream, _server) = serve_one(&source, &limits);
            let digest = seed.digest();
            tokio::spawn(async move {
                let (mut s, have) = Session::open(stream, digest, &cfg()).await.unwrap();
                download(&mut s, &have, None, None).await.unwrap();
            })
        })
        .collect();
    for run in runs {
        within(run).await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took + tolerance >= 2 * ideal && took <= 2 * ideal + tolerance,
        "{took:?}"
    );
    assert_eq!(limits.bytes_sent(), 3 * data.len() as u64);
    assert_eq!(limits.pieces_sent(), 3 * 32);
}
