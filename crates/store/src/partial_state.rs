//! The state file of a partial download (`state.json`) read back, checked and indexed at
//! start: every byte of it is treated as hostile (a damaged disk, an older format).

use crate::index::{Index, PARTIAL_DIR};
use crate::StoreError;
use pollen_oci::{Digest, Hasher};
use pollen_proto::{Bitfield, PartialPieceMap, PieceGeometry};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Largest state file read back: a full map of 65,536 hex hashes is about 4.3 MiB.
pub(crate) const MAX_STATE_BYTES: u64 = 8 << 20;
pub(crate) const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    pub digest: String,
    pub geometry: PieceGeometry,
    /// Hex hash per piece in order, `""` where unknown (a map filled out of order by several
    /// fetchers); older files hold only the known prefix.
    pub hashes: Vec<String>,
    pub have: Bitfield,
    /// Pieces whose hash this node computed itself (absent in older files: none).
    #[serde(default)]
    pub produced: Option<Bitfield>,
    /// The geometry's size was confirmed (absent in older files: not, so they are dropped).
    #[serde(default)]
    pub confirmed: bool,
}

/// Indexes the partial downloads left on disk at startup, so they count toward the quota
/// and age out; removes those that cannot be resumed (no confirmed geometry: a size only a
/// peer claimed, an older format, garbage).
pub(crate) fn scan(root: &Path, index: &mut Index) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(root.join(PARTIAL_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(digest) = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
        else {
            continue;
        };
        let dir = entry.path();
        let resumable = read_state(&dir).is_some_and(|s| {
            s.confirmed && s.version == STATE_VERSION && s.digest == digest.to_string()
        });
        let data = fs::metadata(dir.join("data"));
        let (Ok(meta), true) = (data, resumable) else {
            tracing::info!(%digest, "removing a partial download that cannot be resumed");
            let _ = fs::remove_dir_all(&dir);
            continue;
        };
        // The blocks it occupies (the file is sparse), at most its length.
        let size = meta.blocks().saturating_mul(512).min(meta.len());
        let age = fs::metadata(dir.join("state.json"))
            .and_then(|m| m.modified())
            .map_or(0, crate::index::micros_since_epoch);
        index.insert_partial(digest, size, age);
    }
}

pub(crate) fn read_state(dir: &Path) -> Option<State> {
    let mut text = Vec::new();
    File::open(dir.join("state.json"))
        .ok()?
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    parse_state(&text)
}

/// The bytes of a `state.json` (pure, so the fuzz targets reach it without files).
pub(crate) fn parse_state(text: &[u8]) -> Option<State> {
    serde_json::from_slice(text).ok()
}

pub(crate) fn load_state(
    dir: &Path,
    digest: Digest,
    geometry: PieceGeometry,
) -> Option<(PartialPieceMap, Bitfield, Bitfield)> {
    check_state(read_state(dir)?, digest, geometry)
}

/// A state read back, if it is for `digest` cut as `geometry`: the map it holds, the pieces
/// it claims, and those this node produced.
pub(crate) fn check_state(
    state: State,
    digest: Digest,
    geometry: PieceGeometry,
) -> Option<(PartialPieceMap, Bitfield, Bitfield)> {
    if state.version != STATE_VERSION
        || state.digest != digest.to_string()
        || state.geometry != geometry
        || state.have.count() != geometry.count()
    {
        return None;
    }
    let mut map = PartialPieceMap::new(digest, geometry);
    for (index, h) in (0u32..).zip(&state.hashes) {
        if h.is_empty() {
            continue;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).ok()?;
        map.insert(index, &[out]).ok()?;
    }
    let produced = state
        .produced
        .filter(|p| p.count() == geometry.count())
        .unwrap_or_else(|| Bitfield::new(&geometry));
    Some((map, state.have, produced))
}

/// Keeps only the pieces whose bytes on disk still match the map.
pub(crate) fn reverify(file: &File, map: &PartialPieceMap, claimed: &Bitfield) -> Bitfield {
    let geometry = map.geometry();
    let mut have = Bitfield::new(geometry);
    let mut buf = Vec::new();
    for index in claimed.iter_ones() {
        let (Some(offset), Some(len)) = (geometry.offset_of(index), geometry.len_of(index)) else {
            continue;
        };
        buf.resize(len as usize, 0);
        if file.read_exact_at(&mut buf, offset).is_ok() && map.verify_piece(index, &buf) {
            let _ = have.set(index);
        }
    }
    have
}

pub(crate) fn hash_file(file: &File, dir: &Path) -> Result<Digest, StoreError> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, offset)
            .map_err(|e| StoreError::io("reading", dir, e))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
}
