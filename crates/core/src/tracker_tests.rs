use super::*;

fn member(i: u8, rack: &str) -> Member {
    Member {
        peer: vec![i; 38],
        seed: false,
        labels: vec![("rack".into(), rack.into())],
        pieces: 0,
        busy: false,
    }
}

fn told(out: &[Push]) -> Vec<u64> {
    out.iter()
        .filter(|(_, r)| matches!(r, TrackerReply::Peers { .. }))
        .map(|(id, _)| *id)
        .collect()
}

#[test]
fn a_newcomer_is_named_to_a_bounded_number_of_members_its_rack_first() {
    let t0 = Instant::now();
    let d = Digest::of(b"fanout");
    let mut s = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET).with_newcomer_fanout(3);
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for i in 0..8u8 {
        let rack = if i % 2 == 0 { "a" } else { "b" };
        ids.push(s.join(t0, d, member(i, rack), false, false, &mut out).id);
    }
    out.clear();
    s.join(t0, d, member(100, "a"), false, false, &mut out);
    // The first joiner fetches and hears nothing; of the others, rack a's most recent first.
    assert_eq!(told(&out), vec![ids[6], ids[4], ids[2]]);
    // They share its rack: each is told so right after.
    let near: Vec<u64> = out
        .iter()
        .filter(|(_, r)| {
            *r == TrackerReply::Near {
                peers: vec![vec![100; 38]],
            }
        })
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(near, told(&out));
    out.clear();
    s.join(t0, d, member(101, "c"), false, false, &mut out);
    assert!(
        !out.iter()
            .any(|(_, r)| matches!(r, TrackerReply::Near { .. })),
        "rack c is alone"
    );
    assert_eq!(
        told(&out).len(),
        3,
        "at most the fan-out, whatever the swarm's size"
    );
}

#[test]
fn members_alike_are_named_in_each_newcomers_own_order() {
    let t0 = Instant::now();
    let d = Digest::of(b"order");
    let mut s = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET);
    let mut out = Vec::new();
    for i in 0..40u8 {
        s.join(t0, d, member(i, "a"), false, false, &mut out);
    }
    let peers_of = |s: &mut Swarms, i: u8| match s
        .join(t0, d, member(i, "a"), false, false, &mut Vec::new())
        .assign
    {
        TrackerReply::Assign { peers, .. } => peers,
        _ => Vec::new(),
    };
    let (x, y) = (peers_of(&mut s, 200), peers_of(&mut s, 201));
    assert_eq!(x.len(), PEERS_PER_ASSIGN);
    // Both start with the fetcher; the members alike after it come in different orders.
    assert_eq!(x.first(), y.first());
    assert_ne!(x, y);
    let mut s2 = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET);
    for i in 0..40u8 {
        s2.join(t0, d, member(i, "a"), false, false, &mut Vec::new());
    }
    assert_eq!(
        peers_of(&mut s2, 200),
        x,
        "the same order on every tracker, in every run"
    );
}

/// The list as it was computed before only the best members were sorted: every holder, then
/// every member in rank order, each peer once, cut at `PEERS_PER_ASSIGN`.
fn rank_by_full_sort(swarm: &BlobSwarm, newcomer: &Member) -> Vec<Vec<u8>> {
    let mut keys = rank_keys(swarm, newcomer);
    keys.sort();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let holders = swarm.holders.iter().rev().map(|(p, _, _)| p);
    for p in holders.chain(keys.iter().map(|k| k.4)) {
        if *p != newcomer.peer && !out.contains(p) {
            out.push(p.clone());
        }
    }
    out.truncate(PEERS_PER_ASSIGN);
    out
}

#[test]
fn ranking_only_the_best_members_gives_the_full_ranking() {
    let t0 = Instant::now();
    let d = Digest::of(b"rank");
    let mut s = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET);
    for i in 0..120u8 {
        let mut m = member(i, if i % 3 == 0 { "a" } else { "b" });
        m.pieces = u32::from(i % 7);
        s.join(t0, d, m, false, false, &mut Vec::new());
    }
    // The same peer a member twice (a rejoin whose old stream has not ended here yet).
    s.join(t0, d, member(5, "a"), false, false, &mut Vec::new());
    let newcomer = member(250, "a");
    let Some(swarm) = s.blobs.get_mut(&d) else {
        panic!("the swarm exists");
    };
    assert_eq!(
        rank(swarm, &newcomer).0,
        rank_by_full_sort(swarm, &newcomer)
    );
    assert_eq!(rank(swarm, &newcomer).0.len(), PEERS_PER_ASSIGN);
    // Holders come first, and holders that are members too are listed once.
    for i in [3u8, 6, 9, 201, 200] {
        let rack = (i == 201).then(|| "a".to_string());
        swarm.holders.push((vec![i; 38], t0, rack));
    }
    let (listed, near) = rank(swarm, &newcomer);
    assert_eq!(listed, rank_by_full_sort(swarm, &newcomer));
    // Marked near: the listed members of rack a (every third), and the holder that left
    // complete from rack a (201), not the one with no rack (200).
    let in_rack_a = |p: &&Vec<u8>| (p[0] < 120 && p[0].is_multiple_of(3)) || p[0] == 201;
    let expected: Vec<Vec<u8>> = listed.iter().filter(in_rack_a).cloned().collect();
    assert!(!expected.is_empty());
    assert_eq!(near, expected);
    assert_eq!(listed.first(), Some(&vec![200u8; 38]));
    // Fewer members than the list holds: all of them, ranked.
    let mut few = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET);
    for i in 0..5u8 {
        few.join(t0, d, member(i, "b"), false, false, &mut Vec::new());
    }
    let Some(small) = few.blobs.get(&d) else {
        panic!("the swarm exists");
    };
    assert_eq!(
        rank(small, &newcomer).0,
        rank_by_full_sort(small, &newcomer)
    );
    assert_eq!(
        rank(small, &newcomer),
        (rank_by_full_sort(small, &newcomer), vec![])
    );
    assert_eq!(rank(small, &newcomer).0.len(), 5);
}

#[test]
fn the_fetch_is_split_at_once_when_members_are_there_for_every_part() {
    let t0 = Instant::now();
    let d = Digest::of(b"split at once");
    let mut s = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET);
    let mut out = Vec::new();
    let fetcher = s.join(t0, d, member(0, "a"), false, false, &mut out).id;
    let blob = |size| Sized {
        size,
        count: 100,
        ranges: true,
    };
    let large = 16 * MIN_SHARE;
    assert!(
        !s.split_ready(&d, fetcher, blob(large)),
        "nobody to take a part"
    );
    for i in 1..MAX_FETCHERS as u8 - 1 {
        s.join(t0, d, member(i, "a"), false, false, &mut out);
    }
    assert!(!s.split_ready(&d, fetcher, blob(large)), "one part short");
    // A member busy fetching another blob takes no part.
    let mut busy = member(50, "a");
    busy.busy = true;
    s.join(t0, d, busy, false, false, &mut out);
    assert!(!s.split_ready(&d, fetcher, blob(large)));
    s.join(t0, d, member(51, "a"), false, false, &mut out);
    assert!(s.split_ready(&d, fetcher, blob(large)));
    // A blob cut in fewer parts needs fewer members; one not split needs none.
    let two_parts = 2 * MIN_SHARE;
    let mut alone = Swarms::new(MIN_SHARE, DEFAULT_UPSTREAM_BUDGET);
    let first = alone.join(t0, d, member(0, "a"), false, false, &mut out).id;
    assert!(!alone.split_ready(&d, first, blob(two_parts)));
    alone.join(t0, d, member(1, "a"), false, false, &mut out);
    assert!(alone.split_ready(&d, first, blob(two_parts)));
    let no_ranges = Sized {
        ranges: false,
        ..blob(large)
    };
    assert!(s.split_ready(&d, fetcher, no_ranges));
}
