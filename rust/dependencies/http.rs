//! `http`: a GET (or HEAD) whose status must be in the expected set (2xx unless told otherwise), and
//! whose body may have to contain a text. Redirects are answers like any other unless following them is
//! asked for (at most [`MAX_REDIRECTS`] hops). Connections are pooled between runs. `https://` is always
//! verified in full (chain and host name), against the system's roots or `ca_file`'s.
//!
//! Errors are built from the URL's host and port only: reqwest's own texts quote the whole URL, with its
//! user info and query string.

use std::error::Error as _;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Client, Method, Url};
use serde::Deserialize;
use serde_json::Value;

use super::tls;
use crate::checks::{CheckResult, Probe};

pub const MAX_REDIRECTS: usize = 5;

/// How much of a body is searched for `body_contains` (and read so the connection can be reused).
pub const BODY_LIMIT: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    expect_status: Option<Vec<Value>>,
    #[serde(default)]
    body_contains: Option<String>,
    #[serde(default)]
    follow_redirects: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// One accepted status, or a class of them (`2xx` is 2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Status(u16),
    Class(u16),
}

impl Expect {
    fn parse(value: &Value) -> Result<Self, String> {
        let bad = || format!("expect_status: {value} is neither a status (100-599) nor a class (1xx-5xx)");
        match value {
            Value::Number(number) => match number.as_u64() {
                Some(status @ 100..=599) => Ok(Self::Status(status as u16)),
                _ => Err(bad()),
            },
            Value::String(class) => match class.to_ascii_lowercase().as_bytes() {
                [digit @ b'1'..=b'5', b'x', b'x'] => Ok(Self::Class(u16::from(digit - b'0'))),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    fn accepts(self, status: u16) -> bool {
        match self {
            Self::Status(expected) => status == expected,
            Self::Class(class) => status / 100 == class,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{status}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

pub struct Http {
    client: Client,
    method: Method,
    url: Url,
    expect: Vec<Expect>,
    body_contains: Option<String>,
}

impl Http {
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings { url, method, expect_status, body_contains, follow_redirects, ca_file } =
            super::settings(settings)?;
        let url = Url::parse(&url).map_err(|err| format!("url: not a valid URL: {err}"))?;
        let roots = match (url.scheme(), ca_file) {
            ("https", ca_file) => tls::roots(ca_file.as_deref(), "url")?,
            ("http", Some(_)) if !follow_redirects => {
                return Err("ca_file is only used with an https:// url (or follow_redirects)".to_owned())
            }
            ("http", Some(ca_file)) => tls::roots(Some(&ca_file), "url")?,
            // Used only if a redirect leads to https://, which then fails if the system has no roots.
            ("http", None) => tls::system_roots(),
            (other, _) => return Err(format!("url must start with http:// or https://, not {other}://")),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err("url: no host given".to_owned());
        }
        if url.port() == Some(0) {
            return Err("url: port must be between 1 and 65535, not 0".to_owned());
        }
        let method = match method.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some(other) => return Err(format!("method must be GET or HEAD, not '{other}'")),
        };
        let expect = match expect_status {
            None => vec![Expect::Class(2)],
            Some(list) if list.is_empty() => return Err("expect_status must not be empty".to_owned()),
            Some(list) => list.iter().map(Expect::parse).collect::<Result<_, _>>()?,
        };
        match &body_contains {
            Some(text) if text.is_empty() => return Err("body_contains must not be empty".to_owned()),
            Some(_) if method == Method::HEAD => {
                return Err("body_contains needs method GET: a HEAD answer has no body".to_owned())
            }
            _ => {}
        }
        let redirects = match follow_redirects {
            true => reqwest::redirect::Policy::limited(MAX_REDIRECTS),
            false => reqwest::redirect::Policy::none(),
        };
        let client = Client::builder()
            .tls_backend_preconfigured(tls::client_config(tls::Verify::ChainAndName(roots), &[b"http/1.1"]))
            // A health check asks the dependency itself, not whatever proxy the environment names.
            .no_proxy()
            .redirect(redirects)
            .dns_resolver(Arc::new(Resolver))
            .pool_max_idle_per_host(1)
            .user_agent(concat!("phoenix/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| "cannot build the HTTP client".to_owned())?;
        Ok(Self { client, method, url, expect, body_contains })
    }

    pub fn probe(self, timeout: Duration) -> impl Probe {
        super::probe_within(self, timeout, |this| async move { this.check().await })
    }

    async fn check(&self) -> CheckResult {
        let mut response = self
            .client
            .request(self.method.clone(), self.url.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        if !self.expect.iter().any(|expect| expect.accepts(status)) {
            let expected = self.expect.iter().map(Expect::to_string).collect::<Vec<_>>().join(", ");
            return Err(format!("server answered {status} (expected {expected})"));
        }
        // Read to the end (within the limit) even when no text is wanted: only then does the connection
        // go back to the pool.
        let mut body = Vec::new();
        let mut found = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            let searched_to = body.len();
            body.extend_from_slice(&chunk);
            if let Some(text) = &self.body_contains {
                // From just before the new chunk, for a text split across two.
                let from = searched_to.saturating_sub(text.len() - 1);
                found = found || body[from..].windows(text.len()).any(|window| window == text.as_bytes());
            }
            if body.len() >= BODY_LIMIT {
                break;
            }
        }
        match &self.body_contains {
            Some(_) if !found => Err("body does not contain the expected text".to_owned()),
            _ => Ok(1.0),
        }
    }
}

/// A failed request by its cause, from the URL's host and port only.
fn describe(err: &reqwest::Error) -> String {
    if let Some(handshake) = tls::describe(err) {
        return handshake;
    }
    let address = err
        .url()
        .map(|url| format!("{}:{}", url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(80)))
        .unwrap_or_default();
    let https = err.url().is_some_and(|url| url.scheme() == "https");
    let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
    let mut cause = err.source();
    while let Some(error) = cause {
        if let Some(unresolved) = error.downcast_ref::<CannotResolve>() {
            return unresolved.to_string();
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // Connecting a socket never ends early: on https, the handshake did.
            if https && io.kind() == std::io::ErrorKind::UnexpectedEof {
                return tls::describe_io(io);
            }
            return super::connect_error(io, &address);
        }
        // reqwest's errors quote the URL: never shown.
        if error.downcast_ref::<reqwest::Error>().is_none() {
            innermost = Some(error);
        }
        cause = error.source();
    }
    if err.is_redirect() {
        return format!("more than {MAX_REDIRECTS} redirects");
    }
    let what = if err.is_connect() { "cannot connect" } else { "request failed" };
    match innermost {
        Some(cause) => format!("{what} ({address}): {cause}"),
        None => format!("{what} ({address})"),
    }
}

/// Resolves names with the system's resolver, as reqwest would, but fails with an error this module
/// recognises, so that a name that does not resolve is reported as such.
struct Resolver;

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<_> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(addresses) => addresses.collect(),
                Err(_) => Vec::new(),
            };
            if addresses.is_empty() {
                return Err(Box::new(CannotResolve(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

#[derive(Debug)]
struct CannotResolve(String);

impl fmt::Display for CannotResolve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot resolve host '{}'", self.0)
    }
}

impl std::error::Error for CannotResolve {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Outcome, Policy, Status, Subsystem};
    use crate::dependencies::testing::{
        closed_port, silent_listener, times_out_holding_one_connection, tls_server, TempDir, TestCa,
    };
    use crate::dependencies::Dependency;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::runtime::Handle;

    /// A small HTTP/1.1 server on 127.0.0.1 answering by path, recording each request line it reads.
    async fn server() -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buffer[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(line.clone());
                    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                    let (status, extra, body) = answer(&path);
                    let body = if line.starts_with("HEAD ") { String::new() } else { body };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (port, requests)
    }

    fn answer(path: &str) -> (&'static str, String, String) {
        let big = || format!("{}needle", "x".repeat(10_000));
        match path {
            "/ok" => ("200 OK", String::new(), "all systems go".into()),
            "/big" => ("200 OK", String::new(), big()),
            "/fail" => ("500 Internal Server Error", String::new(), "down".into()),
            "/created" => ("201 Created", String::new(), String::new()),
            "/missing" => ("404 Not Found", String::new(), String::new()),
            "/moved" => ("302 Found", "location: /ok\r\n".into(), String::new()),
            "/loop" => ("302 Found", "location: /loop\r\n".into(), String::new()),
            _ => ("400 Bad Request", String::new(), String::new()),
        }
    }

    fn http(settings: Value, timeout_ms: u64) -> Arc<Subsystem> {
        let dependency = Dependency::parse("http", settings).unwrap();
        Arc::new(dependency.subsystem("api", Policy::new(0.0, Duration::from_millis(timeout_ms))))
    }

    async fn check(settings: Value) -> Outcome {
        start_round(&[http(settings, 10_000)], &Handle::current()).await.outcomes.remove(0)
    }

    fn failed(outcome: &Outcome) -> &str {
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        outcome.message.as_deref().unwrap()
    }

    #[tokio::test]
    async fn a_2xx_passes_and_a_500_fails() {
        let (port, _) = server().await;
        let ok = check(serde_json::json!({"url": format!("http://127.0.0.1:{port}/ok")})).await;
        assert_eq!((ok.status, ok.metric), (Status::Pass, Some(1.0)), "{ok:?}");
        let down = check(serde_json::json!({"url": format!("http://127.0.0.1:{port}/fail")})).await;
        assert_eq!(failed(&down), "server answered 500 (expected 2xx)");
    }

    #[tokio::test]
    async fn expected_statuses_are_codes_and_classes() {
        let (port, _) = server().await;
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let missing = check(serde_json::json!({"url": url("/missing"), "expect_status": [404]})).await;
        assert_eq!(missing.status, Status::Pass);
        let created = check(serde_json::json!({"url": url("/created"), "expect_status": [200, "4xx"]})).await;
        assert_eq!(failed(&created), "server answered 201 (expected 200, 4xx)");
        let class = check(serde_json::json!({"url": url("/missing"), "expect_status": ["4XX"]})).await;
        assert_eq!(class.status, Status::Pass);
    }

    #[tokio::test]
    async fn the_body_must_contain_the_text_when_asked() {
        let (port, _) = server().await;
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let found = check(serde_json::json!({"url": url("/ok"), "body_contains": "systems go"})).await;
        assert_eq!(found.status, Status::Pass);
        let far = check(serde_json::json!({"url": url("/big"), "body_contains": "needle"})).await;
        assert_eq!(far.status, Status::Pass, "{far:?}");
        let absent = check(serde_json::json!({"url": url("/ok"), "body_contains": "degraded"})).await;
        assert_eq!(failed(&absent), "body does not contain the expected text");
    }

    #[tokio::test]
    async fn head_asks_with_head() {
        let (port, requests) = server().await;
        let head =
            check(serde_json::json!({"url": format!("http://127.0.0.1:{port}/ok"), "method": "head"})).await;
        assert_eq!(head.status, Status::Pass);
        assert_eq!(*requests.lock().unwrap(), ["HEAD /ok HTTP/1.1"]);
    }

    #[tokio::test]
    async fn redirects_are_followed_only_when_asked_and_not_forever() {
        let (port, requests) = server().await;
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let kept = check(serde_json::json!({"url": url("/moved")})).await;
        assert_eq!(failed(&kept), "server answered 302 (expected 2xx)");
        assert_eq!(*requests.lock().unwrap(), ["GET /moved HTTP/1.1"]);
        let followed = check(serde_json::json!({"url": url("/moved"), "follow_redirects": true})).await;
        assert_eq!(followed.status, Status::Pass);
        assert_eq!(requests.lock().unwrap()[1..], ["GET /moved HTTP/1.1", "GET /ok HTTP/1.1"]);
        let looping = check(serde_json::json!({"url": url("/loop"), "follow_redirects": true})).await;
        assert_eq!(failed(&looping), format!("more than {MAX_REDIRECTS} redirects"));
    }

    #[tokio::test]
    async fn refused_and_unresolved_are_named_without_credentials_or_query() {
        let port = closed_port().await;
        let refused = check(
            serde_json::json!({"url": format!("http://app:s3cr3t-pw@127.0.0.1:{port}/health?token=t0k3n")}),
        )
        .await;
        assert_eq!(failed(&refused), format!("connection refused (127.0.0.1:{port})"));
        let unresolved = check(
            serde_json::json!({"url": "http://app:s3cr3t-pw@api.phoenix-test.invalid/health?token=t0k3n"}),
        )
        .await;
        assert_eq!(failed(&unresolved), "cannot resolve host 'api.phoenix-test.invalid'");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_holding_one_connection() {
        let (port, silence) = silent_listener().await;
        let api = http(serde_json::json!({"url": format!("http://127.0.0.1:{port}/health")}), 200);
        times_out_holding_one_connection(&api, &silence, 200).await;
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    #[tokio::test]
    async fn https_passes_only_with_a_trusted_ca_and_the_right_host() {
        let ca = TestCa::new();
        let dir = TempDir::new("https");
        let ca_file = dir.write("ca.pem", &ca.pem);
        let url = format!("https://127.0.0.1:{}/ok", tls_server(ca.server(&["127.0.0.1"]), OK).await);
        let trusted = check(serde_json::json!({"url": url, "ca_file": ca_file})).await;
        assert_eq!((trusted.status, trusted.metric), (Status::Pass, Some(1.0)), "{trusted:?}");
        // The system's roots do not hold the test's CA, nor does another CA's file.
        let untrusted = check(serde_json::json!({"url": url})).await;
        assert_eq!(failed(&untrusted), "TLS handshake failed: certificate not trusted (unknown issuer)");
        let other = dir.write("other.pem", &TestCa::new().pem);
        let other = check(serde_json::json!({"url": url, "ca_file": other})).await;
        assert_eq!(failed(&other), "TLS handshake failed: certificate not trusted (unknown issuer)");
        // A certificate from the trusted CA, for another host.
        let url = format!("https://127.0.0.1:{}/ok", tls_server(ca.server(&["api.internal"]), OK).await);
        let elsewhere = check(serde_json::json!({"url": url, "ca_file": ca_file})).await;
        assert_eq!(failed(&elsewhere), "TLS handshake failed: certificate not valid for host '127.0.0.1'");
    }

    #[tokio::test]
    async fn https_to_a_plain_port_says_the_answer_is_not_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // A plain HTTP server's answer to bytes it cannot read.
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let plain = check(serde_json::json!({"url": format!("https://127.0.0.1:{port}/")})).await;
        assert_eq!(
            failed(&plain),
            "TLS handshake failed: the server did not answer in TLS (is TLS enabled on this port?)"
        );
    }

    #[test]
    fn settings_are_validated_without_ever_quoting_a_password() {
        let parse = |settings: Value| {
            Dependency::parse("http", settings.clone())
                .err()
                .unwrap_or_else(|| panic!("{settings} was accepted"))
        };
        let dir = TempDir::new("http-settings");
        let not_pem = dir.write("hostname", "api.internal\n");
        let not_pem_error = format!("ca_file: no certificate in '{}'", not_pem.display());
        let with = |extra: Value| {
            let mut settings = serde_json::json!({"url": "http://app:s3cr3t-pw@api/health"});
            settings.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(settings)
        };
        let errors = [
            (with(serde_json::json!({"ca_file": not_pem})), "ca_file is only used with an https:// url (or follow_redirects)"),
            (parse(serde_json::json!({"url": "https://app:s3cr3t-pw@api/", "ca_file": "/nonexistent/ca.pem"})), "ca_file: cannot read '/nonexistent/ca.pem': No such file or directory"),
            (parse(serde_json::json!({"url": "https://app:s3cr3t-pw@api/", "ca_file": not_pem})), &not_pem_error),
            (parse(serde_json::json!({"url": "ftp://app:s3cr3t-pw@api/"})), "url must start with http:// or https://, not ftp://"),
            (parse(serde_json::json!({"url": "http://app:s3cr3t-pw@api:http/"})), "url: not a valid URL: invalid port number"),
            (parse(serde_json::json!({"url": "http://app:s3cr3t-pw@api:0/"})), "url: port must be between 1 and 65535, not 0"),
            (parse(serde_json::json!({"url": "/health"})), "url: not a valid URL: relative URL without a base"),
            (with(serde_json::json!({"method": "POST"})), "method must be GET or HEAD, not 'POST'"),
            (with(serde_json::json!({"expect_status": [600]})), "expect_status: 600 is neither a status (100-599) nor a class (1xx-5xx)"),
            (with(serde_json::json!({"expect_status": [99]})), "expect_status: 99 is neither"),
            (with(serde_json::json!({"expect_status": ["6xx"]})), "expect_status: \"6xx\" is neither"),
            (with(serde_json::json!({"expect_status": []})), "expect_status must not be empty"),
            (with(serde_json::json!({"expect_status": 200})), "expect_status: invalid type: integer `200`, expected a sequence"),
            (with(serde_json::json!({"method": "HEAD", "body_contains": "ok"})), "body_contains needs method GET"),
            (with(serde_json::json!({"follow_redirects": "yes"})), "follow_redirects: invalid type"),
            (with(serde_json::json!({"timeout": 1})), "unknown key 'timeout' (expected one of url, method, expect_status, body_contains, follow_redirects, ca_file)"),
            (parse(serde_json::json!({"method": "GET"})), "missing key 'url'"),
        ];
        for (err, expected) in errors {
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
            assert!(!err.contains("s3cr3t-pw"), "{err:?}");
        }
    }
}
