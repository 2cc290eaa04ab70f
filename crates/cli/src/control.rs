//! The agent's control socket (`--control-socket`): a Unix socket only the agent's user may
//! connect to, for `pollen status`, `pollen preheat` and `pollen doctor`. Who may start
//! preheats and health checks is decided by file permissions, not by who reaches an IP.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The socket file's mode: its owner (the agent's user) only.
pub const SOCKET_MODE: u32 = 0o600;
/// The mode of the socket's directory when the agent creates it.
pub const DIR_MODE: u32 = 0o700;

/// Binds the control socket at `path`: creates its directory (0700) if missing, replaces a
/// stale socket file left by an agent that died (but refuses while another agent answers on
/// it, and refuses to replace anything that is not a socket), and gives the socket mode 0600
/// before it appears under its name (bound under a temporary name, then renamed).
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, String> {
    let shown = path.display();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| {
                format!(
                    "cannot create {} for the control socket: {e} (pass --control-socket PATH)",
                    dir.display()
                )
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "another agent answers on the control socket {shown}; stop it, or give this one its own --control-socket"
                ))
            }
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale control socket {shown}: {e}"))?,
        },
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; remove it or choose another --control-socket"
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {shown}: {e}")),
    }
    let tmp = temp_name(path);
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(|e| {
        format!(
            "cannot listen on the control socket {shown}: {e} (pass --control-socket PATH, or off)"
        )
    })?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot set up the control socket {shown}: {e}"));
    }
    Ok(listener)
}

/// Removes the socket file at exit, if it is still a socket (best effort).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_owner_only_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/pollen/control.sock");
        let l = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), SOCKET_MODE);
        assert_eq!(mode(path.parent().unwrap()), DIR_MODE);
        // Live: a second agent is refused.
        let err = bind(&path).unwrap_err();
        assert!(err.contains("another agent"), "{err}");
        // Dead (the listener gone, the file left): replaced.
        drop(l);
        let _l = bind(&path).unwrap();
        assert_eq!(mode(&path), SOCKET_MODE);
        // Not a socket: left alone.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind(&file).unwrap_err().contains("not a socket"));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
