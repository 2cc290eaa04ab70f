//! Which mirrors serve a request, from the `ns` parameter containerd adds (or its absence).

use crate::UpstreamConfig;
use pollen_oci::Name;

/// The registry host Docker Engine means when it sends no `ns`.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API endpoint.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// The mirrors for one request and the repository name as the upstream knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The registry host the client meant (for logs and metrics).
    pub registry: String,
    pub mirrors: Vec<String>,
    pub name: Name,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("ns {0:?} is not a registry host[:port]")]
    InvalidNs(String),
    #[error("registry {0} is not configured on this agent (add --registry {0}=URL)")]
    NotAllowed(String),
}

impl Route {
    pub fn resolve(
        cfg: &UpstreamConfig,
        ns: Option<&str>,
        name: &Name,
    ) -> Result<Route, RouteError> {
        let registry = match ns {
            None => None,
            Some(ns) if !valid_host(ns) => return Err(RouteError::InvalidNs(ns.to_string())),
            Some(ns) => Some(normalise(ns)),
        };
        let is_hub = registry.as_deref().is_none_or(|r| r == DOCKER_HUB);
        let name = if is_hub {
            name.with_library_prefix()
        } else {
            name.clone()
        };
        let mirrors = match &registry {
            None => cfg.default_mirrors.clone(),
            Some(r) => match cfg.registries.get(r) {
                Some(m) => m.clone(),
                None if r == DOCKER_HUB => vec![crate::DOCKER_HUB_URL.to_string()],
                // `[[credentials]]` for the host name it as much as a `[registries]` entry.
                None if crate::scope::has_credentials(cfg, r) => vec![format!("https://{r}")],
                // Unlisted: fetched anonymously (credentials are for configured routes only).
                None if cfg.allow_unlisted_registries => vec![format!("https://{r}")],
                None => return Err(RouteError::NotAllowed(r.clone())),
            },
        };
        Ok(Route {
            registry: registry.unwrap_or_else(|| DOCKER_HUB.to_string()),
            mirrors,
            name,
        })
    }
}

/// `?ns=REGISTRY` for a request to a mirror of another registry than the mirror's own host,
/// as containerd asks its mirrors: a mirror that serves several registries (a Pollen agent
/// serving other sites, `--serve-listen`) learns which one is meant. Docker Hub's requests go
/// without it, as Docker Engine sends them: a mirror takes a request with no `ns` for Docker
/// Hub. The registry was checked by [`valid_host`], so nothing can be smuggled into the URL.
pub(crate) fn ns_query(mirror: &str, registry: &str) -> String {
    if registry == DOCKER_HUB {
        return String::new();
    }
    let host = mirror
        .split_once("://")
        .map_or(mirror, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    match host.eq_ignore_ascii_case(registry) {
        true => String::new(),
        false => format!("?ns={registry}"),
    }
}

/// Docker Hub goes by several names; they all mean one registry.
fn normalise(ns: &str) -> String {
    match ns {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        other => other.to_ascii_lowercase(),
    }
}

/// `host[:port]` with a DNS name, IPv4 or bracketed IPv6 host: no userinfo, path or query
/// can be smuggled into the upstream URL built from it.
fn valid_host(s: &str) -> bool {
    if s.is_empty() || s.len() > 260 {
        return false;
    }
    let (host_ok, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, p)) => (
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
                p.strip_prefix(':').or(p.is_empty().then_some("")),
            ),
            None => return false,
        },
        None => {
            let (h, p) = match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, Some("")),
            };
            (valid_dns(h), p)
        }
    };
    let port_ok = port
        .is_some_and(|p| p.is_empty() || (p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())))
        && !s.ends_with(':');
    host_ok && port_ok
}

fn valid_dns(h: &str) -> bool {
    !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_of_another_registry_is_told_which_one() {
        assert_eq!(ns_query("https://parent:8443", "ghcr.io"), "?ns=ghcr.io");
        assert_eq!(ns_query("https://parent:8443/", "reg:5000"), "?ns=reg:5000");
        assert_eq!(
            ns_query("https://ghcr.io", "ghcr.io"),
            "",
            "the registry itself"
        );
        assert_eq!(
            ns_query("http://REG:5000", "reg:5000"),
            "",
            "hosts compare without case"
        );
        assert_eq!(
            ns_query("https://parent:8443", DOCKER_HUB),
            "",
            "Docker Hub: no ns"
        );
    }

    fn cfg() -> UpstreamConfig {
        let mut c = UpstreamConfig {
            default_mirrors: vec!["http://default".into()],
            ..Default::default()
        };
        c.registries.insert(
            "r.example:5000".into(),
            vec!["http://m1".into(), "https://r.example:5000".into()],
        );
        c
    }

    #[test]
    fn routes() {
        let c = cfg();
        let n = Name::parse("busybox").unwrap();
        let r = Route::resolve(&c, None, &n).unwrap();
        assert_eq!(
            (r.mirrors, r.name.as_str()),
            (vec!["http://default".to_string()], "library/busybox")
        );
        let r = Route::resolve(&c, Some("docker.io"), &n).unwrap();
        assert_eq!(
            (r.mirrors, r.name.as_str()),
            (vec![DOCKER_HUB_URL.to_string()], "library/busybox")
        );
        let r = Route::resolve(&c, Some("r.example:5000"), &n).unwrap();
        assert_eq!(r.mirrors.len(), 2);
        assert_eq!(r.name.as_str(), "busybox");
        let r = Route::resolve(&c, Some("ghcr.io"), &n).unwrap();
        assert_eq!(r.mirrors, vec!["https://ghcr.io".to_string()]);
        assert!(Route::resolve(&c, Some("[::1]:5000"), &n).is_ok());
    }

    #[test]
    fn hostile_ns() {
        let c = cfg();
        let n = Name::parse("a").unwrap();
        for bad in [
            "", "a/b", "u@h", "h:", "h:99999x", "h?x=1", "a..b", "h#", "[zz]", "h:1/2", " h",
        ] {
            assert!(Route::resolve(&c, Some(bad), &n).is_err(), "{bad}");
        }
        let strict = UpstreamConfig {
            allow_unlisted_registries: false,
            ..cfg()
        };
        assert_eq!(
            Route::resolve(&strict, Some("ghcr.io"), &n),
            Err(RouteError::NotAllowed("ghcr.io".into()))
        );
        // Credentials for a host list it (over https).
        let mut listed = strict.clone();
        listed.credentials.insert(
            "ghcr.io".into(),
            crate::Credentials {
                username: "u".into(),
                password: "p".into(),
            },
        );
        let r = Route::resolve(&listed, Some("ghcr.io"), &n).unwrap();
        assert_eq!(r.mirrors, vec!["https://ghcr.io".to_string()]);
    }
}
