//! Hostile, broken and slow downloaders, written by hand against the wire, and the real
//! uploader: every violation is answered `Error BadRequest` and ends the session, and neither
//! an idle nor a stalled downloader holds it open past the deadlines.

mod common;

use common::*;
use pollen_oci::Digest;
use pollen_peer::testing::MemorySource;
use pollen_peer::{ServeEnd, ServeSummary, SessionError, UploadLimits};
use pollen_proto::{read_piece_body, read_reply, write_request, ErrorCode, Reply, Request};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A raw downloader's stream to `serve`, after `Interest` and the `Have` + `Unchoked` answer.
async fn raw_downloader(
    source: &Arc<MemorySource>,
    digest: Digest,
) -> (DuplexStream, JoinHandle<Result<ServeSummary, SessionError>>) {
    let limits = Arc::new(UploadLimits::default());
    let (mut stream, server) = serve_one(source, &limits);
    write_request(&mut stream, &Request::Interest { digest })
        .await
        .unwrap();
    assert!(matches!(
        within(read_reply(&mut stream)).await.unwrap(),
        Some(Reply::Have { .. })
    ));
    assert_eq!(
        within(read_reply(&mut stream)).await.unwrap(),
        Some(Reply::Unchoked)
    );
    (stream, server)
}

async fn expect_bad_request(stream: &mut DuplexStream, needle: &str) {
    loop {
        match within(read_reply(stream)).await.unwrap() {
            Some(Reply::Error {
                code: ErrorCode::BadRequest,
                message,
            }) => {
                assert!(message.contains(needle), "{message} lacks {needle:?}");
                break;
            }
            // Pieces already being written are finished first.
            Some(Reply::Piece { index, len }) => {
                read_piece_body(stream, len, PS)
                    .await
                    .unwrap_or_else(|e| panic!("piece {index}: {e}"));
            }
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }
    // Every Error is final: the uploader closes the stream.
    assert_eq!(within(read_reply(stream)).await.unwrap(), None);
}

#[tokio::test]
async fn a_request_for_a_missing_piece_ends_the_session_with_bad_request() {
    let data = blob(6 * PS as usize);
    let source = MemorySource::new();
    let fetching = source.add_empty(data, geometry(6 * PS as usize));
    fetching.fetch(2);
    let (mut stream, server) = raw_downloader(&source, fetching.digest()).await;
    write_request(&mut stream, &Request::GetPiece { index: 1 })
        .await
        .unwrap();
    assert!(matches!(
        within(read_reply(&mut stream)).await.unwrap(),
        Some(Reply::Piece { index: 1, .. })
    ));
    read_piece_body(&mut stream, PS, PS).await.unwrap();
    write_request(&mut stream, &Request::GetPiece { index: 4 })
        .await
        .unwrap();
    expect_bad_request(&mut stream, "never announced").await;
    let err = within(server).await.unwrap().unwrap_err();
    assert!(err.is_peer_fault(), "{err}");
}

#[tokio::test]
async fn out_of_range_second_interest_and_garbage_requests_are_bad_requests() {
    let data = blob(2 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(2 * PS as usize));

    let (mut stream, server) = raw_downloader(&source, seed.digest()).await;
    write_request(&mut stream, &Request::GetPiece { index: 2 })
        .await
        .unwrap();
    expect_bad_request(&mut stream, "past the blob").await;
    assert!(within(server).await.unwrap().unwrap_err().is_peer_fault());

    let (mut stream, server) = raw_downloader(&source, seed.digest()).await;
    write_request(
        &mut stream,
        &Request::Interest {
            digest: seed.digest(),
        },
    )
    .await
    .unwrap();
    expect_bad_request(&mut stream, "second Interest").await;
    assert!(within(server).await.unwrap().unwrap_err().is_peer_fault());

    let (mut stream, server) = raw_downloader(&source, seed.digest()).await;
    stream
        .write_all(&[3, 0, 0, 0, 0xee, 0xee, 0xee])
        .await
        .unwrap();
    expect_bad_request(&mut stream, "undecodable").await;
    assert!(within(server).await.unwrap().unwrap_err().is_peer_fault());

    // Not even an Interest first.
    let limits = Arc::new(UploadLimits::default());
    let (mut stream, server) = serve_one(&source, &limits);
    write_request(&mut stream, &Request::GetPieceMap)
        .await
        .unwrap();
    expect_bad_request(&mut stream, "before Interest").await;
    assert!(within(server).await.unwrap().unwrap_err().is_peer_fault());
}

#[tokio::test(start_paused = true)]
async fn more_than_sixteen_outstanding_requests_is_a_bad_request() {
    let data = blob(40 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(40 * PS as usize));
    // Slow enough that the queue does not drain while the requests arrive.
    let limits = Arc::new(UploadLimits::new(1, u64::from(PS)));
    let (mut stream, server) = serve_one(&source, &limits);
    write_request(
        &mut stream,
        &Request::Interest {
            digest: seed.digest(),
        },
    )
    .await
    .unwrap();
    for index in 0..30 {
        write_request(&mut stream, &Request::GetPiece { index })
            .await
            .unwrap();
    }
    let mut pieces = 0;
    loop {
        match within(read_reply(&mut stream)).await.unwrap() {
            Some(Reply::Have { .. } | Reply::Unchoked) => {}
            Some(Reply::Piece { len, .. }) => {
                read_piece_body(&mut stream, len, PS).await.unwrap();
                pieces += 1;
            }
            Some(Reply::Error {
                code: ErrorCode::BadRequest,
                message,
            }) => {
                assert!(message.contains("outstanding"), "{message}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pieces <= 1,
        "only a piece already being written is finished: {pieces}"
    );
    assert!(within(server).await.unwrap().unwrap_err().is_peer_fault());
}

#[tokio::test(start_paused = true)]
async fn an_idle_downloader_is_closed_and_a_stalled_reader_times_out() {
    let data = blob(4 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(4 * PS as usize));

    let (mut stream, server) = raw_downloader(&source, seed.digest()).await;
    let start = Instant::now();
    assert_eq!(
        within(read_reply(&mut stream)).await.unwrap(),
        None,
        "closed when idle"
    );
    let idle = cfg().idle_timeout;
    assert!(start.elapsed() >= idle && start.elapsed() <= idle + Duration::from_millis(100));
    assert_eq!(within(server).await.unwrap().unwrap().end, ServeEnd::Idle);

    // A downloader that asks and then does not read: the uploader gives up after the stall
    // deadline instead of holding its slot forever.
    let (mut stream, server) = raw_downloader(&source, seed.digest()).await;
    for index in 0..4 {
        write_request(&mut stream, &Request::GetPiece { index })
            .await
            .unwrap();
    }
    let start = Instant::now();
    let err = within(server).await.unwrap().unwrap_err();
    assert!(matches!(err, SessionError::Timeout), "{err}");
    let stall = cfg().stall_timeout;
    assert!(start.elapsed() >= stall && start.elapsed() <= stall + Duration::from_millis(100));
    drop(stream);
}

#[tokio::test]
async fn a_downloader_that_hangs_up_ends_the_session_quietly() {
    let data = blob(2 * PS as usize);
    let source = MemorySource::new();
    let seed = source.add_complete(data, geometry(2 * PS as usize));
    let (stream, server) = raw_downloader(&source, seed.digest()).await;
    drop(stream);
    assert_eq!(within(server).await.unwrap().unwrap().end, ServeEnd::Closed);
}
