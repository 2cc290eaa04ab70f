//! Why a swarm call failed: one type for the handle and the event loop behind it.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::identity::IdentityError;

/// Why a swarm call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("building the transport: {0}")]
    Transport(String),
    #[error("setting up the swarm: {0}")]
    Setup(#[source] std::io::Error),
    /// Without a swarm key anyone who reaches the port could join, so only loopback is allowed.
    #[error("no swarm key, and {addr} is not a loopback address: anyone who can reach it could join the swarm; run `pollen swarm-key` once, give the file to every agent with --swarm-key FILE (or listen on 127.0.0.1 only, or turn peer-to-peer off with --p2p false)")]
    NoSwarmKey { addr: Multiaddr },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the swarm has stopped")]
    Stopped,
    #[error("{what} took longer than {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("cannot announce the blob: {0}")]
    Provide(String),
    #[error("opening a stream to {peer}: {source}")]
    OpenStream {
        peer: PeerId,
        #[source]
        source: libp2p_stream::OpenStreamError,
    },
    #[error("incoming streams of this protocol are already being accepted by another caller")]
    AlreadyAccepting,
}
