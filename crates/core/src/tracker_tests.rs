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
    out.clear();
    s.join(t0, d, member(101, "c"), false, false, &mut out);
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
