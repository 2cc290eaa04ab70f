//! Where the slowest nodes' time goes (`--progress-bands`): at a moment of the run, each
//! node's pieces, rates, slots and flows, and the averages over the slowest, the median and
//! the fastest twentieth of the nodes by pieces held. Kraken's set-up is missed by its
//! slowest nodes, not its median, and these lines showed why (benches/README.md, part 9's
//! tenth session): the slowest twentieth held half the upload slots the others held while
//! their uplinks ran full.

use crate::world::World;
use std::fmt;

/// One node at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeNow {
    /// Pieces held over all its downloads.
    pub pieces: u32,
    /// Bytes per second arriving over its download sessions, and leaving over its uploads.
    pub down: f64,
    pub up: f64,
    /// Its download sessions holding a slot (unchoked), waiting for one, and moving bytes.
    pub unchoked: u32,
    pub waiting: u32,
    pub flows_in: u32,
    /// Its upload sessions moving bytes.
    pub flows_out: u32,
    /// The mean of `flows_out` over the uploaders of its moving download sessions: how
    /// crowded the links it takes from are (0 with none).
    pub uploader_flows: f64,
}

/// Every node's [`NodeNow`], in node order.
pub fn nodes_now(w: &World) -> Vec<NodeNow> {
    let mut now = vec![NodeNow::default(); w.nodes.len()];
    for (n, node) in now.iter_mut().zip(&w.nodes) {
        n.pieces = node.fetches.iter().map(|f| f.have.count_ones()).sum();
    }
    let moving = |conn| w.net.rate(conn) > 0.0;
    for s in w.sessions.iter().filter(|s| s.open) {
        let rate = w.net.rate(s.conn);
        if let Some(d) = now.get_mut(s.down) {
            d.down += rate;
            d.unchoked += u32::from(s.unchoked);
            d.waiting += u32::from(s.waiting);
            d.flows_in += u32::from(moving(s.conn));
        }
        if let Some(u) = now.get_mut(s.up) {
            u.up += rate;
            u.flows_out += u32::from(moving(s.conn));
        }
    }
    let mut crowd = vec![0u64; w.nodes.len()];
    for s in w.sessions.iter().filter(|s| s.open && moving(s.conn)) {
        let out = now.get(s.up).map_or(0, |u| u.flows_out);
        if let Some(c) = crowd.get_mut(s.down) {
            *c += u64::from(out);
        }
    }
    for (n, c) in now.iter_mut().zip(crowd) {
        if n.flows_in > 0 {
            n.uploader_flows = c as f64 / f64::from(n.flows_in);
        }
    }
    now
}

/// Averages over some nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Band {
    pub pieces: f64,
    pub down: f64,
    pub up: f64,
    pub unchoked: f64,
    pub waiting: f64,
    pub flows_in: f64,
    pub flows_out: f64,
    pub uploader_flows: f64,
}

impl Band {
    fn of(nodes: &[NodeNow]) -> Band {
        let k = nodes.len().max(1) as f64;
        let mean = |f: &dyn Fn(&NodeNow) -> f64| nodes.iter().map(f).sum::<f64>() / k;
        Band {
            pieces: mean(&|n| f64::from(n.pieces)),
            down: mean(&|n| n.down),
            up: mean(&|n| n.up),
            unchoked: mean(&|n| f64::from(n.unchoked)),
            waiting: mean(&|n| f64::from(n.waiting)),
            flows_in: mean(&|n| f64::from(n.flows_in)),
            flows_out: mean(&|n| f64::from(n.flows_out)),
            uploader_flows: mean(&|n| n.uploader_flows),
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pieces {:6.1}  down {:5.1} MB/s  up {:5.1} MB/s  slots held {:5.2} waited {:5.2}  \
             flows in {:4.2} out {:4.2}  their uploaders' flows {:4.2}",
            self.pieces,
            self.down / 1e6,
            self.up / 1e6,
            self.unchoked,
            self.waiting,
            self.flows_in,
            self.flows_out,
            self.uploader_flows
        )
    }
}

/// The slowest, median and fastest twentieth of `nodes` by pieces held (at least one node
/// each; ties in node order).
pub fn bands(mut nodes: Vec<NodeNow>) -> [Band; 3] {
    nodes.sort_by_key(|n| n.pieces);
    let len = nodes.len();
    let k = (len / 20).max(1).min(len);
    let mid = len.saturating_sub(k) / 2;
    let slice = |from: usize| nodes.get(from..from.saturating_add(k)).unwrap_or(&[]);
    [
        Band::of(slice(0)),
        Band::of(slice(mid)),
        Band::of(slice(len.saturating_sub(k))),
    ]
}

/// The three lines `--progress-bands` prints under each progress line.
pub fn lines(w: &World) -> String {
    let [slow, median, fast] = bands(nodes_now(w));
    format!("    slowest 5 %  {slow}\n    median 5 %   {median}\n    fastest 5 %  {fast}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scenario;
    use clap::Parser;

    fn world_at(args: &str) -> World {
        let mut s =
            Scenario::parse_from(std::iter::once("pollen-sim").chain(args.split_whitespace()));
        s.normalise();
        s.check().expect("a valid scenario");
        let mut w = World::new(s);
        w.run();
        w
    }

    #[test]
    fn every_byte_moving_leaves_one_node_and_reaches_another() {
        let w = world_at("--nodes 30 --image 300MB --layers 2 --node-up 1Gbit --until 1500ms");
        let now = nodes_now(&w);
        let down: f64 = now.iter().map(|n| n.down).sum();
        let up: f64 = now.iter().map(|n| n.up).sum();
        assert!(down > 0.0, "mid-pull, bytes move between peers");
        assert!((down - up).abs() <= 1e-6 * down, "{down} in, {up} out");
        let flows_in: u32 = now.iter().map(|n| n.flows_in).sum();
        let flows_out: u32 = now.iter().map(|n| n.flows_out).sum();
        assert_eq!(flows_in, flows_out);
        assert!(now.iter().all(|n| n.flows_in <= n.unchoked));
    }

    #[test]
    fn bands_are_ordered_by_pieces_and_cover_a_twentieth_each() {
        let node = |pieces| NodeNow {
            pieces,
            ..NodeNow::default()
        };
        let [slow, median, fast] = bands((0..40).rev().map(node).collect());
        assert_eq!(slow.pieces, 0.5, "the two slowest of 40");
        assert_eq!(median.pieces, 19.5);
        assert_eq!(fast.pieces, 38.5);
        let [one, same, again] = bands(vec![node(3)]);
        assert_eq!((one.pieces, same.pieces, again.pieces), (3.0, 3.0, 3.0));
        assert_eq!(bands(Vec::new())[0], Band::default());
    }
}
