//! What a run found, against the physical bound: completion times, T_min, the registry's
//! egress, bytes per node, rack crossings, and the tracker's memory and message rate.

use crate::world::{Why, World};
use serde::Serialize;

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub nodes: usize,
    /// Nodes that finished within `--until`.
    pub done: usize,
    pub image_bytes: u64,
    pub t_min_secs: f64,
    pub p50_secs: f64,
    pub p99_secs: f64,
    pub max_secs: f64,
    pub max_over_t_min: f64,
    pub egress_over_f: f64,
    pub sent_mean_over_f: f64,
    pub sent_max_over_f: f64,
    pub received_mean_over_f: f64,
    /// Bytes that entered each rack through its downlink, in images (with rack links).
    pub rack_in_mean_over_f: f64,
    pub rack_in_max_over_f: f64,
    pub tracker_peak_bytes: i64,
    pub tracker_msgs_per_node_per_sec: f64,
    pub upstream_requests: Vec<(String, u64)>,
    pub kills: u64,
    /// Shares of the nodes' download time from peers: receiving, choked (the pieces they lack
    /// are offered only over sessions waiting for a slot), nothing offered, other (`wait.rs`).
    pub peer_time: crate::wait::WaitTotals,
    /// The rate at which a node took bytes from peers, from its first piece from a peer to
    /// its last, over its download link (mean over nodes): how much of its link it used.
    pub peer_rate_over_downlink: f64,
    pub events: u64,
    pub net_recomputes: u64,
    pub wall_secs: f64,
    pub sim_peak_rss_bytes: u64,
    /// Completion time of every node, in node order (NaN: not done), for the curve.
    #[serde(skip)]
    pub times: Vec<f64>,
}

/// The minimum distribution time: the registry sends every image once, the slowest node
/// receives the image, the cluster's total upload carries N copies, and every rack receives
/// the image through its downlink.
pub fn t_min(w: &World) -> f64 {
    let f = w.s.image as f64;
    let n = w.s.nodes as f64;
    let up_sum: f64 = w.topo.rates.iter().map(|(u, _)| u).sum();
    let d_min = w
        .topo
        .rates
        .iter()
        .map(|(_, d)| *d)
        .fold(f64::INFINITY, f64::min);
    let mut bound = (w.s.images as f64 * f / w.s.registry_up)
        .max(f / d_min)
        .max(n * f / (w.s.registry_up + up_sum));
    if let (Some(rack), true) = (w.s.rack_up, w.s.racks > 1) {
        bound = bound.max(f / rack);
    }
    bound
}

/// Each node's bytes from peers after its first piece from a peer, over the time from that
/// piece to its last, over its download link; the mean over nodes that took at least a tenth
/// of a second's worth.
fn peer_rate_over_downlink(w: &World) -> f64 {
    let ratios: Vec<f64> = w
        .nodes
        .iter()
        .zip(&w.topo.rates)
        .filter_map(|(n, (_, down))| {
            let (bytes, span) = n.from_peers;
            let (first, last) = span?;
            let secs = last.saturating_sub(first) as f64 / 1e9;
            (secs > 0.0 && bytes as f64 >= *down / 10.0).then(|| bytes as f64 / secs / down)
        })
        .collect();
    if ratios.is_empty() {
        return 0.0;
    }
    ratios.iter().sum::<f64>() / ratios.len() as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

impl Report {
    pub fn of(w: &World, wall_secs: f64) -> Report {
        let f = w.s.image as f64;
        let times: Vec<f64> = w
            .nodes
            .iter()
            .map(|n| n.done_at.map_or(f64::NAN, |t| t as f64 / 1e9))
            .collect();
        let mut done: Vec<f64> = times.iter().copied().filter(|t| t.is_finite()).collect();
        done.sort_by(f64::total_cmp);
        let t_min = t_min(w);
        let max = done.last().copied().unwrap_or(f64::NAN);
        let nodes = w.s.nodes as f64;
        let sent: Vec<f64> = w.nodes.iter().map(|n| n.sent as f64 / f).collect();
        let egress = w.net.link_bytes(w.topo.registry_link()) / (f * w.s.images as f64);
        let racks: Vec<f64> = w
            .topo
            .rack_downlinks()
            .iter()
            .map(|l| w.net.link_bytes(*l) / f)
            .collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let maxf = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let why = |w: &Why| format!("{w:?}").to_lowercase();
        Report {
            nodes: w.s.nodes,
            done: done.len(),
            image_bytes: w.s.image,
            t_min_secs: t_min,
            p50_secs: percentile(&done, 0.5),
            p99_secs: percentile(&done, 0.99),
            max_secs: max,
            max_over_t_min: max / t_min,
            egress_over_f: egress,
            sent_mean_over_f: mean(&sent),
            sent_max_over_f: maxf(&sent),
            received_mean_over_f: w.nodes.iter().map(|n| n.received as f64 / f).sum::<f64>()
                / nodes,
            rack_in_mean_over_f: mean(&racks),
            rack_in_max_over_f: maxf(&racks),
            tracker_peak_bytes: w.stats.tracker_peak,
            tracker_msgs_per_node_per_sec: w.stats.tracker_msgs as f64 / nodes / max.max(1e-9),
            upstream_requests: w
                .stats
                .upstream_requests
                .iter()
                .map(|(k, v)| (why(k), *v))
                .collect(),
            kills: w.stats.kills,
            peer_time: w.stats.waits.shares(),
            peer_rate_over_downlink: peer_rate_over_downlink(w),
            events: w.stats.events,
            net_recomputes: w.net.recomputes(),
            wall_secs,
            sim_peak_rss_bytes: peak_rss(),
            times,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mib = |b: f64| b / (1u64 << 20) as f64;
        let reqs: Vec<String> = self
            .upstream_requests
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "nodes done          {done} of {nodes}\n\
             completion          p50 {p50:.2} s, p99 {p99:.2} s, max {max:.2} s\n\
             bound T_min         {tmin:.2} s (max / T_min {ratio:.3})\n\
             registry egress     {egress:.4} x the image\n\
             per node            sent {sent:.2} x (max {sentmax:.2}), received {recv:.3} x the image\n\
             racks               each received {rack:.3} x the image (max {rackmax:.3})\n\
             upstream requests   {reqs}\n\
             time from peers     receiving {recv_t:.0} %, choked {choked:.0} %, nothing offered {nothing:.0} %, other {other:.0} %;\n                     from the first piece to the last, {util:.0} % of the download link\n\
             tracker             peak {tmem:.1} MiB, {tmsg:.2} messages per node per second\n\
             simulator           {wall:.1} s wall, {events} events, {recomputes} rate recomputes, peak RSS {rss:.0} MiB\n",
            done = self.done,
            nodes = self.nodes,
            p50 = self.p50_secs,
            p99 = self.p99_secs,
            max = self.max_secs,
            tmin = self.t_min_secs,
            ratio = self.max_over_t_min,
            egress = self.egress_over_f,
            sent = self.sent_mean_over_f,
            sentmax = self.sent_max_over_f,
            recv = self.received_mean_over_f,
            rack = self.rack_in_mean_over_f,
            rackmax = self.rack_in_max_over_f,
            reqs = if reqs.is_empty() { "none".into() } else { reqs.join(", ") },
            recv_t = self.peer_time.receiving * 100.0,
            choked = self.peer_time.choked * 100.0,
            nothing = self.peer_time.nothing_offered * 100.0,
            other = self.peer_time.other * 100.0,
            util = self.peer_rate_over_downlink * 100.0,
            tmem = mib(self.tracker_peak_bytes as f64),
            tmsg = self.tracker_msgs_per_node_per_sec,
            wall = self.wall_secs,
            events = self.events,
            recomputes = self.net_recomputes,
            rss = mib(self.sim_peak_rss_bytes as f64),
        )
    }

    /// The completion curve: nodes done over time, with T_min marked.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (640.0, 360.0, 40.0);
        let mut done: Vec<f64> = self
            .times
            .iter()
            .copied()
            .filter(|t| t.is_finite())
            .collect();
        done.sort_by(f64::total_cmp);
        let span = done
            .last()
            .copied()
            .unwrap_or(1.0)
            .max(self.t_min_secs)
            .max(1e-9)
            * 1.05;
        let x = |t: f64| pad + t / span * (w - 2.0 * pad);
        let y = |k: f64| h - pad - k / self.nodes.max(1) as f64 * (h - 2.0 * pad);
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (k, t) in done.iter().enumerate() {
            points.push_str(&format!(
                " {:.1},{:.1} {:.1},{:.1}",
                x(*t),
                y(k as f64),
                x(*t),
                y(k as f64 + 1.0)
            ));
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
             <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
             <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n\
             <line x1=\"{tx:.1}\" y1=\"{pad}\" x2=\"{tx:.1}\" y2=\"{b}\" stroke=\"gray\" stroke-dasharray=\"4\"/>\n\
             <text x=\"{tx:.1}\" y=\"{lab}\" fill=\"gray\">T_min {tmin:.1} s</text>\n\
             <polyline fill=\"none\" stroke=\"#c60\" stroke-width=\"2\" points=\"{points}\"/>\n\
             <text x=\"{pad}\" y=\"{bottom}\">0 s</text><text x=\"{r}\" y=\"{bottom}\" text-anchor=\"end\">{span:.1} s</text>\n\
             <text x=\"4\" y=\"{pad}\">{n}</text><text x=\"4\" y=\"{b}\">0</text>\n\
             <text x=\"{mid}\" y=\"20\" text-anchor=\"middle\">nodes done over time (p50 {p50:.1} s, p99 {p99:.1} s, max {max:.1} s)</text>\n\
             </svg>\n",
            b = h - pad,
            r = w - pad,
            tx = x(self.t_min_secs),
            lab = pad - 4.0,
            tmin = self.t_min_secs,
            bottom = h - pad + 16.0,
            n = self.nodes,
            mid = w / 2.0,
            p50 = self.p50_secs,
            p99 = self.p99_secs,
            max = self.max_secs,
        )
    }
}

/// The process's peak resident memory (Linux), 0 where unknown.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
