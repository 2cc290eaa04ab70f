//! Writing a runtime's file so that it can always be put back: the original is kept once
//! beside it (`FILE.pollen-backup`, or the marker `FILE.pollen-absent` when there was none),
//! new contents go to a temporary file that is synced and renamed over the old one, and
//! writing what is already there touches nothing.

use crate::ConfigError;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The original of a file Pollen changed.
pub const BACKUP_SUFFIX: &str = ".pollen-backup";
/// The marker of a file Pollen created (there was none to back up).
pub const ABSENT_SUFFIX: &str = ".pollen-absent";

/// What a writer wants a file to contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    pub contents: String,
}

/// What applying or restoring did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file already had these contents.
    Unchanged,
    /// Written; the original was kept at `backup` (this time; `None` if it was kept earlier or
    /// there was no file).
    Written { backup: Option<PathBuf> },
    /// The original was put back.
    Restored,
    /// Pollen had created the file: removed.
    Removed,
    /// Pollen never changed this file.
    Untouched,
}

pub fn backup_path(path: &Path) -> PathBuf {
    with_suffix(path, BACKUP_SUFFIX)
}

pub fn absent_path(path: &Path) -> PathBuf {
    with_suffix(path, ABSENT_SUFFIX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The file's contents, `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<String>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::io(path, e)),
    }
}

/// What the file held before Pollen first changed it (its backup), or holds now if Pollen
/// never did; `None` when there was no file.
pub fn original(path: &Path) -> Result<Option<String>, ConfigError> {
    if absent_path(path).exists() {
        return Ok(None);
    }
    match read(&backup_path(path))? {
        Some(kept) => Ok(Some(kept)),
        None => read(path),
    }
}

/// Writes `change`, keeping the original the first time.
pub fn apply(change: &Change) -> Result<Outcome, ConfigError> {
    let path = &change.path;
    let before = read(path)?;
    if before.as_deref() == Some(change.contents.as_str()) {
        return Ok(Outcome::Unchanged);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| ConfigError::io(parent, e))?;
    }
    let (backup, absent) = (backup_path(path), absent_path(path));
    let mut kept = None;
    if !backup.exists() && !absent.exists() {
        match &before {
            Some(original) => {
                write_atomic(&backup, original)?;
                kept = Some(backup);
            }
            None => write_atomic(
                &absent,
                "This file's neighbour was created by Pollen; `--restore` removes it.\n",
            )?,
        }
    }
    write_atomic(path, &change.contents)?;
    Ok(Outcome::Written { backup: kept })
}

/// Puts back what was there before Pollen changed `path`.
pub fn restore(path: &Path) -> Result<Outcome, ConfigError> {
    let (backup, absent) = (backup_path(path), absent_path(path));
    if backup.exists() {
        fs::rename(&backup, path).map_err(|e| ConfigError::io(&backup, e))?;
        return Ok(Outcome::Restored);
    }
    if absent.exists() {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConfigError::io(path, e)),
        }
        fs::remove_file(&absent).map_err(|e| ConfigError::io(&absent, e))?;
        return Ok(Outcome::Removed);
    }
    Ok(Outcome::Untouched)
}

/// Replaces `path` with `text` in one step: a crash leaves the old file or the new one.
fn write_atomic(path: &Path, text: &str) -> Result<(), ConfigError> {
    let name = path
        .file_name()
        .ok_or_else(|| ConfigError::Invalid(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".pollen-tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ConfigError::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_file_is_kept_once_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        fs::write(&path, "original").unwrap();
        let change = |c: &str| Change {
            path: path.clone(),
            contents: c.into(),
        };
        assert_eq!(
            apply(&change("first")).unwrap(),
            Outcome::Written {
                backup: Some(backup_path(&path))
            }
        );
        assert_eq!(apply(&change("first")).unwrap(), Outcome::Unchanged);
        assert_eq!(
            apply(&change("second")).unwrap(),
            Outcome::Written { backup: None },
            "the original is not overwritten by our own first version"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        assert_eq!(restore(&path).unwrap(), Outcome::Restored);
        assert_eq!(fs::read_to_string(&path).unwrap(), "original");
        assert_eq!(restore(&path).unwrap(), Outcome::Untouched);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no backup or temporary file left");
    }

    #[test]
    fn a_created_file_is_removed_on_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.io").join("hosts.toml");
        apply(&Change {
            path: path.clone(),
            contents: "x".into(),
        })
        .unwrap();
        assert!(absent_path(&path).exists());
        assert_eq!(restore(&path).unwrap(), Outcome::Removed);
        assert!(!path.exists() && !absent_path(&path).exists());
    }
}
