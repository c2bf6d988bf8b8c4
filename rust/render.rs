//! Every response body Phoenix sends is rendered here, so each shape has exactly one definition.

use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::checks::{Outcome, Report};

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
    to_json(&Health {
        status: "healthy",
        uptime_seconds: uptime.as_secs(),
        timestamp: &timestamp(now),
    })
}

#[derive(Serialize)]
struct Detail<'a> {
    ready: bool,
    metric: Option<f64>,
    threshold: f64,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Subsystems keyed by name, in registration order (a plain map would sort them).
struct Details<'a>(&'a [Outcome]);

impl Serialize for Details<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for o in self.0 {
            map.serialize_entry(
                &o.name,
                &Detail {
                    ready: o.ready,
                    metric: o.metric,
                    threshold: o.threshold,
                    latency_ms: u64::try_from(o.latency.as_millis()).unwrap_or(u64::MAX),
                    error: o.error.as_deref(),
                },
            )?;
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
    subsystems: Details<'a>,
}

/// The `/ready` status code and body for a report.
pub fn ready(report: &Report) -> (u16, Vec<u8>) {
    if report.ready {
        let body = Ready {
            status: "ready",
            missing: None,
            ready: None,
            subsystems: Details(&report.outcomes),
        };
        (200, to_json(&body))
    } else {
        let body = Ready {
            status: "not_ready",
            missing: Some(report.missing().map(|o| o.name.as_str()).collect()),
            ready: Some(report.passing().map(|o| o.name.as_str()).collect()),
            subsystems: Details(&report.outcomes),
        };
        (503, to_json(&body))
    }
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
    to_json(&Error {
        error: reason(code),
        code,
        timestamp: &timestamp(now),
    })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Serialising these plain structs into memory cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(value).expect("response bodies always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn outcome(name: &str, metric: Option<f64>, ready: bool, error: Option<&str>) -> Outcome {
        Outcome {
            name: name.into(),
            measurement: "metric".into(),
            threshold: 0.5,
            metric,
            ready,
            latency: Duration::from_millis(3),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn health_has_status_uptime_and_utc_timestamp() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let v = parse(&health(Duration::from_millis(12_900), at));
        assert_eq!(
            v,
            json!({"status": "healthy", "uptime_seconds": 12, "timestamp": "2023-11-14T22:13:20.123Z"})
        );
    }

    #[test]
    fn ready_report_lists_subsystems_in_registration_order() {
        let report = Report {
            ready: true,
            outcomes: vec![
                outcome("zeta", Some(1.0), true, None),
                outcome("alpha", Some(0.9), true, None),
            ],
        };
        let (status, body) = ready(&report);
        assert_eq!(status, 200);
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.find("zeta").unwrap() < text.find("alpha").unwrap());
        assert_eq!(
            parse(&body),
            json!({"status": "ready", "subsystems": {
                "zeta": {"ready": true, "metric": 1.0, "threshold": 0.5, "latency_ms": 3},
                "alpha": {"ready": true, "metric": 0.9, "threshold": 0.5, "latency_ms": 3}}})
        );
    }

    #[test]
    fn not_ready_report_has_missing_ready_and_errors() {
        let report = Report {
            ready: false,
            outcomes: vec![
                outcome("db", None, false, Some("timed out after 500 ms")),
                outcome("cache", Some(1.0), true, None),
            ],
        };
        let (status, body) = ready(&report);
        assert_eq!(status, 503);
        let v = parse(&body);
        assert_eq!(v["status"], "not_ready");
        assert_eq!(v["missing"], json!(["db"]));
        assert_eq!(v["ready"], json!(["cache"]));
        assert_eq!(v["subsystems"]["db"]["error"], "timed out after 500 ms");
        assert_eq!(v["subsystems"]["db"]["metric"], Value::Null);
        assert!(v["subsystems"]["cache"].get("error").is_none());
    }

    #[test]
    fn error_body_names_reason_and_code() {
        let v = parse(&error(405, SystemTime::UNIX_EPOCH));
        assert_eq!(
            v,
            json!({"error": "Method Not Allowed", "code": 405, "timestamp": "1970-01-01T00:00:00.000Z"})
        );
        assert_eq!(parse(&error(404, SystemTime::now()))["error"], "Not Found");
        assert_eq!(
            parse(&error(500, SystemTime::now()))["error"],
            "Internal Server Error"
        );
    }
}
