use super::*;
use pollen_proto::PieceGeometry;
use std::collections::BTreeSet;

const MIB: u64 = 1 << 20;

fn field(count: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
    let g = PieceGeometry::new(u64::from(count) * MIB, MIB as u32).unwrap();
    let mut b = Bitfield::new(&g);
    for i in ones {
        b.set(i).unwrap();
    }
    b
}

/// An exchange over `count` pieces, every hash known, with `peers` open and unchoked peers
/// holding everything.
fn exchange(count: u32, peers: usize, now: Instant) -> Exchange {
    let mut x = Exchange::new(Duration::from_secs(10), now);
    x.adopt(
        count,
        field(count, 0..count),
        (0..u64::from(count)).collect(),
        now,
    );
    let mine = field(count, []);
    for slot in 0..peers {
        x.add(slot);
        x.opened(slot, field(count, 0..count), &mine, now);
        x.choked(slot, false, &[]);
    }
    x
}

#[test]
fn the_pipeline_holds_at_most_its_bytes_but_always_one_piece() {
    assert_eq!(pipeline_cap(MIB), REQUESTS_PER_PEER);
    assert_eq!(pipeline_cap(4 * MIB), 4);
    assert_eq!(pipeline_cap(8 * MIB), 2);
    assert_eq!(pipeline_cap(64 * MIB), 1);
    assert_eq!(pipeline_cap(0), REQUESTS_PER_PEER);
}

#[test]
fn a_download_holds_at_most_its_bytes_over_all_peers_but_one_full_pipeline() {
    assert_eq!(download_cap(MIB), 48);
    assert_eq!(download_cap(4 * MIB), 12);
    assert_eq!(download_cap(64 * MIB), 1);
    assert_eq!(download_cap(16 * MIB), 3);
    assert_eq!(download_cap(0), 48 << 20);
}

#[test]
fn a_new_peer_gets_one_request_and_a_fast_one_a_full_pipeline() {
    let t0 = Instant::now();
    let mut x = exchange(64, 1, t0);
    let none = field(64, []);
    let first = x.fill(&none, MIB, Duration::from_secs(5), t0);
    assert_eq!(first, vec![(0, 0)], "one request before any rate is known");
    let (cancels, fresh) = x.received(0, 0, 8 * MIB, &none);
    assert!(cancels.is_empty() && fresh);
    let later = t0 + Duration::from_millis(100);
    let more = x.fill(&none, MIB, Duration::from_secs(5), later);
    assert_eq!(
        more.len(),
        REQUESTS_PER_PEER,
        "80 MiB/s keeps the pipeline full"
    );
    assert!(
        more.iter().all(|(_, i)| *i != 0),
        "a piece being written is not asked for"
    );
}

#[test]
fn the_budget_over_all_peers_is_shared_in_turns() {
    let t0 = Instant::now();
    let count = 256;
    let mut x = exchange(count, 8, t0);
    for p in x.peers.values_mut() {
        p.first_request = Some(t0);
        p.delivered = 64 * MIB;
    }
    let none = field(count, []);
    let now = t0 + Duration::from_secs(1);
    let piece = 8 * MIB;
    let sent = x.fill(&none, piece, Duration::from_secs(5), now);
    assert_eq!(sent.len(), download_cap(piece), "{sent:?}");
    let first: Vec<usize> = sent.iter().map(|(s, _)| *s).collect();
    for (slot, index) in sent {
        x.forget_request(index, slot);
    }
    let again: Vec<usize> = x
        .fill(&none, piece, Duration::from_secs(5), now)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_ne!(
        first.first(),
        again.first(),
        "the next turn starts at another peer"
    );
}

#[test]
fn the_first_copy_of_a_duplicated_piece_cancels_the_others() {
    let t0 = Instant::now();
    let mut x = exchange(2, 2, t0);
    let none = field(2, []);
    x.requests.insert(1, vec![(0, t0), (1, t0)]);
    x.peers.values_mut().for_each(|p| p.outstanding = 1);
    let (cancels, fresh) = x.received(1, 1, MIB, &none);
    assert_eq!(cancels, vec![0]);
    assert!(fresh);
    assert!(x.peers.values().all(|p| p.outstanding == 0));
    let (_, again) = x.received(0, 1, MIB, &none);
    assert!(!again, "a second copy is not written twice");
    x.written(1, true, t0);
    assert!(x.writing.is_empty());
}

#[test]
fn a_peer_that_leaves_takes_its_pieces_and_requests_with_it() {
    let t0 = Instant::now();
    let mut x = exchange(4, 2, t0);
    x.requests.insert(2, vec![(1, t0)]);
    assert!(x.can_help(&field(4, []), Some(&(2..3))));
    assert!(x.remove(1));
    assert_eq!(x.availability, vec![1; 4]);
    assert!(!x.requests.contains_key(&2));
    x.remove(0);
    assert!(!x.can_help(&field(4, []), None), "nobody left");
    assert!(!x.remove(0), "once");
}

#[test]
fn only_pieces_nobody_held_count_as_the_swarm_moving_on() {
    let t0 = Instant::now();
    let mut x = Exchange::new(Duration::from_secs(1), t0);
    x.adopt(4, field(4, 0..4), vec![0; 4], t0);
    let mine = field(4, []);
    x.add(0);
    x.add(1);
    x.opened(0, field(4, [0]), &mine, t0);
    let later = t0 + Duration::from_millis(900);
    x.opened(1, field(4, [0]), &mine, later);
    assert!(
        x.stall.stalled(t0 + Duration::from_millis(1100)),
        "nothing new"
    );
    x.have_more(1, &[3], &mine, t0 + Duration::from_millis(1100));
    assert!(
        !x.stall.stalled(t0 + Duration::from_millis(1200)),
        "piece 3 is new"
    );
}

#[test]
fn peers_that_keep_this_node_waiting_do_not_use_up_its_room() {
    let t0 = Instant::now();
    let mut x = exchange(4, 3, t0);
    assert_eq!(x.dial_room(4), 1, "three serving");
    x.choked(0, true, &[]);
    x.choked(1, true, &[]);
    assert_eq!(
        x.dial_room(4),
        3,
        "two wait for a slot: room for three more"
    );
    x.add(3);
    assert_eq!(x.dial_room(4), 2, "a session not open yet counts");
    for slot in 4..(4 * SESSIONS_PER_SERVING) {
        x.add(slot);
        x.opened(slot, field(4, []), &field(4, []), t0);
        x.choked(slot, true, &[]);
    }
    assert_eq!(
        x.dial_room(4),
        0,
        "never more than three times the peers in all"
    );
}

#[test]
fn a_busy_node_keeps_one_piece_in_flight_and_asks_at_most_its_share_of_peers() {
    let t0 = Instant::now();
    let none = field(64, []);
    let timeout = Duration::from_secs(5);
    let mut x = exchange(64, 3, t0);
    let busy = x.fill_within(&none, MIB, timeout, t0, BUSY_BUDGET, usize::MAX);
    assert_eq!(
        busy.len(),
        BUSY_BUDGET,
        "fetching from the upstream: one piece from peers"
    );
    let mut y = exchange(64, 3, t0);
    let asked = y.fill_within(&none, MIB, timeout, t0, download_cap(MIB), 2);
    let peers: BTreeSet<usize> = asked.iter().map(|(slot, _)| *slot).collect();
    assert_eq!(peers.len(), 2, "two of three peers asked: {asked:?}");
    assert_eq!(y.active_peers(), 2);
    // A peer with nothing outstanding is not active: its place goes to the next fill.
    let (slot, index) = asked[0];
    y.received(slot, index, MIB, &none);
    assert_eq!(y.active_peers(), 1);
}

/// Under the rack rule a far peer is asked only for pieces this node imports, a near one for
/// anything.
#[test]
fn far_peers_are_asked_for_imports_near_ones_for_anything() {
    let t0 = Instant::now();
    let count = 64;
    let mut x = Exchange::new(Duration::from_secs(10), t0);
    x.rack.enable(1);
    for k in [2, 3, 4] {
        x.rack.know(k);
    }
    x.adopt(
        count,
        field(count, 0..count),
        (0..u64::from(count)).collect(),
        t0,
    );
    let mine = field(count, []);
    x.add(0);
    x.opened(0, field(count, 0..count), &mine, t0);
    x.choked(0, false, &[]);
    let imports = x.rack.imports();
    let mut asked = Vec::new();
    for round in 0..count {
        let now = t0 + Duration::from_millis(u64::from(round));
        let sent = x.fill(&mine, MIB, Duration::from_secs(20), now);
        if sent.is_empty() {
            break;
        }
        for (slot, piece) in sent {
            asked.push(piece);
            x.received(slot, piece, MIB, &mine);
        }
    }
    let expected: Vec<u32> = imports.iter_ones().collect();
    asked.sort_unstable();
    assert_eq!(
        asked, expected,
        "the far peer gave exactly this node's imports"
    );
    x.add_near(1);
    x.opened(1, field(count, 0..count), &mine, t0);
    x.choked(1, false, &[]);
    let sent = x.fill(
        &mine,
        MIB,
        Duration::from_secs(20),
        t0 + Duration::from_secs(1),
    );
    assert!(!sent.is_empty() && sent.iter().all(|(slot, _)| *slot == 1));
}

/// Far sessions are capped under the rack rule only once a rack-mate is known: a node whose
/// tracker marks nobody (none reachable, or one of the version before) dials as without it.
#[test]
fn far_sessions_are_capped_once_a_rack_mate_is_known() {
    let t0 = Instant::now();
    let mut x = Exchange::new(Duration::from_secs(10), t0);
    assert_eq!(x.far_room(), usize::MAX, "no rule");
    x.rack.enable(1);
    x.add(0);
    assert_eq!(x.far_room(), usize::MAX, "no rack-mate known yet");
    x.rack.know(2);
    assert_eq!(x.far_room(), crate::rack::FAR_SESSIONS - 1);
    x.add(1);
    x.add_near(2);
    assert_eq!(
        x.far_room(),
        0,
        "two far sessions; a near one does not count"
    );
}

#[test]
fn news_is_worth_a_request_round_only_from_a_peer_that_gave_a_slot() {
    let now = Instant::now();
    let mut x = Exchange::new(Duration::from_secs(10), now);
    x.adopt(8, field(8, 0..8), (0..8).collect(), now);
    let mine = field(8, [0]);
    x.add(1);
    x.opened(1, field(8, []), &mine, now);
    assert!(!x.have_more(1, &[1], &mine, now), "choked: nothing to ask");
    x.choked(1, false, &[]);
    assert!(!x.have_more(1, &[0], &mine, now), "a piece this node holds");
    assert!(x.have_more(1, &[2], &mine, now));
    assert!(!x.have_more(7, &[3], &mine, now), "no such peer");
    assert_eq!(
        x.availability,
        vec![1, 1, 1, 0, 0, 0, 0, 0],
        "counted all the same"
    );
}
