//! Pollen's libp2p layer: how agents on different nodes find each other and open
//! authenticated, encrypted streams of the pieces protocol (`pollen-proto`) to one another.
//!
//! - **Identity** ([`identity`]): an Ed25519 key in `<data_dir>/p2p/key`, so a node keeps its
//!   PeerId across restarts (provider records and bans name PeerIds).
//! - **Admission** ([`key`], [`limits`]): a private-network key shared by the cluster
//!   (checked before any other handshake), an optional allow-list of PeerIds, and limits on
//!   connections in all, per peer and per remote address. Without a key a node listens on
//!   loopback only.
//! - **Transport**: TCP + TLS 1.3 (AES-GCM first) or noise + yamux with 112 KiB frames; the
//!   default, the two adapters that differ from stock libp2p, and the numbers behind them are
//!   in `docs/transport.md`.
//! - **Discovery**: bootstrap addresses or DNS names (a Kubernetes headless Service) dialled
//!   at start and re-dialled while unreachable, optional mDNS, identify to learn each peer's
//!   listen addresses, and a Kademlia DHT of Pollen nodes only.
//! - **Content routing**: Kademlia provider records keyed by the blob's digest, with a short
//!   TTL so a node that died or dropped a blob stops being named within about a minute.
//! - **Streams**: [`Node::open_stream`] / [`Node::incoming_streams`] on
//!   [`pollen_proto::PROTOCOL`]; what flows in them is `pollen-proto`'s business.
//!
//! The swarm of a node runs in one tokio task (libp2p gives each connection a task of its
//! own); the [`Node`] handle talks to it with bounded waits only.

mod behaviour;
mod bootstrap;
pub mod config;
mod error;
mod event_loop;
pub mod identity;
pub mod key;
pub mod limits;
mod muxer;
mod node;
mod proof;
pub mod signing;
mod stats;
mod store;
mod tls;
mod transport;

pub use config::{Bootstrap, Security, SwarmConfig};
pub use error::Error;
pub use identity::IdentityError;
pub use key::{KeyError, SwarmKey};
pub use libp2p::{multiaddr, Multiaddr, PeerId, Stream};
pub use limits::Limits;
pub use node::{is_loopback_listen, IncomingStreams, Node};
pub use signing::Signer;
pub use stats::Stats;
