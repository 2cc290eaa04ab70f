//! Crash points: named instants in the commit paths (between the last write and the rename,
//! while `state.json` or a sidecar is replaced) where the fault tests have the process killed
//! with SIGKILL. Random kill times hit these windows rarely; a named point proves the store's
//! promise — a crash never leaves a file that looks complete and is not — at exactly the
//! instants that matter.
//!
//! Armed only by the environment variable [`ENV`] (`NAME`, or `NAME:N` for the Nth time NAME
//! is reached). Unset, as in every deployment, a point costs one load of a once-initialised
//! value. Whoever can set an agent's environment can already kill it, so the variable gives
//! nothing away.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
const ENV: &str = "POLLEN_CRASH_AT";

/// Every crash point (e2e step l, `tests/e2e/killloop.sh`, visits each); another name arms
/// nothing.
const POINTS: &[&str] = &[
    "manifest.before_rename",
    "mediatype.before_rename",
    "blob.before_rename",
    "blob.after_rename",
    "pieces.before_rename",
    "state.before_rename",
];

struct Armed {
    name: &'static str,
    at: u32,
    seen: AtomicU32,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Kills this process with SIGKILL if `name` is the armed point and this is its Nth visit.
pub(crate) fn point(name: &'static str) {
    debug_assert!(
        POINTS.contains(&name),
        "crash point {name} is not in POINTS"
    );
    let Some(armed) = ARMED.get_or_init(|| armed_from(std::env::var(ENV).ok().as_deref())) else {
        return;
    };
    if armed.name != name {
        return;
    }
    let n = armed.seen.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    if n == armed.at {
        kill_self();
    }
}

fn armed_from(value: Option<&str>) -> Option<Armed> {
    let (name, at) = parse(value?)?;
    Some(Armed {
        name,
        at,
        seen: AtomicU32::new(0),
    })
}

/// `NAME` or `NAME:N` (N ≥ 1); anything else arms nothing.
fn parse(value: &str) -> Option<(&'static str, u32)> {
    let (name, at) = match value.split_once(':') {
        Some((name, n)) => (name, n.parse().ok().filter(|n| *n >= 1)?),
        None => (value, 1),
    };
    POINTS.iter().find(|p| **p == name).map(|p| (*p, at))
}

fn kill_self() {
    tracing::warn!("{ENV}: killing this process with SIGKILL at the armed crash point");
    // SIGKILL, not abort: no handler, no core dump, exactly what the OOM killer or a node
    // reset does. Should the signal somehow fail, abort is the next-closest thing.
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_known_points_with_positive_counts_arm() {
        assert_eq!(parse("blob.before_rename"), Some(("blob.before_rename", 1)));
        assert_eq!(
            parse("state.before_rename:3"),
            Some(("state.before_rename", 3))
        );
        assert_eq!(parse("state.before_rename:0"), None);
        assert_eq!(parse("state.before_rename:x"), None);
        assert_eq!(parse("no.such.point"), None);
        assert_eq!(parse(""), None);
    }
}
