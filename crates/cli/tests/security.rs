//! The `pollen` binary's security contract: the swarm key (made, required beyond loopback,
//! checked), the allow-list, and the control socket only its owner may open.

mod common;

use common::{free_port, get_body, pollen, swarm_key_in, Agent, P2P_ANY_PORT};
use std::time::{Duration, Instant};

#[test]
fn swarm_key_prints_a_key_and_writes_a_file_once() {
    let out = pollen().arg("swarm-key").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["/key/swarm/psk/1.0.0/", "/base16/"]);
    assert!(lines[2].len() == 64 && lines[2].chars().all(|c| c.is_ascii_hexdigit()));
    let again = pollen().arg("swarm-key").output().unwrap();
    assert_ne!(again.stdout, text.as_bytes(), "two keys are the same");

    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = swarm_key_in(dir.path());
    let first = std::fs::read(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second run keeps the cluster's key.
    assert_eq!(swarm_key_in(dir.path()), path);
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

#[test]
fn without_a_swarm_key_the_swarm_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |args: &[&str]| {
        pollen()
            .arg("agent")
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &[][..],
        &["--p2p-listen", "/ip4/0.0.0.0/tcp/0"],
        &[
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--p2p-listen",
            "/ip6/::/tcp/0",
        ],
    ] {
        let out = agent(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("without a swarm key")
                && err.contains("pollen swarm-key")
                && err.contains("--swarm-key")
                && err.contains("--p2p false"),
            "{err}"
        );
    }
    // A key that others can read, or that is not a key, is refused naming the file.
    use std::os::unix::fs::PermissionsExt;
    let key = swarm_key_in(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent(&["--swarm-key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("swarm.key") && err.contains("chmod 600"),
        "{err}"
    );
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "/key/swarm/psk/1.0.0/\n/base16/\nxyz\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = agent(&["--swarm-key", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.key"));
    let out = agent(&["--allow-peer", "not-a-peer", "--p2p-listen", P2P_ANY_PORT]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow-peer"));
}

#[test]
fn agents_with_the_same_key_join_on_every_interface() {
    let dir = tempfile::tempdir().unwrap();
    let key = swarm_key_in(dir.path());
    let key = key.to_str().unwrap();
    let p2p_port = free_port();
    let a = Agent::start(&[
        "--swarm-key",
        key,
        "--p2p-listen",
        &format!("/ip4/0.0.0.0/tcp/{p2p_port}"),
    ]);
    let a_id = a.status_json().peer_id.unwrap();
    let b = Agent::start_with_env(
        &[
            "--p2p-listen",
            P2P_ANY_PORT,
            "--bootstrap",
            &format!("/ip4/127.0.0.1/tcp/{p2p_port}"),
        ],
        &[("POLLEN_SWARM_KEY", key), ("POLLEN_ALLOW_PEER", &a_id)],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.status_json().peers.contains(&a_id) {
        assert!(Instant::now() < deadline, "b never connected to a");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_over_the_control_socket_which_only_its_owner_may_open() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let agent = Agent::start(&["--p2p-listen", P2P_ANY_PORT]);
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");
    let out = pollen()
        .args(["status", "--json", "--control-socket", &agent.socket()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let full: pollen_agent::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(full.peer_id, agent.status_json().peer_id);
    // The admin port has no doctor and no preheat.
    let (status, _) = get_body(agent.metrics, "/doctor");
    assert!(status.contains("404"), "{status}");
}
