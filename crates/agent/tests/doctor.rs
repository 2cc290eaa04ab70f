//! `GET /doctor`'s checks against a real (test) upstream: what a healthy agent reports, and
//! a mirror that does not answer is a failing line naming it.

mod common;

use common::cluster::eventually;
use common::*;
use pollen_agent::doctor::Verdict;

#[tokio::test]
async fn a_healthy_agent_and_a_failing_upstream() {
    let reg = pollen_testreg::TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    // A second registry whose only mirror does not listen.
    cfg.upstream
        .registries
        .insert("dead.local".into(), vec!["http://127.0.0.1:9".into()]);
    let h = Harness::with(reg, cfg).await;
    eventually("the agent to be ready", || async { h.agent.is_ready() }).await;
    assert_eq!(
        h.agent.readiness(),
        Ok(()),
        "ready although a mirror is dead: it still serves its cache and peers"
    );
    let checks = h.agent.doctor().await;
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"agent"));
    assert!(
        names.contains(&"cache") && names.contains(&"peers"),
        "{names:?}"
    );
    let line = |name: &str| checks.iter().find(|c| c.name == name).cloned();
    let default = line("upstream default (Docker Hub names)").expect("the default mirror");
    assert_eq!(default.verdict, Verdict::Ok, "{default:?}");
    assert!(default.detail.contains("HTTP 200"), "{default:?}");
    let dead = line("upstream dead.local").expect("the dead registry's line");
    assert_eq!(dead.verdict, Verdict::Fail, "{dead:?}");
    assert!(
        dead.detail.contains("127.0.0.1:9"),
        "names the mirror: {dead:?}"
    );
    let failing: Vec<_> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .collect();
    assert_eq!(failing.len(), 1, "only the dead mirror fails: {checks:?}");
}

fn lines<'a>(
    checks: &'a [pollen_agent::doctor::Check],
    name: &str,
) -> Vec<&'a pollen_agent::doctor::Check> {
    checks.iter().filter(|c| c.name == name).collect()
}

#[tokio::test]
async fn credentials_are_checked_against_the_registry_and_its_token_service() {
    let reg = pollen_testreg::TestRegistry::start().await.unwrap();
    reg.set_auth(pollen_testreg::Auth::Basic {
        username: "u".into(),
        password: "right".into(),
    });
    let mut cfg = config_for(&reg);
    cfg.upstream.credentials.insert(
        reg.host(),
        pollen_upstream::Credentials {
            username: "u".into(),
            password: "right".into(),
        },
    );
    let h = Harness::with(reg, cfg.clone()).await;
    let checks = h.agent.doctor().await;
    let creds = lines(&checks, "credentials");
    // The registry is both the default mirror and its own registry's: two lines.
    assert_eq!(creds.len(), 2, "{checks:?}");
    assert!(creds.iter().all(|c| c.verdict == Verdict::Ok), "{creds:?}");
    assert!(creds[0].detail.contains("accepted"), "{creds:?}");

    // Wrong password, Basic challenge: a failing line that says what to do.
    h.reg.set_auth(pollen_testreg::Auth::Basic {
        username: "u".into(),
        password: "changed".into(),
    });
    let checks = h.agent.doctor().await;
    let creds = lines(&checks, "credentials");
    assert!(
        creds
            .iter()
            .all(|c| c.verdict == Verdict::Fail && c.detail.contains("rejected")),
        "{creds:?}"
    );

    // Bearer tokens whose endpoint wants the password: accepted, then rejected.
    h.reg.set_auth(pollen_testreg::Auth::Token {
        username_password: Some(("u".into(), "right".into())),
    });
    let checks = h.agent.doctor().await;
    assert!(
        lines(&checks, "credentials")
            .iter()
            .all(|c| c.verdict == Verdict::Ok),
        "{checks:?}"
    );
    h.reg.set_auth(pollen_testreg::Auth::Token {
        username_password: Some(("u".into(), "other".into())),
    });
    let checks = h.agent.doctor().await;
    let creds = lines(&checks, "credentials");
    assert!(
        creds
            .iter()
            .all(|c| c.verdict == Verdict::Fail && c.detail.contains("/token")),
        "names the token service: {creds:?}"
    );

    // An open registry: configured credentials are not needed, which is not an error.
    h.reg.set_auth(pollen_testreg::Auth::None);
    let checks = h.agent.doctor().await;
    let creds = lines(&checks, "credentials");
    assert!(
        creds
            .iter()
            .all(|c| c.verdict == Verdict::Ok && c.detail.contains("asks for none")),
        "{creds:?}"
    );
}

#[tokio::test]
async fn throughput_is_measured_per_mirror_in_pull_order_after_a_pull() {
    // Two registries serving the same image: the first mirror listed is slow.
    let slow = pollen_testreg::TestRegistry::start().await.unwrap();
    let fast = pollen_testreg::TestRegistry::start().await.unwrap();
    let layer = random_bytes(6 << 20, 7);
    let img = slow.push_image("app", "v1", vec![layer.clone()]);
    fast.push_image("app", "v1", vec![layer]);
    slow.set_uplink(2 << 20);
    let mut cfg = config_for(&slow);
    cfg.upstream
        .registries
        .insert(slow.host(), vec![slow.url(), fast.url()]);
    let h = Harness::with(slow, cfg).await;
    let name = format!("throughput {}", h.reg.host());
    let before = h.agent.doctor().await;
    let line = lines(&before, &name);
    assert!(
        line.len() == 1 && line[0].detail.contains("not measured"),
        "{before:?}"
    );

    let digest = &img.layer_digests[0];
    let r = h.get(&format!("/v2/app/blobs/{digest}{}", h.ns())).await;
    assert_eq!(sha256(r.bytes()), *digest);
    let checks = h.agent.doctor().await;
    let line = lines(&checks, &name);
    assert_eq!(line.len(), 1, "{checks:?}");
    let t = line[0];
    assert_eq!(
        t.verdict,
        Verdict::Warn,
        "the faster mirror is listed second: {t:?}"
    );
    assert!(
        t.detail.contains(&fast.url()) && t.detail.contains("consider listing it first"),
        "{t:?}"
    );
    let slow_at = t
        .detail
        .find(&h.reg.url())
        .expect("the slow mirror is named");
    let fast_at = t
        .detail
        .find(&fast.url())
        .expect("the fast mirror is named");
    assert!(slow_at < fast_at, "pull order, the configured one: {t:?}");
    assert!(t.detail.contains(digest), "names the blob read: {t:?}");
    assert!(!t.detail.contains("app@"), "but not its repository: {t:?}");
}

#[tokio::test]
async fn a_private_blob_is_not_named_by_the_doctor() {
    let reg = pollen_testreg::TestRegistry::start().await.unwrap();
    let img = reg.push_image("secret-team/app", "v1", vec![random_bytes(1 << 20, 8)]);
    let h = Harness::with(reg.clone(), config_for(&reg)).await;
    let digest = &img.layer_digests[0];
    let r = h
        .send(
            http::Method::GET,
            &format!("/v2/secret-team/app/blobs/{digest}{}", h.ns()),
            &[("authorization", "Bearer pod-secret")],
        )
        .await;
    assert_eq!(sha256(r.bytes()), *digest);
    let checks = h.agent.doctor().await;
    let text = format!("{checks:?}");
    assert!(text.contains("a private blob"), "{text}");
    assert!(!text.contains("secret-team"), "{text}");
    assert!(
        !text.contains(digest.trim_start_matches("sha256:")),
        "{text}"
    );
}

#[tokio::test]
async fn the_clock_is_compared_with_the_trackers() {
    let reg = pollen_testreg::TestRegistry::start().await.unwrap();
    let mut tracker_cfg = common::cluster::agent_config(&reg);
    tracker_cfg.p2p.tracker = true;
    let t = common::cluster::member(&reg, tracker_cfg, None).await;
    let a = common::cluster::member(&reg, common::cluster::agent_config(&reg), Some(&t)).await;
    eventually("the tracker to be known", || async {
        !common::cluster::status(&a).await.trackers.is_empty()
    })
    .await;
    let checks = a.agent.doctor().await;
    let clock = lines(&checks, "clock");
    assert_eq!(clock.len(), 1, "{checks:?}");
    assert_eq!(
        clock[0].verdict,
        Verdict::Ok,
        "one machine, one clock: {clock:?}"
    );
    let tracker = common::cluster::node(&t).peer_id().to_string();
    // Two mirrors' Date headers and the tracker: the largest offset is one of them.
    assert!(clock[0].detail.contains("(3 compared)"), "{clock:?}");
    let trackers = lines(&checks, "trackers");
    assert!(
        trackers[0].detail.contains("1 found"),
        "{trackers:?} {tracker}"
    );
}
