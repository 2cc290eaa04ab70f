use super::*;
use p2p::test_swarm_key_file;

/// The defaults, with a swarm key (without one the default listen address is refused).
fn args() -> AgentArgs {
    AgentArgs {
        swarm_key: Some(test_swarm_key_file()),
        ..AgentArgs::default()
    }
}

#[test]
fn defaults_start() {
    let s = Settings::resolve(args()).unwrap();
    assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(s.cache_size, 20 * 1024 * 1024 * 1024);
    assert_eq!(s.agent.drain_timeout, Duration::from_secs(20));
    assert_eq!(s.agent.drain_timeout, pollen_agent::DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(s.agent.cache_max_age, pollen_agent::DEFAULT_CACHE_MAX_AGE);
    assert_eq!(
        s.agent.upstream.default_mirrors,
        vec![DEFAULT_UPSTREAM.to_string()]
    );
}

#[test]
fn flags_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollen.toml");
    std::fs::write(
        &path,
        r#"
listen = "127.0.0.1:7000"
cache_size = "1GiB"
upstream = "http://file-upstream:5000"
tag_ttl = "1m"
drain_timeout = "45s"
cache_max_age = "0s"
[registries]
"ghcr.io" = ["https://mirror.example", "https://ghcr.io"]
[[credentials]]
host = "ghcr.io"
username = "u"
password = "p"
[[credentials]]
host = "registry.gitlab.com"
username = "g"
password = "p"
realms = ["GitLab.com"]
"#,
    )
    .unwrap();
    let a = AgentArgs {
        config: Some(path),
        cache_size: Some("512MiB".into()),
        registries: vec!["127.0.0.1:5000=http://127.0.0.1:5000".into()],
        ..args()
    };
    let s = Settings::resolve(a).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(s.cache_size, 512 << 20);
    assert_eq!(s.agent.tag_ttl, Duration::from_secs(60));
    assert_eq!(
        s.agent.drain_timeout,
        Duration::from_secs(45),
        "from the file"
    );
    assert_eq!(
        s.agent.upstream.default_mirrors,
        vec!["http://file-upstream:5000".to_string()]
    );
    assert_eq!(s.agent.upstream.registries["ghcr.io"].len(), 2);
    assert_eq!(
        s.agent.upstream.registries["127.0.0.1:5000"],
        vec!["http://127.0.0.1:5000".to_string()]
    );
    assert_eq!(s.agent.upstream.credentials["ghcr.io"].username, "u");
    assert_eq!(
        s.agent.upstream.realms["registry.gitlab.com"],
        vec!["gitlab.com".to_string()]
    );
    assert!(!s.agent.upstream.realms.contains_key("ghcr.io"));
    assert_eq!(
        s.agent.upstream.own_listeners,
        vec![s.listen, s.metrics_listen],
        "redirects never reach the agent itself"
    );
}

#[test]
fn bad_values_are_explained() {
    for a in [
        AgentArgs {
            cache_size: Some("lots".into()),
            ..args()
        },
        AgentArgs {
            tag_ttl: Some("soon".into()),
            ..args()
        },
        AgentArgs {
            drain_timeout: Some("a while".into()),
            ..args()
        },
        AgentArgs {
            upstream: vec!["ftp://x".into()],
            ..args()
        },
        AgentArgs {
            registries: vec!["nohost".into()],
            ..args()
        },
        AgentArgs {
            registries: vec!["h=".into()],
            ..args()
        },
    ] {
        assert!(Settings::resolve(a).is_err());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "cache_sise = \"1GiB\"\n").unwrap();
    let err = Settings::resolve(AgentArgs {
        config: Some(path),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("cache_sise"), "{err}");
}

#[test]
fn a_realm_must_be_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("realm.toml");
    std::fs::write(
        &path,
        "[[credentials]]\nhost = \"r.example\"\nusername = \"u\"\npassword = \"p\"\nrealms = [\"https://auth.example/token\"]\n",
    )
    .unwrap();
    let err = Settings::resolve(AgentArgs {
        config: Some(path),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("realms entry"), "{err}");
}

#[test]
fn peer_to_peer_defaults() {
    let s = Settings::resolve(args()).unwrap();
    let swarm = s.swarm.expect("peer-to-peer is on by default");
    assert_eq!(
        swarm.listen,
        vec![DEFAULT_P2P_LISTEN
            .parse::<pollen_swarm::Multiaddr>()
            .unwrap()]
    );
    assert_eq!(DEFAULT_P2P_LISTEN, "/ip4/0.0.0.0/tcp/65003");
    assert!(swarm.bootstrap.is_empty());
    assert_eq!(swarm.mdns, DEFAULT_MDNS);
    assert!(!swarm.mdns);
    let p2p = &s.agent.p2p;
    assert_eq!(p2p.session.piece_size, None);
    assert_eq!((p2p.upload_limit, p2p.download_limit), (0, 0));
    assert_eq!(p2p.max_upload_sessions, DEFAULT_MAX_UPLOAD_SESSIONS);
    assert_eq!(DEFAULT_MAX_UPLOAD_SESSIONS, 8);
    assert_eq!(p2p.split_min, 8 << 20);
    assert_eq!(
        p2p.split_min,
        pollen_agent::P2pConfig::default().split_min,
        "the CLI and the tracker agree"
    );
    // The defaults not exposed as flags stay the agent's.
    assert_eq!(p2p.peer_stall, pollen_agent::DEFAULT_PEER_STALL);
    assert!(swarm.swarm_key.is_some() && swarm.allow_peers.is_empty());
    assert_eq!(swarm.limits, pollen_swarm::Limits::default());
}

#[test]
fn admission_settings_and_the_keyless_refusal() {
    let keyless = |listen: &[&str]| {
        Settings::resolve(AgentArgs {
            p2p_listen: listen.iter().map(|s| s.to_string()).collect(),
            ..AgentArgs::default()
        })
    };
    let err = keyless(&[]).unwrap_err().to_string();
    assert!(
        err.starts_with("swarm-key:") && err.contains("pollen swarm-key") && !err.contains('\n'),
        "{err}"
    );
    assert!(keyless(&["/ip4/127.0.0.1/tcp/0", "/ip4/10.0.0.1/tcp/0"]).is_err());
    let s = keyless(&["/ip4/127.0.0.2/tcp/0", "/ip6/::1/tcp/0"]).unwrap();
    assert!(s.swarm.unwrap().swarm_key.is_none());
    // Peer-to-peer off needs no key.
    assert!(Settings::resolve(AgentArgs {
        p2p: Some(false),
        ..AgentArgs::default()
    })
    .unwrap()
    .swarm
    .is_none());

    // The file's keys; flags win.
    let dir = tempfile::tempdir().unwrap();
    let id = "12D3KooWDyiZwp1kg4qNeujUtnpKLrwBEiZDdzgMZ7fpYJbkmfid";
    let path = dir.path().join("pollen.toml");
    let key = test_swarm_key_file();
    std::fs::write(
        &path,
        format!(
            "swarm_key = {:?}\nallow_peer = [{id:?}]\n",
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    let s = Settings::resolve(AgentArgs {
        config: Some(path.clone()),
        ..AgentArgs::default()
    })
    .unwrap();
    let swarm = s.swarm.unwrap();
    assert!(swarm.swarm_key.is_some());
    assert_eq!(swarm.allow_peers, vec![id.parse().unwrap()]);
    let err = Settings::resolve(AgentArgs {
        config: Some(path),
        allow_peer: vec!["nope".into()],
        ..AgentArgs::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("allow-peer") && err.contains("\"nope\""),
        "{err}"
    );
    let err = Settings::resolve(AgentArgs {
        swarm_key: Some(dir.path().join("absent.key")),
        ..AgentArgs::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("swarm-key") && err.contains("absent.key"),
        "{err}"
    );
}

#[test]
fn peer_to_peer_flags() {
    let a = AgentArgs {
        p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into(), "/ip6/::/tcp/65003".into()],
        bootstrap: vec![
            "dns:pollen.kube-system.svc.cluster.local:65003".into(),
            "/ip4/10.0.0.7/tcp/65003".into(),
        ],
        mdns: Some(true),
        piece_size: Some("16MiB".into()),
        upload_limit: Some("100MiB".into()),
        download_limit: Some("1GiB/s".into()),
        max_upload_sessions: Some(0),
        split_min: Some("0".into()),
        ..args()
    };
    let s = Settings::resolve(a).unwrap();
    let swarm = s.swarm.unwrap();
    assert_eq!(swarm.listen.len(), 2);
    assert_eq!(swarm.listen[1].to_string(), "/ip6/::/tcp/65003");
    assert_eq!(
        swarm.bootstrap,
        vec![
            pollen_swarm::Bootstrap::Dns {
                name: "pollen.kube-system.svc.cluster.local".into(),
                port: 65003
            },
            pollen_swarm::Bootstrap::Addr("/ip4/10.0.0.7/tcp/65003".parse().unwrap()),
        ]
    );
    assert!(swarm.mdns);
    let p2p = &s.agent.p2p;
    assert_eq!(p2p.session.piece_size, Some(16 << 20));
    assert_eq!(p2p.upload_limit, 100 << 20);
    assert_eq!(p2p.download_limit, 1 << 30);
    assert_eq!(p2p.max_upload_sessions, 0);
    assert_eq!(p2p.split_min, 0, "never split");

    // --p2p false: no swarm at all, whatever else is set.
    let s = Settings::resolve(AgentArgs {
        p2p: Some(false),
        bootstrap: vec!["dns:x:1".into()],
        ..args()
    })
    .unwrap();
    assert!(s.swarm.is_none());
}

#[test]
fn peer_to_peer_file_keys_and_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollen.toml");
    std::fs::write(
        &path,
        r#"
p2p = true
p2p_listen = ["/ip4/0.0.0.0/tcp/7003", "/ip6/::/tcp/7003"]
bootstrap = "dns:pollen:65003"
mdns = true
piece_size = "8MiB"
upload_limit = 0
download_limit = "50MiB"
max_upload_sessions = 4
cache_size = 1073741824
"#,
    )
    .unwrap();
    let s = Settings::resolve(AgentArgs {
        config: Some(path.clone()),
        ..args()
    })
    .unwrap();
    assert_eq!(s.cache_size, 1 << 30);
    let swarm = s.swarm.unwrap();
    assert_eq!(swarm.listen.len(), 2);
    assert_eq!(swarm.bootstrap.len(), 1);
    assert!(swarm.mdns);
    assert_eq!(s.agent.p2p.session.piece_size, Some(8 << 20));
    assert_eq!(s.agent.p2p.upload_limit, 0);
    assert_eq!(s.agent.p2p.download_limit, 50 << 20);
    assert_eq!(s.agent.p2p.max_upload_sessions, 4);

    // Flags win over the file.
    let s = Settings::resolve(AgentArgs {
        config: Some(path.clone()),
        p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mdns: Some(false),
        piece_size: Some("1MiB".into()),
        max_upload_sessions: Some(16),
        ..args()
    })
    .unwrap();
    let swarm = s.swarm.unwrap();
    assert_eq!(swarm.listen[0].to_string(), "/ip4/127.0.0.1/tcp/0");
    assert_eq!(swarm.listen.len(), 1);
    assert!(!swarm.mdns);
    assert_eq!(s.agent.p2p.session.piece_size, Some(1 << 20));
    assert_eq!(s.agent.p2p.max_upload_sessions, 16);
    let s = Settings::resolve(AgentArgs {
        config: Some(path),
        p2p: Some(false),
        ..args()
    })
    .unwrap();
    assert!(s.swarm.is_none());

    // An empty listen list with peer-to-peer on is refused; off, it is fine.
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "p2p_listen = []\n").unwrap();
    let err = Settings::resolve(AgentArgs {
        config: Some(path.clone()),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--p2p false"), "{err}");
    std::fs::write(&path, "p2p_listen = []\np2p = false\n").unwrap();
    assert!(Settings::resolve(AgentArgs {
        config: Some(path),
        ..args()
    })
    .is_ok());
}

#[test]
fn bad_peer_to_peer_values_are_explained() {
    let cases: Vec<(AgentArgs, &str, &str)> = vec![
        (
            AgentArgs {
                p2p_listen: vec!["0.0.0.0:65003".into()],
                ..args()
            },
            "p2p-listen",
            "/ip4/ADDR/tcp/PORT",
        ),
        (
            AgentArgs {
                p2p_listen: vec!["/dns/example.com/tcp/65003".into()],
                ..args()
            },
            "p2p-listen",
            "cannot be listened on",
        ),
        (
            AgentArgs {
                p2p_listen: vec!["/ip4/0.0.0.0/udp/65003".into()],
                ..args()
            },
            "p2p-listen",
            "/ip4/ADDR/tcp/PORT",
        ),
        (
            AgentArgs {
                bootstrap: vec!["pollen:65003".into()],
                ..args()
            },
            "bootstrap",
            "dns:NAME:PORT",
        ),
        (
            AgentArgs {
                bootstrap: vec!["dns:pollen".into()],
                ..args()
            },
            "bootstrap",
            "dns:NAME:PORT",
        ),
        (
            AgentArgs {
                piece_size: Some("1KiB".into()),
                ..args()
            },
            "piece-size",
            "64KiB..=64MiB",
        ),
        (
            AgentArgs {
                piece_size: Some("128MiB".into()),
                ..args()
            },
            "piece-size",
            "64KiB..=64MiB",
        ),
        (
            AgentArgs {
                piece_size: Some("big".into()),
                ..args()
            },
            "piece-size",
            "not a size",
        ),
        (
            AgentArgs {
                upload_limit: Some("fast".into()),
                ..args()
            },
            "upload-limit",
            "0 = unlimited",
        ),
        (
            AgentArgs {
                download_limit: Some("1KiB".into()),
                ..args()
            },
            "download-limit",
            "at least 64KiB, or 0",
        ),
        (
            AgentArgs {
                max_upload_sessions: Some(100_000),
                ..args()
            },
            "max-upload-sessions",
            "more than 1024",
        ),
    ];
    for (a, key, hint) in cases {
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.starts_with(key), "{err}");
        assert!(err.contains(hint), "{err} lacks {hint:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "mdns = \"yes\"\n").unwrap();
    let err = Settings::resolve(AgentArgs {
        config: Some(path),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("mdns"), "{err}");
}

/// A self-signed CA certificate (public material only; its key was thrown away).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUD4VBfD2X/OcJeO/4HmGiVtA+bfswCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVUG9sbGVuIGNvbmZpZyB0ZXN0IENBMCAXDTI2MTIwMzEwNTMz
N1oYDzIxMjYxMTA5MTA1MzM3WjAgMR4wHAYDVQQDDBVQb2xsZW4gY29uZmlnIHRl
c3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASw/e4E1mef+rJI0pJ+FlrR
LjQ9Wip5bFDLPSkDN2V7yCM/OybzvQkPjOoxVXtITSOrplWBSIyxLE4X4/hLi8d6
o1MwUTAdBgNVHQ4EFgQUVtrVDrjvrLquwGYo6XjUEAEYj74wHwYDVR0jBBgwFoAU
VtrVDrjvrLquwGYo6XjUEAEYj74wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiEA5M9w9wywIp0M5wedgodxSxU14ACMKOrrXzOoNphf2cICIFDygGFw
lvX8ilToe8N08NaEHuTzYqLhNJnHykcFL3rV
-----END CERTIFICATE-----
";

#[test]
fn ca_files_from_the_file_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, format!("{TEST_CA}{TEST_CA}")).unwrap();
    let conf = dir.path().join("pollen.toml");
    std::fs::write(
        &conf,
        format!("ca_files = [{:?}]\n", ca.display().to_string()),
    )
    .unwrap();
    let s = Settings::resolve(AgentArgs {
        config: Some(conf.clone()),
        ..args()
    })
    .unwrap();
    assert_eq!(s.agent.upstream.extra_roots.len(), 2, "both certificates");
    assert!(Settings::resolve(args())
        .unwrap()
        .agent
        .upstream
        .extra_roots
        .is_empty());

    // The flag replaces the file's list; a file that is not PEM is refused by name.
    let bad = dir.path().join("not-a-cert.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let err = Settings::resolve(AgentArgs {
        config: Some(conf),
        ca_files: vec![bad],
        ..args()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("ca-file:") && err.contains("not-a-cert.pem"),
        "{err}"
    );
}

#[test]
fn max_blob_size_has_a_default_a_file_key_and_a_flag() {
    let s = Settings::resolve(args()).unwrap();
    assert_eq!(s.agent.max_blob_size, pollen_agent::DEFAULT_MAX_BLOB_SIZE);
    assert_eq!(s.agent.max_blob_size, 64 << 30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollen.toml");
    std::fs::write(&path, "max_blob_size = \"8GiB\"\n").unwrap();
    let from_file = AgentArgs {
        config: Some(path.clone()),
        ..args()
    };
    assert_eq!(
        Settings::resolve(from_file).unwrap().agent.max_blob_size,
        8 << 30
    );
    let flag = AgentArgs {
        config: Some(path),
        max_blob_size: Some("1TiB".into()),
        ..args()
    };
    assert_eq!(
        Settings::resolve(flag).unwrap().agent.max_blob_size,
        1 << 40
    );
    let bad = AgentArgs {
        max_blob_size: Some("huge".into()),
        ..args()
    };
    assert!(Settings::resolve(bad).is_err());
}
