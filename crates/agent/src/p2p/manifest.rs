//! Manifests by digest from peers. They are small (at most `MAX_MANIFEST_BYTES`), so they
//! travel whole over the same pieces protocol and are checked against their digest alone;
//! the media type the client needs comes from the manifest itself.

use super::P2p;
use bytes::{Bytes, BytesMut};
use pollen_oci::{is_manifest_media_type, Digest, MAX_MANIFEST_BYTES};
use pollen_peer::{Event, Session};
use pollen_proto::MAX_OUTSTANDING_REQUESTS;
use pollen_swarm::PeerId;
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

/// Providers tried before the upstream is asked.
const MAX_TRIES: usize = 3;
/// The bound on getting a manifest from one peer.
const PER_PEER: Duration = Duration::from_secs(5);

/// The manifest and its media type from a peer, or `None` (ask the upstream): from `holder` first (the node that
/// resolved its tag for the cluster holds it, and is asked before its provider record has
/// reached anyone), then from up to [`MAX_TRIES`] providers Kademlia names.
pub(crate) async fn fetch(
    p2p: &P2p,
    digest: &Digest,
    holder: Option<PeerId>,
) -> Option<(Bytes, String)> {
    // Twice: a connection that closes under the first try (a replaced one) is no reason to
    // pay the upstream for a manifest the holder has.
    let holder_twice = holder.into_iter().chain(holder);
    if let Some(found) = try_peers(p2p, digest, holder_twice).await {
        return Some(found);
    }
    let providers = p2p.node.find_providers(digest).await.ok()?;
    let others = providers.into_iter().filter(|p| Some(*p) != holder);
    try_peers(p2p, digest, others.take(MAX_TRIES)).await
}

/// The first of `peers` (not banned for the digest) that sends the manifest.
async fn try_peers(
    p2p: &P2p,
    digest: &Digest,
    peers: impl Iterator<Item = PeerId>,
) -> Option<(Bytes, String)> {
    for peer in peers.filter(|p| !p2p.bans.is_banned(digest, p)) {
        match timeout(PER_PEER, from_peer(p2p, peer, digest)).await {
            Ok(Ok(body)) => {
                if Digest::of(&body) != *digest {
                    p2p.bans
                        .ban(*digest, peer, "sent a manifest that fails its digest");
                    continue;
                }
                let Some(media_type) = media_type_of(&body) else {
                    debug!(%digest, "manifest from a peer names no manifest media type");
                    continue;
                };
                return Some((body, media_type));
            }
            Ok(Err(why)) => debug!(%digest, %peer, error = %why, "manifest from peer failed"),
            Err(_) => debug!(%digest, %peer, "manifest from peer timed out"),
        }
    }
    None
}

async fn from_peer(p2p: &P2p, peer: PeerId, digest: &Digest) -> Result<Bytes, String> {
    let stream = p2p
        .node
        .open_stream(peer)
        .await
        .map_err(|e| e.to_string())?;
    let (mut session, have) = Session::open(stream.compat(), *digest, &p2p.cfg.session)
        .await
        .map_err(|e| e.to_string())?;
    let g = have.geometry;
    if !have.complete || g.size() > MAX_MANIFEST_BYTES as u64 {
        return Err("peer does not hold a whole manifest-sized object".into());
    }
    let mut pieces: Vec<Option<Bytes>> = vec![None; g.count() as usize];
    let mut next = 0u32;
    let mut got = 0;
    while got < pieces.len() {
        match session.next_event().await.map_err(|e| e.to_string())? {
            Event::Unchoked => {}
            Event::Piece { index, bytes } => {
                if let Some(slot) = pieces.get_mut(index as usize).filter(|s| s.is_none()) {
                    *slot = Some(bytes);
                    got += 1;
                }
            }
            _ => continue,
        }
        while next < g.count() && session.outstanding() < MAX_OUTSTANDING_REQUESTS {
            if session.request(next).is_err() {
                break;
            }
            next += 1;
        }
    }
    session.close().await;
    let mut body = BytesMut::with_capacity(g.size() as usize);
    for p in pieces.into_iter().flatten() {
        body.extend_from_slice(&p);
    }
    Ok(body.freeze())
}

/// The manifest's own `mediaType`, or the OCI type its shape implies (the field is optional
/// in OCI manifests and indexes).
pub(crate) fn media_type_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    let shape: Shape = serde_json::from_slice(body).ok()?;
    let media_type = match (shape.media_type, shape.manifests, shape.layers) {
        (Some(m), _, _) => m,
        (None, Some(_), _) => "application/vnd.oci.image.index.v1+json".into(),
        (None, None, Some(_)) => "application/vnd.oci.image.manifest.v1+json".into(),
        _ => return None,
    };
    is_manifest_media_type(&media_type).then_some(media_type)
}

#[cfg(test)]
mod tests {
    use super::media_type_of;

    #[test]
    fn media_type_from_the_manifest_or_its_shape() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;
        assert_eq!(
            media_type_of(docker).as_deref(),
            Some("application/vnd.docker.distribution.manifest.v2+json")
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(media_type_of(br#"{"mediaType":"text/html"}"#), None);
        assert_eq!(media_type_of(b"not json"), None);
        assert_eq!(media_type_of(br#"{"schemaVersion":2}"#), None);
    }
}
