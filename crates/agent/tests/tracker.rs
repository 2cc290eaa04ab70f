//! The tracker role on loopback: a cluster of agents pulling the same image at the same moment
//! fetches each blob from the upstream once. Every wait polls state under a deadline.

mod common;

use common::cluster::*;
use common::*;
use http::StatusCode;
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

const AGENTS: usize = 8;

/// A tracker (agent 0, also pulling) and `AGENTS - 1` more agents bootstrapped to it.
async fn cluster(reg: &TestRegistry) -> Vec<Harness> {
    let mut cfg = agent_config(reg);
    cfg.p2p.tracker = true;
    let first = member(reg, cfg, None).await;
    let mut all = vec![first];
    for _ in 1..AGENTS {
        let h = member(reg, agent_config(reg), Some(&all[0])).await;
        all.push(h);
    }
    all
}

/// Every agent pulls every layer at once; all get the right bytes.
async fn pull_everywhere(agents: &[Harness], layers: &[(String, bytes::Bytes)]) {
    let mut pulls = Vec::new();
    for h in agents {
        for (digest, _) in layers {
            let (client, path) = (h.client(), blob_path(h, digest));
            pulls.push(tokio::spawn(async move { client.get(&path).await }));
        }
    }
    let expected = agents.iter().flat_map(|_| layers.iter());
    for (pull, (digest, bytes)) in pulls.into_iter().zip(expected) {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{digest}");
        assert_eq!(r.bytes(), bytes, "{digest}");
    }
}

fn image(reg: &TestRegistry) -> Vec<(String, bytes::Bytes)> {
    [6 * PIECE + 3, 3 * PIECE, 200 << 10]
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let b = random_bytes(*size, 100 + i as u64);
            (reg.add_blob("app", b.clone()), b)
        })
        .collect()
}

/// Upstream egress per blob, against the 1.02 x size bound; one request per blob (these
/// clusters do not split fetches: `agent_config`).
fn assert_egress_once(reg: &TestRegistry, layers: &[(String, bytes::Bytes)]) {
    let stats = reg.stats();
    let total: usize = layers.iter().map(|(_, b)| b.len()).sum();
    for (digest, _) in layers {
        assert_eq!(
            stats.blob_get_count(digest),
            1,
            "{digest} fetched more than once"
        );
    }
    assert!(
        stats.blob_bytes_sent as f64 <= 1.02 * total as f64,
        "upstream sent {} bytes for {total} bytes of blobs",
        stats.blob_bytes_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_pulling_at_once_fetches_each_blob_from_the_upstream_once() {
    let reg = TestRegistry::start().await.unwrap();
    let agents = cluster(&reg).await;
    let layers = image(&reg);
    // A registry slow enough that every agent asks while the first fetch is still running.
    reg.set_fault(Fault::Slow {
        chunk: 256 << 10,
        delay: Duration::from_millis(5),
    });
    pull_everywhere(&agents, &layers).await;
    assert_egress_once(&reg, &layers);
    let st = status(&agents[0]).await;
    assert_eq!(st.roles, vec!["tracker".to_string()]);
}

/// A tracker that does not pull, and `n` pulling agents bootstrapped to it.
async fn tracker_and_pullers(
    reg: &TestRegistry,
    n: usize,
    piece: usize,
) -> (Harness, Vec<Harness>) {
    let mut cfg = agent_config(reg);
    cfg.p2p.tracker = true;
    let tracker = member(reg, cfg, None).await;
    let mut pullers = Vec::new();
    for _ in 0..n {
        let mut cfg = agent_config(reg);
        cfg.p2p.session.piece_size = Some(piece as u32);
        pullers.push(member(reg, cfg, Some(&tracker)).await);
    }
    (tracker, pullers)
}

/// Waits until some agent fetched `at_least` bytes of the blob from the upstream; its index.
/// Every pull but the dead agent's got the whole blob.
async fn survivors_got(
    pulls: Vec<tokio::task::JoinHandle<Resp>>,
    dead: usize,
    layer: &bytes::Bytes,
) {
    for (i, pull) in pulls.into_iter().enumerate() {
        let r = pull.await.unwrap();
        if i != dead {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.bytes(), layer, "agent {i}");
        }
    }
}

async fn fetcher_of(agents: &[Harness], at_least: u64) -> usize {
    let found = std::sync::Mutex::new(None);
    eventually("the fetcher to be under way", || async {
        for (i, h) in agents.iter().enumerate() {
            let st = status(h).await;
            if st
                .blobs_in_flight
                .iter()
                .any(|b| b.bytes_from_upstream >= at_least)
            {
                *found.lock().unwrap() = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    let i = found.lock().unwrap().take();
    i.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tracker_killed_mid_pull_leaves_the_downloads_running() {
    let reg = TestRegistry::start().await.unwrap();
    let (tracker, agents) = tracker_and_pullers(&reg, 6, PIECE).await;
    let size = 24 * PIECE;
    let layer = random_bytes(size, 300);
    let digest = reg.add_blob("app", layer.clone());
    reg.set_fault(Fault::Slow {
        chunk: 128 << 10,
        delay: Duration::from_millis(5),
    });
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    fetcher_of(&agents, (size / 4) as u64).await;
    tracker.agent.shutdown(Duration::from_secs(5)).await;
    for pull in pulls {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.bytes(), &layer);
    }
    assert_egress_once(&reg, &[(digest, layer)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetcher_killed_mid_pull_is_replaced_and_the_upstream_sends_each_byte_about_once() {
    let reg = TestRegistry::start().await.unwrap();
    // Small pieces: a fetcher dies with at most a piece or two in flight, so what is fetched
    // twice stays within the 2% bound.
    let piece = 256 << 10;
    let (tracker, agents) = tracker_and_pullers(&reg, 6, piece).await;
    let size = 48 * PIECE;
    let layer = random_bytes(size, 301);
    let digest = reg.add_blob("app", layer.clone());
    reg.set_fault(Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(2),
    });
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    let dead = fetcher_of(&agents, (size / 3) as u64).await;
    agents[dead].agent.shutdown(Duration::from_secs(5)).await;
    survivors_got(pulls, dead, &layer).await;
    let stats = reg.stats();
    assert!(
        stats.blob_get_count(&digest) >= 2,
        "another agent took over the fetch"
    );
    assert!(
        stats.blob_bytes_sent as f64 <= 1.02 * size as f64,
        "upstream sent {} bytes for a {size} byte blob",
        stats.blob_bytes_sent
    );
    drop(tracker);
}

/// A tracker that splits fetches in shares of `split_min` bytes, and `n` pullers.
async fn splitting_cluster(reg: &TestRegistry, n: usize, split_min: u64) -> Vec<Harness> {
    let mut cfg = agent_config(reg);
    cfg.p2p.tracker = true;
    cfg.p2p.split_min = split_min;
    let mut all = vec![member(reg, cfg, None).await];
    for _ in 1..n {
        let mut cfg = agent_config(reg);
        cfg.p2p.split_min = split_min;
        all.push(member(reg, cfg, Some(&all[0])).await);
    }
    all
}

/// How many agents fetched bytes from the upstream, and how many in all.
fn upstream_fetchers(agents: &[Harness]) -> (usize, f64) {
    let bytes: Vec<f64> = agents
        .iter()
        .map(|h| h.metric("pollen_upstream_bytes_total"))
        .collect();
    (
        bytes.iter().filter(|b| **b > 0.0).count(),
        bytes.iter().sum(),
    )
}

/// Pieces small enough that a share is dozens of them.
const SMALL_PIECE: usize = 64 << 10;

/// Agent 0 a tracker, `n - 1` more bootstrapped to it; pieces of [`SMALL_PIECE`], fetches
/// split in shares of 32 pieces or more.
async fn small_piece_cluster(reg: &TestRegistry, n: usize) -> Vec<Harness> {
    small_piece_cluster_with(reg, n, |_| {}).await
}

/// [`small_piece_cluster`], each agent's configuration changed by `tweak` too.
async fn small_piece_cluster_with(
    reg: &TestRegistry,
    n: usize,
    tweak: impl Fn(&mut pollen_agent::AgentConfig),
) -> Vec<Harness> {
    let mut agents: Vec<Harness> = Vec::new();
    for i in 0..n {
        let mut cfg = agent_config(reg);
        cfg.p2p.tracker = i == 0;
        cfg.p2p.session.piece_size = Some(SMALL_PIECE as u32);
        cfg.p2p.split_min = 32 * SMALL_PIECE as u64;
        tweak(&mut cfg);
        let to = agents.first();
        agents.push(member(reg, cfg, to).await);
    }
    agents
}

/// The upstream as the bottleneck: 1.6 MB/s per response, so a share of 32 small pieces takes
/// over a second.
fn slow_upstream(reg: &TestRegistry) {
    reg.set_response_delay(Duration::from_millis(300));
    reg.set_fault(Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(40),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_blob_is_fetched_in_shares_by_several_agents_and_each_byte_once() {
    let reg = TestRegistry::start().await.unwrap();
    let agents = splitting_cluster(&reg, 6, 4 * PIECE as u64).await;
    let size = 24 * PIECE + 5;
    let layer = random_bytes(size, 310);
    let digest = reg.add_blob("app", layer.clone());
    // Slow enough that every agent has joined when the first response arrives.
    reg.set_response_delay(Duration::from_millis(300));
    pull_everywhere(&agents, &[(digest.clone(), layer)]).await;
    let (fetchers, total) = upstream_fetchers(&agents);
    assert_eq!(fetchers, 4, "the blob is split across four fetchers");
    assert!(reg.stats().blob_get_count(&digest) >= 4);
    assert!(
        total <= 1.02 * size as f64,
        "agents took {total} bytes from the upstream for a {size} byte blob"
    );
    assert!(
        reg.stats().blob_bytes_sent as f64 <= 1.02 * size as f64,
        "the upstream sent {} bytes",
        reg.stats().blob_bytes_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_share_fetcher_takes_the_other_shares_from_peers_while_it_fetches_its_own() {
    let reg = TestRegistry::start().await.unwrap();
    let agents = small_piece_cluster(&reg, 5).await;
    let share = 96 * SMALL_PIECE;
    let size = 4 * share;
    let layer = random_bytes(size, 312);
    let digest = reg.add_blob("app", layer.clone());
    slow_upstream(&reg);
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    // A fetcher three quarters through its own share has half a share's worth of the other
    // shares from peers already: it trades while it fetches (before part 7 it asked peers
    // only once its share was done, and finished a share's time after the others).
    eventually("a share fetcher receiving from peers mid-share", || async {
        agents.iter().any(|h| {
            let fetched = h.metric("pollen_upstream_bytes_total");
            let received = h.metric("pollen_peer_bytes_received_total");
            fetched > 0.0 && fetched <= 0.75 * share as f64 && received >= 0.5 * share as f64
        })
    })
    .await;
    for (i, pull) in pulls.into_iter().enumerate() {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "agent {i}");
        assert_eq!(r.bytes(), &layer, "agent {i}");
    }
    let (fetchers, total) = upstream_fetchers(&agents);
    assert_eq!(fetchers, 4, "the blob is split across four fetchers");
    assert!(
        total <= 1.02 * size as f64,
        "agents took {total} bytes from the upstream for a {size} byte blob"
    );
}

/// Six agents whose uploads are throttled pull a 12 MiB blob from a fast upstream with
/// `budget`: the upstream's bytes sent, against the blob's size.
async fn throttled_pull(budget: f64) -> f64 {
    let reg = TestRegistry::start().await.unwrap();
    let agents = small_piece_cluster_with(&reg, 6, |cfg| {
        cfg.p2p.upstream_budget = budget;
        cfg.p2p.upload_limit = 1 << 20;
    })
    .await;
    let size = 192 * SMALL_PIECE;
    let layer = random_bytes(size, 313);
    let digest = reg.add_blob("app", layer.clone());
    // Every agent asks before the first response (the split waits for members).
    reg.set_response_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    for (i, pull) in pulls.into_iter().enumerate() {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "agent {i}");
        assert_eq!(r.bytes(), &layer, "agent {i}");
    }
    let egress = reg.stats().blob_bytes_sent as f64 / size as f64;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("budget {budget}: every agent done in {secs:.1} s, upstream sent {egress:.3} x");
    egress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_upstream_sends_more_within_the_budget_and_once_with_budget_one() {
    // Peers upload 1 MiB/s each, the upstream sends at loopback speed: the share fetchers get
    // pieces far faster than downloaders get them from peers.
    let once = throttled_pull(1.0).await;
    assert!(
        once <= 1.02,
        "budget 1: the upstream sent {once:.3} x the blob"
    );
    let twice = throttled_pull(2.0).await;
    assert!(
        twice > 1.1 && twice <= 2.02,
        "budget 2: the upstream sent {twice:.3} x the blob"
    );
}

/// A thin uplink: the fetcher's pieces arrive 1.4 s apart, longer than `peer_stall`. The
/// others wait for the swarm at its own pace instead of each going to the upstream (before
/// part 7 a fixed deadline sent them there: one upstream fetch per node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_swarm_is_waited_for_at_its_pace_not_fetched_around() {
    init_logs();
    let reg = TestRegistry::start().await.unwrap();
    let agents = small_piece_cluster_with(&reg, 3, |cfg| {
        cfg.p2p.peer_stall = Duration::from_secs(1);
    })
    .await;
    let size = 6 * SMALL_PIECE;
    let layer = random_bytes(size, 314);
    let digest = reg.add_blob("app", layer.clone());
    // Half a piece, then 0.7 s: the first piece after 0.7 s, each next one 1.4 s later.
    reg.set_fault(Fault::Slow {
        chunk: SMALL_PIECE / 2,
        delay: Duration::from_millis(700),
    });
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    for (i, pull) in pulls.into_iter().enumerate() {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "agent {i}");
        assert_eq!(r.bytes(), &layer, "agent {i}");
    }
    assert_eq!(
        reg.stats().blob_get_count(&digest),
        1,
        "fetched around the swarm"
    );
    let (fetchers, _) = upstream_fetchers(&agents);
    assert_eq!(fetchers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_share_fetcher_killed_mid_pull_hands_its_share_on() {
    let reg = TestRegistry::start().await.unwrap();
    // Small pieces: a fetcher dies with a few pieces fetched and not passed on yet, and
    // those are all that is fetched twice.
    let piece = SMALL_PIECE;
    let mut agents = small_piece_cluster(&reg, 7).await;
    let tracker = agents.remove(0);
    let size = 384 * piece;
    let layer = random_bytes(size, 311);
    let digest = reg.add_blob("app", layer.clone());
    // The upstream is the bottleneck (as for a cluster behind a registry): a fetcher passes
    // its pieces on about as fast as it gets them, so it dies with few not passed on.
    slow_upstream(&reg);
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    // Two agents under way: the fetch is split; kill the second one mid-share.
    let under_way = || {
        (0..agents.len())
            .filter(|i| agents[*i].metric("pollen_upstream_bytes_total") >= (8 * piece) as f64)
            .collect::<Vec<_>>()
    };
    eventually("two agents fetching shares", || async {
        under_way().len() >= 2
    })
    .await;
    let dead = under_way()[1];
    agents[dead].agent.shutdown(Duration::from_secs(5)).await;
    survivors_got(pulls, dead, &layer).await;
    let sent = reg.stats().blob_bytes_sent;
    // Part 6 made a peer download wait for the upstream's size check (a HEAD, 300 ms late
    // here) before it opens its partial, so the dead fetcher's first pieces reached fewer
    // members: 8-13 of its 64 KiB pieces were refetched (1.021-1.034, 10 of 15 runs; found by
    // bisecting to 14e1aba). The check now starts with the fetch instead of at the first peer:
    // 3 of 10 runs still refetch about 8 pieces. The bound is 1.05 until a download can start
    // on a peer's claimed size while the check runs (docs/trust-model.md says what that needs).
    assert!(
        sent as f64 <= 1.05 * size as f64,
        "upstream sent {sent} bytes for a {size} byte blob"
    );
    drop(tracker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_a_blobs_tracker_dies_its_members_rejoin_the_next_and_a_latecomer_fetches_nothing() {
    let reg = TestRegistry::start().await.unwrap();
    let (t1, mut agents) = tracker_and_pullers(&reg, 4, PIECE).await;
    let mut cfg = agent_config(&reg);
    cfg.p2p.tracker = true;
    let t2 = member(&reg, cfg, Some(&t1)).await;
    let late = member(&reg, agent_config(&reg), Some(&t1)).await;
    // Everyone must know both trackers before the blob is asked for: connected, and listed by
    // its tracker directory (a node that knows only one would pick it for every blob).
    for h in agents.iter().chain([&late]) {
        let want = [node(&t1).peer_id(), node(&t2).peer_id()];
        eventually("both trackers to be known", || async {
            let mut ok = status(h).await.trackers.len() >= 2;
            for t in want {
                ok &= node(h).connected_peers().await.unwrap().contains(&t);
            }
            ok
        })
        .await;
    }
    let size = 32 * PIECE;
    let layer = random_bytes(size, 302);
    let digest = reg.add_blob("app", layer.clone());
    reg.set_fault(Fault::Slow {
        chunk: 128 << 10,
        delay: Duration::from_millis(5),
    });
    let pulls = get_on_each(agents.iter(), |h| blob_path(h, &digest));
    fetcher_of(&agents, (size / 4) as u64).await;
    let coordinates =
        |st: &pollen_agent::Status| st.tracked_blobs.iter().any(|b| b.digest == digest);
    let (dying, next) = if coordinates(&status(&t1).await) {
        (t1, t2)
    } else {
        (t2, t1)
    };
    dying.agent.shutdown(Duration::from_secs(5)).await;
    eventually(
        "the members to rejoin the next tracker, the fetcher among them",
        || async {
            status(&next)
                .await
                .tracked_blobs
                .iter()
                .any(|b| b.digest == digest && b.fetching && b.members >= 4)
        },
    )
    .await;
    let r = late.get(&blob_path(&late, &digest)).await;
    assert_eq!(r.bytes(), &layer);
    for pull in pulls {
        assert_eq!(pull.await.unwrap().bytes(), &layer);
    }
    assert_egress_once(&reg, &[(digest, layer)]);
    agents.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preheated_image_is_pulled_from_the_seed_with_the_upstream_down() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = agent_config(&reg);
    cfg.p2p.seed = true;
    let seed = member(&reg, cfg, None).await;
    let asker = member(&reg, agent_config(&reg), Some(&seed)).await;
    let puller = member(&reg, agent_config(&reg), Some(&seed)).await;
    let layers = vec![random_bytes(5 * PIECE + 9, 400), random_bytes(70_000, 401)];
    let image = reg.push_image("app", "v1", layers.clone());

    // The seed announces its role under a fixed key (docs/tracker.md); wait until the asker
    // can find it there.
    let seed_key = pollen_oci::Digest::of(b"/pollen/seed/1");
    let seed_id = node(&seed).peer_id();
    eventually("the seed's role to be announced", || async {
        node(&asker)
            .find_providers(&seed_key)
            .await
            .unwrap()
            .contains(&seed_id)
    })
    .await;
    // The asker resolves the image; the seed (found by its role) fetches every blob.
    let spec = pollen_agent::PreheatSpec {
        image: format!("{}/app:v1", reg.host()),
        ..Default::default()
    };
    let mut events = asker.agent.preheat(spec);
    let mut plan = None;
    let finished = loop {
        let event = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("preheat makes progress")
            .expect("preheat ends with Finished or Failed");
        match event {
            pollen_agent::PreheatEvent::Plan { blobs, targets } => plan = Some((blobs, targets)),
            pollen_agent::PreheatEvent::Finished { ok, failed } => break (ok, failed),
            pollen_agent::PreheatEvent::Failed { message } => panic!("preheat failed: {message}"),
            _ => {}
        }
    };
    let (blobs, targets) = plan.expect("a plan first");
    assert_eq!(blobs.len(), 3, "config and two layers");
    assert_eq!(targets, vec![node(&seed).peer_id().to_string()]);
    assert_eq!(finished, (3, 0));
    for d in &blobs {
        seed.wait_stored(d).await;
    }
    assert_eq!(
        sources(&asker).1,
        image.manifest.len() as f64,
        "the asker fetched only the manifest"
    );

    upstream_down(&reg);
    let m = puller
        .get(&format!(
            "/v2/app/manifests/{}{}",
            image.manifest_digest,
            puller.ns()
        ))
        .await;
    assert_eq!(
        m.bytes(),
        &image.manifest,
        "the manifest comes from the asker"
    );
    for (d, layer) in image.layer_digests.iter().zip(&layers) {
        assert_eq!(puller.get(&blob_path(&puller, d)).await.bytes(), layer);
    }
    assert_eq!(puller.metric("pollen_upstream_bytes_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_pulled_everywhere_at_once_costs_one_get_and_a_head_per_node() {
    let reg = TestRegistry::start().await.unwrap();
    let (tracker, agents) = tracker_and_pullers(&reg, 5, PIECE).await;
    let image = reg.push_image("app", "v1", vec![random_bytes(1000, 500)]);
    // Slow answers, so every agent asks while the first resolution is under way.
    reg.set_response_delay(Duration::from_millis(300));
    let asks = get_on_each(agents.iter().chain([&tracker]), |h| {
        format!("/v2/app/manifests/v1{}", h.ns())
    });
    for ask in asks {
        let r = ask.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.bytes(), &image.manifest);
        assert_eq!(r.header("docker-content-digest"), image.manifest_digest);
    }
    let stats = reg.stats();
    let (heads, all) = (
        stats.manifest_head_count("v1"),
        stats.manifest_get_count("v1"),
    );
    assert_eq!(
        all - heads,
        1,
        "one GET by tag for the whole cluster (the tag's tracker)"
    );
    assert_eq!(
        heads, 5,
        "one HEAD per other node: each confirms the digest with its own upstream"
    );
    assert_eq!(
        stats.manifest_get_count(&image.manifest_digest),
        0,
        "the others get the body from the tracker's node"
    );
}

/// A tracker knows holders only from its members. A node that fetched the blob while it knew
/// no tracker is known to Kademlia alone; the node the tracker then makes the fetcher must
/// take the blob from it, not from the upstream (down here, so that would fail outright).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetcher_takes_the_blob_from_a_holder_its_tracker_never_knew() {
    let reg = TestRegistry::start().await.unwrap();
    let seed = member(&reg, agent_config(&reg), None).await;
    let size = 6 * PIECE + 3;
    let (layer, digest) = seed_blob(&reg, &seed, size, 310).await;
    eventually("the seed to announce the blob", || async {
        status(&seed).await.provided_blobs >= 1
    })
    .await;
    let mut cfg = agent_config(&reg);
    cfg.p2p.tracker = true;
    let tracker = member(&reg, cfg, Some(&seed)).await;
    let b = member(&reg, agent_config(&reg), Some(&seed)).await;
    let t = node(&tracker).peer_id().to_string();
    eventually("B to know the tracker", || async {
        status(&b).await.trackers.contains(&t)
    })
    .await;
    upstream_down(&reg);
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    assert_eq!(sources(&b), (size as f64, 0.0), "every byte from the seed");
    // The tracker coordinated the blob (so B was made its fetcher), and knows B holds it now.
    let tracked = status(&tracker).await.tracked_blobs;
    assert!(
        tracked.iter().any(|tb| tb.digest == digest),
        "the tracker never coordinated the blob: {tracked:?}"
    );
}
