//! What the uploader has told the downloader, and the frames that bring it up to date.
//!
//! The uploader does not forward every change of the source's [`PieceState`] as it happens:
//! while a piece is being written nothing else can go on the stream anyway. When the writer is
//! next free it compares the latest state with what the peer was told and sends the
//! difference, in the order the protocol requires: new hashes (if the peer asked for the map)
//! before the `HaveMore` that announces their pieces, and a full `Have` instead of `HaveMore`
//! when the blob became complete or its map id changed (that `Have` goes first, so a map sent
//! in the same batch matches an id the peer already knows).

use crate::source::{PieceState, Proof};
use pollen_oci::Digest;
use pollen_proto::{
    Bitfield, PieceGeometry, PieceMap, PieceMapId, Reply, MAX_HAVE_MORE, MAX_SIGNED_HASHES,
};

pub(super) struct Announcer {
    digest: Digest,
    geometry: PieceGeometry,
    /// The pieces the peer was told about (`Have` and `HaveMore`): the only ones it may ask for.
    announced: Bitfield,
    /// Whether a `Have` went out, and what it said.
    told: Option<(bool, Option<PieceMapId>)>,
    map_asked: bool,
    map_answered: bool,
    /// The hashes the peer has (`PieceHashes`, `SignedHashes` or the whole `PieceMap`).
    hashes_sent: Bitfield,
    /// The session speaks `/pollen/pieces/3`: hashes go signed, passed-on ones too.
    signed: bool,
    /// The complete map and its id, built once the source is complete (it answers
    /// `GetPieceMap`; the id goes in `Have`).
    full_map: Option<(PieceMap, PieceMapId)>,
}

impl Announcer {
    pub(super) fn new(digest: Digest, geometry: PieceGeometry, signed: bool) -> Announcer {
        Announcer {
            signed,
            digest,
            announced: Bitfield::new(&geometry),
            geometry,
            told: None,
            map_asked: false,
            map_answered: false,
            hashes_sent: Bitfield::new(&geometry),
            full_map: None,
        }
    }

    /// The peer asked for the map (answered once; later asks are redundant because the
    /// uploader keeps pushing new hashes to a peer that asked).
    pub(super) fn ask_map(&mut self) {
        self.map_asked = true;
    }

    /// Whether the peer may ask for piece `index`.
    pub(super) fn is_announced(&self, index: u32) -> bool {
        self.announced.get(index)
    }

    /// Appends the frames that bring the peer from what it was told to `state`. An error is a
    /// source that broke its contract.
    pub(super) fn update(
        &mut self,
        state: &PieceState,
        frames: &mut Vec<Reply>,
    ) -> Result<(), String> {
        state.check(&self.geometry)?;
        if state.complete && self.full_map.is_none() {
            let map = PieceMap::new(self.digest, self.geometry, state.hashes.to_vec())
                .map_err(|e| format!("the source's complete map: {e}"))?;
            let id = map.id();
            self.full_map = Some((map, id));
        }
        let full_map = self.full_map.as_ref().filter(|_| state.complete);
        let map_id = match full_map {
            Some((_, id)) => Some(*id),
            None => state.map_id,
        };

        // A full Have first when the session starts or the blob's standing changed: a map the
        // peer receives must match an id it was already told.
        let standing = (state.complete, map_id);
        let have_sent = self.told != Some(standing);
        if have_sent {
            frames.push(Reply::Have {
                geometry: self.geometry,
                bitfield: state.have.clone(),
                complete: state.complete,
                map_id,
            });
            self.announced = state.have.clone();
            self.told = Some(standing);
        }

        // Then the map: its hashes reach the peer before any `HaveMore` of their pieces (and
        // before any piece, which only follows this batch).
        if self.map_asked && !self.map_answered {
            self.map_answered = true;
            match full_map {
                Some((map, _)) => {
                    frames.push(Reply::PieceMap(map.clone()));
                    self.hashes_sent = Bitfield::full(&self.geometry);
                }
                None => {
                    let before = frames.len();
                    self.push_hashes(state, frames)?;
                    if frames.len() == before {
                        // Always answered, also when this node vouches for nothing yet.
                        frames.push(Reply::PieceHashes {
                            first: 0,
                            hashes: Vec::new(),
                        });
                    }
                }
            }
        } else if self.map_answered {
            self.push_hashes(state, frames)?;
        }
        if have_sent {
            return Ok(());
        }
        let new = newly_set(&self.announced, &state.have);
        for &index in &new {
            self.announced.set(index).map_err(|e| e.to_string())?;
        }
        for batch in new.chunks(MAX_HAVE_MORE) {
            frames.push(Reply::HaveMore {
                indices: batch.to_vec(),
            });
        }
        Ok(())
    }
}

impl Announcer {
    /// The hashes the peer does not have yet of the pieces it is told of: as `SignedHashes`
    /// where a producer's signature is known (on a version 3 session), the rest of what this
    /// node vouches for as `PieceHashes`, one frame per run and producer.
    fn push_hashes(&mut self, state: &PieceState, frames: &mut Vec<Reply>) -> Result<(), String> {
        let proofs = state.proofs.as_deref().filter(|_| self.signed);
        let offered = match proofs {
            Some(_) => union(&state.vouched, &state.proven)?,
            None => state.vouched.clone(),
        };
        // Only the hashes of pieces the peer is told of: a hash is of use to the peer only
        // with a `Have` of its piece, and this one comes from the same batch. Hashes of
        // pieces not held yet were a second stream of news as large as the `Have`s
        // (`benches/README.md`, part 9, "Hashes with their pieces").
        let mut new = newly_set(&self.hashes_sent, &offered);
        new.retain(|&i| state.have.get(i));
        for run in runs(&new) {
            let mut batch: Option<Batch> = None;
            for index in run {
                let hash = *state
                    .hashes
                    .get(index as usize)
                    .ok_or("offered hashes without slots")?;
                let proof = proofs.and_then(|p| p.get(index));
                if proof.is_none() && !state.vouched.get(index) {
                    return Err(format!("piece {index} is proven without a signature"));
                }
                if let Some(b) = batch.as_mut().filter(|b| b.takes(index, &proof)) {
                    b.push(hash, proof);
                    continue;
                }
                frames.extend(batch.take().map(Batch::into_reply));
                batch = Some(Batch::start(index, hash, proof));
            }
            frames.extend(batch.map(Batch::into_reply));
        }
        for index in new {
            self.hashes_sent.set(index).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Consecutive hashes going out in one frame: unsigned, or all signed by one producer.
struct Batch {
    first: u32,
    hashes: Vec<[u8; 32]>,
    producer: Option<std::sync::Arc<[u8]>>,
    signatures: Vec<pollen_proto::Signature>,
}

impl Batch {
    fn start(first: u32, hash: [u8; 32], proof: Option<Proof>) -> Batch {
        let mut b = Batch {
            first,
            hashes: Vec::new(),
            producer: proof.as_ref().map(|p| p.producer.clone()),
            signatures: Vec::new(),
        };
        b.push(hash, proof);
        b
    }

    /// Whether piece `index` (with `proof`) continues this frame.
    fn takes(&self, index: u32, proof: &Option<Proof>) -> bool {
        let next = u64::from(self.first) + self.hashes.len() as u64;
        let same = match (&self.producer, proof) {
            (None, None) => true,
            (Some(a), Some(p)) => *a == p.producer,
            _ => false,
        };
        same && next == u64::from(index) && self.hashes.len() < MAX_SIGNED_HASHES
    }

    fn push(&mut self, hash: [u8; 32], proof: Option<Proof>) {
        self.hashes.push(hash);
        self.signatures.extend(proof.map(|p| p.signature));
    }

    fn into_reply(self) -> Reply {
        match self.producer {
            Some(producer) => Reply::SignedHashes {
                producer: producer.to_vec(),
                first: self.first,
                hashes: self.hashes,
                signatures: self.signatures,
            },
            None => Reply::PieceHashes {
                first: self.first,
                hashes: self.hashes,
            },
        }
    }
}

/// The pieces set in either (same geometry).
fn union(a: &Bitfield, b: &Bitfield) -> Result<Bitfield, String> {
    let bytes = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .map(|(x, y)| x | y)
        .collect();
    Bitfield::from_bytes(a.count(), bytes).map_err(|e| e.to_string())
}

/// Ascending indices grouped into runs of consecutive ones.
fn runs(indices: &[u32]) -> Vec<std::ops::Range<u32>> {
    let mut out: Vec<std::ops::Range<u32>> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(run) if run.end == i => run.end += 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Indices set in `new` but not in `old` (same geometry), ascending. Compares whole bytes, so
/// a state update costs at most 8 KiB of comparisons however many pieces the blob has.
fn newly_set(old: &Bitfield, new: &Bitfield) -> Vec<u32> {
    let mut out = Vec::new();
    for (byte, (o, n)) in (0u32..).zip(old.as_bytes().iter().zip(new.as_bytes())) {
        let fresh = n & !o;
        for bit in 0..8u32 {
            if fresh & (0x80 >> bit) != 0 {
                out.push(byte * 8 + bit);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_proto::MIN_PIECE_SIZE;
    use std::sync::Arc;

    fn setup(pieces: u32) -> (Announcer, PieceState, Vec<[u8; 32]>) {
        let g = PieceGeometry::new(
            u64::from(pieces) * u64::from(MIN_PIECE_SIZE),
            MIN_PIECE_SIZE,
        )
        .unwrap();
        let hashes: Vec<[u8; 32]> = (0..pieces).map(|i| [i as u8; 32]).collect();
        (
            Announcer::new(Digest::of(b"x"), g, true),
            PieceState::empty(&g),
            hashes,
        )
    }

    #[test]
    fn a_growing_blob_is_announced_in_protocol_order() {
        let (mut ann, mut state, hashes) = setup(20);
        let mut frames = Vec::new();
        ann.update(&state, &mut frames).unwrap();
        assert!(matches!(
            &frames[..],
            [Reply::Have {
                complete: false,
                map_id: None,
                ..
            }]
        ));

        ann.ask_map();
        state.hashes = Arc::from(&hashes[..]);
        state.vouched.set(0).unwrap();
        state.vouched.set(1).unwrap();
        state.have.set(0).unwrap();
        state.have.set(1).unwrap();
        frames.clear();
        ann.update(&state, &mut frames).unwrap();
        assert_eq!(
            frames,
            vec![
                Reply::PieceHashes {
                    first: 0,
                    hashes: hashes[..2].to_vec()
                },
                Reply::HaveMore {
                    indices: vec![0, 1]
                },
            ]
        );
        assert!(ann.is_announced(1) && !ann.is_announced(2));

        // Nothing new, nothing sent.
        frames.clear();
        ann.update(&state, &mut frames).unwrap();
        assert!(frames.is_empty());

        // Complete: a full Have with the map id, then the rest of the hashes.
        let complete = PieceState::complete(ann.announced_geometry(), Arc::from(&hashes[..]));
        ann.update(&complete, &mut frames).unwrap();
        let id = PieceMap::new(Digest::of(b"x"), *ann.announced_geometry(), hashes.clone())
            .unwrap()
            .id();
        assert!(
            matches!(&frames[0], Reply::Have { complete: true, map_id: Some(m), .. } if *m == id)
        );
        assert!(
            matches!(&frames[1], Reply::PieceHashes { first: 2, hashes } if hashes.len() == 18)
        );
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn a_seed_answers_the_whole_map_and_a_bad_state_is_refused() {
        let (mut ann, _, hashes) = setup(3);
        let g = *ann.announced_geometry();
        let mut frames = Vec::new();
        ann.ask_map();
        ann.update(
            &PieceState::complete(&g, Arc::from(&hashes[..])),
            &mut frames,
        )
        .unwrap();
        assert!(matches!(&frames[0], Reply::Have { complete: true, .. }));
        assert!(matches!(&frames[1], Reply::PieceMap(m) if m.hashes() == &hashes[..]));

        let mut bad = PieceState::complete(&g, Arc::from(&hashes[..2]));
        assert!(ann.update(&bad, &mut frames).is_err());
        bad.hashes = Arc::from(&hashes[..]);
        bad.vouched = Bitfield::new(&g);
        assert!(
            ann.update(&bad, &mut frames).is_err(),
            "complete, not vouched"
        );
        bad.complete = false;
        bad.have = Bitfield::new(&PieceGeometry::new(1, MIN_PIECE_SIZE).unwrap());
        assert!(ann.update(&bad, &mut frames).is_err());
    }

    #[test]
    fn hashes_of_ranges_fetched_apart_go_out_as_runs() {
        let (mut ann, mut state, hashes) = setup(10);
        state.hashes = Arc::from(&hashes[..]);
        let mut frames = Vec::new();
        ann.ask_map();
        ann.update(&state, &mut frames).unwrap();
        assert_eq!(
            frames[1],
            Reply::PieceHashes {
                first: 0,
                hashes: vec![]
            },
            "answered even with nothing vouched"
        );
        for i in [6, 7, 2] {
            state.vouched.set(i).unwrap();
            state.have.set(i).unwrap();
        }
        frames.clear();
        ann.update(&state, &mut frames).unwrap();
        assert_eq!(
            frames,
            vec![
                Reply::PieceHashes {
                    first: 2,
                    hashes: hashes[2..3].to_vec()
                },
                Reply::PieceHashes {
                    first: 6,
                    hashes: hashes[6..8].to_vec()
                },
                Reply::HaveMore {
                    indices: vec![2, 6, 7]
                },
            ]
        );
        state.vouched.set(3).unwrap();
        state.have.set(3).unwrap();
        frames.clear();
        ann.update(&state, &mut frames).unwrap();
        assert_eq!(
            frames,
            vec![
                Reply::PieceHashes {
                    first: 3,
                    hashes: hashes[3..4].to_vec()
                },
                Reply::HaveMore { indices: vec![3] },
            ],
            "only what is new"
        );
    }

    #[test]
    fn a_hash_goes_out_with_its_piece_not_ahead_of_it() {
        let (mut ann, mut state, hashes) = setup(8);
        signed_state(&mut state, &hashes);
        state.have = Bitfield::new(ann.announced_geometry());
        state.have.set(1).unwrap();
        state.have.set(6).unwrap();
        ann.ask_map();
        let mut frames = Vec::new();
        ann.update(&state, &mut frames).unwrap();
        let sent: Vec<u32> = frames
            .iter()
            .flat_map(|f| match f {
                Reply::SignedHashes { first, hashes, .. }
                | Reply::PieceHashes { first, hashes } => (*first..).take(hashes.len()).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(sent, vec![1, 6], "the hashes of the held pieces only");

        // The piece arrives: its hash goes before its `HaveMore`, in the same batch.
        state.have.set(2).unwrap();
        frames.clear();
        ann.update(&state, &mut frames).unwrap();
        assert!(matches!(
            &frames[..],
            [Reply::SignedHashes { first: 2, hashes, .. }, Reply::HaveMore { indices }]
                if hashes.len() == 1 && indices == &[2]
        ));
    }

    #[test]
    fn newly_set_finds_every_new_bit() {
        let g = PieceGeometry::new(70 * u64::from(MIN_PIECE_SIZE), MIN_PIECE_SIZE).unwrap();
        let mut old = Bitfield::new(&g);
        let mut new = Bitfield::new(&g);
        for i in [0, 7, 8, 33, 69] {
            new.set(i).unwrap();
        }
        old.set(7).unwrap();
        old.set(12).unwrap();
        assert_eq!(newly_set(&old, &new), vec![0, 8, 33, 69]);
        let many: Vec<u32> = (0..70).collect();
        assert_eq!(newly_set(&Bitfield::new(&g), &Bitfield::full(&g)), many);
    }

    impl Announcer {
        fn announced_geometry(&self) -> &PieceGeometry {
            &self.geometry
        }
    }

    /// Pieces 0..4 signed by X, 4..6 by Y, 6..8 this node's own without a signature.
    fn signed_state(state: &mut PieceState, hashes: &[[u8; 32]]) {
        let proofs = crate::source::Proofs::new(8);
        for i in 0..6u32 {
            let producer: Arc<[u8]> = if i < 4 {
                Arc::from(&b"X"[..])
            } else {
                Arc::from(&b"Y"[..])
            };
            let signature = pollen_proto::Signature([i as u8; 64]);
            assert!(proofs.add(
                i,
                Proof {
                    producer,
                    signature
                }
            ));
            state.proven.set(i).unwrap();
        }
        for i in 6..8 {
            state.vouched.set(i).unwrap();
        }
        for i in 0..8 {
            state.have.set(i).unwrap();
        }
        state.hashes = Arc::from(hashes);
        state.proofs = Some(Arc::new(proofs));
    }

    #[test]
    fn signed_hashes_go_out_one_frame_per_producer_and_passed_on_only_on_version_3() {
        let (mut ann, mut state, hashes) = setup(8);
        signed_state(&mut state, &hashes);
        ann.ask_map();
        let mut frames = Vec::new();
        ann.update(&state, &mut frames).unwrap();
        let sigs = |r: std::ops::Range<u8>| r.map(|i| pollen_proto::Signature([i; 64])).collect();
        assert_eq!(
            frames[1..4],
            [
                Reply::SignedHashes {
                    producer: b"X".to_vec(),
                    first: 0,
                    hashes: hashes[..4].to_vec(),
                    signatures: sigs(0..4),
                },
                Reply::SignedHashes {
                    producer: b"Y".to_vec(),
                    first: 4,
                    hashes: hashes[4..6].to_vec(),
                    signatures: sigs(4..6),
                },
                Reply::PieceHashes {
                    first: 6,
                    hashes: hashes[6..].to_vec(),
                },
            ]
        );

        // The legacy id: only this node's own hashes, unsigned.
        let (_, mut state, hashes) = setup(8);
        signed_state(&mut state, &hashes);
        let mut legacy = Announcer::new(Digest::of(b"x"), *ann.announced_geometry(), false);
        legacy.ask_map();
        frames.clear();
        legacy.update(&state, &mut frames).unwrap();
        assert_eq!(
            frames[1..],
            [Reply::PieceHashes {
                first: 6,
                hashes: hashes[6..].to_vec(),
            }]
        );
    }
}
