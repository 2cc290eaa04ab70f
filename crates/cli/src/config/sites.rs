//! The listener for other sites (`--serve-listen`): all of its settings or none of them.

use super::{invalid, ConfigError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The `--serve-*` settings as given (flag, environment or file).
pub struct SiteKeys {
    pub listen: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub tokens: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// The listener and its TLS and credentials, read now so that a bad file stops the start with
/// its name; `None` without `--serve-listen`. TLS files or credentials without the listener are
/// an error too: they suggest a listener the operator thinks is there.
pub fn resolve(
    keys: SiteKeys,
) -> Result<Option<(SocketAddr, pollen_agent::SiteServing)>, ConfigError> {
    let Some(listen) = keys.listen else {
        let given = [&keys.cert, &keys.key, &keys.tokens, &keys.client_ca];
        if given.iter().any(|k| k.is_some()) {
            return Err(invalid(
                "serve-listen",
                "--serve-tls-cert, --serve-tls-key, --serve-tokens and --serve-client-ca apply only with --serve-listen ADDR",
            ));
        }
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (&keys.cert, &keys.key) else {
        return Err(invalid(
            "serve-listen",
            "other sites are served over TLS only: give --serve-tls-cert and --serve-tls-key",
        ));
    };
    let files = pollen_agent::SiteFiles {
        cert,
        key,
        tokens: keys.tokens.as_deref(),
        client_ca: keys.client_ca.as_deref(),
    };
    let serving = pollen_agent::SiteServing::load(files).map_err(|e| invalid("serve-listen", e))?;
    Ok(Some((listen, serving)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SiteKeys {
        SiteKeys {
            listen: None,
            cert: None,
            key: None,
            tokens: None,
            client_ca: None,
        }
    }

    fn err(k: SiteKeys) -> String {
        resolve(k).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn no_listener_for_sites_unless_it_has_tls_and_authentication() {
        assert!(resolve(keys()).unwrap().is_none(), "off by default");
        let listen = Some(SocketAddr::from(([0, 0, 0, 0], 8443)));
        let cert = Some(PathBuf::from("/nonexistent/cert.pem"));
        let key = Some(PathBuf::from("/nonexistent/key.pem"));
        let e = err(SiteKeys { listen, ..keys() });
        assert!(e.contains("over TLS only"), "{e}");
        let e = err(SiteKeys {
            listen,
            cert: cert.clone(),
            key: key.clone(),
            ..keys()
        });
        assert!(e.contains("no anonymous remote access"), "{e}");
        let e = err(SiteKeys {
            listen,
            cert: cert.clone(),
            key: key.clone(),
            tokens: Some(PathBuf::from("/nonexistent/tokens")),
            ..keys()
        });
        assert!(e.contains("/nonexistent/cert.pem"), "names the file: {e}");
        let e = err(SiteKeys { cert, ..keys() });
        assert!(e.contains("only with --serve-listen"), "{e}");
    }
}
