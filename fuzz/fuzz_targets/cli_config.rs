//! The agent's config file (TOML), through the same resolution the agent runs at start and
//! at SIGHUP (`Settings::resolve`): file keys over defaults, every value checked.
//!
//! The file names other files (`password_file`, `ca_files`, a key file): an input that names
//! such a key and holds a path separator or an escape anywhere is skipped, so a fuzzed config
//! reads at most a file of the current directory (never a device or a file elsewhere) and
//! writes nothing. The config itself is written to a file in /dev/shm (tmpfs) when there is one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen::config::{AgentArgs, Settings};
use std::path::PathBuf;
use std::sync::OnceLock;

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("pollen-fuzz-config")
            .tempdir_in(base)
            .expect("a temporary directory")
            .keep();
        dir.join("config.toml")
    })
}

/// Could this config make the parser read a file outside the current directory?
fn may_read_elsewhere(data: &[u8]) -> bool {
    let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    (has(b"file") || has(b"key") || has(b"ca_")) && data.iter().any(|&b| b == b'/' || b == b'\\')
}

fuzz_target!(|data: &[u8]| {
    if std::str::from_utf8(data).is_err() {
        return;
    }
    if may_read_elsewhere(data) {
        return;
    }
    let path = config_path();
    std::fs::write(path, data).expect("writing the config file");
    let args = AgentArgs {
        config: Some(path.clone()),
        ..AgentArgs::default()
    };
    let _ = Settings::resolve(args);
});
