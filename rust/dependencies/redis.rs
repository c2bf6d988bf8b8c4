//! `redis`: `PING` answered by `PONG` on a connection kept between runs.
//!
//! The connection is opened by the first run (AUTH and SELECT as the URL says) and replaced when a run
//! fails; a kept connection the server closed since the last run is replaced within the run. We connect
//! the socket ourselves, so that the errors tell a name that does not resolve from a refused port.
//! `rediss://` wraps it in TLS, always verified in full (chain and host name), against the system's roots
//! or `ca_file`'s.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo, RedisError,
};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::tls;
use crate::checks::{CheckResult, Probe};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// `rediss://`: the session's configuration and the name the certificate must show.
struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

pub struct Redis {
    host: String,
    port: u16,
    /// Database, user and password, as the URL gives them.
    login: RedisConnectionInfo,
    tls: Option<Tls>,
    kept: Mutex<Option<MultiplexedConnection>>,
}

impl Redis {
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings { url, ca_file } = super::settings(settings)?;
        // Checked here first, so that each error says what is wrong without quoting the URL.
        let mut parsed = url::Url::parse(&url).map_err(|err| format!("url: not a valid URL: {err}"))?;
        let secure = match parsed.scheme() {
            "redis" if ca_file.is_some() => {
                return Err("ca_file is only used with a rediss:// url".to_owned());
            }
            "redis" => false,
            "rediss" => true,
            other => return Err(format!("url must start with redis:// or rediss://, not {other}://")),
        };
        if secure && parsed.fragment().is_some() {
            // The redis crate reads `#insecure` as "skip verification": never done here.
            return Err(
                "url: no #fragment: rediss:// is always verified (a private CA goes in ca_file)".to_owned()
            );
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("url: no host given (redis://[user:password@]host[:port][/db])".to_owned());
        }
        if parsed.port() == Some(0) {
            return Err("url: port must be between 1 and 65535, not 0".to_owned());
        }
        let db = parsed.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err("url: the path must be a database number (redis://host:6379/0)".to_owned());
        }
        let tls = match secure {
            true => {
                let roots = tls::roots(ca_file.as_deref(), "url")?;
                let name = match parsed.host() {
                    Some(url::Host::Domain(name)) => name.to_owned(),
                    Some(url::Host::Ipv4(ip)) => ip.to_string(),
                    Some(url::Host::Ipv6(ip)) => ip.to_string(),
                    None => unreachable!("the host was checked above"),
                };
                let config = tls::client_config(tls::Verify::ChainAndName(roots), &[]);
                Some(Tls {
                    config: Arc::new(config),
                    name: tls::server_name(&name).map_err(|why| format!("url: {why}"))?,
                })
            }
            false => None,
        };
        // The rest is the redis crate's reading, of a redis:// URL: we do the TLS ourselves.
        let _ = parsed.set_scheme("redis");
        let info =
            parsed.as_str().into_connection_info().map_err(|_| "url: not a valid Redis URL".to_owned())?;
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err("url: only redis://host[:port] addresses are supported".to_owned());
        };
        Ok(Self { host, port, login: info.redis_settings().clone(), tls, kept: Mutex::new(None) })
    }

    pub fn probe(self, timeout: Duration) -> impl Probe {
        super::probe_within(self, timeout, |this| async move { this.check().await })
    }

    async fn check(&self) -> CheckResult {
        let kept = self.lock_kept().take();
        if let Some(mut connection) = kept {
            match ping(&mut connection).await {
                Ok(answer) => return self.judge(connection, answer),
                // Closed by the server since the last run (a restart): a fresh connection decides.
                Err(err) if err.is_io_error() || err.is_connection_dropped() => {}
                Err(err) => return Err(self.describe(&err)),
            }
        }
        let mut connection = self.connect().await?;
        match ping(&mut connection).await {
            Ok(answer) => self.judge(connection, answer),
            Err(err) => Err(self.describe(&err)),
        }
    }

    fn judge(&self, connection: MultiplexedConnection, answer: String) -> CheckResult {
        if answer != "PONG" {
            return Err(format!("PING answered '{answer}' rather than PONG"));
        }
        *self.lock_kept() = Some(connection);
        Ok(1.0)
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let stream = super::connect_tcp(&self.host, self.port).await?;
        match &self.tls {
            None => self.login(stream).await,
            Some(Tls { config, name }) => {
                let stream = tls::connect(Arc::clone(config), name.clone(), stream)
                    .await
                    .map_err(|err| tls::describe_io(&err))?;
                self.login(stream).await
            }
        }
    }

    /// AUTH and SELECT over `stream`, plain or TLS.
    async fn login<S>(&self, stream: S) -> Result<MultiplexedConnection, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The check's own deadline bounds every run; the client's default 500 ms would cut a slower
        // answer short under a longer one.
        let config = AsyncConnectionConfig::new().set_response_timeout(None).set_connection_timeout(None);
        let (connection, driver) = MultiplexedConnection::new_with_config(&self.login, stream, config)
            .await
            .map_err(|err| self.describe(&err))?;
        // Runs until the last handle on the connection is dropped, or the server closes it.
        tokio::spawn(driver);
        Ok(connection)
    }

    /// An error by its cause, from safe parts: the server's words, the user, never the URL.
    fn describe(&self, err: &RedisError) -> String {
        let user = self.login.username().map(|user| format!(" for user '{user}'")).unwrap_or_default();
        match err.code() {
            Some("NOAUTH") => {
                return "authentication required (NOAUTH): the URL gives no password".to_owned()
            }
            Some("WRONGPASS") => return format!("authentication failed{user} (WRONGPASS)"),
            _ => {}
        }
        if err.kind() == ErrorKind::AuthenticationFailed {
            return format!("authentication failed{user}");
        }
        if err.is_connection_dropped() {
            return "connection closed by the server".to_owned();
        }
        if let Some(io) = std::error::Error::source(err).and_then(|s| s.downcast_ref::<std::io::Error>()) {
            return format!("connection lost: {}", super::io_reason(io));
        }
        let detail = err.detail().map(|detail| format!(": {detail}")).unwrap_or_default();
        match err.code() {
            Some(code) => format!("server answered {code}{detail}"),
            None => format!("{}{detail}", err.category()),
        }
    }
}

async fn ping(connection: &mut MultiplexedConnection) -> Result<String, RedisError> {
    redis::cmd("PING").query_async(connection).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Policy, Status, Subsystem};
    use crate::dependencies::testing::{
        closed_port, silent_listener, times_out_holding_one_connection, tls_server, TempDir, TestCa,
    };
    use crate::dependencies::Dependency;
    use tokio::runtime::Handle;

    const PASSWORD: &str = "s3cr3t-pw";

    fn redis(url: &str, timeout_ms: u64) -> Arc<Subsystem> {
        let dependency = Dependency::parse("redis", serde_json::json!({ "url": url })).unwrap();
        Arc::new(dependency.subsystem("cache", Policy::new(0.0, Duration::from_millis(timeout_ms))))
    }

    #[tokio::test]
    async fn a_refused_port_is_reported_without_the_password() {
        let port = closed_port().await;
        let cache = redis(&format!("redis://app:{PASSWORD}@127.0.0.1:{port}/0"), 10_000);
        let report = start_round(&[cache], &Handle::current()).await;
        assert_eq!(report.outcomes[0].status, Status::Fail);
        assert_eq!(report.outcomes[0].message, Some(format!("connection refused (127.0.0.1:{port})")));
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_is_named() {
        let report =
            start_round(&[redis("redis://cache.phoenix-test.invalid", 10_000)], &Handle::current()).await;
        assert_eq!(
            report.outcomes[0].message.as_deref(),
            Some("cannot resolve host 'cache.phoenix-test.invalid'")
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_holding_one_connection() {
        let (port, silence) = silent_listener().await;
        let cache = redis(&format!("redis://:{PASSWORD}@127.0.0.1:{port}"), 200);
        times_out_holding_one_connection(&cache, &silence, 200).await;
    }

    #[tokio::test]
    async fn rediss_verifies_the_certificate_before_sending_the_password() {
        let ca = TestCa::new();
        let dir = TempDir::new("rediss");
        let ca_file = dir.write("ca.pem", &ca.pem);
        let round = |settings: Value| async move {
            let dependency = Dependency::parse("redis", settings).unwrap();
            let cache = Arc::new(dependency.subsystem("cache", Policy::new(0.0, Duration::from_secs(10))));
            start_round(&[cache], &Handle::current()).await.outcomes.remove(0)
        };
        // The server answers whatever it is sent with an error: only the handshake is looked at here.
        let port = tls_server(ca.server(&["127.0.0.1"]), b"-ERR not a server\r\n").await;
        let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}/0");
        let untrusted = round(serde_json::json!({ "url": url })).await;
        assert_eq!(untrusted.status, Status::Fail);
        assert_eq!(
            untrusted.message.as_deref(),
            Some("TLS handshake failed: certificate not trusted (unknown issuer)")
        );
        let trusted = round(serde_json::json!({ "url": url, "ca_file": ca_file })).await;
        let message = trusted.message.unwrap();
        assert!(!message.starts_with("TLS handshake failed") && !message.contains(PASSWORD), "{message}");
        let port = tls_server(ca.server(&["cache.internal"]), b"").await;
        let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}/0");
        let elsewhere = round(serde_json::json!({ "url": url, "ca_file": ca_file })).await;
        assert_eq!(
            elsewhere.message.as_deref(),
            Some("TLS handshake failed: certificate not valid for host '127.0.0.1'")
        );
    }

    #[test]
    fn the_url_is_validated_without_ever_quoting_its_password() {
        let parse = |settings: Value| {
            Dependency::parse("redis", settings.clone())
                .err()
                .unwrap_or_else(|| panic!("{settings} was accepted"))
        };
        let url = |url: String| parse(serde_json::json!({ "url": url }));
        let errors = [
            (
                url(format!("rediss://app:{PASSWORD}@cache:6380/0#insecure")),
                "url: no #fragment: rediss:// is always verified",
            ),
            (
                parse(serde_json::json!({"url": format!("redis://:{PASSWORD}@cache"), "ca_file": "/ca.pem"})),
                "ca_file is only used with a rediss:// url",
            ),
            (
                parse(
                    serde_json::json!({"url": format!("rediss://:{PASSWORD}@cache"), "ca_file": "/nonexistent"}),
                ),
                "ca_file: cannot read '/nonexistent'",
            ),
            (
                url(format!("http://app:{PASSWORD}@cache/0")),
                "url must start with redis:// or rediss://, not http://",
            ),
            (
                url(format!("redis://app:{PASSWORD}@cache:port/0")),
                "url: not a valid URL: invalid port number",
            ),
            (
                url(format!("redis://app:{PASSWORD}@cache:0/0")),
                "url: port must be between 1 and 65535, not 0",
            ),
            (url(format!("redis://app:{PASSWORD}@cache/zero")), "url: the path must be a database number"),
            (url(format!("redis://app:{PASSWORD}@/0")), "url: not a valid URL: empty host"),
            (url("redis:cache".to_owned()), "url: no host given"),
            (url(format!("app:{PASSWORD}@cache")), "url must start with redis://"),
            (
                parse(serde_json::json!({"url": "redis://cache", "db": 1})),
                "unknown key 'db' (expected one of url, ca_file)",
            ),
            (parse(serde_json::json!({})), "missing key 'url'"),
        ];
        for (err, expected) in errors {
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
            assert!(!err.contains(PASSWORD), "{err:?}");
        }
    }

    #[test]
    fn the_url_gives_host_port_database_and_login() {
        let Dependency::Redis(parsed) =
            Dependency::parse("redis", serde_json::json!({"url": "redis://app:pw@cache:6380/3"})).unwrap()
        else {
            panic!("a redis check");
        };
        assert_eq!((parsed.host.as_str(), parsed.port), ("cache", 6380));
        assert_eq!(
            (parsed.login.db(), parsed.login.username(), parsed.login.password()),
            (3, Some("app"), Some("pw"))
        );
        let Dependency::Redis(plain) =
            Dependency::parse("redis", serde_json::json!({"url": "redis://cache"})).unwrap()
        else {
            panic!("a redis check");
        };
        assert_eq!((plain.port, plain.login.db(), plain.login.password()), (6379, 0, None));
        assert!(plain.tls.is_none());
        let Dependency::Redis(secure) =
            Dependency::parse("redis", serde_json::json!({"url": "rediss://:pw@cache:6380/2"})).unwrap()
        else {
            panic!("a redis check");
        };
        assert_eq!((secure.host.as_str(), secure.port, secure.login.db()), ("cache", 6380, 2));
        assert_eq!(secure.tls.unwrap().name.to_str(), "cache");
    }
}
