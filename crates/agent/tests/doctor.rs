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
