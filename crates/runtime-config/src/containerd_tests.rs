use super::*;
use crate::files::{absent_path, apply, backup_path};

fn agent() -> AgentUrl {
    AgentUrl::parse("http://127.0.0.1:65001").unwrap()
}

const DIR: &str = "/etc/containerd/certs.d";

#[test]
fn hosts_toml_keeps_the_registry_as_the_fallback() {
    let text = hosts_toml(Some("docker.io"), &agent());
    let parsed: toml::Table = text.parse().unwrap();
    assert_eq!(
        parsed["server"].as_str(),
        Some("https://registry-1.docker.io")
    );
    let host = &parsed["host"]["http://127.0.0.1:65001"];
    assert_eq!(
        host["capabilities"].as_array().unwrap(),
        &vec![toml::Value::from("pull"), toml::Value::from("resolve")]
    );
    assert_eq!(host["dial_timeout"].as_str(), Some(DIAL_TIMEOUT));
    assert!(text.starts_with(MARKER));
    let default: toml::Table = hosts_toml(None, &agent()).parse().unwrap();
    assert!(
        default.get("server").is_none(),
        "_default: containerd's own fallback"
    );
    let other: toml::Table = hosts_toml(Some("registry.local:5000"), &agent())
        .parse()
        .unwrap();
    assert_eq!(
        other["server"].as_str(),
        Some("https://registry.local:5000")
    );
    let plain: toml::Table = hosts_toml(Some("http://10.0.0.1:5000"), &agent())
        .parse()
        .unwrap();
    assert_eq!(plain["server"].as_str(), Some("http://10.0.0.1:5000"));
}

#[test]
fn registry_hosts_are_checked_before_they_become_paths() {
    let dir = Path::new(DIR);
    for bad in ["../etc", "a/b", "", "_default", "-x", "a b"] {
        let r = changes(dir, &Registries::Hosts(vec![bad.into()]), &agent());
        assert!(r.is_err(), "{bad:?}");
    }
    let c = changes(
        dir,
        &Registries::Hosts(vec!["ghcr.io".into(), "10.0.0.1:5000".into()]),
        &agent(),
    )
    .unwrap();
    assert_eq!(c[1].path, Path::new(DIR).join("10.0.0.1:5000/hosts.toml"));
    let plain = changes(
        dir,
        &Registries::Hosts(vec!["http://10.0.0.1:5000".into()]),
        &agent(),
    );
    assert_eq!(
        plain.unwrap()[0].path,
        c[1].path,
        "the scheme is not part of the directory"
    );
    let all = changes(dir, &Registries::All, &agent()).unwrap();
    assert_eq!(all[0].path, Path::new(DIR).join("_default/hosts.toml"));
}

#[test]
fn write_twice_then_restore_puts_back_what_was_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A registry with its own hosts.toml and a certificate beside it, written by someone else.
    std::fs::create_dir_all(dir.join("ghcr.io")).unwrap();
    std::fs::write(
        dir.join("ghcr.io/hosts.toml"),
        "server = \"https://ghcr.io\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("ghcr.io/ca.crt"), "cert").unwrap();
    let regs = Registries::Hosts(vec!["ghcr.io".into(), "docker.io".into()]);
    for change in changes(dir, &regs, &agent()).unwrap() {
        apply(&change).unwrap();
    }
    assert!(missing(dir, &regs, &agent()).unwrap().is_empty());
    assert!(backup_path(&dir.join("ghcr.io/hosts.toml")).exists());
    assert!(absent_path(&dir.join("docker.io/hosts.toml")).exists());
    for change in changes(dir, &regs, &agent()).unwrap() {
        assert_eq!(apply(&change).unwrap(), Outcome::Unchanged, "idempotent");
    }
    let restored = restore(dir).unwrap();
    assert_eq!(restored.len(), 2);
    assert_eq!(
        std::fs::read_to_string(dir.join("ghcr.io/hosts.toml")).unwrap(),
        "server = \"https://ghcr.io\"\n"
    );
    assert!(dir.join("ghcr.io/ca.crt").exists());
    assert!(
        !dir.join("docker.io").exists(),
        "the directory Pollen made is gone"
    );
    assert!(restore(dir).unwrap().is_empty(), "nothing left to restore");
    assert_eq!(
        missing(dir, &regs, &agent()).unwrap().len(),
        2,
        "the check sees the files are gone"
    );
}

#[test]
fn the_main_config_decides_whether_hosts_toml_applies() {
    let dir = Path::new(DIR);
    let check = |text: &str| check(Some(text), dir).unwrap();
    assert_eq!(
        check(include_str!("fixtures/containerd-1.6-default.toml")),
        Verdict::NotSet,
        "containerd 1.6's default config: the silent failure"
    );
    assert_eq!(
        check(include_str!("fixtures/containerd-2.0-eks.toml")),
        Verdict::Applies,
        "a list of directories, ours among them"
    );
    assert_eq!(
        check(include_str!("fixtures/containerd-1.6-legacy-mirrors.toml")),
        Verdict::LegacyMirrors
    );
    let set = include_str!("fixtures/containerd-1.6-default.toml").replace(
        "config_path = \"\"",
        "config_path = \"/etc/containerd/certs.d/\"",
    );
    assert_eq!(
        check(&set),
        Verdict::Applies,
        "a trailing slash is the same directory"
    );
    let elsewhere = set.replace("/etc/containerd/certs.d/", "/etc/docker/certs.d");
    assert_eq!(
        check(&elsewhere),
        Verdict::Elsewhere("/etc/docker/certs.d".into())
    );
    assert_eq!(check("version = 2\n"), Verdict::NotSet);
    assert_eq!(super::check(None, dir).unwrap(), Verdict::NoConfig);
    assert!(super::check(Some("version = = 2"), dir).is_err());
    let advice = Verdict::NotSet.advice(dir, Path::new(DEFAULT_MAIN_CONFIG));
    assert!(
        advice.contains("config_path = \"/etc/containerd/certs.d\""),
        "{advice}"
    );
}

/// A node's own hosts.toml, as cloud images ship them: a mirror of their own, then the origin.
const NODE_OWN: &str = "# managed by the node image\nserver = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.corp.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"/etc/containerd/certs.d/docker.io/ca.crt\"\n";

#[test]
fn a_nodes_own_hosts_toml_keeps_its_settings_after_the_agent() {
    let text = hosts_toml_over(Some(NODE_OWN), Some("docker.io"), &agent());
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    let hosts: Vec<&str> = doc["host"]
        .as_table_like()
        .unwrap()
        .iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        hosts,
        ["http://127.0.0.1:65001", "https://mirror.corp.example"],
        "the agent first, then the node's mirror: {text}"
    );
    assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
    assert_eq!(
        doc["host"]["https://mirror.corp.example"]["ca"].as_str(),
        Some("/etc/containerd/certs.d/docker.io/ca.crt")
    );
    assert!(text.starts_with(MARKER));
    // A file with no table, one that is not TOML, and one naming the agent already.
    let bare = hosts_toml_over(
        Some("server = \"https://ghcr.io\""),
        Some("ghcr.io"),
        &agent(),
    );
    assert!(
        bare.contains("server = \"https://ghcr.io\"\n\n[host.\"http://127.0.0.1:65001\"]"),
        "{bare}"
    );
    assert_eq!(
        hosts_toml_over(Some("server = ["), Some("ghcr.io"), &agent()),
        hosts_toml(Some("ghcr.io"), &agent())
    );
    let mine = hosts_toml(Some("ghcr.io"), &agent());
    assert_eq!(
        hosts_toml_over(Some(&mine), Some("ghcr.io"), &agent()),
        mine
    );
}

#[test]
fn all_takes_over_the_registries_the_node_configured_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("docker.io")).unwrap();
    std::fs::write(dir.join("docker.io/hosts.toml"), NODE_OWN).unwrap();
    // A directory with only certificates: containerd uses `_default`'s hosts for it.
    std::fs::create_dir_all(dir.join("ghcr.io")).unwrap();
    std::fs::write(dir.join("ghcr.io/ca.crt"), "cert").unwrap();
    assert_eq!(
        missing(dir, &Registries::All, &agent()).unwrap(),
        [
            dir.join("_default/hosts.toml"),
            dir.join("docker.io/hosts.toml")
        ],
        "the check sees docker.io would bypass the agent"
    );
    for change in changes(dir, &Registries::All, &agent()).unwrap() {
        apply(&change).unwrap();
    }
    assert!(missing(dir, &Registries::All, &agent()).unwrap().is_empty());
    let docker = std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap();
    assert!(docker.contains("mirror.corp.example") && docker.contains("127.0.0.1:65001"));
    assert!(!dir.join("ghcr.io/hosts.toml").exists());
    for change in changes(dir, &Registries::All, &agent()).unwrap() {
        assert_eq!(apply(&change).unwrap(), Outcome::Unchanged, "idempotent");
    }
    restore(dir).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap(),
        NODE_OWN
    );
    assert!(!dir.join("_default").exists());
    assert!(dir.join("ghcr.io/ca.crt").exists());
}
