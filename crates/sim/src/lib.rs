//! pollen-sim: thousands of Pollen nodes in one process, in simulated time. Each node runs
//! the agent's decisions from pollen-core — the tracker's membership and fetch assignment,
//! the downloader's peers, pieces and hand-overs, super-seeding — over a flow-level network
//! ([`net`]: each transfer a flow through the sender's uplink, shared rack and zone links
//! and the receiver's downlink, with max-min fair rates). What the agent does with sockets,
//! tasks and timers, the simulator does with events ([`world`]); nothing here decides what
//! the core decides. See `docs/simulator.md` for the model and what it leaves out.

pub mod alloc;
pub mod bands;
pub mod config;
mod down;
mod fetch;
mod hashes;
mod life;
pub mod net;
mod queue;
pub mod report;
pub mod rng;
pub mod topo;
mod track;
pub mod units;
mod up;
pub mod wait;
pub mod world;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Runs a scenario to the end and reports.
pub fn simulate(s: config::Scenario) -> report::Report {
    let started = std::time::Instant::now();
    let bands = s.progress_bands;
    let mut w = world::World::new(s);
    if bands {
        w.progress_more = Some(bands::lines);
    }
    w.run();
    report::Report::of(&w, started.elapsed().as_secs_f64())
}
