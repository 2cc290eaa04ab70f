//! Serving other sites: the mirror API over TLS, on a listener of its own (`--serve-listen`),
//! to clients that authenticate with a client certificate signed by `--serve-client-ca` or a
//! token from `--serve-tokens`. There is no anonymous remote access: the local mirror stays on
//! loopback, and this listener refuses to start without TLS and at least one way to
//! authenticate. A site's agents name this one in their upstream list and send a token as
//! their Basic password (`[[credentials]]`, which go only to that host), so a region fetches
//! each blob once for every site behind it (`docs/sites.md`).
//!
//! What a site is trusted with: what this agent can fetch with its own configured
//! credentials. A site's `Authorization` header is the site's proof, never passed on: private
//! content fetched with a client's own credentials stays with the local clients.

use base64::Engine;
use http::header::{self, HeaderValue};
use http::Request;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// Deadline for a site's TLS handshake: a connection that does not finish it in time gives
/// its place back.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest token accepted: a token is a password for every image this agent can pull.
pub const MIN_TOKEN_LEN: usize = 16;
/// Tokens a file may hold.
const MAX_TOKENS: usize = 1024;
/// The largest tokens file read.
const MAX_TOKENS_FILE: u64 = 1 << 20;

/// The TLS configuration and the accepted tokens of the listener for other sites.
pub struct SiteServing {
    tls: tokio_rustls::TlsAcceptor,
    tokens: Tokens,
}

/// SHA-256 of each accepted token: compared in constant time, never kept in the clear.
#[derive(Default)]
struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tokens", self.0.len())
    }
}

impl std::fmt::Debug for SiteServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteServing")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Where the listener's certificate, key and credentials come from.
#[derive(Debug, Clone, Copy)]
pub struct SiteFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub tokens: Option<&'a Path>,
    pub client_ca: Option<&'a Path>,
}

impl SiteServing {
    /// Reads the files. Errors name the file and what to do.
    pub fn load(files: SiteFiles<'_>) -> Result<SiteServing, String> {
        if files.tokens.is_none() && files.client_ca.is_none() {
            return Err("--serve-listen needs --serve-tokens or --serve-client-ca: other sites must authenticate (there is no anonymous remote access)".into());
        }
        let certs = read_certs(files.cert)?;
        let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| {
            format!(
                "{}: no usable private key ({e}); give a PEM file with one PKCS#8, PKCS#1 or SEC1 key",
                files.key.display()
            )
        })?;
        let tokens = match files.tokens {
            Some(path) => read_tokens(path)?,
            None => Tokens::default(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match files.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                );
                // With tokens as well, a site without a certificate may still connect and
                // show a token; a certificate it does show must verify.
                let verifier = match tokens.0.is_empty() {
                    true => verifier.build(),
                    false => verifier.allow_unauthenticated().build(),
                };
                builder.with_client_cert_verifier(
                    verifier.map_err(|e| format!("{}: {e}", ca.display()))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "{} and {}: {e} (the key must match the certificate)",
                files.cert.display(),
                files.key.display()
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(SiteServing {
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            tokens,
        })
    }

    /// The TLS handshake, within [`TLS_HANDSHAKE_TIMEOUT`]: the stream, and whether the site
    /// showed a client certificate that verified (the verifier lets no other through).
    pub(crate) async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<tokio::net::TcpStream>, bool)> {
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, self.tls.accept(stream)).await {
            Ok(Ok(tls)) => {
                let verified = tls.get_ref().1.peer_certificates().is_some();
                Some((tls, verified))
            }
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "a site's TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, "a site's TLS handshake timed out");
                None
            }
        }
    }

    /// Whether a request may through: its connection showed a verified certificate, or it
    /// carries a valid token (`Bearer TOKEN`, or Basic with the token as the password). The
    /// `Authorization` header is removed either way, so it never reaches an upstream; a
    /// refused request is answered 401 with a Basic challenge (`http.rs`), so registry clients
    /// send their credentials.
    pub(crate) fn admits<B>(&self, req: &mut Request<B>, verified: bool) -> bool {
        self.tokens.admits(req, verified)
    }
}

impl Tokens {
    /// [`SiteServing::admits`].
    fn admits<B>(&self, req: &mut Request<B>, verified: bool) -> bool {
        let auth = req.headers_mut().remove(header::AUTHORIZATION);
        verified
            || auth
                .as_ref()
                .and_then(token_of)
                .is_some_and(|t| self.knows(&t))
    }

    /// Whether `token` is one of the accepted ones, in time that does not depend on which
    /// (or how much of one) matched.
    fn knows(&self, token: &[u8]) -> bool {
        let hash: [u8; 32] = Sha256::digest(token).into();
        self.0.iter().fold(false, |found, t| {
            let diff = t.iter().zip(hash.iter()).fold(0u8, |d, (a, b)| d | (a ^ b));
            found | (diff == 0)
        })
    }
}

/// The token of an `Authorization` header: `Bearer TOKEN`, or `Basic` with it as the password.
fn token_of(value: &HeaderValue) -> Option<Vec<u8>> {
    let text = value.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().as_bytes().to_vec());
    }
    if !scheme.eq_ignore_ascii_case("basic") || rest.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    decoded.get(colon + 1..).map(<[u8]>::to_vec)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// One token per line; blank lines and `#` comments are skipped. The file must not be
/// readable by other users, and every token must be at least [`MIN_TOKEN_LEN`] bytes.
fn read_tokens(path: &Path) -> Result<Tokens, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{shown} can be read by other users: its tokens open every image this agent pulls (chmod 600 {shown})"
        ));
    }
    let mut text = String::new();
    file.take(MAX_TOKENS_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "{shown} line {}: a token shorter than {MIN_TOKEN_LEN} characters (make one with `openssl rand -hex 32`)",
                n + 1
            ));
        }
        tokens.push(Sha256::digest(line.as_bytes()).into());
    }
    if tokens.is_empty() || tokens.len() > MAX_TOKENS {
        return Err(format!(
            "{shown}: {} tokens; give 1 to {MAX_TOKENS}, one per line",
            tokens.len()
        ));
    }
    Ok(Tokens(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(tokens: &[&str]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        )
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/v2/");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_a_known_token_or_a_verified_certificate_gets_through() {
        let s = tokens(&["a-token-of-enough-length"]);
        let basic = |user: &str, pw: &str| {
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            format!("Basic {enc}")
        };
        for (auth, ok) in [
            (None, false),
            (Some("Bearer a-token-of-enough-length".to_string()), true),
            (Some("bearer a-token-of-enough-length".to_string()), true),
            (Some("Bearer a-token-of-enough-lengtX".to_string()), false),
            (
                Some("Bearer a-token-of-enough-length-and-more".to_string()),
                false,
            ),
            (Some(basic("site-a", "a-token-of-enough-length")), true),
            (Some(basic("a-token-of-enough-length", "")), false),
            (Some("Basic not-base64!".to_string()), false),
            (Some("Digest a-token-of-enough-length".to_string()), false),
        ] {
            let mut req = request(auth.as_deref());
            assert_eq!(s.admits(&mut req, false), ok, "{auth:?}");
            assert!(
                req.headers().get(header::AUTHORIZATION).is_none(),
                "never passed on"
            );
        }
        let mut req = request(None);
        assert!(s.admits(&mut req, true), "a verified certificate is enough");
    }

    #[test]
    fn a_tokens_file_others_can_read_or_with_short_tokens_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# sites\n\nsite-a-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_tokens(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_tokens(&path).unwrap().0.len(), 1);
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_tokens(&path).unwrap_err().contains("shorter than 16"));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read_tokens(&path).unwrap_err().contains("0 tokens"));
    }
}
