//! Prometheus metrics. Requests and check runs are recorded with relaxed atomic adds into fixed
//! tables (no lock, no allocation, nothing keyed by a raw path), and a scrape reads them into
//! prometheus-client's encoder: OpenMetrics when the scraper asks for it, else the Prometheus text
//! format 0.0.4.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::routes::Endpoint;

pub mod board;

/// Upper bounds of the latency buckets, in seconds: from 25 µs (a cache hit) to 10 s (a slow check's
/// timeout), about three per decade, so `histogram_quantile` resolves both ends.
pub const BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKET_NANOS: [u64; BUCKETS.len()] = {
    let mut nanos = [0; BUCKETS.len()];
    let mut i = 0;
    while i < BUCKETS.len() {
        nanos[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A latency histogram: one count per bucket (the last is +Inf) and the sum, in nanoseconds. Plain
/// atomics laid out as in C, like every table here, so that a worker can publish them to the
/// workers' shared board (`board.rs`).
#[repr(C)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }
}

impl Histogram {
    fn cells(&self) -> impl Iterator<Item = &AtomicU64> {
        self.counts.iter().chain(std::iter::once(&self.sum_nanos))
    }

    pub fn observe(&self, elapsed: Duration) {
        // 64-bit arithmetic: `as_nanos` is 128 bits wide, and its conversion a library call per request.
        let nanos =
            elapsed.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(elapsed.subsec_nanos()));
        let bucket = BUCKET_NANOS.iter().position(|&bound| nanos <= bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Each bucket's own count (the encoder sums them into cumulative `le` counts; the last bucket is
    /// +Inf), the total count and the sum in seconds.
    fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, count)| {
                (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), count.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|&(_, count)| count).sum();
        HistogramSnapshot { buckets, count, sum_s: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

#[derive(Debug)]
struct HistogramSnapshot {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum_s: f64,
}

impl HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum_s, self.count, &self.buckets, None)
    }
}

/// The `route` label: a route's template, never the raw path, so the series are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Health,
    Live,
    Startup,
    Ready,
    ReadyOne,
    Metrics,
    Status,
    /// Anything else (404s).
    Other,
}

impl RouteLabel {
    const ALL: [RouteLabel; 8] = [
        Self::Health,
        Self::Live,
        Self::Startup,
        Self::Ready,
        Self::ReadyOne,
        Self::Metrics,
        Self::Status,
        Self::Other,
    ];

    pub fn of(endpoint: Option<Endpoint<'_>>) -> Self {
        match endpoint {
            Some(Endpoint::Health) => Self::Health,
            Some(Endpoint::Live) => Self::Live,
            Some(Endpoint::Startup) => Self::Startup,
            Some(Endpoint::Ready) => Self::Ready,
            Some(Endpoint::ReadyOne(_)) => Self::ReadyOne,
            Some(Endpoint::Metrics) => Self::Metrics,
            Some(Endpoint::Status) => Self::Status,
            None => Self::Other,
        }
    }

    fn template(self) -> &'static str {
        match self {
            Self::Health => "/health",
            Self::Live => "/live",
            Self::Startup => "/startup",
            Self::Ready => "/ready",
            Self::ReadyOne => "/ready/{name}",
            Self::Metrics => "/metrics",
            Self::Status => "/status",
            Self::Other => "other",
        }
    }
}

const METHODS: [&str; 3] = ["GET", "HEAD", "other"];
/// Every status the service answers with; anything else would count as "other".
const CODES: [u16; 8] = [200, 400, 401, 404, 405, 431, 500, 503];
const CODE_LABELS: [&str; CODES.len() + 1] =
    ["200", "400", "401", "404", "405", "431", "500", "503", "other"];

fn method_index(method: &str) -> usize {
    match method {
        "GET" => 0,
        "HEAD" => 1,
        _ => 2,
    }
}

fn code_index(code: u16) -> usize {
    CODES.iter().position(|&c| c == code).unwrap_or(CODES.len())
}

/// Which cache answered, and how.
#[derive(Debug, Clone, Copy)]
pub enum CacheEndpoint {
    Health = 0,
    Ready = 1,
}

#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    /// A fresh entry.
    Hit = 0,
    /// This request refreshed it.
    Miss = 1,
    /// Another request was refreshing it: this one was served a stale entry or waited for that
    /// refresh, instead of starting its own (the single flight).
    Coalesced = 2,
}

const CACHE_ENDPOINTS: [&str; 2] = ["health", "ready"];
const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "coalesced"];

/// How a check's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    Pass = 0,
    Warn = 1,
    Fail = 2,
    Timeout = 3,
    Error = 4,
}

const RUN_RESULTS: [&str; 5] = ["pass", "warn", "fail", "timeout", "error"];

/// One check's series.
#[derive(Default)]
#[repr(C)]
pub struct CheckMetrics {
    runs: [AtomicU64; RUN_RESULTS.len()],
    duration: Histogram,
    /// Unix time of the last passing (or warning) run, in milliseconds; 0 before the first.
    last_success_ms: AtomicU64,
}

impl CheckMetrics {
    /// Copies `other` into this one.
    pub fn store_from(&self, other: &CheckMetrics) {
        store_all(self.counted().zip(other.counted()));
        self.last_success_ms.store(other.last_success_ms.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Adds `other`'s runs into this one's; the last success is the later one.
    pub fn add_from(&self, other: &CheckMetrics) {
        add_all(self.counted().zip(other.counted()));
        self.last_success_ms.fetch_max(other.last_success_ms.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn counted(&self) -> impl Iterator<Item = &AtomicU64> {
        self.runs.iter().chain(self.duration.cells())
    }

    pub fn record(&self, result: RunResult, elapsed: Duration, at: SystemTime) {
        self.runs[result as usize].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(elapsed);
        if matches!(result, RunResult::Pass | RunResult::Warn) {
            let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            self.last_success_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// The request and cache series of one process.
#[repr(C)]
pub struct Metrics {
    requests: [[[AtomicU64; CODE_LABELS.len()]; METHODS.len()]; RouteLabel::ALL.len()],
    durations: [Histogram; RouteLabel::ALL.len()],
    cache: [[AtomicU64; CACHE_RESULTS.len()]; CACHE_ENDPOINTS.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
            durations: std::array::from_fn(|_| Histogram::default()),
            cache: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Metrics {
    fn cells(&self) -> impl Iterator<Item = &AtomicU64> {
        let requests = self.requests.iter().flatten().flatten();
        requests.chain(self.durations.iter().flat_map(Histogram::cells)).chain(self.cache.iter().flatten())
    }

    /// Copies `other` into this one.
    pub fn store_from(&self, other: &Metrics) {
        store_all(self.cells().zip(other.cells()));
    }

    /// Adds `other`'s counts into this one's.
    pub fn add_from(&self, other: &Metrics) {
        add_all(self.cells().zip(other.cells()));
    }

    pub fn request(&self, route: RouteLabel, method: &str, code: u16, elapsed: Duration) {
        self.requests[route as usize][method_index(method)][code_index(code)].fetch_add(1, Ordering::Relaxed);
        self.durations[route as usize].observe(elapsed);
    }

    pub fn cache(&self, endpoint: CacheEndpoint, result: CacheResult) {
        self.cache[endpoint as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

fn store_all<'a>(pairs: impl Iterator<Item = (&'a AtomicU64, &'a AtomicU64)>) {
    for (to, from) in pairs {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn add_all<'a>(pairs: impl Iterator<Item = (&'a AtomicU64, &'a AtomicU64)>) {
    for (to, from) in pairs {
        to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A check as a scrape reports it.
pub struct CheckView<'a> {
    pub name: &'a str,
    pub status: &'static str,
    pub metrics: &'a CheckMetrics,
}

/// Everything one scrape reports, gathered by the service.
pub struct Scrape<'a> {
    pub version: &'static str,
    pub ready: bool,
    pub draining: bool,
    pub uptime: Duration,
    /// How far the served event loop is behind its heartbeat, when one beats.
    pub loop_lag: Option<Duration>,
    pub metrics: &'a Metrics,
    pub checks: Vec<CheckView<'a>>,
}

const STATUSES: [&str; 4] = ["pass", "warn", "fail", "pending"];

impl Scrape<'_> {
    /// The exposition, in OpenMetrics or in the Prometheus text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot::of(self)));
        let mut text = String::with_capacity(4096 + 2048 * self.checks.len());
        // Writing to a String cannot fail; an encoder error would be a bug in the names here.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        if openmetrics {
            text
        } else {
            prometheus_text(&text)
        }
    }
}

/// A scrape's numbers, copied out of the atomics: a registry's collector must own what it encodes.
#[derive(Debug)]
struct Snapshot {
    version: &'static str,
    ready: bool,
    draining: bool,
    uptime_s: f64,
    loop_lag_s: Option<f64>,
    requests: Vec<([(&'static str, &'static str); 3], u64)>,
    durations: Vec<(&'static str, HistogramSnapshot)>,
    cache: Vec<([(&'static str, &'static str); 2], u64)>,
    checks: Vec<CheckSnapshot>,
}

#[derive(Debug)]
struct CheckSnapshot {
    name: String,
    status: &'static str,
    runs: [u64; RUN_RESULTS.len()],
    duration: HistogramSnapshot,
    last_success_s: Option<f64>,
}

impl Snapshot {
    fn of(scrape: &Scrape<'_>) -> Self {
        let metrics = scrape.metrics;
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        for route in RouteLabel::ALL {
            let by_method = &metrics.requests[route as usize];
            for (method, by_code) in METHODS.iter().zip(by_method) {
                for (code, count) in CODE_LABELS.iter().zip(by_code) {
                    let count = count.load(Ordering::Relaxed);
                    // Series that never happened stay out: 200 possible, a handful real.
                    if count > 0 {
                        requests
                            .push(([("route", route.template()), ("method", method), ("code", code)], count));
                    }
                }
            }
            let duration = metrics.durations[route as usize].snapshot();
            if duration.count > 0 {
                durations.push((route.template(), duration));
            }
        }
        let mut cache = Vec::new();
        for (endpoint, by_result) in CACHE_ENDPOINTS.iter().zip(&metrics.cache) {
            for (result, count) in CACHE_RESULTS.iter().zip(by_result) {
                cache.push(([("endpoint", *endpoint), ("result", *result)], count.load(Ordering::Relaxed)));
            }
        }
        let checks = scrape
            .checks
            .iter()
            .map(|check| {
                let last_success_ms = check.metrics.last_success_ms.load(Ordering::Relaxed);
                CheckSnapshot {
                    name: check.name.to_owned(),
                    status: check.status,
                    runs: std::array::from_fn(|i| check.metrics.runs[i].load(Ordering::Relaxed)),
                    duration: check.metrics.duration.snapshot(),
                    last_success_s: (last_success_ms > 0).then(|| last_success_ms as f64 / 1e3),
                }
            })
            .collect();
        Self {
            version: scrape.version,
            ready: scrape.ready,
            draining: scrape.draining,
            uptime_s: scrape.uptime.as_secs_f64(),
            loop_lag_s: scrape.loop_lag.map(|lag| lag.as_secs_f64()),
            requests,
            durations,
            cache,
            checks,
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> std::fmt::Result {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        gauge(
            e,
            "phoenix_ready",
            "1 when the kernel is ready (every subsystem passes or warns), else 0",
            u64::from(self.ready),
        )?;
        gauge(
            e,
            "phoenix_draining",
            "1 once the server is draining before shutdown, else 0",
            u64::from(self.draining),
        )?;
        gauge(e, "phoenix_uptime_seconds", "Seconds since the kernel was created", self.uptime_s)?;
        {
            let mut info = e.encode_descriptor(
                "phoenix_build_info",
                "The running Phoenix version (always 1)",
                None,
                MetricType::Gauge,
            )?;
            info.encode_family(&[("version", self.version)])?.encode_gauge(&1u64)?;
        }
        if let Some(lag) = self.loop_lag_s {
            gauge(
                e,
                "phoenix_event_loop_lag_seconds",
                "How far the served event loop is behind its heartbeat (0 while it beats on time)",
                lag,
            )?;
        }
        {
            let mut status = e.encode_descriptor(
                "phoenix_check_status",
                "1 for each check's current status, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for check in &self.checks {
                for s in STATUSES {
                    status
                        .encode_family(&[("check", check.name.as_str()), ("status", s)])?
                        .encode_gauge(&u64::from(check.status == s))?;
                }
            }
        }
        {
            let mut runs = e.encode_descriptor(
                "phoenix_check_runs",
                "Check runs, by how they ended",
                None,
                MetricType::Counter,
            )?;
            for check in &self.checks {
                for (result, count) in RUN_RESULTS.iter().zip(check.runs) {
                    runs.encode_family(&[("check", check.name.as_str()), ("result", result)])?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        {
            let mut durations = e.encode_descriptor(
                "phoenix_check_duration_seconds",
                "How long check runs took",
                None,
                MetricType::Histogram,
            )?;
            for check in &self.checks {
                check.duration.encode(durations.encode_family(&[("check", check.name.as_str())])?)?;
            }
        }
        {
            let mut last = e.encode_descriptor(
                "phoenix_check_last_success_timestamp_seconds",
                "Unix time of each check's last passing or warning run",
                None,
                MetricType::Gauge,
            )?;
            for check in &self.checks {
                if let Some(at) = check.last_success_s {
                    last.encode_family(&[("check", check.name.as_str())])?.encode_gauge(&at)?;
                }
            }
        }
        {
            let mut cache = e.encode_descriptor("phoenix_cache_requests", "Cached answers asked for: hit (fresh), miss (refreshed by this request), coalesced (served by another request's refresh)", None, MetricType::Counter)?;
            for (labels, count) in &self.cache {
                cache.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        {
            let mut requests = e.encode_descriptor(
                "phoenix_http_requests",
                "HTTP requests answered, by route template, method and status code",
                None,
                MetricType::Counter,
            )?;
            for (labels, count) in &self.requests {
                requests.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        let mut durations = e.encode_descriptor(
            "phoenix_http_request_duration_seconds",
            "Time to answer HTTP requests, by route template",
            None,
            MetricType::Histogram,
        )?;
        for (route, duration) in &self.durations {
            duration.encode(durations.encode_family(&[("route", *route)])?)?;
        }
        Ok(())
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: counter families are named with their
/// `_total` suffix, and there is no `# EOF`. (prometheus-client writes OpenMetrics only; for the
/// families above these are the only differences.)
fn prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let is_counter = lines.peek().is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if is_counter {
                let _ = writeln!(text, "# HELP {name}_total {help}");
                let _ = writeln!(text, "# TYPE {name}_total counter");
                lines.next();
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus asks for it first when it can).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::endpoint;

    fn scrape<'a>(metrics: &'a Metrics, checks: Vec<CheckView<'a>>) -> Scrape<'a> {
        Scrape {
            version: "1.2.3",
            ready: true,
            draining: false,
            uptime: Duration::from_secs(7),
            loop_lag: None,
            metrics,
            checks,
        }
    }

    fn request(metrics: &Metrics, method: &str, path: &str, code: u16, micros: u64) {
        metrics.request(RouteLabel::of(endpoint(path)), method, code, Duration::from_micros(micros));
    }

    #[test]
    fn requests_are_counted_by_route_template_method_and_code() {
        let metrics = Metrics::default();
        request(&metrics, "GET", "/health", 200, 30);
        request(&metrics, "GET", "/health", 200, 30);
        request(&metrics, "HEAD", "/ready/db", 503, 30);
        request(&metrics, "DELETE", "/ready/cache", 405, 30);
        let text = scrape(&metrics, Vec::new()).render(false);
        assert!(
            text.contains("phoenix_http_requests_total{route=\"/health\",method=\"GET\",code=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "phoenix_http_requests_total{route=\"/ready/{name}\",method=\"HEAD\",code=\"503\"} 1\n"
        ));
        assert!(text.contains(
            "phoenix_http_requests_total{route=\"/ready/{name}\",method=\"other\",code=\"405\"} 1\n"
        ));
        // Series that never happened are left out.
        assert!(!text.contains("route=\"/live\""));
    }

    #[test]
    fn ten_thousand_unknown_paths_make_one_series() {
        let metrics = Metrics::default();
        for i in 0..10_000 {
            request(&metrics, "GET", &format!("/probe-{i}"), 404, 10);
        }
        let text = scrape(&metrics, Vec::new()).render(false);
        let series: Vec<&str> =
            text.lines().filter(|l| l.starts_with("phoenix_http_requests_total{")).collect();
        assert_eq!(
            series,
            ["phoenix_http_requests_total{route=\"other\",method=\"GET\",code=\"404\"} 10000"]
        );
        assert!(!text.contains("probe-"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_resolve_tens_of_microseconds() {
        let metrics = Metrics::default();
        request(&metrics, "GET", "/health", 200, 20); // <= 25 µs
        request(&metrics, "GET", "/health", 200, 40); // <= 50 µs
        request(&metrics, "GET", "/health", 200, 20_000_000); // 20 s: only +Inf
        let text = scrape(&metrics, Vec::new()).render(false);
        let bucket = |le: &str| {
            format!("phoenix_http_request_duration_seconds_bucket{{le=\"{le}\",route=\"/health\"}}")
        };
        for (le, count) in [("0.000025", 1), ("0.00005", 2), ("10.0", 2), ("+Inf", 3)] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&bucket(le)))
                .unwrap_or_else(|| panic!("no {le} in {text}"));
            assert!(line.ends_with(&format!(" {count}")), "{line}");
        }
        assert!(text.contains("phoenix_http_request_duration_seconds_count{route=\"/health\"} 3\n"));
    }

    #[test]
    fn checks_report_status_runs_duration_and_last_success() {
        let metrics = Metrics::default();
        let db = CheckMetrics::default();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        db.record(RunResult::Pass, Duration::from_millis(3), at);
        db.record(RunResult::Timeout, Duration::from_millis(500), at + Duration::from_secs(1));
        let cache = CheckMetrics::default();
        let checks = vec![
            CheckView { name: "db", status: "fail", metrics: &db },
            CheckView { name: "cache", status: "pending", metrics: &cache },
        ];
        let text = scrape(&metrics, checks).render(false);
        assert!(text.contains("phoenix_check_status{check=\"db\",status=\"fail\"} 1\n"), "{text}");
        assert!(text.contains("phoenix_check_status{check=\"db\",status=\"pass\"} 0\n"));
        assert!(text.contains("phoenix_check_status{check=\"cache\",status=\"pending\"} 1\n"));
        assert!(text.contains("phoenix_check_runs_total{check=\"db\",result=\"timeout\"} 1\n"));
        assert!(text.contains("phoenix_check_runs_total{check=\"db\",result=\"pass\"} 1\n"));
        assert!(text.contains("phoenix_check_duration_seconds_count{check=\"db\"} 2\n"));
        // The last success, not the last run; none yet for a check that never passed.
        assert!(text.contains("phoenix_check_last_success_timestamp_seconds{check=\"db\"} 1700000000"));
        assert!(!text.contains("phoenix_check_last_success_timestamp_seconds{check=\"cache\"}"));
    }

    #[test]
    fn both_formats_name_counters_their_own_way() {
        let metrics = Metrics::default();
        metrics.cache(CacheEndpoint::Ready, CacheResult::Coalesced);
        let prometheus = scrape(&metrics, Vec::new()).render(false);
        assert!(prometheus.contains("# TYPE phoenix_cache_requests_total counter\n"), "{prometheus}");
        assert!(
            prometheus.contains("phoenix_cache_requests_total{endpoint=\"ready\",result=\"coalesced\"} 1\n")
        );
        assert!(prometheus.contains("phoenix_build_info{version=\"1.2.3\"} 1\n"));
        assert!(prometheus.contains("phoenix_ready 1\n"));
        assert!(!prometheus.contains("# EOF"));
        let openmetrics = scrape(&metrics, Vec::new()).render(true);
        assert!(openmetrics.contains("# TYPE phoenix_cache_requests counter\n"), "{openmetrics}");
        assert!(openmetrics.ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_is_what_the_scraper_asks_for() {
        assert!(wants_openmetrics(Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.3")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
