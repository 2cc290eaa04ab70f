//! The swarm's decisions, sans I/O: the tracker's membership and fetch assignment
//! ([`tracker`]), the downloader's choice of peers and pieces ([`picker`], [`download`],
//! [`rack`]),
//! when it gives up on peers ([`stall`]), what it does next ([`phase`]) and when it tries a
//! peer or the bootstrap again ([`retry`]); the uploader's super-seeding ([`spread`]) and slots ([`upload`]).
//!
//! Everything here is a state machine that takes events with the time they happened and
//! returns what to do: no sockets, no tasks, and no clock of its own (the shape of quinn-proto
//! and rustls). The agent drives it from tokio with the real clock; `pollen-sim` drives the
//! same code for thousands of nodes in simulated time. That is why this crate depends on
//! neither tokio nor libp2p (a test in `crates/agent/tests/layout.rs` holds it to that), and
//! why nothing in it iterates a randomly seeded hash map where the order reaches a decision:
//! the same events give the same actions, run after run.
//!
//! Time is `std::time::Instant`, always passed in: the agent passes the tokio clock's
//! (`tokio::time::Instant::into_std`, so tests on a paused clock still drive it), the
//! simulator a fixed origin plus simulated time.

pub mod download;
pub mod phase;
pub mod picker;
pub mod rack;
pub mod retry;
pub mod spread;
pub mod stall;
pub mod tracker;
pub mod upload;

pub use std::time::{Duration, Instant};
