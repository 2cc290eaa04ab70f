//! `pollen swarm-key`: a new random swarm key, printed or written to a file once.

use clap::Args;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct SwarmKeyArgs {
    /// Write the key to FILE (mode 600) instead of printing it; an existing FILE is kept as it is, so this can run before every start
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(args: SwarmKeyArgs) -> ExitCode {
    let key = match pollen_swarm::SwarmKey::generate() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("pollen: cannot read random bytes for the key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(path) = args.out else {
        print!("{}", key.to_key_file());
        return ExitCode::SUCCESS;
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(parent) {
            eprintln!("pollen: cannot create {}: {e}", parent.display());
            return ExitCode::FAILURE;
        }
    }
    // create_new: never replace a cluster's key, and never follow a planted symlink.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("pollen: {} exists; keeping it", path.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pollen: cannot create {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = file
        .write_all(key.to_key_file().as_bytes())
        .and_then(|()| file.sync_all())
    {
        eprintln!("pollen: cannot write {}: {e}", path.display());
        let _ = std::fs::remove_file(&path);
        return ExitCode::FAILURE;
    }
    eprintln!(
        "pollen: wrote a new swarm key to {} (fingerprint {}); give the same file to every agent with --swarm-key",
        path.display(),
        key.fingerprint()
    );
    ExitCode::SUCCESS
}
