//! The simulator end to end: reproducible, within physics, and its accounting adds up.

use clap::Parser;
use pollen_sim::config::Scenario;
use pollen_sim::report::Report;

fn run(args: &str) -> Report {
    let mut s = Scenario::parse_from(std::iter::once("pollen-sim").chain(args.split_whitespace()));
    s.normalise();
    s.check().expect("a valid scenario");
    pollen_sim::simulate(s)
}

/// The report without what measures the simulator itself (wall time, its memory).
fn outcome(r: &Report) -> String {
    let mut v = serde_json::to_value(r).expect("serialises");
    if let Some(o) = v.as_object_mut() {
        o.remove("wall_secs");
        o.remove("sim_peak_rss_bytes");
    }
    v.to_string()
}

/// Runs `set_up` without a rule (`without` added) and with it (`with` added), and checks that
/// every node finishes both ways, that with the rule the last node is done before `margin`
/// times its time without, and that the registry still sends the image about once.
fn rule_brings_the_last_node_in_sooner(
    set_up: &str,
    without: &str,
    with: &str,
    nodes: usize,
    margin: f64,
) {
    let off = run(&format!("{set_up} {without}"));
    let on = run(&format!("{set_up} {with}"));
    assert_eq!((off.done, on.done), (nodes, nodes));
    assert!(
        on.max_secs < margin * off.max_secs,
        "{} vs {}",
        on.max_secs,
        off.max_secs
    );
    assert!(on.egress_over_f < 1.01, "{}", on.egress_over_f);
}

const BUSY: &str = "--nodes 40 --image 200MB --layers 3 --racks 4 --rack-up 2Gbit \
                    --churn 0.1 --churn-window 2s --churn-down 1s --stagger 1s";

#[test]
fn the_same_seed_gives_the_same_outcome_and_another_seed_another() {
    let a = run(&format!("{BUSY} --seed 7"));
    let b = run(&format!("{BUSY} --seed 7"));
    assert_eq!(outcome(&a), outcome(&b));
    let c = run(&format!("{BUSY} --seed 8"));
    assert_ne!(outcome(&a), outcome(&c), "the seed reaches the run");
}

#[test]
fn one_node_alone_pulls_at_the_registrys_rate() {
    // 100 MB at 100 MB/s, the node's links ten times faster: one second, plus the request's
    // latency and the tracker's answer on whether to split (nobody to split with).
    let r = run("--nodes 1 --image 100MB --layers 1 --registry-up 100MB/s --node-down 1GB/s");
    assert_eq!(r.done, 1);
    assert!((r.t_min_secs - 1.0).abs() < 1e-9, "{}", r.t_min_secs);
    assert!(r.max_secs >= 1.0 && r.max_secs < 1.5, "{}", r.max_secs);
    assert!((r.egress_over_f - 1.0).abs() < 1e-6, "{}", r.egress_over_f);
}

#[test]
fn a_cluster_never_beats_the_bound_and_takes_each_byte_from_the_registry_once() {
    let r = run("--nodes 50 --image 300MB --registry-up 1Gbit --node-up 2Gbit --node-down 2Gbit");
    assert_eq!(r.done, 50);
    assert!(
        r.max_secs >= r.t_min_secs,
        "{} < {}",
        r.max_secs,
        r.t_min_secs
    );
    assert!(r.p50_secs <= r.p99_secs && r.p99_secs <= r.max_secs);
    assert!((r.egress_over_f - 1.0).abs() < 0.01, "{}", r.egress_over_f);
    // Every node received the image once; what they sent is what the others received from
    // peers (the registry sent the rest).
    assert!(
        (r.received_mean_over_f - 1.0).abs() < 0.01,
        "{}",
        r.received_mean_over_f
    );
    let sent = r.sent_mean_over_f * 50.0;
    let from_peers = 50.0 - r.egress_over_f;
    assert!((sent - from_peers).abs() < 0.05, "{sent} vs {from_peers}");
    assert!(r.tracker_peak_bytes > 0 && r.tracker_msgs_per_node_per_sec > 0.0);
}

#[test]
fn killed_nodes_come_back_and_finish() {
    let r = run("--nodes 30 --image 100MB --churn 0.2 --churn-window 500ms --churn-down 1s");
    assert_eq!(r.kills, 6);
    assert_eq!(r.done, 30);
}

#[test]
fn a_rack_link_is_counted_and_bounds_the_pull() {
    // Two racks behind 100 MB/s uplinks: each rack needs the image through its downlink.
    let r = run("--nodes 8 --image 100MB --racks 2 --rack-up 100MB/s --registry-up 1GB/s");
    assert_eq!(r.done, 8);
    assert!(r.t_min_secs >= 1.0, "{}", r.t_min_secs);
    assert!(r.max_secs >= 1.0);
    assert!(r.rack_in_mean_over_f >= 1.0, "{}", r.rack_in_mean_over_f);
}

#[test]
fn a_holder_sending_a_slow_piece_keeps_its_slot() {
    // benches/cluster.sh's peer-bound: 40 Mbit/s uplinks, so a piece takes longer to send than
    // SLOT_YIELD_AFTER. Counting idleness from the last request, holders yielded as each piece
    // went through and, on these seeds, nodes stalled and went to the registry.
    for seed in [1, 2, 4] {
        let r = run(&format!(
            "--nodes 12 --layer-sizes 16MiB,8MiB,8MiB --registry-up 500Mbit --node-up 40Mbit \
             --node-down 200Mbit --trackers 2 --seed {seed}"
        ));
        assert_eq!(r.done, 12);
        let stalled = r
            .upstream_requests
            .iter()
            .find(|(why, _)| why == "stalled")
            .map_or(0, |(_, n)| *n);
        assert_eq!(stalled, 0, "seed {seed}: {:?}", r.upstream_requests);
    }
}

#[test]
fn the_time_from_peers_is_split_into_shares_that_add_up() {
    // Without the rack rule: with it, nodes of these racks of 10 spend more time waiting for
    // rack-mates' slots and for their turn to import (receiving 16 %, choked 31 %) while the
    // thin rack links carry 1.4 x the image instead of 4.5 x, and all are done in 3.6 s
    // instead of 5.0 s.
    let r = run(&format!("{BUSY} --seed 3 --rack-rule any"));
    let t = r.peer_time;
    let shares = [t.receiving, t.choked, t.nothing_offered, t.other];
    assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)), "{t:?}");
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{t:?}");
    // Receiving is the largest share. (It was over half; with the upstream fetchers asking
    // peers for one piece at a time and nodes asking at most NODE_ACTIVE_PEERS peers, this
    // set-up finishes in 3.2 s instead of 4.2 s and receives 35 % of the time.)
    assert!(
        t.receiving > t.choked && t.receiving > 0.3,
        "a swarm with peers mostly receives: {t:?}"
    );
    // No node takes bytes from peers faster than its link.
    assert!(
        r.peer_rate_over_downlink > 0.0 && r.peer_rate_over_downlink <= 1.0 + 1e-9,
        "{}",
        r.peer_rate_over_downlink
    );
    // Alone, a node has no peer to receive from or wait for.
    let alone = run("--nodes 1 --image 100MB --layers 1").peer_time;
    assert_eq!((alone.receiving, alone.choked), (0.0, 0.0), "{alone:?}");
}

#[test]
fn hashes_from_producers_only_starve_a_swarm_wider_than_their_queues() {
    // 60 nodes, 2 upload slots (10 sessions per uploader with its queue), and full queues
    // turning newcomers away: most nodes can hold no session with the blob's producers, so
    // they learn no hash, ask for no piece and stall into the registry. Signed hashes that any
    // holder passes on keep it at F, sent ahead of their pieces (`relayed`) or with them
    // (`held`, the agent now).
    let set_up = "--nodes 60 --image 64MB --layers 1 --upload-slots 2 --registry-up 1Gbit \
                  --node-up 1Gbit --node-down 1Gbit";
    let producers = run(&format!("{set_up} --hashes producers --full-queue refuse"));
    assert_eq!(producers.done, 60);
    assert!(producers.egress_over_f > 1.5, "{}", producers.egress_over_f);
    // Newcomers displacing the waiting nodes served elsewhere reach the producers too
    // (egress 1.0 x F, the last node at 4.5 s against 14.6 s).
    let displacing = run(&format!(
        "{set_up} --hashes producers --full-queue displace"
    ));
    assert!(
        displacing.egress_over_f < 1.01,
        "{}",
        displacing.egress_over_f
    );
    for passed_on in ["relayed", "held"] {
        let r = run(&format!(
            "{set_up} --hashes {passed_on} --full-queue refuse"
        ));
        assert_eq!(r.done, 60, "{passed_on}");
        assert!(r.egress_over_f < 1.01, "{passed_on}: {}", r.egress_over_f);
        assert!(producers.max_secs > 2.0 * r.max_secs, "{passed_on}");
    }
}

#[test]
fn newcomers_displacing_waiting_nodes_served_elsewhere_finish_the_swarm_sooner() {
    // 120 nodes with one upload slot each (4 waiting places): with full queues turning
    // newcomers away, the last node is done at 5.40 s; with a newcomer taking the place of the
    // waiting session whose node holds most slots elsewhere when it holds fewer, at 4.22 s
    // (seeds 2-4: 5.37, 5.57, 4.66 s against 4.97, 4.61, 4.22 s).
    let set_up = "--nodes 120 --image 256MB --layers 2 --upload-slots 1 --node-up 300MB/s \
                  --node-down 300MB/s --registry-up 10Gbit";
    rule_brings_the_last_node_in_sooner(
        set_up,
        "--full-queue refuse",
        "--full-queue displace",
        120,
        0.9,
    );
}

#[test]
fn slots_turned_over_to_poorer_nodes_bring_the_last_nodes_in_sooner() {
    // 150 nodes with 4 upload slots each: holders that keep asking keep their slots, and the
    // last node is done at 3.34 s; with a holder giving its slot to a waiting node holding 2
    // fewer after a piece (`Slots::turn_over`), at 3.13 s. At this size the gain varies by
    // seed (2-4: 3.16, 3.00, 3.15 s against 3.09, 2.87, 3.29 s); at 2,600 nodes it is the
    // rule that brought Kraken's set-up from p99 13.8 s to 12.2 s (benches/README.md).
    let set_up = "--nodes 150 --image 600MB --layers 2 --upload-slots 4 --node-up 300MB/s \
                  --node-down 300MB/s --registry-up 10Gbit";
    rule_brings_the_last_node_in_sooner(
        set_up,
        "--slot-turnover off",
        "--slot-turnover on",
        150,
        0.95,
    );
}

#[test]
fn idle_holders_yielding_sooner_bring_the_swarm_up_sooner() {
    // At the start every uploader holds a few pieces, and a holder that has taken them sits on
    // the slot asking for nothing: with 500 ms of idleness before it yields, half the swarm's
    // uplinks stood unused from 0.4 s to 0.8 s at 2,600 nodes. 150 nodes, 1.2 GB, seed 1: the
    // last node at 4.98 s against 4.69 s with the default (250 ms); seeds 2-4: 5.02, 4.80,
    // 4.92 s against 4.74, 4.70, 4.74 s.
    let set_up = "--nodes 150 --image 1200MB --layers 2 --node-up 300MB/s --node-down 300MB/s \
                  --registry-up 10Gbit";
    rule_brings_the_last_node_in_sooner(set_up, "--slot-yield-after 500ms", "", 150, 0.97);
}

#[test]
fn importing_by_rank_takes_each_piece_into_a_rack_about_once() {
    // 160 nodes in 4 racks of 40 behind 4:1 uplinks, registry-bound. Without the rule each
    // rack's nodes ask their far peers for every new piece at once.
    let set_up = "--nodes 160 --racks 4 --image 1500MB --layers 1 --node-up 10Gbit \
                  --node-down 10Gbit --rack-up 100Gbit --registry-up 2Gbit";
    let any = run(&format!("{set_up} --rack-rule any"));
    let import = run(&format!("{set_up} --rack-rule import"));
    assert_eq!((any.done, import.done), (160, 160));
    assert!(import.egress_over_f < 1.01, "{}", import.egress_over_f);
    assert!(
        import.rack_in_mean_over_f < 1.5
            && any.rack_in_mean_over_f > 2.0 * import.rack_in_mean_over_f,
        "rack crossings: any {}, import {}",
        any.rack_in_mean_over_f,
        import.rack_in_mean_over_f
    );
    assert!(import.max_over_t_min < 1.3, "{}", import.max_over_t_min);
}

#[test]
fn a_piece_size_too_small_for_a_layer_is_refused_not_replaced() {
    let check = |args: &str| {
        let mut s =
            Scenario::parse_from(std::iter::once("pollen-sim").chain(args.split_whitespace()));
        s.normalise();
        s.check()
    };
    let err = check("--nodes 2 --image 30GB --layers 1 --piece-size 64KiB").unwrap_err();
    assert!(err.contains("--piece-size"), "{err}");
    assert!(check("--nodes 2 --image 30GB --layers 1 --piece-size 1MiB").is_ok());
}
