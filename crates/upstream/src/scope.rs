//! Where configured credentials may go. A registry's `401` names the token service (the
//! `realm`) to ask; a hostile registry names the token service of a victim registry, with the
//! victim's private repository in the `scope`, and a client that picks the credentials by the
//! realm's host hands it a token for that repository. So credentials are chosen by the
//! configured mirror that challenged, and sent to a realm only when the configuration binds
//! that realm to them: same host and port as the mirror, listed in the credentials' `realms`,
//! or Docker Hub's own token service for Docker Hub. Registries the configuration does not
//! name get anonymous access only.

use crate::{Credentials, Route, UpstreamConfig, DOCKER_HUB};
use http::Uri;

/// Docker Hub's token service, bound to Docker Hub's credentials without configuration.
pub const DOCKER_HUB_REALM: &str = "auth.docker.io";

/// Docker Hub's names (and its token host, a credentials key older configs used) as one.
pub(crate) fn canonical(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io"
        | "registry-1.docker.io"
        | "registry.hub.docker.com"
        | DOCKER_HUB_REALM => DOCKER_HUB.to_string(),
        _ => h,
    }
}

/// Whether the configuration names this registry: the default route and Docker Hub, an `ns`
/// host with a `[registries]` entry or with `[[credentials]]`. Only these use credentials.
pub(crate) fn route_configured(cfg: &UpstreamConfig, route: &Route) -> bool {
    let registry = canonical(&route.registry);
    registry == DOCKER_HUB
        || cfg.registries.contains_key(&route.registry)
        || has_credentials(cfg, &registry)
}

/// Whether `[[credentials]]` name `host` (canonical).
pub(crate) fn has_credentials(cfg: &UpstreamConfig, host: &str) -> bool {
    cfg.credentials.keys().any(|k| canonical(k) == host)
}

/// The credentials configured for a mirror's host, with the key they are configured under.
pub(crate) fn for_mirror<'a>(
    cfg: &'a UpstreamConfig,
    mirror: &Uri,
) -> Option<(&'a str, &'a Credentials)> {
    let authority = mirror.authority()?.as_str().to_ascii_lowercase();
    if let Some((k, c)) = cfg.credentials.get_key_value(&authority) {
        return Some((k.as_str(), c));
    }
    let host = canonical(&authority);
    let mut keys: Vec<_> = cfg
        .credentials
        .iter()
        .filter(|(k, _)| canonical(k) == host)
        .collect();
    // Deterministic when several of Docker Hub's names are configured.
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys.first().map(|(k, c)| (k.as_str(), *c))
}

/// `host:port` with the scheme's default port made explicit.
pub(crate) fn origin(uri: &Uri) -> Option<String> {
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(default_port(uri));
    Some(format!("{host}:{port}"))
}

pub(crate) fn default_port(uri: &Uri) -> u16 {
    if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    }
}

/// What a token request to a realm may carry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RealmUse<'a> {
    /// The realm is bound to the challenging mirror's credentials.
    Credentials(&'a Credentials),
    /// No credentials: none configured for this mirror, or the registry is not configured.
    Anonymous,
    /// Credentials are configured but the realm is not bound to them: asked anonymously.
    Unbound,
}

/// Decides what a token request for `mirror`'s challenge naming `realm` carries; an error
/// when the realm must not be asked at all (plain http for an https registry).
pub(crate) fn realm_use<'a>(
    cfg: &'a UpstreamConfig,
    configured: bool,
    mirror: &Uri,
    realm: &Uri,
) -> Result<RealmUse<'a>, String> {
    match (mirror.scheme_str(), realm.scheme_str()) {
        (_, Some("https")) | (Some("http"), Some("http")) => {}
        (_, Some("http")) => {
            return Err(format!(
                "token realm {realm} is plain http for the https registry {mirror}: refused, nothing sent"
            ))
        }
        _ => return Err(format!("token realm {realm} is neither http nor https")),
    }
    if !configured {
        return Ok(RealmUse::Anonymous);
    }
    let Some((key, creds)) = for_mirror(cfg, mirror) else {
        return Ok(RealmUse::Anonymous);
    };
    if bound(cfg, key, mirror, realm) {
        Ok(RealmUse::Credentials(creds))
    } else {
        Ok(RealmUse::Unbound)
    }
}

/// Whether `realm` may receive the credentials configured under `key` for `mirror`.
fn bound(cfg: &UpstreamConfig, key: &str, mirror: &Uri, realm: &Uri) -> bool {
    let Some(realm_origin) = origin(realm) else {
        return false;
    };
    if origin(mirror).as_deref() == Some(realm_origin.as_str()) {
        return true;
    }
    let hub = mirror.host().is_some_and(|h| canonical(h) == DOCKER_HUB);
    if hub && realm_origin == format!("{DOCKER_HUB_REALM}:443") {
        return true;
    }
    let listed = cfg.realms.get(key).into_iter().flatten();
    listed
        .map(|entry| with_port(entry, default_port(realm)))
        .any(|entry| entry == realm_origin)
}

/// A configured realm host (`host` or `host:port`) as `host:port`.
fn with_port(entry: &str, default: u16) -> String {
    let entry = entry.to_ascii_lowercase();
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            entry
        }
        _ => format!("{entry}:{default}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn cfg() -> UpstreamConfig {
        let mut c = UpstreamConfig::default();
        let creds = |u: &str| Credentials {
            username: u.into(),
            password: "p".into(),
        };
        c.credentials.insert("ghcr.io".into(), creds("g"));
        c.credentials
            .insert("registry.gitlab.com".into(), creds("l"));
        c.credentials.insert("docker.io".into(), creds("d"));
        c.credentials.insert("local:5000".into(), creds("x"));
        c.realms.insert(
            "registry.gitlab.com".into(),
            vec!["GitLab.com".into(), "auth.example:8443".into()],
        );
        c
    }

    fn user(r: Result<RealmUse<'_>, String>) -> Result<Option<String>, String> {
        r.map(|u| match u {
            RealmUse::Credentials(c) => Some(c.username.clone()),
            RealmUse::Anonymous => None,
            RealmUse::Unbound => Some("unbound".into()),
        })
    }

    #[test]
    fn credentials_go_only_to_bound_realms() {
        let c = cfg();
        let ghcr = uri("https://ghcr.io");
        let ok = |m: &Uri, r: &str| user(realm_use(&c, true, m, &uri(r)));
        assert_eq!(ok(&ghcr, "https://ghcr.io/token"), Ok(Some("g".into())));
        assert_eq!(ok(&ghcr, "https://ghcr.io:443/token"), Ok(Some("g".into())));
        // The attack: a realm elsewhere, even the token host of other configured credentials.
        assert_eq!(
            ok(&ghcr, "https://gitlab.com/jwt/auth"),
            Ok(Some("unbound".into()))
        );
        assert_eq!(
            ok(&ghcr, "https://auth.docker.io/token"),
            Ok(Some("unbound".into()))
        );
        assert_eq!(
            ok(&ghcr, "https://ghcr.io:8443/token"),
            Ok(Some("unbound".into()))
        );
        // Listed realms, ports as configured.
        let gitlab = uri("https://registry.gitlab.com");
        assert_eq!(
            ok(&gitlab, "https://gitlab.com/jwt/auth"),
            Ok(Some("l".into()))
        );
        assert_eq!(
            ok(&gitlab, "https://auth.example:8443/t"),
            Ok(Some("l".into()))
        );
        assert_eq!(
            ok(&gitlab, "https://auth.example/t"),
            Ok(Some("unbound".into()))
        );
        // Docker Hub's built-in binding, by any of its names.
        let hub = uri("https://registry-1.docker.io");
        assert_eq!(
            ok(&hub, "https://auth.docker.io/token"),
            Ok(Some("d".into()))
        );
        assert!(ok(&hub, "http://auth.docker.io/token")
            .unwrap_err()
            .contains("plain http"));
        // Plain http: only for a registry configured as http.
        assert!(ok(&ghcr, "http://ghcr.io/token").is_err());
        let local = uri("http://local:5000");
        assert_eq!(ok(&local, "http://local:5000/token"), Ok(Some("x".into())));
        assert!(ok(&ghcr, "ftp://ghcr.io/token").is_err());
        // Unconfigured registries: anonymous, whatever is configured for the host.
        assert_eq!(
            user(realm_use(&c, false, &ghcr, &uri("https://ghcr.io/t"))),
            Ok(None)
        );
        // No credentials for the mirror: anonymous.
        let other = uri("https://quay.io");
        assert_eq!(ok(&other, "https://quay.io/v2/auth"), Ok(None));
    }

    #[test]
    fn docker_hub_names_are_one_registry() {
        let c = cfg();
        for m in ["https://registry-1.docker.io", "https://index.docker.io"] {
            assert_eq!(
                for_mirror(&c, &uri(m)).map(|(_, c)| c.username.as_str()),
                Some("d")
            );
        }
        assert!(for_mirror(&c, &uri("https://docker.io.evil")).is_none());
        let route = |r: &str| Route {
            registry: r.into(),
            mirrors: vec![],
            name: pollen_oci::Name::parse("a").unwrap(),
        };
        assert!(route_configured(&c, &route("docker.io")));
        assert!(route_configured(&c, &route("ghcr.io")));
        assert!(!route_configured(&c, &route("evil.example")));
    }
}
