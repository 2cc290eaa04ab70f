//! The `pollen` binary's contract: help, configuration errors, start-up with defaults, SIGTERM,
//! SIGHUP, a restart keeping the cache and the PeerId, the swarm, and `pollen status`.
//!
//! Every agent started here listens for peers on `/ip4/127.0.0.1/tcp/0` (or a free port): the
//! default, port 65003 on every interface, would collide between tests and with a real agent.

mod common;

use common::{free_port, get, get_at, get_body, pollen, terminate, Agent, P2P_ANY_PORT};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[test]
fn help_reads_well() {
    let out = pollen().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("agent"), "{text}");
    let out = pollen().args(["agent", "--help"]).output().unwrap();
    // Help is wrapped to the terminal's width: compare with the line breaks taken out.
    let text = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for flag in [
        "--config",
        "--listen",
        "--data-dir",
        "--upstream",
        "--registry",
        "--cache-size",
        "--metrics-listen",
        "--log-format",
        "--p2p",
        "--p2p-listen",
        "--bootstrap",
        "--mdns",
        "--piece-size",
        "--upload-limit",
        "--download-limit",
        "--max-upload-sessions",
        "--tracker <true|false>",
        "--seed <true|false>",
        "--zone <NAME>",
        "--rack <NAME>",
        "--label <KEY=VALUE>",
        "--swarm-key <FILE>",
        "--allow-peer <PEERID>",
        "POLLEN_SWARM_KEY",
        "POLLEN_ALLOW_PEER",
        "POLLEN_P2P_LISTEN",
        "POLLEN_MAX_UPLOAD_SESSIONS",
        "POLLEN_TRACKER",
        "POLLEN_SEED",
        "POLLEN_ZONE",
        "POLLEN_RACK",
        "POLLEN_LABEL",
        "good uplink and a large cache [default: false]",
        "[default: /ip4/0.0.0.0/tcp/65003]",
        "[default: 8]",
    ] {
        assert!(text.contains(flag), "agent --help lacks {flag}");
    }
    let out = pollen().args(["status", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(out.status.success());
    for flag in [
        "--admin",
        "--control-socket",
        "--json",
        "[default: /run/pollen/control.sock as root",
    ] {
        assert!(text.contains(flag), "status --help lacks {flag}");
    }
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let out = pollen()
        .args(["agent", "--cache-size", "a lot"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache-size"), "{err}");
}

#[test]
fn bad_peer_to_peer_configuration_is_refused_with_a_reason() {
    let refused = |out: Output, want: &str| {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "stderr lacks {want:?}: {err}");
    };
    let agent = |args: &[&str]| pollen().arg("agent").args(args).output().unwrap();
    refused(agent(&["--piece-size", "1KiB"]), "64KiB..=64MiB");
    refused(agent(&["--p2p-listen", "0.0.0.0:65003"]), "p2p-listen");
    refused(agent(&["--bootstrap", "pollen:65003"]), "dns:NAME:PORT");
    refused(agent(&["--mdns", "maybe"]), "--mdns");
    refused(agent(&["--p2p", "off"]), "--p2p");
    refused(
        agent(&["--max-upload-sessions", "many"]),
        "--max-upload-sessions",
    );
    let out = pollen()
        .arg("agent")
        .env("POLLEN_UPLOAD_LIMIT", "fast")
        .output()
        .unwrap();
    refused(out, "upload-limit");
    refused(agent(&["--tracker", "yes"]), "--tracker");
    refused(agent(&["--seed", "maybe"]), "--seed");
    refused(agent(&["--label", "team"]), "KEY=VALUE");
    refused(agent(&["--zone", "eu west"]), "zone: the name");
    refused(
        agent(&["--p2p", "false", "--tracker", "true"]),
        "peer-to-peer is off (--p2p false)",
    );
    let env_agent = |vars: &[(&str, &str)]| {
        let mut c = pollen();
        c.arg("agent");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    refused(
        env_agent(&[("POLLEN_SEED", "true"), ("POLLEN_P2P", "false")]),
        "drop --seed true",
    );
    refused(
        env_agent(&[("POLLEN_LABEL", "a=1;a=2")]),
        "\"a\" is given twice",
    );
    refused(
        env_agent(&[("POLLEN_ZONE", "z1"), ("POLLEN_LABEL", "zone=z2")]),
        "--zone sets the label zone",
    );
    let nine = (0..9)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(";");
    refused(
        env_agent(&[("POLLEN_LABEL", &nine)]),
        "9 labels given, at most 8",
    );
    refused(env_agent(&[("POLLEN_TRACKER", "on")]), "--tracker");
    refused(
        pollen()
            .args(["status", "--admin", "nowhere"])
            .output()
            .unwrap(),
        "HOST:PORT",
    );
}

#[test]
fn starts_with_defaults_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    // Only the addresses and data dir are set (through the environment): everything else is
    // the defaults, as with a bare `pollen agent`.
    let mut child = pollen()
        .arg("agent")
        .env("POLLEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("POLLEN_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        .env("POLLEN_DATA_DIR", dir.path())
        .env("POLLEN_P2P_LISTEN", P2P_ANY_PORT)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some(status) = get(metrics, "/readyz") {
            break status;
        }
        assert!(Instant::now() < deadline, "agent never became ready");
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready.contains("200"), "{ready}");
    assert!(get(port, "/v2/").unwrap().contains("200"));
    let (status, body) = get_body(metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    // Gauges read at the scrape: the cache's quota, and the free space of its disk.
    let gauge = |name: &str| -> f64 {
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    assert_eq!(
        gauge("pollen_cache_quota_bytes"),
        20.0 * f64::from(1u32 << 30)
    );
    assert!(gauge("pollen_cache_disk_free_bytes") > 0.0);
    assert!(dir.path().join("blobs/sha256").is_dir());

    // SIGTERM: the agent exits cleanly.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn status_reports_the_peer_id_and_json_parses() {
    let agent = Agent::start(&["--p2p-listen", P2P_ANY_PORT]);
    let out = agent.status(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        "PeerId        12D3",
        "Listening     /ip4/127.0.0.1/tcp/",
        "0 connected",
        "from peers",
        "from upstream",
        "to peers",
        "of 20.0 GiB",
        "Blobs in flight: none",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }
    let status = agent.status_json();
    let peer_id = status.peer_id.expect("a PeerId");
    assert!(peer_id.starts_with("12D3"), "{peer_id}");
    assert!(text.contains(&peer_id), "{text}");
    assert!(!status.listen_addrs.is_empty());
    assert!(status.listen_addrs[0].starts_with("/ip4/127.0.0.1/tcp/"));
    assert_eq!(status.cache_quota, 20 << 30);
    // Every agent is a tracker by default (part 7).
    assert_eq!(status.roles, ["tracker"]);
    assert!(text.contains("Roles         tracker"), "{text}");
}

#[test]
fn status_reports_the_roles() {
    let agent = Agent::start(&[
        "--tracker",
        "true",
        "--seed",
        "true",
        "--zone",
        "z1",
        "--p2p-listen",
        P2P_ANY_PORT,
    ]);
    assert_eq!(agent.status_json().roles, ["tracker", "seed"]);
    let out = agent.status(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("Roles         tracker, seed"), "{text}");
    // Nothing pulled yet, so nothing coordinated.
    assert!(!text.contains("Blobs coordinated here"), "{text}");
}

#[test]
fn roles_and_labels_from_the_environment() {
    let agent = Agent::start_with_env(
        &["--p2p-listen", P2P_ANY_PORT],
        &[
            ("POLLEN_SEED", "true"),
            ("POLLEN_TRACKER", "false"),
            ("POLLEN_RACK", "r7"),
            ("POLLEN_LABEL", "team=storage;tier=hot"),
        ],
    );
    assert_eq!(agent.status_json().roles, ["seed"]);
}

#[test]
fn status_without_peer_to_peer() {
    let agent = Agent::start(&["--p2p", "false"]);
    let out = agent.status(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("Peer-to-peer  off"), "{text}");
    assert!(agent.status_json().peer_id.is_none());
}

#[test]
fn two_agents_find_each_other_through_bootstrap() {
    let p2p_port = free_port();
    let a = Agent::start(&["--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")]);
    let a_id = a.status_json().peer_id.unwrap();
    let b = Agent::start(&[
        "--p2p-listen",
        P2P_ANY_PORT,
        "--bootstrap",
        &format!("/ip4/127.0.0.1/tcp/{p2p_port}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = b.status_json();
        if status.peers.contains(&a_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never connected to a: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = b.status(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 connected"), "{text}");
    assert!(text.contains(&a_id), "{text}");
}

#[test]
fn status_explains_an_unreachable_agent() {
    let port = free_port();
    let out = pollen()
        .args(["status", "--admin", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is `pollen agent` running? pass --admin ADDR"),
        "{err}"
    );
}

#[test]
fn a_taken_peer_port_names_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = pollen()
        .arg("agent")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--p2p-listen"), "{err}");
    drop(taken);

    // Another agent on the port: libp2p would share it (SO_REUSEPORT) without a word.
    let port = free_port();
    let p2p = format!("/ip4/127.0.0.1/tcp/{port}");
    let _first = Agent::start(&["--p2p-listen", &p2p]);
    let out = pollen()
        .arg("agent")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--p2p-listen", &p2p])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {p2p} for peers")) && err.contains("--p2p-listen"),
        "{err}"
    );
}

#[test]
fn preheat_reports_an_image_it_cannot_resolve_and_exits_non_zero() {
    // The image's registry is a port nobody listens on: resolving fails, the agent says why.
    let dead = free_port();
    let agent = Agent::start(&[
        "--p2p-listen",
        P2P_ANY_PORT,
        "--connect-timeout",
        "1s",
        "--registry",
        &format!("127.0.0.1:{dead}=http://127.0.0.1:{dead}"),
    ]);
    let out = pollen()
        .args(["preheat", &format!("127.0.0.1:{dead}/app:v1")])
        .args(["--control-socket", &agent.socket()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("preheat failed: resolving v1"), "{err}");

    let out = pollen()
        .args([
            "preheat",
            "Not An Image",
            "--control-socket",
            &agent.socket(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("preheat failed: image"));
}

#[test]
fn sighup_reloads_the_upstreams_from_the_config_file() {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("pollen.toml");
    std::fs::write(&conf, "upstream = \"http://127.0.0.1:1\"\n").unwrap();
    let agent = Agent::start(&["--config", conf.to_str().unwrap(), "--p2p", "false"]);
    // `pollen doctor --json`: the dead mirror makes it exit 1; its lines are what matters.
    let doctor = || {
        let out = pollen()
            .args(["doctor", "--json", "--control-socket", &agent.socket()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(doctor().contains("http://127.0.0.1:1"), "{}", doctor());

    // A broken file changes nothing; a good one takes effect, without a restart.
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &agent.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    std::fs::write(&conf, "upstream = [\n").unwrap();
    hup();
    std::fs::write(&conf, "upstream = \"http://127.0.0.1:2\"\n").unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !doctor().contains("http://127.0.0.1:2") {
        assert!(Instant::now() < deadline, "not reloaded: {}", doctor());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!doctor().contains("http://127.0.0.1:1"), "{}", doctor());
    assert!(get(agent.metrics, "/readyz").unwrap().contains("200"));
}

#[test]
fn sighup_reloads_the_peer_rate_limits() {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("pollen.toml");
    std::fs::write(&conf, "upload_limit = \"10MiB\"\n").unwrap();
    let agent = Agent::start(&[
        "--config",
        conf.to_str().unwrap(),
        "--p2p-listen",
        P2P_ANY_PORT,
    ]);
    let limits = || {
        let s = agent.status_json();
        (s.upload_limit, s.download_limit)
    };
    assert_eq!(limits(), (10 << 20, 0));
    std::fs::write(&conf, "upload_limit = 0\ndownload_limit = \"4MiB\"\n").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &agent.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while limits() != (0, 4 << 20) {
        assert!(Instant::now() < deadline, "not reloaded: {:?}", limits());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = String::from_utf8(agent.status(false).stdout).unwrap();
    assert!(
        text.contains("Peer limits   upload unlimited, download 4.0 MiB/s"),
        "{text}"
    );
}

#[test]
fn an_ipv6_only_pair_of_agents() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start_on("::1", da.path(), &["--p2p-listen", "/ip6/::1/tcp/0"], &[]);
    let a_status = a.status_json();
    let a_addr = a_status
        .listen_addrs
        .iter()
        .find(|l| l.starts_with("/ip6/::1/tcp/"))
        .unwrap_or_else(|| panic!("listens on IPv6: {:?}", a_status.listen_addrs))
        .clone();
    let bootstrap = format!("{a_addr}/p2p/{}", a_status.peer_id.clone().unwrap());
    let b = Agent::start_on(
        "::1",
        db.path(),
        &["--p2p-listen", "/ip6/::1/tcp/0", "--bootstrap", &bootstrap],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b
        .status_json()
        .peers
        .contains(a_status.peer_id.as_ref().unwrap())
    {
        assert!(
            Instant::now() < deadline,
            "b never connected to a over IPv6"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(get_at("::1", b.port, "/v2/").unwrap().contains("200"));
}

#[test]
fn a_restart_keeps_the_cache_and_the_peer_id() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt.block_on(pollen_testreg::TestRegistry::start()).unwrap();
    let layer: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    let digest = reg.add_blob("app", layer.clone().into());
    let dir = tempfile::tempdir().unwrap();
    let upstream = reg.url();
    let route = format!("{}={}", reg.host(), reg.url());
    let flags = [
        "--upstream",
        &upstream,
        "--registry",
        &route,
        "--p2p-listen",
        P2P_ANY_PORT,
    ];
    let path = format!("/v2/app/blobs/{digest}?ns={}", reg.host());

    let mut first = Agent::start_in(dir.path(), &flags, &[]);
    let peer_id = first.status_json().peer_id.expect("a PeerId");
    let (status, body) = get_body(first.port, &path);
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, layer);
    terminate(&mut first);

    // The upstream is gone: the restarted agent serves from its cache, under the same PeerId.
    reg.set_fault(pollen_testreg::Fault::Status {
        status: 503,
        count: 1_000_000,
    });
    let second = Agent::start_in(dir.path(), &flags, &[]);
    assert_eq!(second.status_json().peer_id, Some(peer_id));
    let (status, body) = get_body(second.port, &path);
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, layer, "served from the cache kept across the restart");
    assert_eq!(second.status_json().cache_entries, 1);
}
