use super::*;

const MB: f64 = 1e6;
const SEC: Nanos = 1_000_000_000;
const MS: Nanos = 1_000_000;

fn approx(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Runs the event loop to quiescence, stamping each delivery with its time.
fn run(net: &mut Net) -> Vec<(Nanos, ConnId, u64)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut steps = 0;
    while let Some(t) = net.next_event() {
        net.advance(t, &mut buf);
        out.extend(buf.drain(..).map(|(c, tag)| (t, c, tag)));
        steps += 1;
        assert!(steps < 1_000_000, "event loop does not terminate");
    }
    out
}

fn within(t: Nanos, exact: Nanos, slack: Nanos) -> bool {
    t >= exact && t <= exact + slack
}

#[test]
fn single_flow_takes_exactly_one_second() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let c = net.open(&[l]);
    net.send(0, c, 100_000_000, 7);
    let out = run(&mut net);
    assert_eq!(out.len(), 1);
    let (t, conn, tag) = out[0];
    assert_eq!((conn, tag), (c, 7));
    assert!(within(t, SEC, 1), "t = {t}");
    assert!(approx(net.link_bytes(l), 100.0 * MB, 1e-6));
    assert_eq!(net.active_flows(), 0);
    assert_eq!(net.next_event(), None);
}

#[test]
fn two_flows_share_then_survivor_speeds_up() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let a = net.open(&[l]);
    let b = net.open(&[l]);
    net.send(0, a, 50_000_000, 1);
    net.send(0, b, 100_000_000, 2);
    let mut buf = Vec::new();
    net.advance(0, &mut buf);
    assert!(approx(net.rate(a), 50.0 * MB, 1e-6));
    assert!(approx(net.rate(b), 50.0 * MB, 1e-6));
    let out = run(&mut net);
    assert_eq!(out.len(), 2);
    // a: 50 MB at 50 MB/s = 1 s; b then has 50 MB left at 100 MB/s = 0.5 s.
    assert_eq!((out[0].1, out[1].1), (a, b));
    assert!(within(out[0].0, SEC, 1), "{}", out[0].0);
    assert!(within(out[1].0, SEC + SEC / 2, 2), "{}", out[1].0);
}

#[test]
fn classic_max_min_example() {
    let mut net = Net::new(0);
    let a = net.add_link(10.0);
    let b = net.add_link(4.0);
    let f1 = net.open(&[a]);
    let f2 = net.open(&[a, b]);
    let f3 = net.open(&[b]);
    for (i, c) in [f1, f2, f3].into_iter().enumerate() {
        net.send(0, c, 1_000, i as u64);
    }
    net.advance(0, &mut Vec::new());
    assert!(approx(net.rate(f1), 8.0, 1e-9), "{}", net.rate(f1));
    assert!(approx(net.rate(f2), 2.0, 1e-9), "{}", net.rate(f2));
    assert!(approx(net.rate(f3), 2.0, 1e-9), "{}", net.rate(f3));
    assert_eq!(net.recomputes(), 1);
}

#[test]
fn fifo_messages_complete_in_order() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let c = net.open(&[l]);
    net.send(0, c, 10_000_000, 1);
    net.send(0, c, 20_000_000, 2);
    net.send(0, c, 30_000_000, 3);
    let out = run(&mut net);
    let tags: Vec<u64> = out.iter().map(|o| o.2).collect();
    assert_eq!(tags, vec![1, 2, 3]);
    for (o, exact) in out.iter().zip([SEC / 10, 3 * SEC / 10, 6 * SEC / 10]) {
        assert!(within(o.0, exact, 3), "{} vs {exact}", o.0);
    }
    assert_eq!(net.recomputes(), 2, "next message must reuse the rate");
}

#[test]
fn advancing_past_events_delivers_them_in_order() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let c = net.open(&[l]);
    let d = net.open(&[l]);
    net.send(0, c, 10_000_000, 1);
    net.send(0, d, 10_000_000, 2);
    net.send(0, c, 10_000_000, 3);
    let mut buf = Vec::new();
    net.advance(10 * SEC, &mut buf);
    assert_eq!(buf, vec![(c, 1), (d, 2), (c, 3)]);
    net.advance(SEC, &mut buf);
    assert_eq!(net.now(), 10 * SEC, "time must not go backwards");
}

#[test]
fn cancel_head_queued_and_unknown() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let c = net.open(&[l]);
    net.send(0, c, 100_000_000, 1);
    net.send(0, c, 10_000_000, 2);
    net.send(0, c, 10_000_000, 3);
    net.send(0, c, 10_000_000, 4);
    let mut buf = Vec::new();
    net.advance(SEC / 2, &mut buf);
    assert!(buf.is_empty());
    assert!(net.cancel(SEC / 2, c, 1));
    assert!(approx(net.link_bytes(l), 50.0 * MB, 1.0));
    assert!(net.cancel(SEC / 2, c, 3));
    assert!(!net.cancel(SEC / 2, c, 3));
    assert!(!net.cancel(SEC / 2, c, 99));
    assert!(!net.cancel(SEC / 2, ConnId(42), 2));
    let out = run(&mut net);
    let tags: Vec<u64> = out.iter().map(|o| o.2).collect();
    assert_eq!(tags, vec![2, 4]);
    assert!(within(out[0].0, 6 * SEC / 10, 2), "{}", out[0].0);
    assert!(within(out[1].0, 7 * SEC / 10, 3), "{}", out[1].0);
    assert!(approx(net.link_bytes(l), 70.0 * MB, 1e-6));
}

#[test]
fn close_returns_tags_and_frees_bandwidth() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let a = net.open(&[l]);
    let b = net.open(&[l]);
    net.send(0, a, 100_000_000, 1);
    net.send(0, a, 100_000_000, 2);
    net.send(0, b, 100_000_000, 3);
    let mut buf = Vec::new();
    net.advance(SEC / 2, &mut buf);
    assert_eq!(net.close(SEC / 2, a), vec![1, 2]);
    assert_eq!(net.close(SEC / 2, a), Vec::<u64>::new());
    assert_eq!(net.rate(a), 0.0);
    assert_eq!(net.active_flows(), 1);
    assert_eq!(net.next_event(), Some(SEC / 2));
    net.advance(SEC / 2, &mut buf);
    assert!(approx(net.rate(b), 100.0 * MB, 1e-6));
    let out = run(&mut net);
    // b sent 25 MB in the first 0.5 s, then 75 MB alone at 100 MB/s.
    assert_eq!(out.len(), 1);
    assert!(within(out[0].0, SEC + SEC / 4, 2), "{}", out[0].0);
    // a closed connection can be used again.
    net.send(2 * SEC, a, 1_000, 9);
    assert_eq!(run(&mut net).last().map(|o| o.2), Some(9));
}

#[test]
fn quantum_delays_new_flow_rate() {
    let mut net = Net::new(MS);
    let l = net.add_link(100.0 * MB);
    let a = net.open(&[l]);
    let b = net.open(&[l]);
    net.send(0, a, 100_000_000, 1);
    let mut buf = Vec::new();
    net.advance(0, &mut buf);
    assert!(approx(net.rate(a), 100.0 * MB, 1e-6));
    net.send(MS / 5, b, 100_000_000, 2);
    assert_eq!(net.rate(b), 0.0);
    assert!(approx(net.rate(a), 100.0 * MB, 1e-6));
    assert_eq!(net.next_event(), Some(MS));
    net.advance(MS / 2, &mut buf);
    assert_eq!(net.rate(b), 0.0);
    net.advance(MS, &mut buf);
    assert!(approx(net.rate(a), 50.0 * MB, 1e-6));
    assert!(approx(net.rate(b), 50.0 * MB, 1e-6));
    assert_eq!(net.recomputes(), 2);
}

#[test]
fn cut_link_stalls_and_restoring_resumes() {
    let mut net = Net::new(0);
    let l = net.add_link(100.0 * MB);
    let c = net.open(&[l]);
    net.send(0, c, 100_000_000, 1);
    let mut buf = Vec::new();
    net.advance(SEC / 2, &mut buf);
    net.set_capacity(SEC / 2, l, 0.0);
    net.advance(SEC / 2, &mut buf);
    assert_eq!(net.rate(c), 0.0);
    assert_eq!(net.next_event(), None);
    assert_eq!(net.active_flows(), 1);
    assert!(approx(net.link_bytes(l), 50.0 * MB, 1.0));
    net.set_capacity(2 * SEC, l, 100.0 * MB);
    assert_eq!(net.next_event(), Some(2 * SEC));
    let out = run(&mut net);
    assert_eq!(out.len(), 1);
    assert!(within(out[0].0, 2 * SEC + SEC / 2, 2), "{}", out[0].0);
}

#[test]
fn link_bytes_add_up_along_paths() {
    let mut net = Net::new(0);
    let caps = [30.0 * MB, 50.0 * MB, 60.0 * MB, 20.0 * MB, 100.0 * MB];
    let l: Vec<LinkId> = caps.iter().map(|&c| net.add_link(c)).collect();
    let c1 = net.open(&[l[0], l[2], l[1]]);
    let c2 = net.open(&[l[3], l[2], l[4]]);
    let sizes1 = [10_000_000u64, 30_000_000];
    let sizes2 = [5_000_000u64, 5_000_000, 50_000_000];
    for (i, &s) in sizes1.iter().enumerate() {
        net.send(0, c1, s, i as u64);
    }
    for (i, &s) in sizes2.iter().enumerate() {
        net.send(0, c2, s, 10 + i as u64);
    }
    let mut buf = Vec::new();
    while let Some(t) = net.next_event().filter(|&t| t <= SEC / 2) {
        net.advance(t, &mut buf);
    }
    net.advance(SEC / 2, &mut buf);
    let total1: u64 = sizes1.iter().sum();
    let total2: u64 = sizes2.iter().sum();
    let sent1 = total1 as f64 - net.queued_bytes(c1);
    let sent2 = total2 as f64 - net.queued_bytes(c2);
    assert!(sent1 > 10.0 * MB && sent2 > 5.0 * MB, "{sent1} {sent2}");
    assert!(!buf.is_empty());
    for (link, want) in [(0, sent1), (1, sent1), (3, sent2), (4, sent2)] {
        assert!(approx(net.link_bytes(l[link]), want, 1.0), "link {link}");
    }
    assert!(approx(net.link_bytes(l[2]), sent1 + sent2, 2.0));
    run(&mut net);
    assert!(approx(net.link_bytes(l[2]), (total1 + total2) as f64, 1e-6));
    assert!(approx(net.link_bytes(l[0]), total1 as f64, 1e-6));
}

#[test]
fn unknown_ids_and_empty_messages() {
    let mut net = Net::new(0);
    let l = net.add_link(MB);
    net.send(0, ConnId(3), 10, 1);
    assert_eq!(net.rate(ConnId(3)), 0.0);
    assert!(net.close(0, ConnId(3)).is_empty());
    net.set_capacity(0, LinkId(9), 1.0);
    assert_eq!(net.link_bytes(LinkId(9)), 0.0);
    let c = net.open(&[l, LinkId(77), l]);
    net.send(5, c, 0, 4);
    let out = run(&mut net);
    assert_eq!(out, vec![(5, c, 4)]);
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_scenario(seed: u64) -> Vec<(Nanos, ConnId, u64)> {
    let mut rng = XorShift(seed);
    let mut net = Net::new(100_000);
    let links: Vec<LinkId> = (0..20)
        .map(|_| net.add_link((1 + rng.below(100)) as f64 * MB))
        .collect();
    let conns: Vec<ConnId> = (0..40)
        .map(|_| {
            let len = 1 + rng.below(4) as usize;
            let path: Vec<LinkId> = (0..len).map(|_| links[rng.below(20) as usize]).collect();
            net.open(&path)
        })
        .collect();
    let mut tag = 0;
    for _ in 0..200 {
        let c = conns[rng.below(40) as usize];
        net.send(0, c, rng.below(5_000_000), tag);
        tag += 1;
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = net.next_event() {
        net.advance(t, &mut buf);
        out.extend(buf.drain(..).map(|(c, g)| (t, c, g)));
        let c = conns[rng.below(40) as usize];
        match rng.below(10) {
            0 if tag < 600 => {
                net.send(t, c, rng.below(5_000_000), tag);
                tag += 1;
            }
            1 => {
                net.cancel(t, c, rng.below(tag));
            }
            2 => {
                let l = links[rng.below(20) as usize];
                net.set_capacity(t, l, rng.below(100) as f64 * MB);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn same_seed_replays_identically() {
    let a = random_scenario(0x9e37_79b9_7f4a_7c15);
    let b = random_scenario(0x9e37_79b9_7f4a_7c15);
    assert!(a.len() > 100, "{}", a.len());
    assert_eq!(a, b);
    assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
}
