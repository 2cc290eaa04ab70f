use super::*;
use std::time::Duration;

fn member(peer: u8, seed: bool, zone: &str) -> (Member, mpsc::UnboundedReceiver<TrackerReply>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Member {
            peer: vec![peer],
            seed,
            labels: vec![("zone".into(), zone.into())],
            pieces: 0,
            busy: false,
            tx,
        },
        rx,
    )
}

#[test]
fn a_busy_member_leaves_the_fetch_to_one_that_is_not_and_claims_it_when_none_comes() {
    let t = Tracker::new();
    let d = Digest::of(b"busy");
    let (mut a, _ra) = member(1, false, "z");
    a.busy = true;
    let (id_a, r, _) = t.join(d, a, false, false);
    assert!(!assign(r).0, "busy: not the fetcher at once");
    let (b, _rb) = member(2, false, "z");
    let (_, r, _) = t.join(d, b, false, false);
    assert!(assign(r).0, "the first member that is not busy fetches");
    // b fetches d: joining another blob, the tracker counts it busy itself.
    let (b2, _rb2) = member(2, false, "z");
    let (_, r, deferred) = t.join(Digest::of(b"other"), b2, false, false);
    assert!(
        !assign(r).0 && deferred,
        "fetching one blob here: not another at once"
    );
    assert!(!t.claim_deferred(&d, id_a), "the fetch is taken");

    let d2 = Digest::of(b"alone");
    let (mut c, _rc) = member(3, false, "z");
    c.busy = true;
    let (id_c, r, _) = t.join(d2, c, false, false);
    assert!(!assign(r).0);
    assert!(
        t.claim_deferred(&d2, id_c),
        "nobody else came: the busy one fetches"
    );
    assert!(!t.claim_deferred(&d2, id_c), "once");
}

/// Whether a `Fetch` was pushed (the `Peers` pushes about newcomers are skipped).
fn told_to_fetch(rx: &mut mpsc::UnboundedReceiver<TrackerReply>) -> bool {
    std::iter::from_fn(|| rx.try_recv().ok()).any(|r| r == TrackerReply::Fetch)
}

#[test]
fn a_closing_tracker_hands_no_fetch_on() {
    let t = Tracker::new();
    let d = Digest::of(b"closing");
    let (f, _rf) = member(1, false, "z");
    let (id_f, r, _) = t.join(d, f, false, false);
    assert!(assign(r).0);
    let (m, mut rm) = member(2, false, "z");
    t.join(d, m, false, false);
    t.close();
    // The node shuts down: the fetcher's stream closes first, but it did not die.
    t.leave(&d, id_f, false);
    assert!(
        !told_to_fetch(&mut rm),
        "the next tracker decides, not a closing one"
    );
}

fn assign(r: TrackerReply) -> (bool, Vec<Vec<u8>>) {
    match r {
        TrackerReply::Assign { fetch, peers } => (fetch, peers),
        other => panic!("{other:?}"),
    }
}

#[test]
fn first_joiner_fetches_and_later_ones_are_pointed_at_it() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, _ra) = member(1, false, "x");
    let (id_a, r, _) = t.join(d, a, false, false);
    assert_eq!(assign(r), (true, vec![]));
    let (b, _rb) = member(2, false, "y");
    let (_, r, _) = t.join(d, b, false, false);
    assert_eq!(assign(r), (false, vec![vec![1]]));
    let (c, _rc) = member(3, false, "y");
    t.progress(&d, id_a, 5);
    let (_, r, _) = t.join(d, c, false, false);
    assert_eq!(
        assign(r).1,
        vec![vec![1], vec![2]],
        "fetcher first, then same zone"
    );
    assert_eq!(t.summary()[0].members, 3);
}

#[tokio::test(start_paused = true)]
async fn a_fetcher_that_dies_hands_the_fetch_to_a_seed_first() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, _ra) = member(1, false, "x");
    let (id_a, _, _) = t.join(d, a, false, false);
    let (b, mut rb) = member(2, false, "x");
    let (id_b, _, _) = t.join(d, b, false, false);
    t.progress(&d, id_b, 50);
    let (s, mut rs) = member(3, true, "x");
    t.join(d, s, false, false);
    assert!(t.leave(&d, id_a, false), "the fetcher gets its grace");
    t.recheck(&d);
    assert!(!told_to_fetch(&mut rs), "not before the grace is over");
    tokio::time::advance(REJOIN_GRACE).await;
    t.recheck(&d);
    assert!(told_to_fetch(&mut rs), "the seed takes over");
    assert!(!told_to_fetch(&mut rb));
    assert!(t.summary()[0].fetching);
}

#[tokio::test(start_paused = true)]
async fn a_fetcher_whose_stream_broke_joins_again_and_keeps_the_fetch() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, _ra) = member(1, false, "x");
    let (id_a, r, _) = t.join(d, a, false, false);
    assert!(assign(r).0);
    assert!(t.leave(&d, id_a, false));
    let (b, mut rb) = member(2, false, "x");
    let (_, r, _) = t.join(d, b, false, false);
    assert!(
        !assign(r).0,
        "a newcomer during the grace is not made a second fetcher"
    );
    let (a, _ra) = member(1, false, "x");
    let (_, r, _) = t.join(d, a, true, false);
    assert!(assign(r).0, "the fetcher is back");
    tokio::time::advance(REJOIN_GRACE).await;
    t.recheck(&d);
    assert!(!told_to_fetch(&mut rb), "nobody else fetches");

    // Its new stream may arrive before the old one's end: it is the fetcher either way.
    let d2 = Digest::of(b"other");
    let (a, _ra) = member(1, false, "x");
    let (id_old, _, _) = t.join(d2, a, false, false);
    let (a, _ra) = member(1, false, "x");
    let (_, r, _) = t.join(d2, a, true, false);
    assert!(assign(r).0);
    assert!(
        !t.leave(&d2, id_old, false),
        "the old stream no longer holds the fetch"
    );
}

#[test]
fn a_complete_fetcher_needs_no_successor_and_is_named_to_latecomers() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, _ra) = member(1, false, "x");
    let (id_a, _, _) = t.join(d, a, false, false);
    let (b, mut rb) = member(2, false, "x");
    t.join(d, b, false, false);
    t.leave(&d, id_a, true);
    assert!(!told_to_fetch(&mut rb), "nobody is told to fetch");
    let (c, _rc) = member(3, false, "x");
    let (_, r, _) = t.join(d, c, false, false);
    assert_eq!(assign(r), (false, vec![vec![1], vec![2]]));
}

#[test]
fn a_member_already_fetching_keeps_the_fetch_after_a_tracker_change() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (b, _rb) = member(2, false, "x");
    let (_, r, _) = t.join(d, b, false, false);
    assert!(assign(r).0);
    let (a, _ra) = member(1, false, "x");
    let (_, r, _) = t.join(d, a, true, false);
    assert!(assign(r).0, "it is fetching already; it goes on");
}

#[tokio::test(start_paused = true)]
async fn state_is_dropped_when_the_last_member_leaves_without_it() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, _ra) = member(1, false, "x");
    let (id, _, _) = t.join(d, a, false, false);
    let (b, _rb) = member(2, false, "x");
    let (id_b, _, _) = t.join(d, b, false, false);
    t.leave(&d, id_b, false);
    assert_eq!(t.summary().len(), 1);
    // The last one was the fetcher: kept through its grace, then dropped.
    assert!(t.leave(&d, id, false));
    tokio::time::advance(REJOIN_GRACE).await;
    t.recheck(&d);
    assert!(t.summary().is_empty());
}

#[tokio::test(start_paused = true)]
async fn rejoining_members_wait_for_the_fetcher_then_one_takes_over() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, mut ra) = member(1, false, "x");
    let (_, r, _) = t.join(d, a, false, true);
    assert!(!assign(r).0, "a rejoining member is not made the fetcher");
    let (b, _rb) = member(2, false, "x");
    let (_, r, _) = t.join(d, b, false, false);
    assert!(!assign(r).0, "nor a newcomer during the grace");
    let (f, _rf) = member(3, false, "x");
    let (_, r, _) = t.join(d, f, true, true);
    assert!(assign(r).0, "the fetcher is back and keeps its job");
    assert!(!told_to_fetch(&mut ra));

    // Another blob whose fetcher never comes back.
    let d2 = Digest::of(b"other");
    let (a, mut ra) = member(1, false, "x");
    let (id_a, _, _) = t.join(d2, a, false, true);
    t.progress(&d2, id_a, 3);
    assert!(!told_to_fetch(&mut ra), "still within the grace");
    tokio::time::advance(REJOIN_GRACE).await;
    t.progress(&d2, id_a, 3);
    assert!(told_to_fetch(&mut ra));
}

#[test]
fn members_hear_of_newcomers_but_the_fetcher_does_not() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (f, mut rf) = member(1, false, "x");
    t.join(d, f, false, false);
    let (a, mut ra) = member(2, false, "x");
    t.join(d, a, false, false);
    let (b, _rb) = member(3, false, "x");
    t.join(d, b, false, false);
    assert_eq!(
        ra.try_recv().ok(),
        Some(TrackerReply::Peers {
            peers: vec![vec![3]]
        })
    );
    assert!(rf.try_recv().is_err());
}

#[test]
fn holders_are_remembered_after_everyone_left() {
    let t = Tracker::new();
    let d = Digest::of(b"blob");
    let (a, _ra) = member(1, false, "x");
    let (id, _, _) = t.join(d, a, false, false);
    t.leave(&d, id, true);
    let (b, _rb) = member(2, false, "x");
    let (_, r, _) = t.join(d, b, false, false);
    assert_eq!(
        assign(r),
        (false, vec![vec![1]]),
        "no second upstream fetch"
    );
}

fn pushed(rx: &mut mpsc::UnboundedReceiver<TrackerReply>) -> Vec<TrackerReply> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn range_of(replies: &[TrackerReply]) -> Option<(u32, u32)> {
    ranges(replies).first().copied()
}

/// Every `FetchRange` among `replies`, in order.
fn ranges(replies: &[TrackerReply]) -> Vec<(u32, u32)> {
    replies
        .iter()
        .filter_map(|r| match r {
            TrackerReply::FetchRange { first, end, .. } => Some((*first, *end)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_large_blob_is_split_and_a_dead_fetchers_share_handed_on() {
    let t = Tracker::new();
    let d = Digest::of(b"large");
    let (a, mut ra) = member(1, false, "z");
    let (id_a, r, _) = t.join(d, a, false, false);
    assert!(assign(r).0);
    let (b, mut rb) = member(2, false, "z");
    let (_, _, _) = t.join(d, b, false, false);
    let (c, mut rc) = member(3, true, "z");
    let (id_c, _, _) = t.join(d, c, false, false);
    let (mut busy, mut rbusy) = member(4, false, "z");
    busy.busy = true;
    t.join(d, busy, false, false);
    for rx in [&mut ra, &mut rb, &mut rc, &mut rbusy] {
        pushed(rx);
    }

    let size = 3 * MIN_SHARE;
    let mine = t.sized(&d, id_a, size, 300, true);
    assert_eq!(
        range_of(&[mine]),
        Some((0, 100)),
        "the fetcher keeps the start"
    );
    let (got_b, got_c) = (pushed(&mut rb), pushed(&mut rc));
    assert_eq!(range_of(&got_c), Some((100, 200)), "the seed first");
    assert_eq!(range_of(&got_b), Some((200, 300)));
    assert_eq!(
        range_of(&pushed(&mut rbusy)),
        None,
        "a busy member fetches nothing"
    );
    // Everyone hears who fetches: each vouches for its range's hashes.
    assert!(got_b
        .iter()
        .any(|r| matches!(r, TrackerReply::Peers { peers } if peers.contains(&vec![3]))));
    assert!(pushed(&mut ra)
        .iter()
        .any(|r| matches!(r, TrackerReply::Peers { peers } if peers.len() == 2)));
    assert_eq!(
        range_of(&[t.sized(&d, id_a, size, 300, true)]),
        Some((0, 100)),
        "asked again: the same answer, no second split"
    );

    // The seed dies mid-range: the member not fetching anything takes its share.
    t.leave(&d, id_c, false);
    assert_eq!(range_of(&pushed(&mut rbusy)), Some((100, 200)));
    assert!(!told_to_fetch(&mut ra) && pushed(&mut rb).is_empty());

    // The first fetcher dies: its share goes on too (to a member already fetching another
    // part, since nobody else is left), and nobody is told to fetch the whole blob.
    t.leave(&d, id_a, false);
    let all: Vec<_> = pushed(&mut rb)
        .into_iter()
        .chain(pushed(&mut rbusy))
        .collect();
    assert_eq!(range_of(&all), Some((0, 100)));
    assert!(!all.iter().any(|r| matches!(r, TrackerReply::Fetch)));
    assert!(t.summary()[0].fetching);
}

#[test]
fn small_blobs_and_upstreams_without_ranges_are_not_split() {
    let t = Tracker::new();
    for (name, size, ranges) in [
        ("small", MIN_SHARE, true),
        ("noranges", 8 * MIN_SHARE, false),
    ] {
        let d = Digest::of(name.as_bytes());
        let (a, _ra) = member(1, false, "z");
        let (id_a, _, _) = t.join(d, a, false, false);
        let (b, mut rb) = member(2, false, "z");
        t.join(d, b, false, false);
        pushed(&mut rb);
        let mine = t.sized(&d, id_a, size, 64, ranges);
        assert_eq!(range_of(&[mine]), Some((0, 64)), "{name}: the whole blob");
        assert!(pushed(&mut rb).is_empty(), "{name}");
    }
}

#[test]
fn a_large_blob_is_dealt_out_in_stripes_from_its_start() {
    let t = Tracker::new();
    let d = Digest::of(b"huge");
    let (a, mut ra) = member(1, false, "z");
    let (id_a, _, _) = t.join(d, a, false, false);
    let mut others = Vec::new();
    for peer in 2..=4 {
        let (m, rx) = member(peer, false, "z");
        t.join(d, m, false, false);
        others.push(rx);
    }
    pushed(&mut ra);
    others.iter_mut().for_each(|rx| drop(pushed(rx)));
    // 16 x the smallest share: 4 fetchers, 4 stripes each, dealt in turn.
    let mine = t.sized(&d, id_a, 16 * MIN_SHARE, 1600, true);
    let mut fetcher = ranges(&[mine]);
    fetcher.extend(ranges(&pushed(&mut ra)));
    assert_eq!(fetcher, [(0, 100), (400, 500), (800, 900), (1200, 1300)]);
    let mut all = fetcher;
    for (i, rx) in others.iter_mut().enumerate() {
        let got = pushed(rx);
        let stripes = ranges(&got);
        let start = 100 * (i as u32 + 1);
        assert_eq!(stripes.first(), Some(&(start, start + 100)), "in order");
        assert_eq!(stripes.len(), 4);
        let named: Vec<_> = got
            .iter()
            .filter_map(|r| match r {
                TrackerReply::Peers { peers } => Some(peers.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].len(), 3, "each other fetcher named once");
        all.extend(stripes);
    }
    all.sort_unstable();
    let covered: u32 = all.iter().map(|(a, b)| b - a).sum();
    assert_eq!(covered, 1600);
    assert!(all.windows(2).all(|w| w[0].1 == w[1].0), "every piece once");
}

/// A blob of 1600 pieces split four ways among members 1-4 on a tracker with `budget`, and two
/// more members (5, 6) downloading; after a second in which fetchers gained `fetched` pieces
/// and downloaders `received` each, the stripes each downloader was told to fetch as well.
async fn boosted(budget: f64, fetched: u32, received: [u32; 2]) -> Vec<Vec<(u32, u32)>> {
    let t = Tracker::new().with_upstream_budget(budget);
    let d = Digest::of(b"boost");
    let mut ids = Vec::new();
    let mut rxs = Vec::new();
    for peer in 1..=6 {
        let (m, rx) = member(peer, false, "z");
        let (id, _, _) = t.join(d, m, false, false);
        ids.push(id);
        rxs.push(rx);
    }
    t.sized(&d, ids[0], 16 * MIN_SHARE, 1600, true);
    rxs.iter_mut().for_each(|rx| drop(pushed(rx)));
    let mut also = vec![Vec::new(), Vec::new()];
    for step in 1..=4 {
        tokio::time::advance(Duration::from_millis(500)).await;
        for id in &ids[..4] {
            t.progress(&d, *id, fetched * step / 2);
        }
        for (i, id) in ids[4..].iter().enumerate() {
            t.progress(&d, *id, received[i] * step / 2);
        }
        for (i, rx) in rxs[4..].iter_mut().enumerate() {
            for r in pushed(rx) {
                if let TrackerReply::FetchAlso { first, end, .. } = r {
                    also[i].push((first, end));
                }
            }
        }
    }
    also
}

#[tokio::test(start_paused = true)]
async fn a_fast_upstream_gets_the_slowest_downloaders_fetching_the_blob_too() {
    // Fetchers 400 pieces a second, downloaders 40 and 100: the upstream has headroom. The
    // slowest downloader fetches every stripe, the last dealt first; budget 2 is spent then.
    let every: Vec<(u32, u32)> = (0..16).rev().map(|i| (i * 100, i * 100 + 100)).collect();
    let also = boosted(2.0, 400, [40, 100]).await;
    assert_eq!(also[0], every, "the slowest, every stripe, the last first");
    assert!(also[1].is_empty(), "the budget is spent");
    let also = boosted(3.0, 400, [40, 100]).await;
    assert_eq!(also, vec![every.clone(), every], "budget 3: both");
    // Budget 1.1: 160 extra pieces, one stripe of 100.
    let also = boosted(1.1, 400, [40, 100]).await;
    assert_eq!(also.concat(), vec![(1500, 1600)]);
}

#[tokio::test(start_paused = true)]
async fn no_extra_fetch_when_the_swarm_keeps_up_or_the_budget_is_one() {
    let registry_bound = boosted(2.0, 100, [80, 90]).await;
    assert!(registry_bound.concat().is_empty(), "{registry_bound:?}");
    let edge = boosted(1.0, 400, [40, 100]).await;
    assert!(edge.concat().is_empty(), "{edge:?}");
}
