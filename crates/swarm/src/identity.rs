//! The node's libp2p key, kept in the data dir so its PeerId survives restarts.
//!
//! Other nodes hold provider records naming our PeerId and ban PeerIds that sent bad pieces
//! (`docs/trust-model.md`): a node that changed its key at every restart would orphan the
//! first and escape the second. So the key is created once, written atomically, and a key file
//! that no longer decodes is an error for the operator, never silently replaced by a new
//! identity.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// Where the key lives inside the data dir.
pub const KEY_PATH: &str = "p2p/key";

/// Why the node's key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "node key {path} is corrupt ({reason}); move it away to start with a new PeerId, \
         or restore it from a backup to keep the old one"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// Loads `<data_dir>/p2p/key`, or creates a new Ed25519 key there if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(KEY_PATH);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    match fs::read(&path) {
        Ok(bytes) => {
            warn_if_readable_by_others(&path);
            return Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
                path,
                reason: e.to_string(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }

    let dir = path.parent().expect("KEY_PATH has a parent");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let keypair = Keypair::generate_ed25519();
    let encoded = keypair
        .to_protobuf_encoding()
        .expect("ed25519 keys always encode");
    write_atomically(dir, &path, &encoded)?;
    tracing::info!(path = %path.display(), peer_id = %keypair.public().to_peer_id(), "created node key");
    Ok(keypair)
}

/// Temp file (0600 from the start, so the secret is never readable by others) + fsync +
/// rename + directory fsync: after a crash the key is either absent or complete.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    // A fixed name: a temp file left by a crash is simply overwritten next time.
    let tmp = dir.join("key.tmp");
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        IdentityError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "node key is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_PATH);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key")]);
    }

    #[test]
    fn corrupt_key_is_an_error_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_PATH);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"not a protobuf key").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a protobuf key");

        fs::write(&path, b"").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
