//! `postgres`: runs a query (`SELECT 1` unless told otherwise) on a connection kept between runs.
//!
//! The connection is opened by the first run and replaced when a run fails or the server closed it, never
//! opened per run. We connect the socket ourselves (so that a name that does not resolve and a refused
//! port are told apart) and hand it to tokio-postgres; its connection task runs on the runtime the check
//! runs on, and ends when the client is dropped. No TLS yet: a DSN that requires it is refused up front.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{Host, SslMode, SslNegotiation};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use crate::checks::{CheckResult, FnProbe, Probe};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    dsn: String,
    #[serde(default = "select_one")]
    query: String,
}

fn select_one() -> String {
    "SELECT 1".to_owned()
}

const DEFAULT_PORT: u16 = 5432;

/// Where a server listens, in the order the DSN lists them.
enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket file in a directory, as libpq names it: `<dir>/.s.PGSQL.<port>`.
    Unix {
        socket: PathBuf,
    },
}

pub struct Postgres {
    config: Config,
    targets: Vec<Target>,
    user: String,
    query: String,
    /// The connection kept between runs; a run takes it out and puts it back only if it worked.
    kept: Mutex<Option<Client>>,
}

impl Postgres {
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings { dsn, query } = super::settings(settings)?;
        if query.trim().is_empty() {
            return Err("query must not be empty".to_owned());
        }
        let config: Config =
            dsn.parse().map_err(|err: tokio_postgres::Error| dsn_error(&with_cause(&err)))?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer)
            || config.get_ssl_negotiation() == SslNegotiation::Direct
        {
            return Err(NO_TLS.to_owned());
        }
        let user = config
            .get_user()
            .filter(|user| !user.is_empty())
            .ok_or("dsn: no user given (user=... or postgresql://user@host/db)")?;
        let user = user.to_owned();
        let targets = targets(&config)?;
        Ok(Self { config, targets, user, query, kept: Mutex::new(None) })
    }

    pub fn probe(self, timeout: Duration) -> impl Probe {
        let this = Arc::new(self);
        FnProbe(move || {
            let this = Arc::clone(&this);
            super::within(timeout, async move { this.check().await })
        })
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
                Target::Tcp { host, port } => match super::connect_tcp(host, *port).await {
                    Ok(stream) => self.handshake(stream).await,
                    Err(why) => Err(why),
                },
                Target::Unix { socket } => match tokio::net::UnixStream::connect(socket).await {
                    Ok(stream) => self.handshake(stream).await,
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

    async fn handshake<S>(&self, stream: S) -> Result<Client, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (client, connection) = self
            .config
            .connect_raw(stream, NoTls)
            .await
            .map_err(|err| self.describe(&err, "server refused"))?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server closes; a broken connection shows as a
            // closed client, which the next run replaces.
            let _ = connection.await;
        });
        Ok(client)
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
        if err.is_closed() {
            return "connection closed by the server".to_owned();
        }
        let io = std::error::Error::source(err).and_then(|source| source.downcast_ref::<std::io::Error>());
        let text = match io {
            Some(io) => return format!("connection lost: {}", super::io_reason(io)),
            // tokio-postgres' own texts name the failure, never the configuration's values.
            None => with_cause(err),
        };
        if text.ends_with("password missing") {
            return format!(
                "authentication failed for user '{}': the server asks for a password, the DSN has none",
                self.user
            );
        }
        text
    }
}

/// tokio-postgres' text for an error, which leaves its cause out, with the cause.
fn with_cause(err: &tokio_postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

const NO_TLS: &str = "dsn: sslmode must be disable or prefer: TLS is not supported yet";

/// A DSN that did not parse, without whatever of it the parser quoted back.
fn dsn_error(text: &str) -> String {
    if text.contains("`sslmode`") {
        return NO_TLS.to_owned();
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
            // A hostaddr is connected to as given, without resolving the host's name.
            if let Some(address) = addresses.get(i) {
                return Ok(Target::Tcp { host: address.to_string(), port });
            }
            Ok(match &hosts[i] {
                Host::Tcp(host) => Target::Tcp { host: host.clone(), port },
                Host::Unix(dir) => Target::Unix { socket: dir.join(format!(".s.PGSQL.{port}")) },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Outcome, Policy, Status, Subsystem};
    use crate::dependencies::testing::{closed_port, silent_listener, times_out_holding_one_connection};
    use crate::dependencies::Dependency;
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

    #[test]
    fn the_dsn_is_validated_without_ever_quoting_its_password() {
        let parse = |settings: Value| {
            Dependency::parse("postgres", settings.clone())
                .err()
                .unwrap_or_else(|| panic!("{settings} was accepted"))
        };
        let dsn = |dsn: String| parse(serde_json::json!({ "dsn": dsn }));
        let errors = [
            (dsn(format!("postgresql://app:{PASSWORD}@db/app?sslmode=require")), NO_TLS),
            (dsn(format!("host=db user=app password={PASSWORD} sslmode=verify-full")), NO_TLS),
            (dsn(format!("postgresql://app:{PASSWORD}@db/app?sslnegotiation=direct")), NO_TLS),
            (dsn(format!("postgresql://app:{PASSWORD}@db:notaport/app")), "dsn: invalid connection string"),
            (dsn(format!("host=db user=app password '{PASSWORD}'")), "dsn: invalid connection string"),
            (dsn(format!("host=db user=app password='{PASSWORD}")), "dsn: invalid connection string"),
            (dsn(format!("postgresql://app:{PASSWORD}@db/app?dns=1")), "dsn: invalid connection string"),
            (dsn(format!("postgresql://:{PASSWORD}@db/app")), "dsn: no user given"),
            (dsn(format!("user=app password={PASSWORD}")), "dsn: no host given"),
            (parse(serde_json::json!({"dsn": "host=db user=app", "query": " "})), "query must not be empty"),
            (
                parse(serde_json::json!({"dsn": "host=db user=app", "dns": 1})),
                "unknown key 'dns' (expected one of dsn, query)",
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
        assert!(matches!(&three[0], Target::Tcp { host, port: 1 } if host == "a"));
        assert!(matches!(&three[1], Target::Tcp { host, port: 2 } if host == "b"));
        assert!(matches!(&three[2], Target::Unix { socket } if socket.ends_with("pg/.s.PGSQL.3")));
        let config: Config = "host=a,b port=1,2,3 user=app".parse().unwrap();
        assert_eq!(targets(&config).err().unwrap(), "dsn: 3 ports for 2 hosts");
        let config: Config = "host=db hostaddr=127.0.0.2 user=app".parse().unwrap();
        assert!(
            matches!(&targets(&config).unwrap()[0], Target::Tcp { host, port: 5432 } if host == "127.0.0.2")
        );
    }
}
