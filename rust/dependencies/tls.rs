//! TLS for the network kinds: rustls with the `ring` provider (it builds with a plain C compiler, so the
//! manylinux wheel cross-builds with zig), named explicitly rather than installed process-wide.
//!
//! What a check trusts is the system's root certificates (read once, by rustls-native-certs: the distro's
//! bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), or, when the check gives `ca_file`, that file's
//! certificates instead: a private CA is then the only one that can vouch for the server, as with libpq's
//! `sslrootcert` or curl's `--cacert`. Errors name the cause of a failed handshake, never a credential.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

/// How much of the server's certificate is checked.
pub enum Verify {
    /// Nothing but the handshake's own signatures: encryption against a passive eavesdropper only
    /// (PostgreSQL's `sslmode=prefer` and `require`, as libpq).
    Nothing,
    /// The chain up to a trusted root, whatever host it names (`sslmode=verify-ca`).
    Chain(Arc<RootCertStore>),
    /// The chain and the host name: https, rediss, `sslmode=verify-full`.
    ChainAndName(Arc<RootCertStore>),
}

const NO_SYSTEM_ROOTS: &str =
    "no root certificates found on this system (install the ca-certificates package, \
     set SSL_CERT_FILE, or give ca_file)";

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    // Deprecated since rustls 0.23.48 because ring has no post-quantum key exchange (X25519MLKEM768 needs
    // aws-lc-rs, which the zig-built manylinux2014 wheel cannot take): the key exchange is classical
    // (X25519, P-256, P-384), which every server offers.
    #[allow(deprecated)]
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The certificates to verify a server against: `ca_file`'s if given (it must hold at least one), else the
/// system's (there must be some; if not, the error names `key`, the setting that asks for TLS).
pub fn roots(ca_file: Option<&Path>, key: &str) -> Result<Arc<RootCertStore>, String> {
    match ca_file {
        Some(path) => read_ca_file(path),
        None => {
            let roots = system_roots();
            if roots.is_empty() {
                return Err(format!("{key}: {NO_SYSTEM_ROOTS}"));
            }
            Ok(roots)
        }
    }
}

/// The system's root certificates, read once per process; empty when there are none.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        // Certificates that do not load or parse are skipped, as every TLS client does with a bundle.
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(found.certs);
        Arc::new(store)
    }))
}

fn read_ca_file(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|err| format!("ca_file: cannot read '{shown}': {}", super::io_reason(&err)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("ca_file: '{shown}' is not a valid PEM file: {err}"))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file: no certificate in '{shown}' (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut store = RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(certs);
    if unusable > 0 {
        return Err(format!("ca_file: '{shown}' holds {unusable} certificate(s) that cannot be parsed"));
    }
    Ok(Arc::new(store))
}

/// A client configuration verifying as `verify` says and offering `alpn` (most preferred first).
pub fn client_config(verify: Verify, alpn: &[&[u8]]) -> ClientConfig {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the default protocol versions");
    let mut config = match verify {
        Verify::ChainAndName(roots) => builder.with_root_certificates(roots),
        Verify::Chain(roots) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider }))
        }
        Verify::Nothing => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(SignaturesOnly(provider)))
        }
    }
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config
}

/// The name a certificate must show for `host` (a DNS name or an IP address), or why there is none.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|_| format!("'{host}' is not a host name TLS can verify"))
}

/// A TLS session over `stream`, or why the handshake failed.
pub async fn connect<S>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    stream: S,
) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config).connect(name, stream).await
}

/// The text of a failed handshake found in `err`'s chain (`TLS handshake failed: ...`), if it is one.
pub fn describe(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(format!("TLS handshake failed: {}", cause(tls)));
        }
        // An I/O error's source() skips the error it wraps, which is where tokio-rustls puts rustls'.
        if let Some(wrapped) = error.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            next = Some(wrapped);
            continue;
        }
        next = error.source();
    }
    None
}

/// The handshake's I/O error when it is not rustls' own: the server closed the connection mid-handshake.
pub fn describe_io(err: &io::Error) -> String {
    match describe(err) {
        Some(text) => text,
        None if err.kind() == io::ErrorKind::UnexpectedEof => {
            "TLS handshake failed: the server closed the connection (is TLS enabled on this port?)".to_owned()
        }
        None => format!("TLS handshake failed: {}", super::io_reason(err)),
    }
}

fn cause(err: &rustls::Error) -> String {
    use rustls::Error as E;
    use CertificateError as C;
    match err {
        E::InvalidCertificate(C::UnknownIssuer) => "certificate not trusted (unknown issuer)".to_owned(),
        E::InvalidCertificate(C::NotValidForNameContext { expected, .. }) => {
            format!("certificate not valid for host '{}'", expected.to_str())
        }
        E::InvalidCertificate(C::NotValidForName) => "certificate not valid for this host".to_owned(),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "certificate expired".to_owned(),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate not valid yet".to_owned()
        }
        E::InvalidCertificate(C::Revoked) => "certificate revoked".to_owned(),
        E::InvalidCertificate(other) => format!("certificate rejected: {other}"),
        // A server that answers in its plain protocol (an HTTP 400, a Redis error) on a TLS handshake.
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "the server did not answer in TLS (is TLS enabled on this port?)".to_owned()
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (not supported)".to_owned()
        }
        E::AlertReceived(alert) => format!("the server refused it (alert {alert:?})"),
        other => other.to_string(),
    }
}

/// `sslmode=verify-ca`: the chain must reach a trusted root; the name it is issued for is not looked at.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms(&self.provider).supported_schemes()
    }
}

/// `sslmode=prefer` and `require` (without a CA): any certificate, but the handshake must still be signed
/// by the key of the certificate the server sent.
#[derive(Debug)]
struct SignaturesOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(&self.0, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.0, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms(&self.0).supported_schemes()
    }
}

fn algorithms(provider: &CryptoProvider) -> &WebPkiSupportedAlgorithms {
    &provider.signature_verification_algorithms
}

fn verify_tls12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(provider))
}

fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(provider))
}

/// PostgreSQL over TLS: tokio-postgres' TLS interface on tokio-rustls, for the stream the kind connects
/// itself. Without channel binding (tokio-postgres then authenticates with SCRAM-SHA-256, not -PLUS):
/// computing it needs an X.509 parser for the certificate's signature algorithm, a dependency this check
/// does not need otherwise; a DSN asking for `channel_binding=require` is refused up front.
pub struct PostgresTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// A failed TLS handshake with PostgreSQL, told apart from the connection's other errors (sslmode=prefer
/// retries without TLS after one, as libpq does).
#[derive(Debug)]
pub struct PostgresHandshake(pub io::Error);

impl std::fmt::Display for PostgresHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_io(&self.0))
    }
}

impl StdError for PostgresHandshake {}

impl<S> tokio_postgres::tls::TlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = PostgresHandshake;
    type Future = Pin<Box<dyn Future<Output = Result<PostgresTlsStream<S>, PostgresHandshake>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            connect(self.config, self.name, stream).await.map(PostgresTlsStream).map_err(PostgresHandshake)
        })
    }
}

pub struct PostgresTlsStream<S>(TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for PostgresTlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
