//! Content this node must not share with peers: whatever it fetched with a client's own
//! credentials (passed through from the runtime, e.g. a pod's image pull secret). Every agent
//! of a cluster has the same configured credentials, so content fetched with those (or
//! anonymously) is content any node could fetch itself and is shared; content only a
//! particular client could fetch stays on this node. Kept as marker files under
//! `<data dir>/private/`, one per digest, listing the registries it was fetched from, so the
//! rule survives restarts. Serving it to local clients is [`crate::access`]'s to allow.

use dashmap::DashMap;
use pollen_oci::Digest;
use std::io::{Read, Write};
use std::path::PathBuf;

/// A marker lists at most this many registries (and is read up to this many bytes).
const MAX_ORIGINS: usize = 16;
const MAX_MARKER_BYTES: u64 = 4096;

pub(crate) struct Private {
    dir: PathBuf,
    /// Digest -> the registries it was fetched from with a client's own credentials.
    digests: DashMap<Digest, Vec<String>>,
}

impl Private {
    pub fn load(root: &std::path::Path) -> Private {
        let dir = root.join("private");
        let digests = DashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let Some(d) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| Digest::from_hex(n).ok())
                else {
                    continue;
                };
                digests.insert(d, read_origins(&e.path()));
            }
        }
        Private { dir, digests }
    }

    /// Marks `digest`, fetched from `registry`, as not for peers, durably on disk first (the
    /// file and its directory entry synced): a crash must not lose the mark, or a resumed
    /// partial download would be shared after the restart. `false` when the mark could not be
    /// made durable (it still holds until restart); the caller should not fetch then.
    pub fn mark(&self, digest: Digest, registry: &str) -> bool {
        if self.fetched_from(&digest, registry) {
            return true;
        }
        let marked = std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(digest.hex()))
            })
            .and_then(|mut f| {
                f.write_all(format!("{registry}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::File::open(&self.dir))
            .and_then(|d| d.sync_all());
        {
            let mut origins = self.digests.entry(digest).or_default();
            if origins.len() < MAX_ORIGINS && !origins.iter().any(|r| r == registry) {
                origins.push(registry.to_string());
            }
        }
        if let Err(e) = marked {
            tracing::warn!(%digest, error = %e, "cannot record that a blob is private; it stays private until restart");
            return false;
        }
        true
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.digests.contains_key(digest)
    }

    /// Whether `digest` was fetched from `registry` with a client's own credentials.
    pub fn fetched_from(&self, digest: &Digest, registry: &str) -> bool {
        self.digests
            .get(digest)
            .is_some_and(|o| o.iter().any(|r| r == registry))
    }
}

/// The registries a marker file lists (none for markers written before they did).
fn read_origins(path: &std::path::Path) -> Vec<String> {
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_MARKER_BYTES).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    let mut origins: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if origins.len() < MAX_ORIGINS && !origins.iter().any(|r| r == line) {
            origins.push(line.to_string());
        }
    }
    origins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_their_registries_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"private layer");
        let p = Private::load(dir.path());
        p.mark(d, "reg.example");
        p.mark(d, "reg.example");
        p.mark(d, "other.example:5000");
        let p = Private::load(dir.path());
        assert!(p.contains(&d));
        assert!(p.fetched_from(&d, "reg.example"));
        assert!(p.fetched_from(&d, "other.example:5000"));
        assert!(!p.fetched_from(&d, "evil.example"));
        assert!(!p.contains(&Digest::of(b"public layer")));
    }

    #[test]
    fn a_mark_is_on_disk_before_it_returns_or_reported_as_not() {
        let d = Digest::of(b"private layer");
        let ok = tempfile::tempdir().unwrap();
        let p = Private::load(ok.path());
        assert!(p.mark(d, "reg.example"));
        assert!(ok.path().join("private").join(d.hex()).exists());
        assert!(Private::load(ok.path()).contains(&d), "survives a restart");
        // `private` cannot be a directory: the mark cannot be made durable.
        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join("private"), b"a file").unwrap();
        let p = Private::load(bad.path());
        assert!(!p.mark(d, "reg.example"), "the caller refuses the fetch");
        assert!(p.contains(&d), "still private until restart");
    }
}
