//! Stopping an agent (SIGTERM): a client mid-download gets its whole blob, new connections
//! are refused, and the drain ends as soon as the last response is done.

mod common;

use common::cluster::eventually;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use pollen_testreg::Fault;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_mid_download_gets_its_blob_while_the_agent_drains() {
    let reg = pollen_testreg::TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    cfg.drain_timeout = Duration::from_secs(30);
    let h = Harness::with(reg, cfg).await;
    let layer = random_bytes(6 << 20, 50);
    let digest = h.reg.add_blob("app", layer.clone());
    // A slow upstream: the transfer takes about a second and a half.
    h.reg.set_fault(Fault::Slow {
        chunk: 128 << 10,
        delay: Duration::from_millis(30),
    });
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    let (status, mut body) = h.client().open(&path).await;
    assert_eq!(status, StatusCode::OK);
    let mut got: Vec<u8> = Vec::new();
    while got.len() < 1 << 20 {
        let frame = body.frame().await.expect("body ended early").unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    // SIGTERM now, with most of the blob still to come.
    let agent = h.agent.clone();
    let drain = tokio::spawn(async move { agent.drain().await });
    eventually("the agent to stop being ready", || async {
        h.agent.readiness().is_err()
    })
    .await;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the response broke off").into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(sha256(&got), digest, "the whole blob, intact");
    let open = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends once the last response is done")
        .unwrap();
    assert_eq!(open, 0, "no connection left open");
    let refused = tokio::net::TcpStream::connect(h.addr).await;
    assert!(refused.is_err(), "no new connections after the drain");
}
