//! The roles and labels (`--tracker`, `--seed`, `--zone`, `--rack`, `--label`). The other
//! peer-to-peer settings are tested in `config_tests.rs`.

use super::*;
use crate::config::Settings;
use clap::Parser;

/// The defaults, with a swarm key (without one the default listen address is refused).
fn args() -> AgentArgs {
    AgentArgs {
        swarm_key: Some(test_swarm_key_file()),
        ..AgentArgs::default()
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn resolve_file(path: &std::path::Path) -> Result<Settings, ConfigError> {
    Settings::resolve(AgentArgs {
        config: Some(path.to_path_buf()),
        ..args()
    })
}

#[test]
fn every_agent_coordinates_by_default_and_has_no_labels() {
    let s = Settings::resolve(args()).unwrap();
    let p2p = &s.agent.p2p;
    assert!(p2p.tracker && !p2p.seed);
    assert_eq!((DEFAULT_TRACKER, DEFAULT_SEED), (true, false));
    assert_eq!(p2p.swarm_wait, std::time::Duration::from_secs(5));
    assert!(p2p.labels.is_empty());
    assert_eq!(roles(p2p), ["tracker"]);
    assert!(label_strings(p2p).is_empty());
}

#[test]
fn peer_to_peer_off_turns_the_default_tracker_off_and_an_explicit_one_is_an_error() {
    let off = Settings::resolve(AgentArgs {
        p2p: Some(false),
        ..args()
    })
    .unwrap();
    assert!(!off.agent.p2p.tracker);
    let err = Settings::resolve(AgentArgs {
        p2p: Some(false),
        tracker: Some(true),
        ..args()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("tracker"), "{err}");
}

#[test]
fn swarm_wait_takes_a_duration() {
    let s = Settings::resolve(AgentArgs {
        swarm_wait: Some("0s".into()),
        ..args()
    })
    .unwrap();
    assert_eq!(s.agent.p2p.swarm_wait, std::time::Duration::ZERO);
    let err = Settings::resolve(AgentArgs {
        swarm_wait: Some("soon".into()),
        ..args()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("swarm-wait"), "{err}");
}

#[test]
fn upstream_budget_is_a_multiple_from_one() {
    let s = Settings::resolve(args()).unwrap();
    assert_eq!(
        s.agent.p2p.upstream_budget, 1.0,
        "each byte once by default"
    );
    let s = Settings::resolve(AgentArgs {
        upstream_budget: Some(4.0),
        ..args()
    })
    .unwrap();
    assert_eq!(s.agent.p2p.upstream_budget, 4.0);
    for bad in [0.5, f64::NAN, 1e9] {
        let err = Settings::resolve(AgentArgs {
            upstream_budget: Some(bad),
            ..args()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstream-budget"), "{bad}: {err}");
    }
}

#[test]
fn roles_and_labels_from_flags() {
    let s = Settings::resolve(AgentArgs {
        tracker: Some(true),
        seed: Some(true),
        zone: Some("eu-west-1a".into()),
        rack: Some("r7".into()),
        labels: vec!["team=storage".into(), " gpu = A100_80GB.v2 ".into()],
        ..args()
    })
    .unwrap();
    let p2p = &s.agent.p2p;
    assert!(p2p.tracker && p2p.seed);
    // zone, rack, then the --labels in order; spaces around key and value are trimmed.
    assert_eq!(
        p2p.labels,
        pairs(&[
            ("zone", "eu-west-1a"),
            ("rack", "r7"),
            ("team", "storage"),
            ("gpu", "A100_80GB.v2"),
        ])
    );
    assert_eq!(roles(p2p), ["tracker", "seed"]);
    assert_eq!(
        label_strings(p2p),
        [
            "zone=eu-west-1a",
            "rack=r7",
            "team=storage",
            "gpu=A100_80GB.v2"
        ]
    );
    let s = Settings::resolve(AgentArgs {
        seed: Some(true),
        labels: vec!["empty=".into()],
        ..args()
    })
    .unwrap();
    assert_eq!(
        roles(&s.agent.p2p),
        ["tracker", "seed"],
        "the tracker by default"
    );
    assert_eq!(s.agent.p2p.labels, pairs(&[("empty", "")]));
}

#[test]
fn flags_parse_from_the_command_line() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }
    // Every new flag is on the command line, so the environment does not matter here.
    let cli = Cli::try_parse_from([
        "pollen",
        "--tracker",
        "true",
        "--seed",
        "false",
        "--zone",
        "z1",
        "--rack",
        "r1",
        "--label",
        "a=1",
        "--label",
        "b=2;c=3",
        "--lazy-from-peers",
        "false",
    ])
    .unwrap();
    let a = &cli.agent;
    assert_eq!(a.lazy_from_peers, Some(false));
    assert_eq!((a.tracker, a.seed), (Some(true), Some(false)));
    assert_eq!(
        (a.zone.as_deref(), a.rack.as_deref()),
        (Some("z1"), Some("r1"))
    );
    assert_eq!(a.labels, ["a=1", "b=2", "c=3"]);
    for (flag, value) in [("--tracker", "yes"), ("--seed", "1x")] {
        let err = Cli::try_parse_from(["pollen", flag, value])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }
}

#[test]
fn roles_and_labels_from_the_file_and_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        &dir,
        "pollen.toml",
        r#"
tracker = true
seed = true
zone = "z1"
rack = "r1"
[labels]
tier = "hot"
team = "storage"
"#,
    );
    let s = resolve_file(&path).unwrap();
    let p2p = &s.agent.p2p;
    assert!(p2p.tracker && p2p.seed);
    // A table's keys come in sorted order.
    assert_eq!(
        p2p.labels,
        pairs(&[
            ("zone", "z1"),
            ("rack", "r1"),
            ("team", "storage"),
            ("tier", "hot")
        ])
    );

    // Flags win over the file; --label replaces the file's labels as a whole.
    let s = Settings::resolve(AgentArgs {
        config: Some(path),
        tracker: Some(false),
        zone: Some("z2".into()),
        labels: vec!["team=compute".into()],
        ..args()
    })
    .unwrap();
    let p2p = &s.agent.p2p;
    assert!(!p2p.tracker && p2p.seed);
    assert_eq!(
        p2p.labels,
        pairs(&[("zone", "z2"), ("rack", "r1"), ("team", "compute")])
    );

    // `labels` as a list of KEY=VALUE strings, or one string.
    let path = file(&dir, "list.toml", "labels = [\"b=2\", \"a=1\"]\n");
    let s = resolve_file(&path).unwrap();
    assert_eq!(s.agent.p2p.labels, pairs(&[("b", "2"), ("a", "1")]));
    let path = file(&dir, "one.toml", "labels = \"team=storage\"\n");
    let s = resolve_file(&path).unwrap();
    assert_eq!(s.agent.p2p.labels, pairs(&[("team", "storage")]));
    let path = file(&dir, "inline.toml", "labels = { team = \"storage\" }\n");
    let s = resolve_file(&path).unwrap();
    assert_eq!(s.agent.p2p.labels, pairs(&[("team", "storage")]));

    // Labels are kept with peer-to-peer off (they are harmless there); roles are not.
    let path = file(&dir, "off.toml", "p2p = false\nzone = \"z1\"\n");
    let s = resolve_file(&path).unwrap();
    assert!(s.swarm.is_none());
    assert_eq!(s.agent.p2p.labels, pairs(&[("zone", "z1")]));
}

#[test]
fn the_label_limits_are_inclusive() {
    let long = "x".repeat(MAX_LABEL_LEN);
    let s = Settings::resolve(AgentArgs {
        zone: Some(long.clone()),
        rack: Some("r".into()),
        labels: (0..MAX_LABELS - 3)
            .map(|i| format!("k{i}=v"))
            .chain([format!("{long}={long}")])
            .collect(),
        ..args()
    })
    .unwrap();
    assert_eq!(s.agent.p2p.labels.len(), MAX_LABELS);
    assert_eq!(MAX_LABELS, 8);
    assert_eq!(MAX_LABEL_LEN, 64);
}

#[test]
fn bad_roles_and_labels_are_explained() {
    let long = "x".repeat(MAX_LABEL_LEN + 1);
    let with_labels = |l: &[&str]| AgentArgs {
        labels: l.iter().map(|s| s.to_string()).collect(),
        ..args()
    };
    let nine: Vec<String> = (0..9).map(|i| format!("k{i}=v")).collect();
    let cases: Vec<(AgentArgs, &str, &str)> = vec![
        (
            with_labels(&["team"]),
            "label",
            "should look like KEY=VALUE",
        ),
        (with_labels(&["=storage"]), "label", "empty key"),
        (with_labels(&[" =storage"]), "label", "empty key"),
        (
            with_labels(&["team=a b"]),
            "label",
            "use only letters, digits",
        ),
        (
            with_labels(&["t/eam=a"]),
            "label",
            "the key \"t/eam\" has '/'",
        ),
        (
            with_labels(&["a=b=c"]),
            "label",
            "the value \"b=c\" has '='",
        ),
        (
            with_labels(&["équipe=a"]),
            "label",
            "use only letters, digits",
        ),
        (
            with_labels(&[&format!("{long}=v")]),
            "label",
            "65 bytes, longer than 64",
        ),
        (
            with_labels(&[&format!("k={long}")]),
            "label",
            "the value \"xxxxxxxxxxxxxxxx\"... is 65 bytes",
        ),
        (
            with_labels(&["a=1", "a=2"]),
            "label",
            "\"a\" is given twice",
        ),
        (
            AgentArgs {
                zone: Some("z1".into()),
                labels: vec!["zone=z2".into()],
                ..args()
            },
            "label",
            "\"zone\" is given twice (--zone sets the label zone)",
        ),
        (
            AgentArgs {
                rack: Some("r1".into()),
                labels: vec!["rack=r1".into()],
                ..args()
            },
            "label",
            "(--rack sets the label rack)",
        ),
        (
            AgentArgs {
                labels: nine.clone(),
                ..args()
            },
            "label",
            "9 labels given, at most 8",
        ),
        (
            AgentArgs {
                zone: Some("z".into()),
                rack: Some("r".into()),
                labels: nine[..7].to_vec(),
                ..args()
            },
            "label",
            "9 labels given, at most 8 (--zone and --rack count as labels)",
        ),
        (
            AgentArgs {
                zone: Some(" ".into()),
                ..args()
            },
            "zone",
            "the name is empty",
        ),
        (
            AgentArgs {
                rack: Some("row 3/rack 7".into()),
                ..args()
            },
            "rack",
            "the name \"row 3/rack 7\" has ' '",
        ),
        (
            AgentArgs {
                zone: Some(long.clone()),
                ..args()
            },
            "zone",
            "longer than 64",
        ),
        (
            AgentArgs {
                p2p: Some(false),
                tracker: Some(true),
                ..args()
            },
            "tracker",
            "peer-to-peer is off (--p2p false); drop --tracker true",
        ),
        (
            AgentArgs {
                p2p: Some(false),
                seed: Some(true),
                ..args()
            },
            "seed",
            "peer-to-peer is off (--p2p false); drop --seed true",
        ),
    ];
    for (a, key, hint) in cases {
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{key}: ")), "{err}");
        assert!(err.contains(hint), "{err} lacks {hint:?}");
    }
    // Roles that are off are fine with peer-to-peer off.
    let s = Settings::resolve(AgentArgs {
        p2p: Some(false),
        tracker: Some(false),
        seed: Some(false),
        ..args()
    })
    .unwrap();
    assert!(s.swarm.is_none());
}

#[test]
fn bad_roles_and_labels_in_the_file_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("seed = true\np2p = false\n", "seed: a seed fetches blobs"),
        ("tracker = true\np2p = false\n", "--p2p false"),
        ("zone = \"z1\"\nlabels = { zone = \"z2\" }\n", "given twice"),
        ("labels = { \"a b\" = \"x\" }\n", "use only letters"),
        ("labels = [\"team\"]\n", "KEY=VALUE"),
        ("tracker = \"yes\"\n", "tracker"),
        ("labels = { team = 1 }\n", "labels"),
        ("label = \"a=b\"\n", "label"),
    ] {
        let path = file(&dir, "bad.toml", text);
        let err = resolve_file(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err} lacks {want:?}");
    }
    // The flag wins over a conflicting file: the file's tracker role with --p2p false in
    // the file is refused, but --tracker false on the command line clears it.
    let path = file(&dir, "ok.toml", "tracker = true\np2p = false\n");
    assert!(Settings::resolve(AgentArgs {
        config: Some(path),
        tracker: Some(false),
        ..args()
    })
    .is_ok());
}

#[test]
fn lazy_ranges_ask_peers_by_default_and_a_file_key_or_flag_turns_it_off() {
    let default = Settings::resolve(args()).unwrap().agent.p2p.lazy_from_peers;
    assert!(default);
    assert_eq!(default, pollen_agent::DEFAULT_LAZY_FROM_PEERS);
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "pollen.toml", "lazy_from_peers = false\n");
    assert!(!resolve_file(&path).unwrap().agent.p2p.lazy_from_peers);
    let s = Settings::resolve(AgentArgs {
        config: Some(path),
        lazy_from_peers: Some(true),
        ..args()
    })
    .unwrap();
    assert!(s.agent.p2p.lazy_from_peers, "the flag wins over the file");
}
