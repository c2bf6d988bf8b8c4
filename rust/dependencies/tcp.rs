//! `tcp`: connects to `host:port` within the timeout, and closes the connection at once.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::checks::{FnProbe, Probe};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    host: String,
    // Wider than a port, so that an out-of-range one gets our message rather than serde's.
    port: i64,
}

pub struct Tcp {
    host: Arc<str>,
    port: u16,
}

impl Tcp {
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings { host, port } = super::settings(settings)?;
        if host.is_empty() {
            return Err("host must not be empty".to_owned());
        }
        Ok(Self { host: host.into(), port: port_number(port)? })
    }

    pub fn probe(self, timeout: Duration) -> impl Probe {
        FnProbe(move || {
            let host = Arc::clone(&self.host);
            let port = self.port;
            super::within(timeout, async move { super::connect_tcp(&host, port).await.map(|_| 1.0) })
        })
    }
}

/// A `port` key's value, checked to be a port.
pub(crate) fn port_number(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port must be between 1 and 65535, not {port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Policy, Status, Subsystem};
    use crate::dependencies::testing::{closed_port, silent_listener};
    use crate::dependencies::Dependency;
    use std::sync::atomic::Ordering;
    use tokio::runtime::Handle;

    fn tcp(host: &str, port: u16, timeout_ms: u64) -> Arc<Subsystem> {
        let dependency = Dependency::parse("tcp", serde_json::json!({"host": host, "port": port})).unwrap();
        Arc::new(dependency.subsystem("tcp", Policy::new(0.0, Duration::from_millis(timeout_ms))))
    }

    async fn outcome(subsystem: &Arc<Subsystem>) -> crate::checks::Outcome {
        start_round(std::slice::from_ref(subsystem), &Handle::current()).await.outcomes.remove(0)
    }

    #[tokio::test]
    async fn a_listening_port_passes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let done = outcome(&tcp("127.0.0.1", port, 10_000)).await;
        assert_eq!((done.status, done.metric), (Status::Pass, Some(1.0)), "{done:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = closed_port().await;
        let done = outcome(&tcp("127.0.0.1", port, 10_000)).await;
        assert_eq!(done.status, Status::Fail);
        assert_eq!(done.message, Some(format!("connection refused (127.0.0.1:{port})")));
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_says_so() {
        let done = outcome(&tcp("db.phoenix-test.invalid", 5432, 10_000)).await;
        assert_eq!(done.message.as_deref(), Some("cannot resolve host 'db.phoenix-test.invalid'"));
    }

    #[tokio::test]
    async fn a_port_that_accepts_passes_even_if_it_never_answers() {
        let (port, silence) = silent_listener().await;
        let done = outcome(&tcp("127.0.0.1", port, 10_000)).await;
        assert_eq!(done.status, Status::Pass);
        assert_eq!(silence.accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn settings_are_validated() {
        let parse = |settings| Dependency::parse("tcp", settings).err().unwrap();
        assert_eq!(parse(serde_json::json!({"host": "h"})), "missing key 'port'");
        assert_eq!(parse(serde_json::json!({"port": 1})), "missing key 'host'");
        assert_eq!(
            parse(serde_json::json!({"host": "h", "port": 0})),
            "port must be between 1 and 65535, not 0"
        );
        assert!(parse(serde_json::json!({"host": "h", "port": 65536})).contains("65535, not 65536"));
        assert_eq!(
            parse(serde_json::json!({"host": "h", "port": 1, "timeout": 3})),
            "unknown key 'timeout' (expected one of host, port)"
        );
        assert_eq!(parse(serde_json::json!({"host": "", "port": 1})), "host must not be empty");
    }
}
