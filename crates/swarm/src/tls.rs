//! The libp2p TLS 1.3 handshake (`/tls/1.0.0`), preferring AES-GCM.
//!
//! libp2p-tls offers ChaCha20-Poly1305 first, and a rustls server follows the client's
//! order, so two stock libp2p nodes always run ChaCha. On CPUs with AES instructions (every
//! x86-64 and arm64 server) AES-GCM costs a fraction of that: on the 2-core test machine one
//! stream went from ~0.6 to ~1.2 GB/s (`docs/transport.md`). libp2p-tls does not let a caller
//! choose suites, so this module builds the same rustls configuration with AES first, and as
//! a server picks by its own order, so AES is used whichever side dials, also with stock
//! libp2p peers.
//!
//! Everything that decides trust is libp2p-tls's own public code: the certificate (an
//! ephemeral P-256 key whose libp2p extension is signed by the node's identity key) is made by
//! `certificate::generate`, and every presented certificate is checked by
//! `certificate::parse` (self-signature, validity, the extension's signature) and its
//! handshake signature by `P2pCertificate::verify_signature`. What remains here is wiring,
//! as in libp2p-tls's `verifier.rs` and `upgrade.rs` (MIT licence), which it follows.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::futures::future::BoxFuture;
use libp2p::futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use libp2p::PeerId;

use crate::key::SwarmKey;
use crate::proof::{self, Role, EXPORTER_LABEL, PROOF_BYTES};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};

/// The ALPN protocol of libp2p's TLS handshake.
const P2P_ALPN: &[u8] = b"libp2p";

/// The upgrade: libp2p TLS 1.3 with AES-GCM first, and with a swarm key, its proof.
#[derive(Clone)]
pub struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    swarm_key: Option<SwarmKey>,
}

impl Config {
    pub fn new(key: &Keypair) -> Result<Config, String> {
        let (cert, private_key) = certificate::generate(key).map_err(|e| e.to_string())?;
        let signing_key = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&private_key)
            .map_err(|e| e.to_string())?;
        // Not `with_single_cert`: rustls would parse the certificate with webpki, which
        // rejects libp2p's critical extension.
        let certified = Arc::new(OurCert(Arc::new(CertifiedKey::new(
            vec![cert],
            signing_key,
        ))));
        let verifier = Arc::new(Verifier);

        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(certified.clone());
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(certified);

        let (mut server, mut client) = (server, client);
        // Our order, not the client's: AES-GCM also when a stock libp2p node dials us.
        server.ignore_client_order = true;
        server.alpn_protocols = vec![P2P_ALPN.to_vec()];
        client.alpn_protocols = vec![P2P_ALPN.to_vec()];
        // libp2p forbids SNI; the name passed to the connector is a placeholder.
        client.enable_sni = false;
        // No session resumption: connections are long-lived, and with one placeholder server
        // name for every peer a resumption cache would only be a source of surprises. Every
        // connection runs the full handshake and presents its certificate.
        client.resumption = rustls::client::Resumption::disabled();
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Config {
            server: Arc::new(server),
            client: Arc::new(client),
            swarm_key: None,
        })
    }

    /// Every connection must prove `key` right after the handshake ([`crate::proof`]).
    pub fn with_swarm_key(mut self, key: Option<SwarmKey>) -> Config {
        self.swarm_key = key;
        self
    }
}

/// What this session exports for the key proof: the same on both ends of this session only.
fn exported<D>(conn: &rustls::ConnectionCommon<D>) -> io::Result<[u8; PROOF_BYTES]> {
    conn.export_keying_material([0u8; PROOF_BYTES], EXPORTER_LABEL, None)
        .map_err(io::Error::other)
}

/// Our certificate, presented to every peer in both roles.
#[derive(Debug)]
struct OurCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OurCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for OurCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// aws-lc (as libp2p-tls, including its post-quantum key exchange first) with the suites
/// reordered.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/tls/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Self::Output, io::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let mut stream = TlsAcceptor::from(self.server).accept(socket).await?;
            let peer = remote_peer_id(stream.get_ref().1)?;
            if let Some(key) = &self.swarm_key {
                let session = exported(stream.get_ref().1)?;
                proof::exchange(&mut stream, key, &session, Role::Listener).await?;
            }
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Self::Output, io::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let mut stream = TlsConnector::from(self.client)
                .connect(name, socket)
                .await?;
            let peer = remote_peer_id(stream.get_ref().1)?;
            if let Some(key) = &self.swarm_key {
                let session = exported(stream.get_ref().1)?;
                proof::exchange(&mut stream, key, &session, Role::Dialer).await?;
            }
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// The PeerId in the (already verified) certificate the remote presented. The swarm checks
/// it against the PeerId it meant to dial.
fn remote_peer_id(state: &CommonState) -> io::Result<PeerId> {
    match state.peer_certificates() {
        Some([cert]) => certificate::parse(cert)
            .map(|c| c.peer_id())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "libp2p TLS needs exactly one certificate",
        )),
    }
}

/// Accepts exactly one self-signed certificate carrying a valid libp2p extension, as
/// libp2p-tls's verifier does; both directions authenticate (client certificates are
/// mandatory).
#[derive(Debug)]
struct Verifier;

impl Verifier {
    fn check(
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p TLS needs exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity).map_err(invalid)?;
        Ok(())
    }

    fn check_signature(
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
        message: &[u8],
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)
            .map_err(invalid)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(invalid)?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

fn invalid<E: std::error::Error + Send + Sync + 'static>(e: E) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// TLS 1.2 is never negotiated (the configs allow 1.3 only); refuse rather than panic.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General(
        "TLS 1.2 is not used by libp2p".into(),
    ))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Verifier::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Verifier::check_signature(cert, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Verifier::schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Verifier::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Verifier::check_signature(cert, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Verifier::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
    use rustls::CipherSuite;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    const TLS: &str = "/tls/1.0.0";

    async fn tcp_pair() -> (Compat<TcpStream>, Compat<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap().compat(), server.unwrap().0.compat())
    }

    fn suite<C>(stream: &TlsStream<C>) -> CipherSuite {
        let state: &CommonState = match stream {
            TlsStream::Client(s) => s.get_ref().1,
            TlsStream::Server(s) => s.get_ref().1,
        };
        state.negotiated_cipher_suite().unwrap().suite()
    }

    fn keys() -> (Keypair, Keypair) {
        (Keypair::generate_ed25519(), Keypair::generate_ed25519())
    }

    #[tokio::test]
    async fn both_sides_authenticated_with_aes() {
        let (ka, kb) = keys();
        let (c, s) = tcp_pair().await;
        let client = Config::new(&ka).unwrap().upgrade_outbound(c, TLS);
        let server = Config::new(&kb).unwrap().upgrade_inbound(s, TLS);
        let (client, server) = tokio::join!(client, server);
        let ((server_id, mut cs), (client_id, mut ss)) = (client.unwrap(), server.unwrap());
        assert_eq!(server_id, kb.public().to_peer_id());
        assert_eq!(client_id, ka.public().to_peer_id());
        assert_eq!(suite(&cs), CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(suite(&ss), CipherSuite::TLS13_AES_128_GCM_SHA256);

        cs.write_all(b"hello").await.unwrap();
        cs.flush().await.unwrap();
        let mut buf = [0u8; 5];
        ss.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    /// Whether an upgraded connection carries the other end's "hi" intact.
    async fn talks<S: AsyncRead + AsyncWrite + Unpin>(up: io::Result<(PeerId, S)>) -> bool {
        let Ok((_, mut stream)) = up else {
            return false;
        };
        let mut buf = [0u8; 2];
        let exchanged = async {
            stream.write_all(b"hi").await?;
            stream.flush().await?;
            stream.read_exact(&mut buf).await
        };
        let within = std::time::Duration::from_secs(5);
        matches!(tokio::time::timeout(within, exchanged).await, Ok(Ok(()))) && &buf == b"hi"
    }

    /// A dialer and a listener, each with its swarm key or none: whether each end talks.
    async fn keyed_pair(a: Option<SwarmKey>, b: Option<SwarmKey>) -> (bool, bool) {
        let (ka, kb) = keys();
        let (c, s) = tcp_pair().await;
        let client = Config::new(&ka).unwrap().with_swarm_key(a);
        let server = Config::new(&kb).unwrap().with_swarm_key(b);
        tokio::join!(
            async { talks(client.upgrade_outbound(c, TLS).await).await },
            async { talks(server.upgrade_inbound(s, TLS).await).await },
        )
    }

    #[tokio::test]
    async fn only_holders_of_the_same_swarm_key_talk() {
        let (k1, k2) = (SwarmKey::from_bytes([1; 32]), SwarmKey::from_bytes([2; 32]));
        assert_eq!(keyed_pair(Some(k1), Some(k1)).await, (true, true));
        assert_eq!(keyed_pair(Some(k1), Some(k2)).await, (false, false));
        assert_eq!(keyed_pair(None, Some(k1)).await, (false, false));
        assert_eq!(keyed_pair(Some(k1), None).await, (false, false));
        assert_eq!(keyed_pair(None, None).await, (true, true));
    }

    #[tokio::test]
    async fn a_stock_libp2p_node_without_the_key_is_refused_by_a_keyed_server() {
        let (ka, kb) = keys();
        let (c, s) = tcp_pair().await;
        let client = libp2p::tls::Config::new(&ka).unwrap();
        let server = Config::new(&kb)
            .unwrap()
            .with_swarm_key(Some(SwarmKey::from_bytes([3; 32])));
        let (_, server) = tokio::join!(
            async {
                let up = client.upgrade_outbound(c, TLS).await;
                talks(up.map_err(io::Error::other)).await
            },
            async { talks(server.upgrade_inbound(s, TLS).await).await },
        );
        assert!(!server);
    }

    #[tokio::test]
    async fn stock_libp2p_client_gets_aes_from_our_server() {
        let (ka, kb) = keys();
        let (c, s) = tcp_pair().await;
        let client = libp2p::tls::Config::new(&ka)
            .unwrap()
            .upgrade_outbound(c, TLS);
        let server = Config::new(&kb).unwrap().upgrade_inbound(s, TLS);
        let (client, server) = tokio::join!(client, server);
        let ((server_id, _), (client_id, ss)) = (client.unwrap(), server.unwrap());
        assert_eq!(server_id, kb.public().to_peer_id());
        assert_eq!(client_id, ka.public().to_peer_id());
        assert_eq!(suite(&ss), CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[tokio::test]
    async fn our_client_works_with_a_stock_libp2p_server() {
        let (ka, kb) = keys();
        let (c, s) = tcp_pair().await;
        let client = Config::new(&ka).unwrap().upgrade_outbound(c, TLS);
        let server = libp2p::tls::Config::new(&kb)
            .unwrap()
            .upgrade_inbound(s, TLS);
        let (client, server) = tokio::join!(client, server);
        let ((server_id, cs), (client_id, _)) = (client.unwrap(), server.unwrap());
        assert_eq!(server_id, kb.public().to_peer_id());
        assert_eq!(client_id, ka.public().to_peer_id());
        assert_eq!(suite(&cs), CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[tokio::test]
    async fn plain_tls_client_without_libp2p_certificate_is_refused() {
        // A TLS 1.3 client that presents no certificate at all: client auth is mandatory.
        let (_, kb) = keys();
        let (c, s) = tcp_pair().await;
        let plain = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier))
            .with_no_client_auth();
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let client = async {
            let mut stream = TlsConnector::from(Arc::new(plain)).connect(name, c).await?;
            // TLS 1.3: the server's verdict on our (missing) certificate arrives after the
            // client finished; reading surfaces it.
            let mut buf = [0u8; 1];
            stream.read(&mut buf).await
        };
        let server = Config::new(&kb).unwrap().upgrade_inbound(s, TLS);
        let (client, server) = tokio::join!(client, server);
        assert!(server.is_err(), "the server must refuse");
        assert!(!matches!(client, Ok(n) if n > 0));
    }
}
