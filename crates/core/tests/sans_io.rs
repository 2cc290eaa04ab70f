//! The core decides and does nothing else: built on its own it pulls in no async runtime and
//! no networking stack. If a change makes it depend on tokio or libp2p (directly, or through
//! pollen-proto's `io` feature), the simulator can no longer run the agent's own decisions,
//! and this fails.

use std::process::Command;

#[test]
fn the_core_depends_on_neither_tokio_nor_libp2p() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "pollen-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("pollen-proto"), "the tree was read: {tree}");
    for forbidden in ["tokio ", "libp2p", "mio ", "hyper "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "pollen-core depends on {forbidden}:\n{tree}"
        );
    }
}
