//! Native checks of a service's dependencies: PostgreSQL, Redis, an HTTP endpoint, a TCP port, free disk
//! space and free memory. Each kind parses its settings (an error is one line naming the key, and never
//! holds a password) and becomes a [`Subsystem`] judged like any other: higher is better, connectivity
//! kinds report 1.0 or why they failed.
//!
//! A run never outlives its deadline when it can be cut short: the network kinds give up at the check's
//! timeout (dropping the connection they were using), so that a hung server leaves one run pending, never
//! one per round, and the next run starts afresh. The disk kind's `statvfs` cannot be cut short: it runs on
//! the blocking pool, where a hung mount holds one thread while the runner reports the run as timed out.

pub mod disk;
pub mod http;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod tcp;
mod tls;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use tokio::net::TcpStream;

use crate::checks::{CheckResult, FnProbe, Policy, Probe, Subsystem};

pub const KINDS: [&str; 6] = ["postgres", "redis", "http", "tcp", "disk", "memory"];

/// Dependency checks always run in the background on this period unless told otherwise: a burst of
/// `/ready` requests must never become a burst of connections to the database.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// A kind's judgement when the user gives none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub threshold: f64,
    pub warn_threshold: Option<f64>,
}

/// Connectivity: 1.0 on success, so any threshold below 1 passes it.
const CONNECTED: Defaults = Defaults { threshold: 0.0, warn_threshold: None };
/// A fraction of a resource still free: fail at 5 % left, warn at 10 %.
const FRACTION_FREE: Defaults = Defaults { threshold: 0.05, warn_threshold: Some(0.10) };

/// A dependency check, parsed and validated, not yet connected to anything.
pub enum Dependency {
    // Boxed: its configuration is most of the enum's size.
    Postgres(Box<postgres::Postgres>),
    Redis(redis::Redis),
    Http(http::Http),
    Tcp(tcp::Tcp),
    Disk(disk::Disk),
    Memory(memory::Memory),
}

impl Dependency {
    /// The `kind`'s settings (an object of its keys; `null` for none), validated.
    pub fn parse(kind: &str, settings: Value) -> Result<Self, String> {
        Ok(match kind {
            "postgres" => Self::Postgres(Box::new(postgres::Postgres::parse(settings)?)),
            "redis" => Self::Redis(redis::Redis::parse(settings)?),
            "http" => Self::Http(http::Http::parse(settings)?),
            "tcp" => Self::Tcp(tcp::Tcp::parse(settings)?),
            "disk" => Self::Disk(disk::Disk::parse(settings)?),
            "memory" => Self::Memory(memory::Memory::parse(settings)?),
            other => return Err(format!("unknown kind '{other}' (expected one of {})", KINDS.join(", "))),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Http(_) => "http",
            Self::Tcp(_) => "tcp",
            Self::Disk(_) => "disk",
            Self::Memory(_) => "memory",
        }
    }

    pub fn defaults(&self) -> Defaults {
        match self {
            Self::Disk(_) | Self::Memory(_) => FRACTION_FREE,
            _ => CONNECTED,
        }
    }

    /// What the metric means, as messages name it (`free space 0.03 <= 0.05`).
    fn measurement(&self) -> &'static str {
        match self {
            Self::Disk(_) => "free space",
            Self::Memory(_) => "free memory",
            _ => "connectivity",
        }
    }

    /// The subsystem checking this dependency under `policy`; network kinds give up at its timeout.
    pub fn subsystem(self, name: impl Into<String>, policy: Policy) -> Subsystem {
        let measurement = self.measurement();
        let timeout = policy.timeout;
        let probe: Box<dyn Probe> = match self {
            Self::Postgres(check) => Box::new(check.probe(timeout)),
            Self::Redis(check) => Box::new(check.probe(timeout)),
            Self::Http(check) => Box::new(check.probe(timeout)),
            Self::Tcp(check) => Box::new(check.probe(timeout)),
            Self::Disk(check) => Box::new(check.probe()),
            Self::Memory(check) => Box::new(check.probe()),
        };
        Subsystem::new(name, measurement, policy, probe)
    }
}

/// The probe of a kind that keeps state between runs (a connection, a pool): each run calls `check` on
/// that state and is cut short at `timeout`.
fn probe_within<T, F, Fut>(state: T, timeout: Duration, check: F) -> impl Probe
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    let state = Arc::new(state);
    FnProbe(move || within(timeout, check(Arc::clone(&state))))
}

/// Runs `work` for at most `timeout`; past it the work is dropped (closing what it had open) and the
/// run fails as the runner would report it.
async fn within(timeout: Duration, work: impl Future<Output = CheckResult>) -> CheckResult {
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(crate::checks::timed_out(timeout)))
}

/// Connects to `host:port`, trying each address it resolves to in turn. The errors name the cause: the
/// name did not resolve, the port refused, or what else the system said.
async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, String> {
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| format!("cannot resolve host '{host}'"))?
        .collect::<Vec<_>>();
    let mut last = format!("cannot resolve host '{host}'");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                // Checks exchange a few small messages: send each at once.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => last = connect_error(&err, &address.to_string()),
        }
    }
    Err(last)
}

/// A failed connection to `address` (host and port, never more of a URL), by its cause.
fn connect_error(err: &std::io::Error, address: &str) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => format!("connection refused ({address})"),
        ErrorKind::ConnectionReset => format!("connection reset ({address})"),
        ErrorKind::TimedOut => format!("connection timed out ({address})"),
        _ => format!("cannot connect to {address}: {}", io_reason(err)),
    }
}

/// An I/O error's own words, without the `(os error N)` suffix.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

/// Deserialises a kind's settings (a `deny_unknown_fields` struct) so that every error names its key:
/// `unknown key 'dns' (expected one of dsn, query)`, `missing key 'dsn'`, `port: invalid type: ...`.
fn settings<T: DeserializeOwned>(settings: Value) -> Result<T, String> {
    let keys = match settings {
        Value::Object(keys) => keys,
        Value::Null => Map::new(),
        other => return Err(format!("settings must be a table of keys, not {}", json_type(&other))),
    };
    T::deserialize(Keys(keys)).map_err(|SettingsError(why)| why)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

#[derive(Debug)]
struct SettingsError(String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

impl de::Error for SettingsError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self(if expected.is_empty() {
            format!("unknown key '{field}' (this kind has no keys)")
        } else {
            format!("unknown key '{field}' (expected one of {})", expected.join(", "))
        })
    }

    fn missing_field(field: &'static str) -> Self {
        Self(format!("missing key '{field}'"))
    }
}

/// A settings table as a serde map whose value errors carry their key.
struct Keys(Map<String, Value>);

impl<'de> de::Deserializer<'de> for Keys {
    type Error = SettingsError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SettingsError> {
        visitor.visit_map(KeysAccess { keys: self.0.into_iter(), value: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct KeysAccess {
    keys: serde_json::map::IntoIter,
    value: Option<(String, Value)>,
}

impl<'de> MapAccess<'de> for KeysAccess {
    type Error = SettingsError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, SettingsError> {
        let Some((key, value)) = self.keys.next() else {
            return Ok(None);
        };
        let parsed = seed.deserialize(key.as_str().into_deserializer())?;
        self.value = Some((key, value));
        Ok(Some(parsed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, SettingsError> {
        let (key, value) =
            self.value.take().ok_or_else(|| SettingsError("a value without its key".into()))?;
        seed.deserialize(value).map_err(|err| SettingsError(format!("{key}: {err}")))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! What the kinds' tests share: temporary directories, and listeners that misbehave on purpose.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::runtime::Handle;

    use crate::checks::{start_round, Status, Subsystem};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> Self {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "phoenix-deps-test-{}-{}-{name}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Writes `contents` to `relative` (creating its directories) and returns its path.
        pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A port on 127.0.0.1 where nothing listens: bound, then closed.
    pub async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// What a [`silent_listener`] saw: connections accepted, and those still open.
    #[derive(Default)]
    pub struct Silence {
        pub accepted: AtomicUsize,
        pub open: AtomicUsize,
    }

    /// A listener on 127.0.0.1 that accepts connections and never answers, counting them and those
    /// open (a connection counts as closed once the client closes it).
    pub async fn silent_listener() -> (u16, Arc<Silence>) {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silence = Arc::new(Silence::default());
        let seen = Arc::clone(&silence);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                seen.open.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    // Read and ignore whatever the client sends, until it closes.
                    let mut buffer = [0u8; 1024];
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                    seen.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (port, silence)
    }

    /// A certificate authority made for one test, and the server certificates it signs.
    pub struct TestCa {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        /// Its certificate, as a `ca_file` holds it.
        pub pem: String,
    }

    impl TestCa {
        pub fn new() -> Self {
            use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // A name of its own: a CA of the same name would be taken for the issuer (a bad signature, not
            // an unknown issuer).
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("Phoenix test CA {}", COUNT.fetch_add(1, Ordering::Relaxed));
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            Self { issuer: rcgen::Issuer::new(params, key), pem }
        }

        /// A server's TLS configuration, with a certificate for `names` (DNS names or IP addresses).
        pub fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
            let key = rcgen::KeyPair::generate().unwrap();
            let names = names.iter().map(|name| name.to_string()).collect::<Vec<_>>();
            let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &self.issuer).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
            #[allow(deprecated)] // as the checks' provider: see tls.rs
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap();
            Arc::new(config)
        }
    }

    /// A TLS server on 127.0.0.1: each connection's handshake under `config`, then, once the client has
    /// sent something, `answer`, and the connection closed. A handshake the client gives up ends it.
    pub async fn tls_server(config: Arc<rustls::ServerConfig>, answer: &'static [u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(stream).await else { return };
                    let mut buffer = [0u8; 4096];
                    if matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {
                        let _ = stream.write_all(answer).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        port
    }

    /// Waits until `condition` holds, which other tasks bring about; the deadline only bounds the wait.
    pub async fn settle(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "gave up waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Against a [`silent_listener`]: two rounds at once share one run and one connection and both
    /// report the runner's timeout; the run lets its connection go at its deadline, and the next round
    /// opens the only other one.
    pub async fn times_out_holding_one_connection(
        subsystem: &Arc<Subsystem>,
        silence: &Silence,
        timeout_ms: u64,
    ) {
        let subsystems = std::slice::from_ref(subsystem);
        let rt = Handle::current();
        let (first, second) = tokio::join!(start_round(subsystems, &rt), start_round(subsystems, &rt));
        let timed_out = format!("timed out after {timeout_ms} ms");
        for report in [first, second] {
            let outcome = &report.outcomes[0];
            assert_eq!(outcome.status, Status::Fail);
            assert!(outcome.message.as_deref().unwrap().starts_with(&timed_out), "{outcome:?}");
        }
        let closed = |count| {
            move || {
                silence.accepted.load(Ordering::SeqCst) >= count && silence.open.load(Ordering::SeqCst) == 0
            }
        };
        settle("the first connection to close", closed(1)).await;
        assert_eq!(silence.accepted.load(Ordering::SeqCst), 1, "one run, one connection");
        let third = start_round(subsystems, &rt).await;
        assert!(third.outcomes[0].message.as_deref().unwrap().starts_with(&timed_out));
        settle("the second connection to close", closed(2)).await;
        assert_eq!(silence.accepted.load(Ordering::SeqCst), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        host: String,
        #[serde(default)]
        port: Option<u16>,
    }

    #[test]
    fn settings_errors_name_their_key() {
        let parse = |value: Value| settings::<Example>(value).unwrap_err();
        assert_eq!(
            parse(serde_json::json!({"host": "a", "hots": 1})),
            "unknown key 'hots' (expected one of host, port)"
        );
        assert_eq!(parse(serde_json::json!({"port": 1})), "missing key 'host'");
        assert!(parse(serde_json::json!({"host": "a", "port": "x"})).starts_with("port: invalid type"));
        assert_eq!(parse(serde_json::json!([1])), "settings must be a table of keys, not a list");
        let ok = settings::<Example>(serde_json::json!({"host": "a"})).unwrap();
        assert_eq!((ok.host.as_str(), ok.port), ("a", None));
    }

    #[test]
    fn an_unknown_kind_lists_the_known_ones() {
        let err = Dependency::parse("mysql", Value::Null).err().unwrap();
        assert_eq!(err, "unknown kind 'mysql' (expected one of postgres, redis, http, tcp, disk, memory)");
    }

    #[test]
    fn kinds_have_their_defaults() {
        let memory = Dependency::parse("memory", Value::Null).unwrap();
        assert_eq!(memory.defaults(), FRACTION_FREE);
        let tcp = Dependency::parse("tcp", serde_json::json!({"host": "h", "port": 1})).unwrap();
        assert_eq!((tcp.kind(), tcp.defaults()), ("tcp", CONNECTED));
    }
}
