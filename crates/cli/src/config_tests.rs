use super::*;

fn args() -> AgentArgs {
    AgentArgs::default()
}

#[test]
fn defaults_start() {
    let s = Settings::resolve(args()).unwrap();
    assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(s.cache_size, 20 * 1024 * 1024 * 1024);
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
[registries]
"ghcr.io" = ["https://mirror.example", "https://ghcr.io"]
[[credentials]]
host = "ghcr.io"
username = "u"
password = "p"
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
        s.agent.upstream.default_mirrors,
        vec!["http://file-upstream:5000".to_string()]
    );
    assert_eq!(s.agent.upstream.registries["ghcr.io"].len(), 2);
    assert_eq!(
        s.agent.upstream.registries["127.0.0.1:5000"],
        vec!["http://127.0.0.1:5000".to_string()]
    );
    assert_eq!(s.agent.upstream.credentials["ghcr.io"].username, "u");
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
