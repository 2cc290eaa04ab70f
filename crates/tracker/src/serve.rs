//! One agent's tracker stream: `Join`, then `Progress` now and then, pushes from the tracker
//! in between, until `Leave` or the stream ends. Every wait is bounded.

use crate::policy::{Member, Tracker, FETCH_DEFER, REJOIN_GRACE, SPLIT_WAIT};
use crate::redirect::Enter;
use pollen_core::tracker::Sized;
use pollen_oci::Digest;
use pollen_proto::{
    read_tracker_request, write_tracker_reply, ProtoError, TrackerReply, TrackerRequest,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long a tracker waits for a silent member, or for a write to it (agents send
/// `Progress` every few seconds, so 30 s of silence is a member gone). The agent serves with it.
pub const DEFAULT_MEMBER_IDLE: Duration = Duration::from_secs(30);

/// The bound on asking the other trackers about a blob this one does not know: a first
/// member waits at most this long for its answer.
pub const REDIRECT_WAIT: Duration = Duration::from_secs(1);

/// Why a stream ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the agent broke the tracker protocol: {0}")]
    Protocol(String),
    #[error("the agent went silent")]
    Timeout,
    #[error(transparent)]
    Io(#[from] ProtoError),
}

/// Serves one agent (`peer`, its encoded PeerId as authenticated by the transport). `marks`:
/// the stream speaks `TRACKER_PROTOCOL`, which has `Near`; on `LEGACY_TRACKER_PROTOCOL` the
/// marks are left out.
pub async fn serve<S>(
    tracker: Arc<Tracker>,
    peer: Vec<u8>,
    stream: S,
    idle: Duration,
    marks: bool,
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let first = timeout(idle, read_tracker_request(&mut r))
        .await
        .map_err(|_| ServeError::Timeout)??;
    let (digest, seed, fetching, pieces, labels, rejoin, busy) = match first {
        Some(TrackerRequest::Join {
            digest,
            seed,
            fetching,
            pieces,
            labels,
            rejoin,
            busy,
        }) => (digest, seed, fetching, pieces, labels, rejoin, busy),
        Some(TrackerRequest::Resolve {
            registry,
            name,
            tag,
        }) => return resolve(&tracker, registry, name, tag, &mut w, idle).await,
        Some(TrackerRequest::Time) => {
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            return reply_once(&mut w, &TrackerReply::Time { unix_ms }, idle).await;
        }
        Some(TrackerRequest::Members { digest }) => {
            let (members, holders) = tracker.members_of(&digest);
            let probing = tracker.redirects.probing(&digest);
            let reply = TrackerReply::Members {
                members,
                holders,
                probing,
            };
            return reply_once(&mut w, &reply, idle).await;
        }
        _ => {
            return Err(ServeError::Protocol(
                "the first message must be Join, Resolve, Time or Members".into(),
            ))
        }
    };
    if !rejoin && !fetching && tracker.members_of(&digest) == (0, 0) {
        if let Some(to) = elsewhere(&tracker, digest).await {
            let reply = TrackerReply::Redirect { tracker: to };
            return reply_once(&mut w, &reply, idle).await;
        }
    }
    let (tx, mut pushes) = mpsc::unbounded_channel();
    let member = Member {
        peer,
        seed,
        labels,
        pieces,
        busy,
        tx,
    };
    let (id, assign, deferred) = tracker.join(digest, member, fetching, rejoin);
    // A busy member told not to fetch asks again after FETCH_DEFER, in case nobody else took it.
    let mut defer = deferred.then(|| Box::pin(tokio::time::sleep(FETCH_DEFER)));
    // A fetcher's `Sized` is answered after SPLIT_WAIT, unless members are there to take
    // every share already: members that ask for the blob a moment after it (a rollout) can
    // still take shares.
    let mut sized: Option<Sized> = None;
    let mut split_at = None;
    let mut complete = false;
    // The member's requests are read by a task of their own: a read dropped half-way by
    // another branch of the loop below (a push, a timer) lost the frame's first bytes, and
    // the rest was read as a frame of its own.
    let (req_tx, mut reqs) = mpsc::channel(1);
    let reader = tokio::spawn(async move {
        loop {
            let req = read_tracker_request(&mut r).await;
            let last = !matches!(req, Ok(Some(_)));
            if req_tx.send(req).await.is_err() || last {
                break;
            }
        }
    });
    let result = async {
        timeout(idle, write_tracker_reply(&mut w, &assign))
            .await
            .map_err(|_| ServeError::Timeout)??;
        loop {
            tokio::select! {
                req = timeout(idle, reqs.recv()) => {
                    match req.map_err(|_| ServeError::Timeout)?.unwrap_or(Ok(None))? {
                        Some(TrackerRequest::Progress { pieces }) => tracker.progress(&digest, id, pieces),
                        Some(TrackerRequest::Sized { size, count, ranges }) => {
                            let blob = Sized { size, count, ranges };
                            sized = Some(blob);
                            let wait = match tracker.split_ready(&digest, id, blob) {
                                true => Duration::ZERO,
                                false => SPLIT_WAIT,
                            };
                            split_at = Some(Box::pin(tokio::time::sleep(wait)));
                        }
                        Some(TrackerRequest::Leave { complete: c }) => {
                            complete = c;
                            return Ok(());
                        }
                        None => return Ok(()),
                        Some(
                            TrackerRequest::Join { .. }
                            | TrackerRequest::Resolve { .. }
                            | TrackerRequest::Time
                            | TrackerRequest::Members { .. },
                        ) => {
                            return Err(ServeError::Protocol(
                                "Join, Resolve, Time or Members on a member's stream".into(),
                            ))
                        }
                    }
                }
                () = async {
                    match defer.as_mut() {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                } => {
                    defer = None;
                    if tracker.claim_deferred(&digest, id) {
                        timeout(idle, write_tracker_reply(&mut w, &TrackerReply::Fetch))
                            .await
                            .map_err(|_| ServeError::Timeout)??;
                    }
                }
                () = async {
                    match split_at.as_mut() {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                } => {
                    split_at = None;
                    if let Some(Sized { size, count, ranges }) = sized.take() {
                        let reply = tracker.sized(&digest, id, size, count, ranges);
                        timeout(idle, write_tracker_reply(&mut w, &reply))
                            .await
                            .map_err(|_| ServeError::Timeout)??;
                    }
                }
                Some(push) = pushes.recv() => {
                    if !marks && matches!(push, TrackerReply::Near { .. }) {
                        continue;
                    }
                    timeout(idle, write_tracker_reply(&mut w, &push))
                        .await
                        .map_err(|_| ServeError::Timeout)??;
                }
            }
        }
    }
    .await;
    reader.abort();
    if tracker.leave(&digest, id, complete) {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REJOIN_GRACE).await;
            tracker.recheck(&digest);
        });
    }
    result
}

/// Writes the one reply of a one-shot exchange (`Time`, `Members`, `Resolve`) or a
/// `Redirect`, within `idle`; the stream ends after it.
async fn reply_once<W: AsyncWrite + Unpin>(
    w: &mut W,
    reply: &TrackerReply,
    idle: Duration,
) -> Result<(), ServeError> {
    timeout(idle, write_tracker_reply(w, reply))
        .await
        .map_err(|_| ServeError::Timeout)?
        .map_err(ServeError::from)
}

/// Another tracker that has the blob's swarm, asked of the node within [`REDIRECT_WAIT`]; a
/// member arriving while another's question runs waits for the same answer.
async fn elsewhere(tracker: &Tracker, digest: Digest) -> Option<Vec<u8>> {
    let others = tracker.others()?;
    match tracker.redirects.enter(digest) {
        Enter::Moved(to) => Some(to),
        Enter::Wait(mut rx) => timeout(REDIRECT_WAIT, rx.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()?
            .clone()
            .flatten(),
        Enter::Probe(guard) => {
            let outcome = timeout(REDIRECT_WAIT, others.coordinating(&digest))
                .await
                .ok()
                .flatten();
            guard.finish(outcome.clone());
            outcome
        }
    }
}

/// Answers a `Resolve` through the node's resolver, and ends the stream.
async fn resolve<W: AsyncWrite + Unpin>(
    tracker: &Tracker,
    registry: Option<String>,
    name: String,
    tag: String,
    w: &mut W,
    idle: Duration,
) -> Result<(), ServeError> {
    let answer = match tracker.resolver() {
        None => Err("this tracker does not resolve tags".to_string()),
        Some(r) => timeout(idle, r.resolve(registry.as_deref(), &name, &tag))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {idle:?}"))),
    };
    let reply = match answer {
        Ok(d) => TrackerReply::Resolved {
            digest: Some(d),
            error: String::new(),
        },
        Err(e) => TrackerReply::resolve_failed(&e),
    };
    reply_once(w, &reply, idle).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_oci::Digest;
    use pollen_proto::{read_tracker_reply, write_tracker_request, TrackerReply};

    fn join(fetching: bool) -> TrackerRequest {
        TrackerRequest::Join {
            digest: Digest::of(b"b"),
            seed: false,
            fetching,
            pieces: 0,
            labels: vec![],
            rejoin: false,
            busy: false,
        }
    }

    fn join_in(rack: &str) -> TrackerRequest {
        let TrackerRequest::Join {
            digest,
            seed,
            fetching,
            pieces,
            rejoin,
            busy,
            ..
        } = join(false)
        else {
            unreachable!("join gives a Join");
        };
        TrackerRequest::Join {
            digest,
            seed,
            fetching,
            pieces,
            labels: vec![("rack".into(), rack.into())],
            rejoin,
            busy,
        }
    }

    /// A member on the current protocol hears which of its peers share its rack, right after
    /// the `Assign` that named them; one on the legacy id is never sent `Near`, which it could
    /// not decode.
    #[tokio::test]
    async fn rack_mates_are_marked_on_the_current_protocol_only() {
        let t = Arc::new(Tracker::new());
        let idle = Duration::from_secs(5);
        let (mut a, a_srv) = tokio::io::duplex(4096);
        let (mut b, b_srv) = tokio::io::duplex(4096);
        let (mut c, c_srv) = tokio::io::duplex(4096);
        tokio::spawn(serve(t.clone(), vec![1], a_srv, idle, true));
        tokio::spawn(serve(t.clone(), vec![2], b_srv, idle, true));
        tokio::spawn(serve(t.clone(), vec![3], c_srv, idle, false));
        write_tracker_request(&mut a, &join_in("r1")).await.unwrap();
        assert!(matches!(
            read_tracker_reply(&mut a).await.unwrap(),
            Some(TrackerReply::Assign { .. })
        ));
        write_tracker_request(&mut b, &join_in("r1")).await.unwrap();
        let named = TrackerReply::Assign {
            fetch: false,
            peers: vec![vec![1]],
        };
        assert_eq!(read_tracker_reply(&mut b).await.unwrap(), Some(named));
        let near = TrackerReply::Near {
            peers: vec![vec![1]],
        };
        assert_eq!(read_tracker_reply(&mut b).await.unwrap(), Some(near));
        // C, legacy, in the same rack: its Assign has no `Near` after it. B (not the fetcher,
        // which is never told of newcomers) hears of C and that C is in its rack.
        write_tracker_request(&mut c, &join_in("r1")).await.unwrap();
        assert!(matches!(
            read_tracker_reply(&mut c).await.unwrap(),
            Some(TrackerReply::Assign { .. })
        ));
        assert_eq!(
            read_tracker_reply(&mut b).await.unwrap(),
            Some(TrackerReply::Peers {
                peers: vec![vec![3]]
            })
        );
        assert_eq!(
            read_tracker_reply(&mut b).await.unwrap(),
            Some(TrackerReply::Near {
                peers: vec![vec![3]]
            })
        );
        // D joins: C hears of it with a plain `Peers`, and nothing else before its stream ends.
        let (mut d, d_srv) = tokio::io::duplex(4096);
        tokio::spawn(serve(t.clone(), vec![4], d_srv, idle, true));
        write_tracker_request(&mut d, &join_in("r1")).await.unwrap();
        assert_eq!(
            read_tracker_reply(&mut c).await.unwrap(),
            Some(TrackerReply::Peers {
                peers: vec![vec![4]]
            })
        );
        write_tracker_request(&mut c, &TrackerRequest::Leave { complete: false })
            .await
            .unwrap();
        let rest = tokio::time::timeout(idle, read_tracker_reply(&mut c))
            .await
            .unwrap();
        assert!(
            matches!(rest, Ok(None)),
            "nothing but the end of the stream: {rest:?}"
        );
    }

    #[tokio::test]
    async fn a_fetcher_whose_stream_drops_is_replaced_over_the_wire() {
        let t = Arc::new(Tracker::new());
        let idle = Duration::from_secs(5);
        let (mut a, a_srv) = tokio::io::duplex(4096);
        let (mut b, b_srv) = tokio::io::duplex(4096);
        tokio::spawn(serve(t.clone(), vec![1], a_srv, idle, true));
        tokio::spawn(serve(t.clone(), vec![2], b_srv, idle, true));
        write_tracker_request(&mut a, &join(false)).await.unwrap();
        let ra = read_tracker_reply(&mut a).await.unwrap();
        assert!(matches!(ra, Some(TrackerReply::Assign { fetch: true, .. })));
        write_tracker_request(&mut b, &join(false)).await.unwrap();
        let rb = read_tracker_reply(&mut b).await.unwrap();
        assert_eq!(
            rb,
            Some(TrackerReply::Assign {
                fetch: false,
                peers: vec![vec![1]]
            })
        );
        drop(a); // the fetcher dies
        assert_eq!(
            read_tracker_reply(&mut b).await.unwrap(),
            Some(TrackerReply::Fetch)
        );
    }

    /// A request that arrives in pieces, with a push to send in between, is read whole: the
    /// read of the next request is never dropped half-way by another branch of the loop (it
    /// was: the rest of the frame was then read as a new one, and the stream ended as broken).
    #[tokio::test]
    async fn a_request_split_around_a_push_is_read_whole() {
        let t = Arc::new(Tracker::new());
        let idle = Duration::from_secs(5);
        let (mut a, a_srv) = tokio::io::duplex(4096);
        let (mut b, b_srv) = tokio::io::duplex(4096);
        let (mut c, c_srv) = tokio::io::duplex(4096);
        let task_b = tokio::spawn(serve(t.clone(), vec![2], b_srv, idle, true));
        tokio::spawn(serve(t.clone(), vec![1], a_srv, idle, true));
        tokio::spawn(serve(t.clone(), vec![3], c_srv, idle, true));
        write_tracker_request(&mut a, &join(false)).await.unwrap();
        read_tracker_reply(&mut a).await.unwrap();
        write_tracker_request(&mut b, &join(false)).await.unwrap();
        read_tracker_reply(&mut b).await.unwrap();
        // B sends the first bytes of a Progress only.
        let frame =
            pollen_proto::encode_tracker_request(&TrackerRequest::Progress { pieces: 7 }).unwrap();
        let (head, tail) = frame.split_at(2);
        tokio::io::AsyncWriteExt::write_all(&mut b, head)
            .await
            .unwrap();
        tokio::task::yield_now().await;
        // C joins: the tracker pushes C to B while B's frame is half read.
        write_tracker_request(&mut c, &join(false)).await.unwrap();
        read_tracker_reply(&mut c).await.unwrap();
        assert_eq!(
            read_tracker_reply(&mut b).await.unwrap(),
            Some(TrackerReply::Peers {
                peers: vec![vec![3]]
            })
        );
        tokio::io::AsyncWriteExt::write_all(&mut b, tail)
            .await
            .unwrap();
        write_tracker_request(&mut b, &TrackerRequest::Leave { complete: true })
            .await
            .unwrap();
        task_b.await.unwrap().unwrap();
        assert_eq!(
            t.members_of(&Digest::of(b"b")),
            (2, 1),
            "B left complete: a holder"
        );
    }

    #[tokio::test]
    async fn time_is_answered_with_the_clock() {
        let t = Arc::new(Tracker::new());
        let (mut a, a_srv) = tokio::io::duplex(4096);
        let task = tokio::spawn(serve(t, vec![1], a_srv, Duration::from_secs(5), true));
        let since_epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        };
        let before = since_epoch(std::time::SystemTime::now());
        write_tracker_request(&mut a, &TrackerRequest::Time)
            .await
            .unwrap();
        let Some(TrackerReply::Time { unix_ms }) = read_tracker_reply(&mut a).await.unwrap() else {
            panic!("no Time reply");
        };
        let after = since_epoch(std::time::SystemTime::now());
        assert!(
            (before..=after).contains(&unix_ms),
            "{before} {unix_ms} {after}"
        );
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn garbage_and_silence_end_the_stream() {
        let t = Arc::new(Tracker::new());
        let (mut a, a_srv) = tokio::io::duplex(4096);
        let task = tokio::spawn(serve(
            t.clone(),
            vec![1],
            a_srv,
            Duration::from_secs(5),
            true,
        ));
        write_tracker_request(&mut a, &TrackerRequest::Progress { pieces: 1 })
            .await
            .unwrap();
        assert!(matches!(task.await.unwrap(), Err(ServeError::Protocol(_))));

        tokio::time::pause();
        let (_silent, s_srv) = tokio::io::duplex(4096);
        let r = serve(t, vec![2], s_srv, Duration::from_secs(5), true).await;
        assert!(matches!(r, Err(ServeError::Timeout)));
    }
}
