//! The preheat protocol (`/pollen/preheat/1`): one agent asks another (a seed, or any agent
//! with `pollen preheat --all-nodes`) to fetch a blob into its cache before a rollout, and
//! hears how far it got. One stream per blob; framing and limits as the tracker protocol.

#[cfg(feature = "io")]
use crate::error::ProtoError;
use crate::serde_util::digest_bytes;
use crate::tracker::Small;
#[cfg(feature = "io")]
use crate::tracker::{read_small, write_small};
use pollen_oci::Digest;
use serde::{Deserialize, Serialize};
#[cfg(feature = "io")]
use tokio::io::{AsyncRead, AsyncWrite};

/// The libp2p protocol id of preheat requests.
pub const PREHEAT_PROTOCOL: &str = "/pollen/preheat/1";

/// Longest registry host or repository name in a preheat request.
pub const MAX_PREHEAT_NAME: usize = 255;

/// Longest message in a `Done`.
const MAX_MESSAGE: usize = 512;

/// Asker -> fetcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreheatRequest {
    /// Fetch this blob of `name` from `registry` (`None`: the default upstream, Docker Hub).
    Fetch {
        registry: Option<String>,
        name: String,
        #[serde(with = "digest_bytes")]
        digest: Digest,
    },
}

/// Fetcher -> asker: `Progress` now and then, then one `Done`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreheatReply {
    Progress { have: u64, size: u64 },
    Done { ok: bool, message: String },
}

impl Small for PreheatRequest {
    fn validate(&self) -> Result<(), String> {
        let PreheatRequest::Fetch { registry, name, .. } = self;
        if name.is_empty()
            || name.len() > MAX_PREHEAT_NAME
            || registry
                .as_ref()
                .is_some_and(|r| r.is_empty() || r.len() > MAX_PREHEAT_NAME)
        {
            return Err("registry or name empty or too long".into());
        }
        Ok(())
    }
}

impl Small for PreheatReply {
    fn validate(&self) -> Result<(), String> {
        match self {
            PreheatReply::Progress { have, size } if have > size => {
                Err(format!("progress {have} past size {size}"))
            }
            PreheatReply::Done { message, .. } if message.len() > MAX_MESSAGE => {
                Err("message too long".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "io")]
pub async fn write_preheat_request<W>(w: &mut W, req: &PreheatRequest) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_small(w, req).await
}

#[cfg(feature = "io")]
pub async fn read_preheat_request<R>(r: &mut R) -> Result<Option<PreheatRequest>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_small(r).await
}

#[cfg(feature = "io")]
pub async fn write_preheat_reply<W>(w: &mut W, reply: &PreheatReply) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_small(w, reply).await
}

#[cfg(feature = "io")]
pub async fn read_preheat_reply<R>(r: &mut R) -> Result<Option<PreheatReply>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_small(r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let req = PreheatRequest::Fetch {
            registry: Some("ghcr.io".into()),
            name: "org/app".into(),
            digest: Digest::of(b"x"),
        };
        write_preheat_request(&mut a, &req).await.unwrap();
        assert_eq!(read_preheat_request(&mut b).await.unwrap(), Some(req));
        let done = PreheatReply::Done {
            ok: true,
            message: String::new(),
        };
        write_preheat_reply(&mut b, &done).await.unwrap();
        assert_eq!(read_preheat_reply(&mut a).await.unwrap(), Some(done));
        let bad = PreheatReply::Progress { have: 2, size: 1 };
        assert!(write_preheat_reply(&mut b, &bad).await.is_err());
        let long = PreheatRequest::Fetch {
            registry: None,
            name: "a".repeat(MAX_PREHEAT_NAME + 1),
            digest: Digest::of(b"x"),
        };
        assert!(write_preheat_request(&mut a, &long).await.is_err());
    }
}
