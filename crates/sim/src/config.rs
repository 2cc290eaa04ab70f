//! The set-up a run simulates: the cluster, its links, the image, and the agents' settings.
//! Every option has a named default in human units.

use crate::units;
use clap::Parser;
use std::time::Duration;

/// Default one-way latency between two nodes of a rack.
pub const DEFAULT_LATENCY: &str = "100us";
/// Default extra one-way latency between racks, and between zones.
pub const DEFAULT_RACK_LATENCY: &str = "100us";
pub const DEFAULT_ZONE_LATENCY: &str = "1ms";
/// Default time from a registry request to its first byte (the registry's own latency).
pub const DEFAULT_REGISTRY_LATENCY: &str = "20ms";
/// Default links: 10 Gbit/s everywhere, the registry included.
pub const DEFAULT_RATE: &str = "10Gbit/s";
/// The network model's recompute quantum: rates are recomputed at most this often, and a new
/// flow waits at most this long for its share.
pub const DEFAULT_QUANTUM: &str = "1ms";
/// The simulated time after which a run gives up (nodes then count as not done).
pub const DEFAULT_UNTIL: &str = "1h";

/// Simulates a Pollen cluster pulling an image: every node runs the agent's decision core
/// (pollen-core: tracker, downloader, super-seeding) over a flow-level network, in simulated
/// time. Prints completion times against the physical bound T_min and the registry's egress.
#[derive(Parser, Debug, Clone)]
#[command(name = "pollen-sim", version)]
pub struct Scenario {
    /// Nodes pulling the image
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// The image's size (all its layers)
    #[arg(long, value_parser = units::size, default_value = "3GB")]
    pub image: u64,
    /// Layers the image is cut in (equal sizes; each a blob)
    #[arg(long, default_value_t = 2)]
    pub layers: u32,
    /// The layers' sizes instead of --image and --layers (e.g. 16MiB,8MiB,8MiB)
    #[arg(long, value_parser = units::size, value_delimiter = ',')]
    pub layer_sizes: Vec<u64>,
    /// Different images: node i pulls image i mod N (each of --image size)
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// The registry's upload (its egress link)
    #[arg(long, value_parser = units::rate, default_value = DEFAULT_RATE)]
    pub registry_up: f64,
    /// Time from a registry request to its first byte
    #[arg(long, value_parser = units::duration, default_value = DEFAULT_REGISTRY_LATENCY)]
    pub registry_latency: Duration,
    /// Each node's upload
    #[arg(long, value_parser = units::rate, default_value = DEFAULT_RATE)]
    pub node_up: f64,
    /// Each node's download
    #[arg(long, value_parser = units::rate, default_value = DEFAULT_RATE)]
    pub node_down: f64,
    /// Share of nodes with slower links (heterogeneous clusters)
    #[arg(long, value_parser = units::fraction, default_value = "0")]
    pub slow: f64,
    /// How much slower those nodes' links are (a factor of the normal rates)
    #[arg(long, default_value_t = 0.1)]
    pub slow_factor: f64,
    /// Racks the nodes are spread over (1: one flat network)
    #[arg(long, default_value_t = 1)]
    pub racks: usize,
    /// Each rack's uplink to the core, and downlink from it (default: not a bottleneck)
    #[arg(long, value_parser = units::rate)]
    pub rack_up: Option<f64>,
    /// Zones the racks are spread over (1: one zone)
    #[arg(long, default_value_t = 1)]
    pub zones: usize,
    /// Each zone's uplink and downlink (default: not a bottleneck)
    #[arg(long, value_parser = units::rate)]
    pub zone_up: Option<f64>,
    /// One-way latency between two nodes of a rack
    #[arg(long, value_parser = units::duration, default_value = DEFAULT_LATENCY)]
    pub latency: Duration,
    /// Extra one-way latency across racks
    #[arg(long, value_parser = units::duration, default_value = DEFAULT_RACK_LATENCY)]
    pub rack_latency: Duration,
    /// Extra one-way latency across zones
    #[arg(long, value_parser = units::duration, default_value = DEFAULT_ZONE_LATENCY)]
    pub zone_latency: Duration,
    /// Share of nodes killed during the pull (each restarts after --churn-down and resumes)
    #[arg(long, value_parser = units::fraction, default_value = "0")]
    pub churn: f64,
    /// When the killed nodes die: at random within this window from the start
    #[arg(long, value_parser = units::duration, default_value = "10s")]
    pub churn_window: Duration,
    /// When the churn window opens
    #[arg(long, value_parser = units::duration, default_value = "0s")]
    pub churn_from: Duration,
    /// How long a killed node stays down
    #[arg(long, value_parser = units::duration, default_value = "5s")]
    pub churn_down: Duration,
    /// Nodes start at random within this window (a DaemonSet rollout); 0: all at once
    #[arg(long, value_parser = units::duration, default_value = "0s")]
    pub stagger: Duration,
    /// Time from a pull's start to its layer requests (the manifest and the config blob
    /// before them)
    #[arg(long, value_parser = units::duration, default_value = "0s")]
    pub pull_overhead: Duration,
    /// Nodes that host trackers: the first N (default: every node, the agent's default)
    #[arg(long)]
    pub trackers: Option<usize>,
    /// Nodes that preheat the image (they start first, as seeds)
    #[arg(long, default_value_t = 0)]
    pub preheat: usize,
    /// How long before the others the preheating nodes start
    #[arg(long, value_parser = units::duration, default_value = "30s")]
    pub preheat_lead: Duration,
    /// Cores of one machine that hosts every node (an emulated cluster, like
    /// benches/cluster.sh); each byte moved costs --cpu-per-gib of it. Off by default
    #[arg(long)]
    pub host_cpu: Option<f64>,
    /// CPU seconds the host spends per GiB moved between two nodes or from the registry
    /// (everything on the way: agents, client, registry, veths and shaping); 9 is fitted to
    /// benches/cluster.sh on a 2-core VM
    #[arg(long, default_value_t = 9.0)]
    pub cpu_per_gib: f64,
    /// The agent's --piece-size (default: automatic, as the agent chooses by blob size)
    #[arg(long, value_parser = units::piece_size)]
    pub piece_size: Option<u32>,
    /// Upload slots per node (the agent's --max-upload-sessions)
    #[arg(long, default_value_t = 8)]
    pub upload_slots: usize,
    /// Peers a download talks to at once (the agent's --max-peers-per-blob)
    #[arg(long, default_value_t = 8)]
    pub max_peers: usize,
    /// The smallest share of a split upstream fetch (the agent's --split-min; 0: never split)
    #[arg(long, value_parser = units::size_or_zero, default_value = "8MiB")]
    pub split_min: u64,
    /// The agent's --peer-stall
    #[arg(long, value_parser = units::duration, default_value = "10s")]
    pub peer_stall: Duration,
    /// The agent's --request-timeout
    #[arg(long, value_parser = units::duration, default_value = "20s")]
    pub request_timeout: Duration,
    /// Peers the tracker names to the members already there when one joins (0: all of them,
    /// the policy before part 9)
    #[arg(long, default_value_t = pollen_core::tracker::NEWCOMER_FANOUT)]
    pub newcomer_fanout: usize,
    /// Where a downloader gets a piece's hash, over a session: `held`, as the agent does (with
    /// the `Have` of the piece, from any peer holding it, signed by its producer), `relayed`
    /// (every signed hash the peer took, ahead of the pieces: the agent before part 9's eighth
    /// session), or `producers` (only from the node that fetched the piece from the registry,
    /// or one that completed the blob: the agent before signed hashes)
    #[arg(long, value_enum, default_value_t = HashSource::Held)]
    pub hashes: HashSource,
    /// What an uploader whose queue is full does with a new session: `displace`, as the agent
    /// does (it takes the place of the waiting session whose node holds most slots elsewhere),
    /// or `refuse` (turned away `Busy`: the agent before part 9's ninth session)
    #[arg(long, value_enum, default_value_t = FullQueue::Displace)]
    pub full_queue: FullQueue,
    /// Which pieces a node asks peers outside its rack for, with racks modelled (the agents
    /// then run with `--rack`): `import`, as the agent does (only what its rack lacks, in each
    /// piece's importer order, `pollen_core::rack`), or `any` (the agent before part 9's rack
    /// rule)
    #[arg(long, value_enum, default_value_t = RackRule::Import)]
    pub rack_rule: RackRule,
    /// Whether an uploader's slot holder that still asks gives its slot up after a piece to a
    /// waiting node holding 2 or more fewer slots (`on`, as the agent does:
    /// `pollen_core::upload::Slots::turn_over`), or keeps it until it idles (`off`: the agent
    /// before part 9's tenth session)
    #[arg(long, value_enum, default_value_t = Toggle::On)]
    pub slot_turnover: Toggle,
    /// How long a slot holder asks for nothing before it gives the slot up to a waiting
    /// session (default: the agent's, `pollen_core::upload::SLOT_YIELD_AFTER`; 500ms: the
    /// agent before part 9's eleventh session)
    #[arg(long, value_parser = units::duration)]
    pub slot_yield_after: Option<Duration>,
    /// Seed of the run's randomness: the same seed gives the same output, byte for byte
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The network model's recompute quantum
    #[arg(long, value_parser = units::duration, default_value = DEFAULT_QUANTUM)]
    pub quantum: Duration,
    /// Simulated time after which the run stops
    #[arg(long, value_parser = units::duration, default_value = DEFAULT_UNTIL)]
    pub until: Duration,
    /// Prints a line of progress to stderr every this much simulated time
    #[arg(long, value_parser = units::duration)]
    pub progress: Option<Duration>,
    /// With --progress, also the slowest, median and fastest 5 % of nodes by pieces held: their
    /// rates, the upload slots they hold and wait for, their flows and how crowded their
    /// uploaders are
    #[arg(long)]
    pub progress_bands: bool,
    /// One JSON object on stdout instead of the report
    #[arg(long)]
    pub json: bool,
    /// Writes the completion curve (nodes done over time) as an SVG
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
}

/// Where a downloader learns the hashes it checks pieces against (`--hashes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HashSource {
    Producers,
    Relayed,
    Held,
}

/// What a full upload queue does with a newcomer (`--full-queue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FullQueue {
    Displace,
    Refuse,
}

/// A rule on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

/// Which pieces a node asks far peers for (`--rack-rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RackRule {
    Any,
    Import,
}

impl Scenario {
    /// A node's upload slots, empty: `--upload-slots`, `--full-queue`.
    pub fn slots<K: Ord + Clone>(&self) -> pollen_core::upload::Slots<K> {
        pollen_core::upload::Slots::new(self.upload_slots)
            .with_displacement(self.full_queue == FullQueue::Displace)
            .with_turnover(self.slot_turnover == Toggle::On)
    }

    /// How long an idle slot holder keeps its slot while others wait: `--slot-yield-after`.
    pub fn yield_after(&self) -> Duration {
        self.slot_yield_after
            .unwrap_or(pollen_core::upload::SLOT_YIELD_AFTER)
    }

    /// Applies `--layer-sizes` over `--image` and `--layers`.
    pub fn normalise(&mut self) {
        if !self.layer_sizes.is_empty() {
            self.image = self.layer_sizes.iter().sum();
            self.layers = u32::try_from(self.layer_sizes.len()).unwrap_or(u32::MAX);
        }
    }

    /// Each layer's size.
    pub fn layer_size(&self, layer: u32) -> u64 {
        if let Some(size) = self.layer_sizes.get(layer as usize) {
            return *size;
        }
        let per_layer = self.image / u64::from(self.layers.max(1));
        if layer + 1 == self.layers {
            self.image - per_layer * u64::from(self.layers - 1)
        } else {
            per_layer
        }
    }

    /// Whether the set-up makes sense; says what to change when not.
    pub fn check(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if self.layers == 0 || u64::from(self.layers) > self.image {
            return Err("--layers must be from 1 to the image's size in bytes".into());
        }
        if self.images == 0 || self.racks == 0 || self.zones == 0 {
            return Err("--images, --racks and --zones must be at least 1".into());
        }
        if self.racks > self.nodes || self.zones > self.racks {
            return Err("give at most one rack per node and one zone per rack".into());
        }
        if self.trackers.is_some_and(|t| t == 0 || t > self.nodes) {
            return Err("--trackers must be from 1 to --nodes".into());
        }
        if self.preheat > self.nodes {
            return Err("--preheat must be at most --nodes".into());
        }
        if !(self.slow_factor > 0.0 && self.slow_factor <= 1.0) {
            return Err("--slow-factor must be above 0 and at most 1".into());
        }
        if self.host_cpu.is_some_and(|c| c <= 0.0) || self.cpu_per_gib <= 0.0 {
            return Err("--host-cpu and --cpu-per-gib must be above 0".into());
        }
        if self.upload_slots == 0 || self.max_peers == 0 {
            return Err("--upload-slots and --max-peers must be at least 1".into());
        }
        // Checked here, not left to `World::new`'s fall-back, which would quietly simulate
        // another geometry than the one asked for.
        if let Some(p) = self.piece_size {
            for layer in 0..self.layers {
                let size = self.layer_size(layer);
                pollen_proto::PieceGeometry::choose(size, Some(p)).map_err(|e| {
                    format!("--piece-size {p} does not fit layer {layer} ({size} bytes): {e}; give a larger piece size")
                })?;
            }
        }
        Ok(())
    }
}
