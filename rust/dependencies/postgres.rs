//! `postgres`: runs a query (`SELECT 1` unless told otherwise) on a connection kept between runs.
//!
//! The connection is opened by the first run and replaced when a run fails or the server closed it, never
//! opened per run. We connect the socket ourselves (so that a name that does not resolve and a refused
//! port are told apart) and hand it to tokio-postgres, with TLS as the DSN's `sslmode` says (libpq's
//! rules, see [`SslMode`]); its connection task runs on the runtime the check runs on, and ends when the
//! client is dropped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::ClientConfig;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{ChannelBinding, Host, SslNegotiation};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{Client, Config, NoTls};

use super::tls;
use crate::checks::{CheckResult, Probe};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    dsn: String,
    #[serde(default = "select_one")]
    query: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn select_one() -> String {
    "SELECT 1".to_owned()
}

const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`s but `allow`. tokio-postgres knows the first three; the `verify-*` modes are
/// `require` to it, with the certificate checked by our verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, unverified; plain if it does not, or if the handshake fails (the
    /// default, as libpq's).
    Prefer,
    /// TLS, unverified; with `ca_file`, the chain is verified (libpq: "if a root CA file exists,
    /// require behaves as verify-ca").
    Require,
    /// TLS, the chain verified up to `ca_file`'s CA, whatever host the certificate names.
    VerifyCa,
    /// TLS, the chain verified (`ca_file`, or the system's roots) and the certificate issued for the host.
    VerifyFull,
}

/// Where a server listens, in the order the DSN lists them.
enum Target {
    Tcp {
        /// What to connect to: the host, or its `hostaddr` when the DSN gives one.
        address: String,
        port: u16,
        /// The name the certificate must show: the host's (as libpq, even when `hostaddr` is given).
        name: String,
    },
    /// The socket file in a directory, as libpq names it: `<dir>/.s.PGSQL.<port>`. Never TLS (as libpq:
    /// sslmode is ignored on Unix sockets).
    Unix { socket: PathBuf },
}

pub struct Postgres {
    config: Config,
    /// The same without TLS: for Unix sockets, and for `prefer`'s second try.
    plain: Config,
    mode: SslMode,
    /// The session's configuration, for every mode but `disable`.
    tls: Option<Arc<ClientConfig>>,
    targets: Vec<Target>,
    user: String,
    query: String,
    /// The connection kept between runs; a run takes it out and puts it back only if it worked.
    kept: Mutex<Option<Client>>,
}

impl Postgres {
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings { dsn, query, ca_file } = super::settings(settings)?;
        if query.trim().is_empty() {
            return Err("query must not be empty".to_owned());
        }
        let (config, mode) = parse_dsn(&dsn)?;
        let user = config
            .get_user()
            .filter(|user| !user.is_empty())
            .ok_or("dsn: no user given (user=... or postgresql://user@host/db)")?;
        let user = user.to_owned();
        let targets = targets(&config)?;
        let tls = tls_config(mode, ca_file)?;
        if tls.is_some() {
            if config.get_channel_binding() == ChannelBinding::Require {
                return Err("dsn: channel_binding=require is not supported (TLS channel binding)".to_owned());
            }
            for target in &targets {
                if let Target::Tcp { name, .. } = target {
                    tls::server_name(name).map_err(|why| format!("dsn: {why}"))?;
                }
            }
        }
        let mut plain = config.clone();
        plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Ok(Self { config, plain, mode, tls, targets, user, query, kept: Mutex::new(None) })
    }

    pub fn probe(self, timeout: Duration) -> impl Probe {
        super::probe_within(self, timeout, |this| async move { this.check().await })
    }

    async fn check(&self) -> CheckResult {
        let kept = self.lock_kept().take().filter(|client| !client.is_closed());
        if let Some(client) = kept {
            match client.simple_query(&self.query).await {
                Ok(_) => return Ok(self.keep(client)),
                // The server went away since the last run (a restart): a fresh connection decides.
                Err(err) if err.as_db_error().is_none() => {}
                Err(err) => return Err(self.describe(&err, "query failed")),
            }
        }
        let client = self.connect().await?;
        match client.simple_query(&self.query).await {
            Ok(_) => Ok(self.keep(client)),
            Err(err) => Err(self.describe(&err, "query failed")),
        }
    }

    fn keep(&self, client: Client) -> f64 {
        *self.lock_kept() = Some(client);
        1.0
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects to the first target that accepts, as libpq does with several hosts.
    async fn connect(&self) -> Result<Client, String> {
        let mut failures = Vec::new();
        for target in &self.targets {
            let connected = match target {
                Target::Tcp { address, port, name } => self.connect_tcp(address, *port, name).await,
                Target::Unix { socket } => match tokio::net::UnixStream::connect(socket).await {
                    Ok(stream) => {
                        self.startup(stream, &self.plain, NoTls).await.map_err(|err| self.refused(&err))
                    }
                    Err(err) => Err(format!("cannot connect to the Unix socket: {}", super::io_reason(&err))),
                },
            };
            match connected {
                Ok(client) => return Ok(client),
                Err(why) => failures.push(why),
            }
        }
        Err(failures.join("; "))
    }

    async fn connect_tcp(&self, address: &str, port: u16, name: &str) -> Result<Client, String> {
        let stream = super::connect_tcp(address, port).await?;
        let Some(config) = &self.tls else {
            return self.startup(stream, &self.config, NoTls).await.map_err(|err| self.refused(&err));
        };
        // Checked at parse time.
        let name = tls::server_name(name)?;
        let tls = tls::PostgresTls { config: Arc::clone(config), name };
        match self.startup(stream, &self.config, tls).await {
            // As libpq: with prefer, a failed TLS handshake is tried again without TLS, on a new
            // connection (the failed one is in no state to go on).
            Err(err) if self.mode == SslMode::Prefer && handshake(&err).is_some() => {
                let stream = super::connect_tcp(address, port).await?;
                self.startup(stream, &self.plain, NoTls).await.map_err(|err| self.refused(&err))
            }
            result => result.map_err(|err| self.refused(&err)),
        }
    }

    /// The startup (TLS as `config` says, then authentication) over `stream`.
    async fn startup<S, T>(&self, stream: S, config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: TlsConnect<S>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = config.connect_raw(stream, tls).await?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server closes; a broken connection shows as a
            // closed client, which the next run replaces.
            let _ = connection.await;
        });
        Ok(client)
    }

    fn refused(&self, err: &tokio_postgres::Error) -> String {
        self.describe(err, "server refused")
    }

    /// An error by its cause, from safe parts: the server's message, the user, never the DSN.
    fn describe(&self, err: &tokio_postgres::Error, what: &str) -> String {
        if let Some(db) = err.as_db_error() {
            let code = db.code();
            if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
                return format!("authentication failed for user '{}'", self.user);
            }
            return format!("{what}: {} ({})", db.message(), code.code());
        }
        if let Some(handshake) = handshake(err) {
            return handshake.to_string();
        }
        if err.is_closed() {
            return "connection closed by the server".to_owned();
        }
        let io = std::error::Error::source(err).and_then(|source| source.downcast_ref::<std::io::Error>());
        let text = match io {
            Some(io) => return format!("connection lost: {}", super::io_reason(io)),
            // tokio-postgres' own texts name the failure, never the configuration's values.
            None => with_cause(err),
        };
        // tokio-postgres' answer when sslmode asks for TLS and the server says it has none.
        if text.ends_with("server does not support TLS") {
            return "server does not support TLS".to_owned();
        }
        if text.ends_with("password missing") {
            return format!(
                "authentication failed for user '{}': the server asks for a password, the DSN has none",
                self.user
            );
        }
        text
    }
}

/// The failed TLS handshake behind `err`, if that is what it is.
fn handshake(err: &tokio_postgres::Error) -> Option<&tls::PostgresHandshake> {
    std::error::Error::source(err).and_then(|source| source.downcast_ref::<tls::PostgresHandshake>())
}

/// tokio-postgres' text for an error, which leaves its cause out, with the cause.
fn with_cause(err: &tokio_postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

const SSLMODES: &str = "dsn: sslmode must be disable, prefer, require, verify-ca or verify-full";

/// The DSN's configuration (as tokio-postgres reads it) and its sslmode.
///
/// tokio-postgres refuses `verify-ca` and `verify-full`. Rather than read the DSN with a parser of our own
/// (which might not see the sslmode tokio-postgres sees), each place the DSN says `verify-ca` or
/// `verify-full` is replaced by `require`, one at a time: the one whose replacement makes the DSN parse is
/// the sslmode's value. (Neither word holds a quote, a space or a backslash, so a replacement cannot
/// change how the rest of the DSN is read: in a password, it leaves the sslmode as wrong as it was.)
fn parse_dsn(dsn: &str) -> Result<(Config, SslMode), String> {
    use tokio_postgres::config::SslMode as Tokio;
    let invalid_sslmode = |err: &tokio_postgres::Error| with_cause(err).contains("`sslmode`");
    let invalid = match dsn.parse::<Config>() {
        Ok(config) => {
            let mode = match config.get_ssl_mode() {
                Tokio::Disable => SslMode::Disable,
                Tokio::Require => SslMode::Require,
                _ => SslMode::Prefer,
            };
            return check_negotiation(config, mode);
        }
        Err(err) if invalid_sslmode(&err) => err,
        Err(err) => return Err(dsn_error(&with_cause(&err))),
    };
    for (word, mode) in [("verify-full", SslMode::VerifyFull), ("verify-ca", SslMode::VerifyCa)] {
        for (at, _) in dsn.match_indices(word) {
            let replaced = format!("{}require{}", &dsn[..at], &dsn[at + word.len()..]);
            if let Ok(config) = replaced.parse::<Config>() {
                if config.get_ssl_mode() == Tokio::Require {
                    return check_negotiation(config, mode);
                }
            }
        }
    }
    Err(dsn_error(&with_cause(&invalid)))
}

/// `sslnegotiation=direct` starts TLS at once, so there is no plain fallback: libpq asks for require or
/// stronger, and so do we (tokio-postgres would only say so at connection time).
fn check_negotiation(config: Config, mode: SslMode) -> Result<(Config, SslMode), String> {
    if config.get_ssl_negotiation() == SslNegotiation::Direct
        && matches!(mode, SslMode::Disable | SslMode::Prefer)
    {
        return Err("dsn: sslnegotiation=direct needs sslmode=require, verify-ca or verify-full".to_owned());
    }
    Ok((config, mode))
}

/// The TLS configuration for `mode`, with `ca_file`'s CA or the system's roots; none for `disable`.
fn tls_config(mode: SslMode, ca_file: Option<PathBuf>) -> Result<Option<Arc<ClientConfig>>, String> {
    let verify = match (mode, ca_file) {
        (SslMode::Disable | SslMode::Prefer, Some(_)) => {
            // A CA that would not be checked (or, with prefer, whose failure would fall back to plain).
            return Err("ca_file needs sslmode=require, verify-ca or verify-full in the dsn".to_owned());
        }
        (SslMode::Disable, None) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, None) => tls::Verify::Nothing,
        (SslMode::VerifyCa, None) => {
            // Any certificate a public CA issued, for any name, would pass: worth nothing.
            return Err("dsn: sslmode=verify-ca needs ca_file (against the system's roots, use verify-full)"
                .to_owned());
        }
        (SslMode::Require | SslMode::VerifyCa, Some(ca_file)) => {
            tls::Verify::Chain(tls::roots(Some(&ca_file), "dsn")?)
        }
        (SslMode::VerifyFull, ca_file) => tls::Verify::ChainAndName(tls::roots(ca_file.as_deref(), "dsn")?),
    };
    // PostgreSQL 17 checks the ALPN protocol with sslnegotiation=direct; older servers ignore it.
    Ok(Some(Arc::new(tls::client_config(verify, &[b"postgresql"]))))
}

/// A DSN that did not parse, without whatever of it the parser quoted back.
fn dsn_error(text: &str) -> String {
    if text.contains("`sslmode`") {
        return SSLMODES.to_owned();
    }
    if text.contains("unknown option `sslrootcert`") {
        return "dsn: sslrootcert is not supported: give the CA's file as the check's ca_file".to_owned();
    }
    // "unexpected character at byte 12: expected `=` but got `x`": the character may be a password's.
    let text = text.find(" but got ").map_or(text, |end| &text[..end]);
    format!("dsn: {text}")
}

/// The servers a DSN names, with their ports.
fn targets(config: &Config) -> Result<Vec<Target>, String> {
    let hosts = config.get_hosts();
    let addresses = config.get_hostaddrs();
    let count = hosts.len().max(addresses.len());
    if count == 0 {
        return Err("dsn: no host given".to_owned());
    }
    if !hosts.is_empty() && !addresses.is_empty() && hosts.len() != addresses.len() {
        return Err(format!("dsn: {} hosts but {} hostaddrs", hosts.len(), addresses.len()));
    }
    let ports = config.get_ports();
    let port = |i: usize| match ports.len() {
        0 => Ok(DEFAULT_PORT),
        1 => Ok(ports[0]),
        n if n == count => Ok(ports[i]),
        n => Err(format!("dsn: {n} ports for {count} hosts")),
    };
    (0..count)
        .map(|i| {
            let port = port(i)?;
            let host = hosts.get(i);
            // A hostaddr is connected to as given, without resolving the host's name.
            if let Some(address) = addresses.get(i) {
                let name = match host {
                    Some(Host::Tcp(name)) => name.clone(),
                    _ => address.to_string(),
                };
                return Ok(Target::Tcp { address: address.to_string(), port, name });
            }
            Ok(match &hosts[i] {
                Host::Tcp(host) => Target::Tcp { address: host.clone(), port, name: host.clone() },
                Host::Unix(dir) => Target::Unix { socket: dir.join(format!(".s.PGSQL.{port}")) },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Outcome, Policy, Status, Subsystem};
    use crate::dependencies::testing::{
        closed_port, silent_listener, times_out_holding_one_connection, TempDir, TestCa,
    };
    use crate::dependencies::Dependency;
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::runtime::Handle;

    const PASSWORD: &str = "s3cr3t-pw";

    fn postgres(dsn: &str, timeout_ms: u64) -> Arc<Subsystem> {
        let dependency = Dependency::parse("postgres", serde_json::json!({ "dsn": dsn })).unwrap();
        Arc::new(dependency.subsystem("db", Policy::new(0.0, Duration::from_millis(timeout_ms))))
    }

    async fn round(subsystem: &Arc<Subsystem>) -> Outcome {
        start_round(std::slice::from_ref(subsystem), &Handle::current()).await.outcomes.remove(0)
    }

    #[tokio::test]
    async fn a_refused_port_is_reported_without_the_password() {
        let port = closed_port().await;
        let done =
            round(&postgres(&format!("postgresql://app:{PASSWORD}@127.0.0.1:{port}/app"), 10_000)).await;
        assert_eq!(done.status, Status::Fail);
        assert_eq!(done.message, Some(format!("connection refused (127.0.0.1:{port})")));
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_is_named() {
        let done = round(&postgres("host=db.phoenix-test.invalid user=app", 10_000)).await;
        assert_eq!(done.message.as_deref(), Some("cannot resolve host 'db.phoenix-test.invalid'"));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_holding_one_connection() {
        let (port, silence) = silent_listener().await;
        let db = postgres(&format!("postgresql://app:{PASSWORD}@127.0.0.1:{port}/app"), 200);
        times_out_holding_one_connection(&db, &silence, 200).await;
    }

    /// What a [`fake_server`] does when a client asks for TLS.
    #[derive(Clone)]
    enum OnSslRequest {
        /// Answers `N`: no TLS here.
        Refuse,
        /// Answers `S` and closes the connection: the handshake fails.
        HangUp,
        /// Answers `S` and completes the handshake under this configuration, then closes.
        Accept(Arc<rustls::ServerConfig>),
    }

    /// The first message of a connection: an SSLRequest, or a startup message (protocol 3.0).
    #[derive(Debug, PartialEq)]
    enum Opening {
        SslRequest,
        Startup,
    }

    /// A server on 127.0.0.1 that speaks just enough PostgreSQL to start TLS, and records how each
    /// connection opened. A connection that does not ask for TLS is closed after its first message.
    async fn fake_server(on_ssl_request: OnSslRequest) -> (u16, Arc<Mutex<Vec<Opening>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let openings = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&openings);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut first = [0u8; 8];
                if stream.read_exact(&mut first).await.is_err() {
                    continue;
                }
                // Length 8, then the SSLRequest code 80877103; a startup message has 196608 (3.0) there.
                if first[4..] != 80877103u32.to_be_bytes() {
                    assert_eq!(first[4..], 196608u32.to_be_bytes(), "a startup message");
                    seen.lock().unwrap().push(Opening::Startup);
                    continue;
                }
                seen.lock().unwrap().push(Opening::SslRequest);
                match &on_ssl_request {
                    OnSslRequest::Refuse => {
                        let _ = stream.write_all(b"N").await;
                    }
                    OnSslRequest::HangUp => {
                        let _ = stream.write_all(b"S").await;
                    }
                    OnSslRequest::Accept(config) => {
                        let _ = stream.write_all(b"S").await;
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                        if let Ok(mut tls) = acceptor.accept(stream).await {
                            let _ = tls.shutdown().await;
                        }
                    }
                }
            }
        });
        (port, openings)
    }

    /// One round of a check of `dsn` (and `ca_file`), failed: its message.
    async fn failure(dsn: &str, ca_file: Option<&Path>) -> String {
        let mut settings = serde_json::json!({ "dsn": dsn });
        if let Some(ca_file) = ca_file {
            settings["ca_file"] = serde_json::json!(ca_file);
        }
        let dependency = Dependency::parse("postgres", settings).unwrap();
        let db = Arc::new(dependency.subsystem("db", Policy::new(0.0, Duration::from_secs(10))));
        let done = round(&db).await;
        assert_eq!(done.status, Status::Fail, "{done:?}");
        let message = done.message.unwrap();
        assert!(!message.contains(PASSWORD), "{message}");
        message
    }

    const UNTRUSTED: &str = "TLS handshake failed: certificate not trusted (unknown issuer)";

    #[tokio::test]
    async fn sslmodes_verify_what_libpq_verifies() {
        let ca = TestCa::new();
        let dir = TempDir::new("sslmodes");
        let ca_file = dir.write("ca.pem", &ca.pem);
        let other_ca = dir.write("other.pem", &TestCa::new().pem);
        // A certificate from the trusted CA for db.internal, reached by its address.
        let (port, _) = fake_server(OnSslRequest::Accept(ca.server(&["db.internal"]))).await;
        let dsn = |host: &str, mode: &str| {
            format!("{host} port={port} user=app password={PASSWORD} sslmode={mode}")
        };
        let by_address = |mode: &str| dsn("host=127.0.0.1", mode);
        // The handshake passes, and the server hangs up: what fails is what comes after.
        let past_handshake = |message: String| {
            assert!(!message.starts_with("TLS handshake failed"), "{message}");
        };
        past_handshake(failure(&by_address("require"), None).await);
        past_handshake(failure(&by_address("prefer"), None).await);
        past_handshake(failure(&by_address("verify-ca"), Some(&ca_file)).await);
        past_handshake(failure(&by_address("require"), Some(&ca_file)).await);
        assert_eq!(failure(&by_address("require"), Some(&other_ca)).await, UNTRUSTED);
        assert_eq!(failure(&by_address("verify-ca"), Some(&other_ca)).await, UNTRUSTED);
        assert_eq!(failure(&by_address("verify-full"), None).await, UNTRUSTED);
        assert_eq!(
            failure(&by_address("verify-full"), Some(&ca_file)).await,
            "TLS handshake failed: certificate not valid for host '127.0.0.1'"
        );
        // The name checked is the host's, even when hostaddr says where to connect.
        past_handshake(
            failure(&dsn("host=db.internal hostaddr=127.0.0.1", "verify-full"), Some(&ca_file)).await,
        );
    }

    #[tokio::test]
    async fn require_fails_where_the_server_has_no_tls_and_prefer_goes_on_in_plain() {
        let (port, openings) = fake_server(OnSslRequest::Refuse).await;
        let dsn = |mode: &str| format!("host=127.0.0.1 port={port} user=app sslmode={mode}");
        assert_eq!(failure(&dsn("require"), None).await, "server does not support TLS");
        // prefer goes on without TLS on the same connection; disable never asks.
        failure(&dsn("prefer"), None).await;
        failure(&dsn("disable"), None).await;
        assert_eq!(*openings.lock().unwrap(), [Opening::SslRequest, Opening::SslRequest, Opening::Startup]);
    }

    #[tokio::test]
    async fn prefer_tries_again_without_tls_when_the_handshake_fails() {
        let (port, openings) = fake_server(OnSslRequest::HangUp).await;
        let dsn = |mode: &str| format!("host=127.0.0.1 port={port} user=app sslmode={mode}");
        assert_eq!(
            failure(&dsn("require"), None).await,
            "TLS handshake failed: the server closed the connection (is TLS enabled on this port?)"
        );
        assert_eq!(*openings.lock().unwrap(), [Opening::SslRequest]);
        failure(&dsn("prefer"), None).await;
        assert_eq!(*openings.lock().unwrap(), [Opening::SslRequest, Opening::SslRequest, Opening::Startup]);
    }

    #[test]
    fn the_sslmode_is_read_as_tokio_postgres_reads_the_dsn() {
        let mode = |dsn: &str| parse_dsn(dsn).map(|(_, mode)| mode);
        assert_eq!(mode("host=db user=app"), Ok(SslMode::Prefer));
        assert_eq!(mode("host=db user=app sslmode=disable"), Ok(SslMode::Disable));
        assert_eq!(mode("host=db user=app sslmode = 'require'"), Ok(SslMode::Require));
        assert_eq!(mode("host=db user=app sslmode=verify-ca"), Ok(SslMode::VerifyCa));
        assert_eq!(mode("postgresql://app@db/app?sslmode=verify-full"), Ok(SslMode::VerifyFull));
        // The words elsewhere in the DSN are left as they are.
        let (config, found) = parse_dsn(
            "postgresql://app:verify-full@db/verify-ca?sslmode=verify-ca&application_name=verify-full",
        )
        .unwrap();
        assert_eq!(found, SslMode::VerifyCa);
        assert_eq!(config.get_password(), Some(&b"verify-full"[..]));
        assert_eq!(config.get_dbname(), Some("verify-ca"));
        assert_eq!(config.get_application_name(), Some("verify-full"));
        assert_eq!(mode("host=db user=app sslmode=allow"), Err(SSLMODES.to_owned()));
        assert_eq!(mode("host=db user=app sslmode=verify-ca sslmode=verify-full"), Err(SSLMODES.to_owned()));
    }

    #[test]
    fn the_dsn_is_validated_without_ever_quoting_its_password() {
        let parse = |settings: Value| {
            Dependency::parse("postgres", settings.clone())
                .err()
                .unwrap_or_else(|| panic!("{settings} was accepted"))
        };
        let dsn = |dsn: String| parse(serde_json::json!({ "dsn": dsn }));
        let with_ca =
            |dsn: String| parse(serde_json::json!({ "dsn": dsn, "ca_file": "/nonexistent/ca.pem" }));
        let errors = [
            (dsn(format!("postgresql://app:{PASSWORD}@db/app?sslmode=allow")), SSLMODES),
            (
                dsn(format!("host=db user=app password={PASSWORD} sslmode=verify-ca")),
                "dsn: sslmode=verify-ca needs ca_file",
            ),
            (
                with_ca(format!("host=db user=app password={PASSWORD}")),
                "ca_file needs sslmode=require, verify-ca or verify-full",
            ),
            (
                with_ca(format!("host=db user=app password={PASSWORD} sslmode=disable")),
                "ca_file needs sslmode=",
            ),
            (
                with_ca(format!("host=db user=app password={PASSWORD} sslmode=verify-full")),
                "ca_file: cannot read '/nonexistent/ca.pem'",
            ),
            (
                dsn(format!("postgresql://app:{PASSWORD}@db/app?sslnegotiation=direct")),
                "dsn: sslnegotiation=direct needs sslmode=require",
            ),
            (
                dsn(format!("postgresql://app:{PASSWORD}@db/app?sslmode=require&channel_binding=require")),
                "dsn: channel_binding=require is not supported",
            ),
            (
                dsn(format!("postgresql://app:{PASSWORD}@db/app?sslrootcert=/ca.pem")),
                "dsn: sslrootcert is not supported: give the CA's file as the check's ca_file",
            ),
            (dsn(format!("postgresql://app:{PASSWORD}@db:notaport/app")), "dsn: invalid connection string"),
            (dsn(format!("host=db user=app password '{PASSWORD}'")), "dsn: invalid connection string"),
            (dsn(format!("host=db user=app password='{PASSWORD}")), "dsn: invalid connection string"),
            (dsn(format!("postgresql://app:{PASSWORD}@db/app?dns=1")), "dsn: invalid connection string"),
            (dsn(format!("postgresql://:{PASSWORD}@db/app")), "dsn: no user given"),
            (dsn(format!("user=app password={PASSWORD}")), "dsn: no host given"),
            (parse(serde_json::json!({"dsn": "host=db user=app", "query": " "})), "query must not be empty"),
            (
                parse(serde_json::json!({"dsn": "host=db user=app", "dns": 1})),
                "unknown key 'dns' (expected one of dsn, query, ca_file)",
            ),
            (parse(serde_json::json!({"query": "SELECT 1"})), "missing key 'dsn'"),
        ];
        for (err, expected) in errors {
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
            assert!(!err.contains(PASSWORD) && !err.contains('\n'), "{err:?}");
        }
        assert!(dsn("postgresql://app@db/app?dns=1".into()).contains("unknown option `dns`"));
        // The parser quotes the character it did not expect: here, the password's first.
        let quoted = dsn(format!("host=db user=app password {PASSWORD}"));
        assert!(quoted.ends_with("unexpected character at byte 26: expected `=`"), "{quoted}");
    }

    #[test]
    fn hosts_ports_and_sockets_become_targets() {
        let config: Config = "host=a,b,/run/pg port=1,2,3 user=app".parse().unwrap();
        let three = targets(&config).unwrap();
        assert!(matches!(&three[0], Target::Tcp { address, port: 1, name } if address == "a" && name == "a"));
        assert!(matches!(&three[1], Target::Tcp { address, port: 2, .. } if address == "b"));
        assert!(matches!(&three[2], Target::Unix { socket } if socket.ends_with("pg/.s.PGSQL.3")));
        let config: Config = "host=a,b port=1,2,3 user=app".parse().unwrap();
        assert_eq!(targets(&config).err().unwrap(), "dsn: 3 ports for 2 hosts");
        let config: Config = "host=db hostaddr=127.0.0.2 user=app".parse().unwrap();
        assert!(matches!(
            &targets(&config).unwrap()[0],
            Target::Tcp { address, port: 5432, name } if address == "127.0.0.2" && name == "db"
        ));
        let config: Config = "hostaddr=127.0.0.2 user=app".parse().unwrap();
        assert!(matches!(&targets(&config).unwrap()[0], Target::Tcp { name, .. } if name == "127.0.0.2"));
    }
}
