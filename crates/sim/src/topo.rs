//! The cluster's network: each node's up- and downlink, racks' and zones' shared uplinks and
//! downlinks to the core, and the registry's uplink; the path and latency between any two.

use crate::config::Scenario;
use crate::net::{LinkId, Nanos, Net};
use crate::rng::Rng;

/// Where a transfer starts or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Node(usize),
    Registry,
}

struct Place {
    up: LinkId,
    down: LinkId,
    rack: usize,
    zone: usize,
}

pub struct Topology {
    nodes: Vec<Place>,
    /// Per rack and per zone: (uplink, downlink), when they are modelled.
    racks: Vec<Option<(LinkId, LinkId)>>,
    zones: Vec<Option<(LinkId, LinkId)>>,
    registry: LinkId,
    /// The host's CPU as a link every transfer crosses (`--host-cpu`).
    cpu: Option<LinkId>,
    latency: Nanos,
    rack_latency: Nanos,
    zone_latency: Nanos,
    /// Each node's upload and download rate, for the bound.
    pub rates: Vec<(f64, f64)>,
}

fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Topology {
    pub fn build(s: &Scenario, net: &mut Net, rng: &mut Rng) -> Topology {
        let mut order: Vec<usize> = (0..s.nodes).collect();
        rng.shuffle(&mut order);
        let slow_count = (s.slow * s.nodes as f64).round() as usize;
        let mut slow = vec![false; s.nodes];
        for &i in order.iter().take(slow_count) {
            if let Some(x) = slow.get_mut(i) {
                *x = true;
            }
        }
        let mut rates = Vec::with_capacity(s.nodes);
        let nodes = (0..s.nodes)
            .map(|i| {
                let factor = if slow.get(i) == Some(&true) {
                    s.slow_factor
                } else {
                    1.0
                };
                let (up, down) = (s.node_up * factor, s.node_down * factor);
                rates.push((up, down));
                let rack = i * s.racks / s.nodes;
                Place {
                    up: net.add_link(up),
                    down: net.add_link(down),
                    rack,
                    zone: rack * s.zones / s.racks,
                }
            })
            .collect();
        let pair =
            |net: &mut Net, rate: Option<f64>| rate.map(|r| (net.add_link(r), net.add_link(r)));
        let racks = (0..s.racks).map(|_| pair(net, s.rack_up)).collect();
        let zones = (0..s.zones).map(|_| pair(net, s.zone_up)).collect();
        Topology {
            nodes,
            racks,
            zones,
            registry: net.add_link(s.registry_up),
            cpu: s
                .host_cpu
                .map(|cores| net.add_link(cores / s.cpu_per_gib * (1u64 << 30) as f64)),
            latency: nanos(s.latency),
            rack_latency: nanos(s.rack_latency),
            zone_latency: nanos(s.zone_latency),
            rates,
        }
    }

    pub fn rack_of(&self, node: usize) -> usize {
        self.nodes.get(node).map_or(0, |p| p.rack)
    }

    /// The links a transfer from `from` to node `to` crosses.
    pub fn path(&self, from: End, to: usize) -> Vec<LinkId> {
        let Some(dst) = self.nodes.get(to) else {
            return Vec::new();
        };
        let mut path = Vec::with_capacity(6);
        let (src_rack, src_zone) = match from {
            End::Registry => {
                path.push(self.registry);
                (None, None)
            }
            End::Node(n) => match self.nodes.get(n) {
                Some(src) => {
                    path.push(src.up);
                    (Some(src.rack), Some(src.zone))
                }
                None => return Vec::new(),
            },
        };
        if src_rack != Some(dst.rack) {
            if let Some((up, _)) = src_rack.and_then(|r| self.racks.get(r).copied().flatten()) {
                path.push(up);
            }
            if src_zone != Some(dst.zone) {
                if let Some((up, _)) = src_zone.and_then(|z| self.zones.get(z).copied().flatten()) {
                    path.push(up);
                }
                if let Some((_, down)) = self.zones.get(dst.zone).copied().flatten() {
                    path.push(down);
                }
            }
            if let Some((_, down)) = self.racks.get(dst.rack).copied().flatten() {
                path.push(down);
            }
        }
        path.push(dst.down);
        path.extend(self.cpu);
        path
    }

    /// One-way latency of a message between two nodes.
    pub fn latency(&self, a: usize, b: usize) -> Nanos {
        let (Some(pa), Some(pb)) = (self.nodes.get(a), self.nodes.get(b)) else {
            return self.latency;
        };
        let mut l = self.latency;
        if pa.rack != pb.rack {
            l = l.saturating_add(self.rack_latency);
        }
        if pa.zone != pb.zone {
            l = l.saturating_add(self.zone_latency);
        }
        l
    }

    /// The rack downlinks (to count how often bytes enter each rack).
    pub fn rack_downlinks(&self) -> Vec<LinkId> {
        self.racks.iter().flatten().map(|(_, down)| *down).collect()
    }

    pub fn registry_link(&self) -> LinkId {
        self.registry
    }
}
