//! The tracker role: for each blob it coordinates, who is working on it, who fetches it from
//! the upstream (one fetcher per blob, so each byte leaves the registry once), and which peers
//! each newcomer should ask. No database and no control plane: the state is in memory and
//! rebuilt from the agents' `Join`s when a tracker restarts or another takes over.
//!
//! [`Tracker`] is the state and its policy (pure, unit-tested); [`serve`] runs one agent's
//! stream against it. Peers are opaque byte strings here (libp2p PeerIds, encoded), so this
//! crate knows nothing of libp2p.

mod policy;
mod redirect;
mod serve;

pub use policy::{
    BlobSummary, OtherTrackers, Resolver, Tracker, DEFAULT_UPSTREAM_BUDGET, HEADROOM, MAX_FETCHERS,
    MIN_SHARE, REJOIN_GRACE, SPLIT_WAIT,
};
pub use serve::{serve, ServeError, DEFAULT_MEMBER_IDLE};
