//! Every response body Phoenix sends is rendered here, so each shape has exactly one definition.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::checks::{Mark, Outcome, Report, Status};
use crate::routes::ALLOWED_METHODS;

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-27T08:50:54.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    uptime_seconds: u64,
    timestamp: &'a str,
}

pub fn health(uptime: Duration, now: SystemTime) -> Vec<u8> {
    to_json(&Health { status: "healthy", uptime_seconds: uptime.as_secs(), timestamp: &timestamp(now) })
}

/// How a readiness answer is presented; chosen per request from the query and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The seed's JSON.
    Json,
    /// The IETF draft "Health Check Response Format for HTTP APIs" (`application/health+json`).
    HealthJson,
    /// Kubernetes-style plain text (`?verbose`).
    Verbose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View<'a> {
    pub format: Format,
    /// Whether subsystems, metrics and errors may be shown to this caller.
    pub details: bool,
    /// Subsystems left out of the verdict and the body (`?exclude=`).
    pub exclude: Vec<&'a str>,
}

impl View<'_> {
    pub const PUBLIC_JSON: View<'static> = View { format: Format::Json, details: false, exclude: Vec::new() };
    pub const FULL_JSON: View<'static> = View { format: Format::Json, details: true, exclude: Vec::new() };
}

/// A rendered response: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub status: u16,
    pub content_type: &'static str,
    /// Shared, so a server can send a cached body without copying it.
    pub bytes: Bytes,
}

pub const JSON: &str = "application/json";
pub const HEALTH_JSON: &str = "application/health+json";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const HTML: &str = "text/html; charset=utf-8";

impl Body {
    /// The headers this body is sent with.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match (self.status, self.content_type) {
            (405, _) => &[("content-type", JSON), ("allow", ALLOWED_METHODS)],
            (_, HEALTH_JSON) => &[("content-type", HEALTH_JSON)],
            (_, TEXT) => &[("content-type", TEXT)],
            (_, HTML) => &[("content-type", HTML), ("cache-control", "no-cache")],
            (_, crate::metrics::OPENMETRICS) => &[("content-type", crate::metrics::OPENMETRICS)],
            (_, crate::metrics::PROMETHEUS_TEXT) => &[("content-type", crate::metrics::PROMETHEUS_TEXT)],
            _ => &[("content-type", JSON)],
        }
    }

    fn json(status: u16, value: &impl Serialize) -> Self {
        Self { status, content_type: JSON, bytes: to_json(value).into() }
    }
}

fn code(ready: bool) -> u16 {
    if ready {
        200
    } else {
        503
    }
}

fn millis(latency: Duration) -> u64 {
    u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct Detail<'a> {
    status: &'static str,
    ready: bool,
    metric: Option<f64>,
    threshold: f64,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'a str>,
}

impl<'a> Detail<'a> {
    fn of(o: &'a Outcome) -> Self {
        let message = o.message.as_deref();
        let warns = o.status == Status::Warn;
        Detail {
            status: o.status.as_str(),
            ready: o.ready(),
            metric: o.metric,
            threshold: o.threshold,
            latency_ms: millis(o.latency),
            error: if warns { None } else { message },
            warning: if warns { message } else { None },
        }
    }
}

/// Subsystems keyed by name, in registration order (a plain map would sort them).
struct Details<'a>(Vec<&'a Outcome>);

impl Serialize for Details<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for o in &self.0 {
            map.serialize_entry(&o.name, &Detail::of(o))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Ready<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subsystems: Option<Details<'a>>,
}

/// The IETF draft's status for a set of outcomes: fail if any is not ready, warn if any warns.
fn overall(outcomes: &[&Outcome]) -> &'static str {
    if outcomes.iter().any(|o| !o.ready()) {
        "fail"
    } else if outcomes.iter().any(|o| o.status == Status::Warn) {
        "warn"
    } else {
        "pass"
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckEntry<'a> {
    component_id: &'a str,
    observed_value: Option<f64>,
    observed_unit: &'static str,
    status: &'static str,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
}

/// `checks` keyed `"<name>:<measurement>"`, each a one-element list as the draft prescribes.
struct Checks<'a>(&'a [&'a Outcome]);

impl Serialize for Checks<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for o in self.0 {
            let status = match o.status {
                Status::Pass => "pass",
                Status::Warn => "warn",
                Status::Fail | Status::Pending => "fail",
            };
            let entry = CheckEntry {
                component_id: &o.name,
                observed_value: o.metric,
                observed_unit: "ratio",
                status,
                time: timestamp(o.at),
                output: o.message.as_deref().filter(|_| status != "pass"),
            };
            map.serialize_entry(&format!("{}:{}", o.name, o.measurement), &[entry])?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct HealthJson<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<Checks<'a>>,
}

fn health_json(outcomes: &[&Outcome], details: bool) -> Body {
    let status = overall(outcomes);
    let output = (status == "fail" && details).then(|| {
        let failing: Vec<_> = outcomes.iter().filter(|o| !o.ready()).map(|o| o.name.as_str()).collect();
        format!("not ready: {}", failing.join(", "))
    });
    let body = HealthJson { status, output, checks: details.then_some(Checks(outcomes)) };
    Body { status: code(status != "fail"), content_type: HEALTH_JSON, bytes: to_json(&body).into() }
}

fn verbose_line(o: &Outcome) -> String {
    let ms = o.latency.as_secs_f64() * 1000.0;
    let message = o.message.as_deref().unwrap_or("");
    match o.status {
        Status::Pass => format!("[+]{} ok ({ms:.1} ms)", o.name),
        Status::Warn => format!("[+]{} warn: {message} ({ms:.1} ms)", o.name),
        Status::Fail => format!("[-]{} failed: {message}", o.name),
        Status::Pending => format!("[-]{} pending: {message}", o.name),
    }
}

fn verbose(outcomes: &[&Outcome], excluded: &[&Outcome], details: bool) -> Body {
    let ready = outcomes.iter().all(|o| o.ready());
    let mut text = String::new();
    if details {
        for o in outcomes {
            text.push_str(&verbose_line(o));
            text.push('\n');
        }
        for o in excluded {
            text.push_str(&format!("[+]{} excluded: ok\n", o.name));
        }
    }
    text.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
    Body { status: code(ready), content_type: TEXT, bytes: text.into() }
}

/// The `/ready` answer for a report, as `view` asks.
pub fn ready(report: &Report, view: &View<'_>) -> Body {
    let outcomes: Vec<&Outcome> = report.included(&view.exclude).collect();
    match view.format {
        Format::HealthJson => health_json(&outcomes, view.details),
        Format::Verbose => {
            let excluded: Vec<&Outcome> =
                report.outcomes.iter().filter(|o| view.exclude.contains(&o.name.as_str())).collect();
            verbose(&outcomes, &excluded, view.details)
        }
        Format::Json => {
            let ready = outcomes.iter().all(|o| o.ready());
            let names = |want: bool| -> Vec<&str> {
                outcomes.iter().filter(|o| o.ready() == want).map(|o| o.name.as_str()).collect()
            };
            let body = Ready {
                status: if ready { "ready" } else { "not_ready" },
                missing: (!ready && view.details).then(|| names(false)),
                ready: (!ready && view.details).then(|| names(true)),
                subsystems: view.details.then(|| Details(outcomes.clone())),
            };
            Body::json(code(ready), &body)
        }
    }
}

#[derive(Serialize)]
struct One<'a> {
    name: &'a str,
    #[serde(flatten)]
    detail: Detail<'a>,
}

#[derive(Serialize)]
struct StatusOnly<'a> {
    status: &'a str,
}

/// The `/ready/<name>` answer for one subsystem.
pub fn subsystem(outcome: &Outcome, view: &View<'_>) -> Body {
    match view.format {
        Format::HealthJson => health_json(&[outcome], view.details),
        Format::Verbose => verbose(&[outcome], &[], view.details),
        Format::Json if view.details => {
            Body::json(code(outcome.ready()), &One { name: &outcome.name, detail: Detail::of(outcome) })
        }
        Format::Json => Body::json(code(outcome.ready()), &StatusOnly { status: outcome.status.as_str() }),
    }
}

/// The status page: one self-contained HTML file that draws itself from `/status?format=json`.
pub fn status_page() -> Body {
    const PAGE: &str = include_str!("status.html");
    Body { status: 200, content_type: HTML, bytes: Bytes::from_static(PAGE.as_bytes()) }
}

/// What the status page shows.
pub struct StatusPage<'a> {
    pub ready: bool,
    pub draining: bool,
    pub uptime: Duration,
    pub version: &'static str,
    /// Whether subsystems are shown (the details policy); else only the overall status.
    pub details: bool,
    pub subsystems: Vec<StatusOfSubsystem<'a>>,
}

pub struct StatusOfSubsystem<'a> {
    pub name: &'a str,
    /// Its result in the newest round (none before the first).
    pub outcome: Option<&'a Outcome>,
    /// Its latest runs, oldest first.
    pub recent: Vec<Mark>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subsystems: Option<Vec<SubsystemJson<'a>>>,
}

#[derive(Serialize)]
struct SubsystemJson<'a> {
    name: &'a str,
    measurement: Option<&'a str>,
    #[serde(flatten)]
    detail: Option<Detail<'a>>,
    history: Vec<MarkJson>,
}

#[derive(Serialize)]
struct MarkJson {
    status: &'static str,
    metric: Option<f64>,
    latency_ms: f64,
    timestamp: String,
}

/// `/status?format=json`: the page's data.
pub fn status_json(page: &StatusPage<'_>) -> Body {
    let status = match (page.draining, page.ready) {
        (true, _) => "draining",
        (false, true) => "ready",
        (false, false) => "not_ready",
    };
    let subsystems = page.details.then(|| {
        page.subsystems
            .iter()
            .map(|s| SubsystemJson {
                name: s.name,
                measurement: s.outcome.map(|o| o.measurement.as_str()),
                detail: s.outcome.map(Detail::of),
                history: s
                    .recent
                    .iter()
                    .map(|mark| MarkJson {
                        status: mark.status.as_str(),
                        metric: mark.metric,
                        latency_ms: mark.latency.as_secs_f64() * 1e3,
                        timestamp: timestamp(mark.at),
                    })
                    .collect(),
            })
            .collect()
    });
    let body = StatusJson {
        status,
        version: page.version,
        uptime_seconds: page.uptime.as_secs(),
        timestamp: timestamp(SystemTime::now()),
        subsystems,
    };
    Body::json(200, &body)
}

/// `/ready` while the service drains before shutting down: not ready, whatever the checks say.
pub fn draining(format: Format) -> Body {
    not_ready(format, &StatusOnly { status: "draining" }, "draining".to_owned())
}

/// Readiness while the serving event loop is stalled: the worker must leave the load balancer.
pub fn stalled(format: Format, loop_lag_ms: u64) -> Body {
    let json = LoopLag { status: "stalled", loop_lag_ms: Some(loop_lag_ms) };
    not_ready(format, &json, format!("event loop stalled for {loop_lag_ms} ms"))
}

/// A 503 that no check decided: `json` in JSON, `reason` in the other formats.
fn not_ready(format: Format, json: &impl Serialize, reason: String) -> Body {
    match format {
        Format::Json => Body::json(503, json),
        Format::HealthJson => Body {
            status: 503,
            content_type: HEALTH_JSON,
            bytes: to_json(&HealthJson { status: "fail", output: Some(reason), checks: None }).into(),
        },
        Format::Verbose => {
            Body { status: 503, content_type: TEXT, bytes: format!("readyz check failed: {reason}\n").into() }
        }
    }
}

#[derive(Serialize)]
struct LoopLag {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    loop_lag_ms: Option<u64>,
}

/// `/live`: alive unless the serving event loop (`loop_lag_ms`: how far behind its heartbeat it is, when
/// one beats) is `stalled`.
pub fn live(loop_lag_ms: Option<u64>, stalled: bool) -> Body {
    let status = if stalled { "stalled" } else { "alive" };
    Body::json(code(!stalled), &LoopLag { status, loop_lag_ms })
}

/// `/startup`: 503 until start-up has finished once, then 200 for good.
pub fn startup(started: bool) -> Body {
    let status = if started { "started" } else { "starting" };
    Body::json(code(started), &StatusOnly { status })
}

#[derive(Serialize)]
struct Error<'a> {
    error: &'a str,
    code: u16,
    timestamp: &'a str,
}

/// The reason phrase Phoenix uses for each error status it sends.
pub fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

pub fn error(code: u16, now: SystemTime) -> Vec<u8> {
    to_json(&Error { error: reason(code), code, timestamp: &timestamp(now) })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Serialising these plain structs into memory cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(value).expect("response bodies always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(body: &Body) -> Value {
        serde_json::from_slice(&body.bytes).unwrap()
    }

    fn outcome(name: &str, metric: Option<f64>, status: Status, message: Option<&str>) -> Outcome {
        Outcome {
            name: name.into(),
            measurement: "metric".into(),
            threshold: 0.5,
            metric,
            status,
            latency: Duration::from_micros(3_400),
            message: message.map(Into::into),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn mixed() -> Report {
        Report {
            outcomes: vec![
                outcome("db", None, Status::Fail, Some("timed out after 500 ms")),
                outcome("cache", Some(0.7), Status::Warn, Some("metric 0.70 <= warn 0.80")),
                outcome("disk", Some(1.0), Status::Pass, None),
            ],
        }
    }

    fn view(format: Format, details: bool, exclude: Vec<&str>) -> View<'_> {
        View { format, details, exclude }
    }

    #[test]
    fn health_has_status_uptime_and_utc_timestamp() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let v: Value = serde_json::from_slice(&health(Duration::from_millis(12_900), at)).unwrap();
        assert_eq!(
            v,
            json!({"status": "healthy", "uptime_seconds": 12, "timestamp": "2023-11-14T22:13:20.123Z"})
        );
    }

    #[test]
    fn ready_report_lists_subsystems_in_registration_order() {
        let report = Report {
            outcomes: vec![
                outcome("zeta", Some(1.0), Status::Pass, None),
                outcome("alpha", Some(0.9), Status::Pass, None),
            ],
        };
        let body = ready(&report, &View::FULL_JSON);
        assert_eq!((body.status, body.content_type), (200, JSON));
        let text = String::from_utf8(body.bytes.to_vec()).unwrap();
        assert!(text.find("zeta").unwrap() < text.find("alpha").unwrap());
        assert_eq!(
            parse(&body),
            json!({"status": "ready", "subsystems": {
                "zeta": {"status": "pass", "ready": true, "metric": 1.0, "threshold": 0.5, "latency_ms": 3},
                "alpha": {"status": "pass", "ready": true, "metric": 0.9, "threshold": 0.5, "latency_ms": 3}}})
        );
    }

    #[test]
    fn not_ready_report_has_missing_ready_errors_and_warnings() {
        let body = ready(&mixed(), &View::FULL_JSON);
        assert_eq!(body.status, 503);
        let v = parse(&body);
        assert_eq!(v["status"], "not_ready");
        assert_eq!(v["missing"], json!(["db"]));
        assert_eq!(v["ready"], json!(["cache", "disk"]));
        assert_eq!(v["subsystems"]["db"]["error"], "timed out after 500 ms");
        assert_eq!(v["subsystems"]["db"]["metric"], Value::Null);
        assert_eq!(v["subsystems"]["cache"]["status"], "warn");
        assert_eq!(v["subsystems"]["cache"]["warning"], "metric 0.70 <= warn 0.80");
        assert!(v["subsystems"]["disk"].get("error").is_none());
    }

    #[test]
    fn hidden_details_show_only_the_status() {
        assert_eq!(parse(&ready(&mixed(), &View::PUBLIC_JSON)), json!({"status": "not_ready"}));
        let text = ready(&mixed(), &view(Format::Verbose, false, vec![])).bytes;
        assert_eq!(&text[..], b"readyz check failed\n");
        assert_eq!(
            parse(&ready(&mixed(), &view(Format::HealthJson, false, vec![]))),
            json!({"status": "fail"})
        );
    }

    #[test]
    fn excluded_subsystems_leave_the_verdict_and_the_body() {
        let body = ready(&mixed(), &view(Format::Json, true, vec!["db"]));
        assert_eq!(body.status, 200);
        let v = parse(&body);
        assert_eq!(v["status"], "ready");
        assert!(v["subsystems"].get("db").is_none());
    }

    #[test]
    fn verbose_lists_each_check_kubernetes_style() {
        let body = ready(&mixed(), &view(Format::Verbose, true, vec![]));
        assert_eq!((body.status, body.content_type), (503, TEXT));
        assert_eq!(
            String::from_utf8(body.bytes.to_vec()).unwrap(),
            "[-]db failed: timed out after 500 ms\n\
             [+]cache warn: metric 0.70 <= warn 0.80 (3.4 ms)\n\
             [+]disk ok (3.4 ms)\n\
             readyz check failed\n"
        );
        let excluded = ready(&mixed(), &view(Format::Verbose, true, vec!["db"]));
        let text = String::from_utf8(excluded.bytes.to_vec()).unwrap();
        assert!(text.contains("[+]db excluded: ok\n"));
        assert!(text.ends_with("readyz check passed\n"));
    }

    #[test]
    fn health_json_follows_the_ietf_draft() {
        let body = ready(&mixed(), &view(Format::HealthJson, true, vec![]));
        assert_eq!((body.status, body.content_type), (503, HEALTH_JSON));
        let v = parse(&body);
        assert_eq!(v["status"], "fail");
        assert_eq!(v["output"], "not ready: db");
        let db = &v["checks"]["db:metric"][0];
        assert_eq!(db["status"], "fail");
        assert_eq!(db["output"], "timed out after 500 ms");
        assert_eq!(db["observedValue"], Value::Null);
        assert_eq!(db["time"], "1970-01-01T00:00:00.000Z");
        let disk = &v["checks"]["disk:metric"][0];
        assert_eq!(disk["observedValue"], 1.0);
        assert_eq!(disk["observedUnit"], "ratio");
        assert!(disk.get("output").is_none());
        let passing = ready(&mixed(), &view(Format::HealthJson, true, vec!["db"]));
        assert_eq!((passing.status, parse(&passing)["status"].clone()), (200, json!("warn")));
    }

    #[test]
    fn one_subsystem_has_its_detail_and_status_code() {
        let report = mixed();
        let body = subsystem(&report.outcomes[1], &View::FULL_JSON);
        assert_eq!(body.status, 200);
        assert_eq!(parse(&body)["name"], "cache");
        assert_eq!(parse(&body)["warning"], "metric 0.70 <= warn 0.80");
        let failing = subsystem(&report.outcomes[0], &View::PUBLIC_JSON);
        assert_eq!((failing.status, parse(&failing)), (503, json!({"status": "fail"})));
    }

    #[test]
    fn draining_live_and_startup_bodies() {
        assert_eq!(parse(&draining(Format::Json)), json!({"status": "draining"}));
        assert_eq!(draining(Format::Verbose).status, 503);
        assert_eq!(parse(&live(None, false)), json!({"status": "alive"}));
        assert_eq!(parse(&live(Some(3), false)), json!({"status": "alive", "loop_lag_ms": 3}));
        let stalled_live = live(Some(6000), true);
        assert_eq!(
            (stalled_live.status, parse(&stalled_live)),
            (503, json!({"status": "stalled", "loop_lag_ms": 6000}))
        );
        let not_ready = stalled(Format::Json, 2500);
        assert_eq!(
            (not_ready.status, parse(&not_ready)),
            (503, json!({"status": "stalled", "loop_lag_ms": 2500}))
        );
        assert_eq!(
            parse(&stalled(Format::HealthJson, 2500)),
            json!({"status": "fail", "output": "event loop stalled for 2500 ms"})
        );
        assert_eq!(
            &stalled(Format::Verbose, 7).bytes[..],
            b"readyz check failed: event loop stalled for 7 ms\n"
        );
        assert_eq!((startup(false).status, parse(&startup(false))), (503, json!({"status": "starting"})));
        assert_eq!((startup(true).status, parse(&startup(true))), (200, json!({"status": "started"})));
    }

    #[test]
    fn error_body_names_reason_and_code() {
        let v: Value = serde_json::from_slice(&error(405, SystemTime::UNIX_EPOCH)).unwrap();
        assert_eq!(
            v,
            json!({"error": "Method Not Allowed", "code": 405, "timestamp": "1970-01-01T00:00:00.000Z"})
        );
    }
}
