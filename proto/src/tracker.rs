//! The tracker protocol (`/pollen/tracker/2`): how an agent downloading a blob learns from the
//! blob's tracker whether it should fetch from the upstream itself and which peers to ask.
//!
//! One stream per agent and blob, open for as long as the agent works on the blob: the stream
//! *is* the agent's membership (and, for the fetcher, its lease on the upstream fetch). When it
//! closes without `Leave { complete: true }` — the agent failed or died — the tracker hands the
//! fetch to another member. Framing, limits and encoding are those of the pieces protocol
//! (bincode 2, little endian, varints, a length prefix checked before allocation).

use crate::codec::{decode_payload, encode_frame};
use crate::error::ProtoError;
#[cfg(feature = "io")]
use crate::io::read_frame;
use crate::serde_util::digest_bytes;
use pollen_oci::Digest;
use serde::{Deserialize, Serialize};
#[cfg(feature = "io")]
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The libp2p protocol id of the tracker. Version 2 added `Near`.
pub const TRACKER_PROTOCOL: &str = "/pollen/tracker/2";

/// The version before, still served (without `Near`) to agents of the version before during a
/// rolling upgrade, and still the name of the trackers' Kademlia key, so that agents of both
/// versions find the same trackers.
pub const LEGACY_TRACKER_PROTOCOL: &str = "/pollen/tracker/1";

/// Largest tracker frame in either direction.
pub const MAX_TRACKER_FRAME: u32 = 8192;

/// Most peers in one `Assign` or `Peers`.
pub const MAX_TRACKER_PEERS: usize = 32;

/// Most labels an agent sends (zone, rack, and a few of its own).
pub const MAX_LABELS: usize = 8;

/// Longest label key or value in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// Longest encoded libp2p PeerId (an identity multihash of an Ed25519 key is 38 bytes).
pub const MAX_PEER_ID_LEN: usize = 64;

/// Longest `Resolved` error in bytes; [`TrackerReply::resolve_failed`] clips to it.
pub const MAX_RESOLVE_ERROR: usize = 512;

/// Agent -> tracker. The wire tag of a variant is its position: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerRequest {
    /// The first message: the agent wants the blob (or is already fetching it, after its
    /// tracker changed). Answered by `Assign`.
    Join {
        #[serde(with = "digest_bytes")]
        digest: Digest,
        /// The agent is a seed (`--seed`): preferred as the upstream fetcher.
        seed: bool,
        /// The agent is fetching this blob from the upstream right now (it keeps the fetch).
        fetching: bool,
        /// Pieces the agent holds already (a resumed partial blob).
        pieces: u32,
        /// `zone`, `rack` and other `k=v` labels: peers with equal labels are named first.
        labels: Vec<(String, String)>,
        /// The agent was a member at a tracker that died and joins this one, the blob's next:
        /// the fetcher, if it is still alive, is about to rejoin too, so this agent is not
        /// made the fetcher at once.
        rejoin: bool,
        /// The agent is fetching another blob from the upstream now: its upload is carrying
        /// that blob into the swarm, so another member should fetch this one if one joins
        /// within a moment.
        busy: bool,
    },
    /// How many pieces the agent holds now (sent now and then while downloading).
    Progress { pieces: u32 },
    /// The agent is done with the blob; `complete`: it holds all of it, verified.
    Leave { complete: bool },
    /// Instead of `Join`, on a stream of its own: resolve a tag once for the whole cluster.
    /// The tracker whose rendezvous key is the tag asks the upstream (or answers from its
    /// short-lived tag cache) and answers `Resolved`; the agent then gets the manifest by
    /// digest from the tracker's node like any other content.
    Resolve {
        /// `None`: the default upstream (Docker Hub).
        registry: Option<String>,
        name: String,
        tag: String,
    },
    /// From the fetcher, once the upstream's response told it the blob's size: the tracker
    /// may split the rest of the fetch across other members (answered by `FetchRange`, the
    /// part this node keeps).
    Sized {
        size: u64,
        /// Pieces of the blob at the agents' piece size (ranges are cut at piece boundaries).
        count: u32,
        /// The upstream answers range requests (`Accept-Ranges: bytes`): only then is the
        /// fetch split.
        ranges: bool,
    },
    /// Instead of `Join`, on a stream of its own: the tracker's clock, answered by `Time`
    /// (`pollen doctor` measures clock skew between nodes with it).
    Time,
    /// Instead of `Join`, on a stream of its own: does this tracker coordinate the blob,
    /// answered by `Members`. An agent made a blob's fetcher asks the blob's next trackers
    /// before it fetches: while a cluster is starting, agents' lists of trackers differ, and
    /// another tracker may already coordinate the blob (docs/tracker.md).
    Members {
        #[serde(with = "digest_bytes")]
        digest: Digest,
    },
}

/// Tracker -> agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerReply {
    /// Answers `Join`: fetch from the upstream (`fetch`) or not, and the peers to ask, best
    /// first (the fetcher and complete holders, then equal labels, then the most pieces).
    Assign { fetch: bool, peers: Vec<Vec<u8>> },
    /// The fetcher left without finishing: fetch what is still missing from the upstream.
    Fetch,
    /// More peers worth asking (new members with pieces).
    Peers { peers: Vec<Vec<u8>> },
    /// Answers `Resolve`: the manifest's digest, or why the tag could not be resolved.
    Resolved {
        #[serde(with = "crate::serde_util::opt_digest_bytes")]
        digest: Option<Digest>,
        error: String,
    },
    /// Fetch pieces `first..end` of the blob (of `size` bytes) from the upstream, and the rest
    /// from peers: this node's share of a split fetch (also the answer to `Sized`, and a dead
    /// member's share handed on).
    FetchRange { size: u64, first: u32, end: u32 },
    /// Answers `Time`: the tracker's wall clock, in milliseconds since the Unix epoch.
    Time { unix_ms: u64 },
    /// Answers `Members`: the blob's members now, the holders it remembers, and whether it
    /// is itself asking the other trackers about the blob (its first member just arrived).
    Members {
        members: u32,
        holders: u32,
        probing: bool,
    },
    /// Answers `Join` instead of `Assign`: another tracker (a PeerId) has this blob's swarm
    /// already; join that one. Sent only to a first member, never to a rejoin.
    Redirect { tracker: Vec<u8> },
    /// The upstream has headroom over the swarm (its fetchers get pieces much faster than
    /// downloaders get them from peers): fetch pieces `first..end` from the upstream now, even
    /// those peers hold, within the cluster's `--upstream-budget`.
    FetchAlso { size: u64, first: u32, end: u32 },
    /// Of the peers this stream named (in `Assign` or `Peers`), those that share the member's
    /// `rack` label: its downloads take from far peers only what their rack lacks
    /// (`pollen_core::rack`). Sent right after the message that named them; version 2 only.
    Near { peers: Vec<Vec<u8>> },
}

impl TrackerRequest {
    fn validate(&self) -> Result<(), String> {
        if let TrackerRequest::Resolve {
            registry,
            name,
            tag,
        } = self
        {
            let long = |s: &str| s.is_empty() || s.len() > MAX_LABEL_LEN * 4;
            if long(name) || long(tag) || registry.as_deref().is_some_and(long) {
                return Err("registry, name or tag empty or too long".into());
            }
        }
        if let TrackerRequest::Sized { count, .. } = self {
            if *count == 0 || *count > crate::MAX_PIECES {
                return Err(format!("a blob of {count} pieces"));
            }
        }
        if let TrackerRequest::Join { labels, .. } = self {
            if labels.len() > MAX_LABELS {
                return Err(format!("{} labels, at most {MAX_LABELS}", labels.len()));
            }
            if labels
                .iter()
                .any(|(k, v)| k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN || k.is_empty())
            {
                return Err("a label key is empty or a label is too long".into());
            }
        }
        Ok(())
    }
}

impl TrackerReply {
    fn validate(&self) -> Result<(), String> {
        let peers: &[Vec<u8>] = match self {
            TrackerReply::Assign { peers, .. }
            | TrackerReply::Peers { peers }
            | TrackerReply::Near { peers } => peers,
            TrackerReply::Fetch => return Ok(()),
            TrackerReply::FetchRange { first, end, .. }
            | TrackerReply::FetchAlso { first, end, .. } => {
                if first >= end {
                    return Err(format!("empty piece range {first}..{end}"));
                }
                if *end > crate::MAX_PIECES {
                    return Err(format!("piece range ends at {end}, past the most pieces"));
                }
                return Ok(());
            }
            TrackerReply::Resolved { error, .. } if error.len() > MAX_RESOLVE_ERROR => {
                return Err("error message too long".into())
            }
            TrackerReply::Resolved { .. }
            | TrackerReply::Time { .. }
            | TrackerReply::Members { .. } => return Ok(()),
            TrackerReply::Redirect { tracker } => std::slice::from_ref(tracker),
        };
        if peers.len() > MAX_TRACKER_PEERS {
            return Err(format!(
                "{} peers, at most {MAX_TRACKER_PEERS}",
                peers.len()
            ));
        }
        if peers
            .iter()
            .any(|p| p.is_empty() || p.len() > MAX_PEER_ID_LEN)
        {
            return Err("a peer id is empty or too long".into());
        }
        Ok(())
    }
}

const N: usize = MAX_TRACKER_FRAME as usize;

/// A message of one of the small control protocols (tracker, preheat): framed like the
/// pieces protocol, at most [`MAX_TRACKER_FRAME`] bytes, checked by its own rules.
pub(crate) trait Small: Serialize + serde::de::DeserializeOwned {
    fn validate(&self) -> Result<(), String>;
}

pub(crate) fn encode_small<T: Small>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    msg.validate().map_err(ProtoError::Encode)?;
    encode_frame::<_, N>(msg, MAX_TRACKER_FRAME)
}

pub(crate) fn decode_small<T: Small>(payload: &[u8]) -> Result<T, ProtoError> {
    let msg: T = decode_payload::<_, N>(payload)?;
    msg.validate().map_err(ProtoError::Invalid)?;
    Ok(msg)
}

#[cfg(feature = "io")]
pub(crate) async fn write_small<W, T>(w: &mut W, msg: &T) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Small,
{
    w.write_all(&encode_small(msg)?).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(feature = "io")]
pub(crate) async fn read_small<R, T>(r: &mut R) -> Result<Option<T>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: Small,
{
    match read_frame(r, MAX_TRACKER_FRAME).await? {
        Some(p) => decode_small(&p).map(Some),
        None => Ok(None),
    }
}

impl Small for TrackerRequest {
    fn validate(&self) -> Result<(), String> {
        TrackerRequest::validate(self)
    }
}

impl Small for TrackerReply {
    fn validate(&self) -> Result<(), String> {
        TrackerReply::validate(self)
    }
}

/// Encodes a tracker request as a complete frame.
pub fn encode_tracker_request(req: &TrackerRequest) -> Result<Vec<u8>, ProtoError> {
    encode_small(req)
}

/// Decodes one tracker request payload.
pub fn decode_tracker_request(payload: &[u8]) -> Result<TrackerRequest, ProtoError> {
    decode_small(payload)
}

/// Encodes a tracker reply as a complete frame.
pub fn encode_tracker_reply(reply: &TrackerReply) -> Result<Vec<u8>, ProtoError> {
    encode_small(reply)
}

/// Decodes one tracker reply payload.
pub fn decode_tracker_reply(payload: &[u8]) -> Result<TrackerReply, ProtoError> {
    decode_small(payload)
}

/// Writes one tracker request and flushes it.
#[cfg(feature = "io")]
pub async fn write_tracker_request<W>(w: &mut W, req: &TrackerRequest) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_small(w, req).await
}

/// Writes one tracker reply and flushes it.
#[cfg(feature = "io")]
pub async fn write_tracker_reply<W>(w: &mut W, reply: &TrackerReply) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_small(w, reply).await
}

/// Reads the next tracker request; `Ok(None)` on a clean close between frames.
#[cfg(feature = "io")]
pub async fn read_tracker_request<R>(r: &mut R) -> Result<Option<TrackerRequest>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_small(r).await
}

/// Reads the next tracker reply; `Ok(None)` on a clean close between frames.
#[cfg(feature = "io")]
pub async fn read_tracker_reply<R>(r: &mut R) -> Result<Option<TrackerReply>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_small(r).await
}

impl TrackerReply {
    /// A failed `Resolve`, its message clipped on a character boundary to what the reader
    /// accepts: clipped by characters, 400 of them outside ASCII were up to 1,600 bytes and
    /// the agent refused the whole reply instead of reading why.
    pub fn resolve_failed(error: &str) -> TrackerReply {
        let mut end = error.len().min(MAX_RESOLVE_ERROR);
        while !error.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        TrackerReply::Resolved {
            digest: None,
            error: error.get(..end).unwrap_or_default().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_resolve_error_is_clipped_to_what_readers_accept() {
        for error in ["é".repeat(400), "x".repeat(2000), "ab€".repeat(300)] {
            let reply = TrackerReply::resolve_failed(&error);
            let frame = encode_tracker_reply(&reply).expect("encodes");
            let back = decode_tracker_reply(frame.get(4..).unwrap_or_default())
                .expect("a reader accepts it");
            let TrackerReply::Resolved { error: clipped, .. } = back else {
                panic!("not a Resolved: {back:?}");
            };
            assert!(clipped.len() <= MAX_RESOLVE_ERROR && clipped.len() > MAX_RESOLVE_ERROR - 4);
            assert!(error.starts_with(&clipped));
        }
        let short = TrackerReply::resolve_failed("no such tag");
        assert!(matches!(short, TrackerReply::Resolved { error, .. } if error == "no such tag"));
    }

    fn join(labels: Vec<(String, String)>) -> TrackerRequest {
        TrackerRequest::Join {
            digest: Digest::of(b"x"),
            seed: true,
            fetching: false,
            pieces: 3,
            labels,
            rejoin: false,
            busy: false,
        }
    }

    #[test]
    fn round_trips() {
        let reqs = [
            join(vec![("zone".into(), "a".into())]),
            TrackerRequest::Progress { pieces: 9 },
            TrackerRequest::Leave { complete: true },
            TrackerRequest::Time,
            TrackerRequest::Members {
                digest: Digest::of(b"x"),
            },
        ];
        for r in reqs {
            let f = encode_tracker_request(&r).unwrap();
            assert_eq!(decode_tracker_request(&f[4..]).unwrap(), r);
        }
        let replies = [
            TrackerReply::Assign {
                fetch: true,
                peers: vec![vec![1; 38]; 3],
            },
            TrackerReply::Fetch,
            TrackerReply::Peers { peers: vec![] },
            TrackerReply::Time {
                unix_ms: 1_700_000_000_123,
            },
            TrackerReply::Members {
                members: 3,
                holders: 1,
                probing: true,
            },
            TrackerReply::Redirect {
                tracker: vec![7; 38],
            },
            TrackerReply::FetchAlso {
                size: 1 << 30,
                first: 448,
                end: 512,
            },
            TrackerReply::Near {
                peers: vec![vec![2; 38]; 2],
            },
        ];
        for r in replies {
            let f = encode_tracker_reply(&r).unwrap();
            assert_eq!(decode_tracker_reply(&f[4..]).unwrap(), r);
        }
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let many = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(encode_tracker_request(&join(many)).is_err());
        assert!(encode_tracker_request(&join(vec![("k".into(), "v".repeat(65))])).is_err());
        let too_many = TrackerReply::Peers {
            peers: vec![vec![1; 38]; MAX_TRACKER_PEERS + 1],
        };
        assert!(encode_tracker_reply(&too_many).is_err());
        let too_many_near = TrackerReply::Near {
            peers: vec![vec![1; 38]; MAX_TRACKER_PEERS + 1],
        };
        assert!(encode_tracker_reply(&too_many_near).is_err());
        // A peer that encodes too many peers itself is refused on decode.
        let payload = bincode::serde::encode_to_vec(
            &too_many,
            bincode::config::standard()
                .with_little_endian()
                .with_variable_int_encoding(),
        )
        .unwrap();
        assert!(matches!(
            decode_tracker_reply(&payload),
            Err(ProtoError::Invalid(_))
        ));
        assert!(decode_tracker_reply(&[0xff; 100]).is_err());
        assert!(decode_tracker_request(&[]).is_err());
    }

    #[tokio::test]
    async fn frames_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_tracker_request(&mut a, &TrackerRequest::Progress { pieces: 1 })
            .await
            .unwrap();
        assert_eq!(
            read_tracker_request(&mut b).await.unwrap(),
            Some(TrackerRequest::Progress { pieces: 1 })
        );
        // A length prefix above the limit is refused before the payload is read.
        a.write_all(&(MAX_TRACKER_FRAME + 1).to_le_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_tracker_reply(&mut b).await,
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }
}
