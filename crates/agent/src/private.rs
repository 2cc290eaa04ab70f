//! Content this node must not share with peers: whatever it fetched with a client's own
//! credentials (passed through from the runtime, e.g. a pod's image pull secret). Every agent
//! of a cluster has the same configured credentials, so content fetched with those (or
//! anonymously) is content any node could fetch itself and is shared; content only a
//! particular client could fetch stays on this node. Kept as marker files under
//! `<data dir>/private/`, so the rule survives restarts.

use dashmap::DashSet;
use pollen_oci::Digest;
use std::path::PathBuf;

pub(crate) struct Private {
    dir: PathBuf,
    digests: DashSet<Digest>,
}

impl Private {
    pub fn load(root: &std::path::Path) -> Private {
        let dir = root.join("private");
        let digests = DashSet::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Some(d) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| Digest::from_hex(n).ok())
                {
                    digests.insert(d);
                }
            }
        }
        Private { dir, digests }
    }

    /// Marks `digest` as not for peers, durably on disk first (the file and its directory
    /// entry synced): a crash must not lose the mark, or a resumed partial download would be
    /// shared after the restart. `false` when the mark could not be made durable (it still
    /// holds until restart); the caller should not fetch then.
    pub fn mark(&self, digest: Digest) -> bool {
        if self.digests.contains(&digest) {
            return true;
        }
        let marked = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::File::create(self.dir.join(digest.hex())))
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::File::open(&self.dir))
            .and_then(|d| d.sync_all());
        self.digests.insert(digest);
        if let Err(e) = marked {
            tracing::warn!(%digest, error = %e, "cannot record that a blob is private; it stays private until restart");
            return false;
        }
        true
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.digests.contains(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_on_disk_before_it_returns_or_reported_as_not() {
        let d = Digest::of(b"private layer");
        let ok = tempfile::tempdir().unwrap();
        let p = Private::load(ok.path());
        assert!(p.mark(d));
        assert!(ok.path().join("private").join(d.hex()).exists());
        assert!(Private::load(ok.path()).contains(&d), "survives a restart");
        // `private` cannot be a directory: the mark cannot be made durable.
        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join("private"), b"a file").unwrap();
        let p = Private::load(bad.path());
        assert!(!p.mark(d), "the caller refuses the fetch");
        assert!(p.contains(&d), "still private until restart");
    }
}
