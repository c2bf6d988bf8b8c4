//! The service: everything a request needs, in plain Rust. It owns both caches, the readiness rounds
//! (single flight, and who waits for them), the details policy, the drain and the routing of a request
//! to its answer. A server binding asks it for an answer and gets either a response to send or "wait
//! for the round in flight"; nothing here knows about Python or any server.

use std::any::Any;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use tokio::runtime::Handle;

use crate::access_log::{self, AccessLog};
use crate::cache::{Entry, Lookup, Refresh, TtlCache};
use crate::checks::{start_round, FnProbe, Policy, Report, Subsystem};
use crate::dependencies::{self, Dependency};
use crate::heartbeat::Heartbeat;
use crate::metrics::board::{Board, Worker};
use crate::metrics::{self, CacheEndpoint, CacheResult, CheckView, Metrics, RouteLabel, Scrape};
use crate::render::{self, Body, Format, View};
use crate::routes::{bearer_matches, route, Endpoint, Query, Route};
use crate::subsystems::Phoenix;

/// More `?exclude=` parameters than this is a 400: exclusions are compared against every subsystem of
/// every answer, so their number must be bounded, and no kernel needs more.
pub const MAX_EXCLUDE: usize = 64;

/// Who may see subsystems, metrics and errors in readiness answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Details {
    Always,
    Never,
    /// Only callers presenting `Authorization: Bearer <token>`.
    Token(String),
}

impl Details {
    /// `always`, `never`, or `token` (which needs a non-empty token).
    pub fn parse(mode: &str, token: Option<String>) -> Result<Self, String> {
        match (mode, token) {
            ("always", _) => Ok(Self::Always),
            ("never", _) => Ok(Self::Never),
            ("token", Some(token)) if !token.is_empty() => Ok(Self::Token(token)),
            ("token", _) => Err("details = \"token\" needs a non-empty token".to_owned()),
            (other, _) => Err(format!("details must be \"always\", \"never\" or \"token\", not {other:?}")),
        }
    }
}

/// The policy in force, read on every readiness request: the mode is one atomic load, and only token
/// mode looks further.
struct DetailsPolicy {
    mode: AtomicU8,
    token: Mutex<String>,
}

impl DetailsPolicy {
    const ALWAYS: u8 = 0;
    const NEVER: u8 = 1;
    const TOKEN: u8 = 2;

    fn new(details: Details) -> Self {
        let policy = Self { mode: AtomicU8::new(Self::ALWAYS), token: Mutex::new(String::new()) };
        policy.set(details);
        policy
    }

    fn set(&self, details: Details) {
        let mode = match details {
            Details::Always => Self::ALWAYS,
            Details::Never => Self::NEVER,
            Details::Token(token) => {
                *self.token.lock().unwrap_or_else(PoisonError::into_inner) = token;
                Self::TOKEN
            }
        };
        self.mode.store(mode, Ordering::Release);
    }

    fn mode(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }

    fn shown_to(&self, authorization: Option<&str>) -> bool {
        match self.mode() {
            Self::ALWAYS => true,
            Self::TOKEN => {
                let token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
                bearer_matches(authorization, &token)
            }
            _ => false,
        }
    }
}

/// A check's options as a user gives them; `Service::policy` validates them.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    pub threshold: f64,
    pub warn_threshold: Option<f64>,
    /// The service's `check_timeout` when `None`.
    pub timeout_ms: Option<u64>,
    pub interval_ms: Option<u64>,
    pub failures_before_unready: u32,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            threshold: 0.0,
            warn_threshold: None,
            timeout_ms: None,
            interval_ms: None,
            failures_before_unready: 1,
        }
    }
}

/// A dependency check's options as a user gives them: those left unset take the kind's defaults (see
/// `dependencies`), and the check always runs in the background.
#[derive(Debug, Clone, Copy)]
pub struct DependencyOptions {
    pub threshold: Option<f64>,
    pub warn_threshold: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub interval_ms: Option<u64>,
    pub failures_before_unready: u32,
}

impl Default for DependencyOptions {
    fn default() -> Self {
        Self {
            threshold: None,
            warn_threshold: None,
            timeout_ms: None,
            interval_ms: None,
            failures_before_unready: 1,
        }
    }
}

#[derive(Debug)]
pub struct Settings {
    pub health_ttl: Duration,
    pub ready_ttl: Duration,
    /// The timeout of checks registered without their own.
    pub check_timeout: Duration,
    pub details: Details,
    /// How far behind its heartbeat the serving event loop may fall before `/live` says it is stalled,
    /// and before readiness does (smaller: a wedged worker leaves the load balancer before a restart).
    pub live_stale: Duration,
    pub ready_stale: Duration,
    /// Whether requests and checks are recorded and `/metrics` is served.
    pub metrics: bool,
}

impl Settings {
    /// From plain values as a binding receives them (milliseconds, a mode's name), validated.
    pub fn from_millis(
        health_ttl_ms: u64,
        ready_ttl_ms: u64,
        check_timeout_ms: u64,
        details: &str,
        token: Option<String>,
        live_stale_ms: u64,
        ready_stale_ms: u64,
    ) -> Result<Self, String> {
        for (value, name) in [
            (check_timeout_ms, "check_timeout_ms"),
            (live_stale_ms, "live_stale_ms"),
            (ready_stale_ms, "ready_stale_ms"),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if ready_stale_ms > live_stale_ms {
            return Err("ready_stale_ms must not exceed live_stale_ms".to_owned());
        }
        Ok(Self {
            live_stale: Duration::from_millis(live_stale_ms),
            ready_stale: Duration::from_millis(ready_stale_ms),
            health_ttl: Duration::from_millis(health_ttl_ms),
            ready_ttl: Duration::from_millis(ready_ttl_ms),
            check_timeout: Duration::from_millis(check_timeout_ms),
            details: Details::parse(details, token)?,
            metrics: true,
        })
    }
}

/// A response ready to send. `memo` is a slot for a binding's own form of it (e.g. the Python objects a
/// server wants), built once by whoever reads it first, so a cache hit converts nothing.
pub struct Response {
    pub body: Body,
    memo: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Response {
    pub fn new(body: Body) -> Arc<Self> {
        Arc::new(Self { body, memo: OnceLock::new() })
    }

    /// The memo, once set, if it is a `T`.
    #[inline]
    pub fn memo<T: 'static>(&self) -> Option<&T> {
        self.memo.get()?.downcast_ref()
    }

    /// Sets the memo unless someone already has, and returns the one that stays. Never blocks on
    /// another thread building it: the value is built before the call.
    pub fn set_memo<T: Any + Send + Sync>(&self, value: T) -> Option<&T> {
        let _ = self.memo.set(Box::new(value));
        self.memo()
    }
}

/// What to send: the response, without its body for HEAD.
#[derive(Clone)]
pub struct Reply {
    pub response: Arc<Response>,
    pub head: bool,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.response.body.status
    }
}

/// A request routed: answered already, or one whose answer depends on its query and headers, which
/// the binding then reads (only those requests pay for reading them) and hands to `answer`.
pub enum Routed<'a> {
    Reply(Reply),
    Detailed(Detailed<'a>),
}

/// A request answered from its query and headers.
#[derive(Debug, Clone, Copy)]
pub struct Detailed<'a> {
    asks: Asks<'a>,
    head: bool,
    /// When the request arrived: what a cached answer's freshness is judged against.
    arrived: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Asks<'a> {
    /// `/ready` (`None`) or `/ready/<one>`.
    Ready(Option<&'a str>),
    Metrics,
    Status,
}

/// `/ready` (`one` is `None`) or `/ready/<one>`.
#[derive(Debug, Clone, Copy)]
struct Readiness<'a> {
    one: Option<&'a str>,
    head: bool,
}

/// The parts of a request its answer depends on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Parts<'a> {
    pub query: &'a str,
    pub accept: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

pub enum Answer {
    Reply(Reply),
    /// Nothing servable yet: wait for the round in flight (`when_round_ends`), then ask `ready_latest`.
    Wait,
}

/// One round's report with its two common answers rendered up front: the hot path serves them as is.
struct ReadyEntry {
    report: Report,
    /// The status-only answer, for callers not shown details (`None` when everyone is).
    public: Option<Arc<Response>>,
    full: Arc<Response>,
}

/// What a readiness request asks for, read off it once.
struct ReadyRequest<'a> {
    one: Option<&'a str>,
    head: bool,
    query: Query,
    format: Format,
    details: bool,
}

type Listener = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct RoundState {
    in_flight: bool,
    /// Called once when the round in flight ends.
    listeners: Vec<Listener>,
}

/// Ends the round when dropped (at its end, or if its task is torn down), so no waiter can hang.
struct RoundEnd(Arc<Service>);

impl Drop for RoundEnd {
    fn drop(&mut self) {
        let listeners = {
            let mut round = self.0.lock_round();
            round.in_flight = false;
            std::mem::take(&mut round.listeners)
        };
        // Outside the lock: a listener may well ask about rounds.
        for listener in listeners {
            listener();
        }
    }
}

/// What asking for a readiness refresh did.
enum Refreshed {
    /// Ran a round that completed at once: its entry.
    Inline(Arc<Entry<ReadyEntry>>),
    /// Started a round that is still running.
    Started,
    /// Nothing: another request's round is refreshing the entry, or just has.
    Elsewhere,
}

/// A round's report now, when every check answered at once, or the future of it.
pub enum RoundRun {
    Done(Report),
    Running(BoxFuture<'static, Report>),
}

pub struct Service {
    started: Instant,
    health: Arc<TtlCache<Arc<Response>>>,
    ready: Arc<TtlCache<ReadyEntry>>,
    subsystems: ArcSwap<Vec<Arc<Subsystem>>>,
    check_timeout: Duration,
    details: DetailsPolicy,
    phoenix: OnceLock<Arc<Phoenix>>,
    running: AtomicBool,
    draining: AtomicBool,
    round: Mutex<RoundState>,
    /// Created on first use, inside the serving process (its flusher thread must not precede a fork).
    access_log: OnceLock<Arc<AccessLog<io::Stderr>>>,
    /// The runtime rounds and background work run on, looked up when needed: a binding creates its
    /// runtime lazily, in the process that serves.
    runtime: Box<dyn Fn() -> Handle + Send + Sync>,
    heartbeat: Heartbeat,
    /// Whether a watcher reports this process's loop stalling (started by its first beat).
    watching: AtomicBool,
    live: Arc<Response>,
    starting: Arc<Response>,
    started_up: Arc<Response>,
    metrics_on: AtomicBool,
    metrics_public: AtomicBool,
    metrics: Metrics,
    /// The board this worker publishes its metrics to, when it is one of several.
    board: OnceLock<Board>,
    /// When the kernel was created, as a date (a worker's age on the board).
    born: SystemTime,
}

impl Service {
    pub fn new(settings: Settings, runtime: impl Fn() -> Handle + Send + Sync + 'static) -> Arc<Self> {
        let Settings { health_ttl, ready_ttl, check_timeout, details, live_stale, ready_stale, metrics } =
            settings;
        let service = Self {
            started: Instant::now(),
            // A stale entry may be served for one more TTL while its refresh runs; past that, callers
            // wait for the fresh one.
            health: Arc::new(TtlCache::new(health_ttl, health_ttl)),
            ready: Arc::new(TtlCache::new(ready_ttl, ready_ttl)),
            subsystems: ArcSwap::from_pointee(Vec::new()),
            check_timeout,
            details: DetailsPolicy::new(details),
            phoenix: OnceLock::new(),
            running: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            round: Mutex::new(RoundState::default()),
            access_log: OnceLock::new(),
            runtime: Box::new(runtime),
            heartbeat: Heartbeat::new(live_stale, ready_stale),
            watching: AtomicBool::new(false),
            live: Response::new(render::live(None, false)),
            starting: Response::new(render::startup(false)),
            started_up: Response::new(render::startup(true)),
            metrics_on: AtomicBool::new(metrics),
            metrics_public: AtomicBool::new(false),
            metrics: Metrics::default(),
            board: OnceLock::new(),
            born: SystemTime::now(),
        };
        service.health.insert(service.render_health());
        Arc::new(service)
    }

    pub fn check_timeout(&self) -> Duration {
        self.check_timeout
    }

    pub fn ready_ttl(&self) -> Duration {
        self.ready.ttl()
    }

    // --- Registration and start-up -----------------------------------------------------------------

    pub fn add(&self, subsystem: Subsystem) -> Result<(), String> {
        if self.subsystem_names().contains(&subsystem.name) {
            return Err(format!("a subsystem named {:?} is already registered", subsystem.name));
        }
        let subsystem = Arc::new(subsystem);
        self.subsystems.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(Arc::clone(&subsystem));
            next
        });
        if self.running.load(Ordering::Acquire) {
            self.spawn_background(&subsystem);
        }
        Ok(())
    }

    /// The policy for `options`, or why they are invalid.
    pub fn policy(&self, options: &CheckOptions) -> Result<Policy, String> {
        let CheckOptions { threshold, warn_threshold, timeout_ms, interval_ms, failures_before_unready } =
            *options;
        if !threshold.is_finite() {
            return Err("threshold must be a finite number".to_owned());
        }
        let positive = |ms: Option<u64>, what: &str| match ms {
            Some(0) => Err(format!("{what} must be positive")),
            ms => Ok(ms.map(Duration::from_millis)),
        };
        let timeout = positive(timeout_ms, "timeout_ms")?.unwrap_or(self.check_timeout);
        let mut policy = Policy::new(threshold, timeout);
        policy.interval = positive(interval_ms, "interval_ms")?;
        if let Some(warn) = warn_threshold {
            if !warn.is_finite() || warn < threshold {
                return Err("warn_threshold must be a finite number not below threshold".to_owned());
            }
            policy.warn_threshold = Some(warn);
        }
        if failures_before_unready == 0 {
            return Err("failures_before_unready must be at least 1".to_owned());
        }
        policy.failures_before_unready = failures_before_unready;
        Ok(policy)
    }

    /// Adds a native check that always passes, like Kubernetes' `ping` check: proof that the core
    /// answers, a placeholder while a real check is written, and a baseline for benchmarks.
    pub fn add_ping(&self, name: String) -> Result<(), String> {
        let probe = FnProbe(|| futures::future::ready(Ok(1.0)));
        let policy = self.policy(&CheckOptions::default())?;
        self.add(Subsystem::new(name, "ping", policy, Box::new(probe)))
    }

    /// Adds a native check of a dependency (`kind` is one of `dependencies::KINDS`) with the kind's
    /// `settings`; every error is one line naming the key, without a credential.
    pub fn add_dependency(
        &self,
        name: String,
        kind: &str,
        settings: serde_json::Value,
        options: &DependencyOptions,
    ) -> Result<(), String> {
        let dependency = Dependency::parse(kind, settings)?;
        let defaults = dependency.defaults();
        let threshold = options.threshold.unwrap_or(defaults.threshold);
        // The kind's warning level only where it still means something above the threshold given.
        let warn_threshold =
            options.warn_threshold.or(defaults.warn_threshold.filter(|warn| *warn > threshold));
        let interval_ms = options.interval_ms.or(Some(dependencies::DEFAULT_INTERVAL.as_millis() as u64));
        let policy = self.policy(&CheckOptions {
            threshold,
            warn_threshold,
            timeout_ms: options.timeout_ms,
            interval_ms,
            failures_before_unready: options.failures_before_unready,
        })?;
        self.add(dependency.subsystem(name, policy))
    }

    /// Adds the Phoenix kernel's native subsystems over `data_dir`. Nothing touches the disk until
    /// `start`.
    pub fn add_phoenix(&self, data_dir: &Path) -> Result<Arc<Phoenix>, String> {
        let phoenix = Phoenix::new(data_dir);
        if self.phoenix.set(Arc::clone(&phoenix)).is_err() {
            return Err("this kernel already has the Phoenix subsystems".to_owned());
        }
        for subsystem in phoenix.subsystems(self.check_timeout) {
            self.add(subsystem)?;
        }
        Ok(phoenix)
    }

    pub fn phoenix(&self) -> Option<&Arc<Phoenix>> {
        self.phoenix.get()
    }

    pub fn subsystem_names(&self) -> Vec<String> {
        self.subsystems.load().iter().map(|s| s.name.clone()).collect()
    }

    /// Starts background work once: native initialisation and background checks.
    pub fn start(&self) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let rt = (self.runtime)();
        if let Some(phoenix) = self.phoenix.get() {
            let init = Arc::clone(phoenix);
            rt.spawn_blocking(move || init.initialise());
            rt.spawn(Phoenix::keep_system_entry_fresh(
                Arc::downgrade(phoenix),
                crate::subsystems::SYSTEM_REFRESH,
            ));
        }
        for subsystem in self.subsystems.load().iter() {
            self.spawn_background(subsystem);
        }
    }

    fn spawn_background(&self, subsystem: &Arc<Subsystem>) {
        if subsystem.policy.interval.is_some() {
            let rt = (self.runtime)();
            rt.spawn(Subsystem::run_in_background(Arc::downgrade(subsystem), rt.clone()));
        }
    }

    /// True once the native subsystems (if any) have finished initialising: `/startup` answers 200.
    pub fn is_started(&self) -> bool {
        self.phoenix.get().is_none_or(|p| p.is_initialised())
    }

    // --- Policy ------------------------------------------------------------------------------------

    pub fn set_details(&self, details: Details) {
        self.details.set(details);
        // Entries rendered for the old policy may lack the status-only answer: render afresh.
        self.ready.clear();
    }

    /// Whether readiness answers depend on the `Authorization` header (so a binding reads it).
    pub fn reads_authorization(&self) -> bool {
        self.details.mode() == DetailsPolicy::TOKEN
    }

    /// From now on `/ready` answers 503 `draining`, whatever the checks say; everything else is served
    /// as before.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    // --- Answers -----------------------------------------------------------------------------------

    /// Routes a request that `arrived` then. Everything but readiness is answered here and now.
    pub fn route<'a>(&self, method: &str, path: &'a str, arrived: Instant) -> Routed<'a> {
        let (endpoint, head) = match route(method, path) {
            Route::Serve { endpoint, head } => (endpoint, head),
            Route::MethodNotAllowed => return Routed::Reply(self.error(405)),
            Route::NotFound => return Routed::Reply(self.error(404)),
        };
        let response = match endpoint {
            Endpoint::Health => self.health(arrived),
            Endpoint::Live => self.live(),
            Endpoint::Startup if self.is_started() => Arc::clone(&self.started_up),
            Endpoint::Startup => Arc::clone(&self.starting),
            Endpoint::Ready => return Routed::Detailed(Detailed { asks: Asks::Ready(None), head, arrived }),
            Endpoint::ReadyOne(name) => {
                return Routed::Detailed(Detailed { asks: Asks::Ready(Some(name)), head, arrived })
            }
            Endpoint::Metrics if self.metrics_on() => {
                return Routed::Detailed(Detailed { asks: Asks::Metrics, head, arrived })
            }
            Endpoint::Metrics => return Routed::Reply(self.error(404)),
            Endpoint::Status => return Routed::Detailed(Detailed { asks: Asks::Status, head, arrived }),
        };
        Routed::Reply(Reply { response, head })
    }

    /// The readiness of the kernel (`one` is `None`) or of one subsystem, as `/ready[/<one>]` asks,
    /// for callers that name it otherwise (gRPC health).
    pub fn readiness(one: Option<&str>) -> Detailed<'_> {
        Detailed { asks: Asks::Ready(one), head: false, arrived: Instant::now() }
    }

    /// The answer to a detailed request, waiting for the round in flight when a readiness request
    /// finds nothing servable cached.
    pub async fn answer_ready(self: &Arc<Self>, detailed: Detailed<'_>, parts: Parts<'_>) -> Reply {
        if let Answer::Reply(reply) = self.answer(detailed, parts) {
            return reply;
        }
        self.after_round(detailed, parts).await
    }

    /// The answer to a request that `answer` told to `Wait`: from the newest round, once the round in
    /// flight has ended (at once if it already has). Not `answer` again: under load the round this
    /// request started can end, and its answer grow older than the TTL, before the waiter first runs,
    /// and asking again would start and wait for another round, running every check twice.
    pub async fn after_round(self: &Arc<Self>, detailed: Detailed<'_>, parts: Parts<'_>) -> Reply {
        let (ended, end) = tokio::sync::oneshot::channel();
        if self
            .when_round_ends(move || {
                let _ = ended.send(());
            })
            .is_ok()
        {
            let _ = end.await;
        }
        self.ready_latest(detailed, parts)
    }

    /// The answer to a detailed request. A readiness answer comes from the cache, starting a round
    /// when one is due; `Wait` when nothing servable is left (a cold cache, or an entry too old).
    pub fn answer(self: &Arc<Self>, detailed: Detailed<'_>, parts: Parts<'_>) -> Answer {
        let one = match detailed.asks {
            Asks::Ready(one) => one,
            Asks::Metrics => return Answer::Reply(self.metrics_reply(parts, detailed.head)),
            Asks::Status => return Answer::Reply(self.status_reply(parts, detailed.head)),
        };
        let request = match self.ready_request(Readiness { one, head: detailed.head }, parts) {
            Ok(request) => request,
            Err(answered) => return Answer::Reply(answered),
        };
        if let Some(hit) =
            self.ready.read_fresh_at(detailed.arrived, |entry| self.ready_reply(entry, &request))
        {
            self.metrics.cache(CacheEndpoint::Ready, CacheResult::Hit);
            return Answer::Reply(hit);
        }
        let refreshed = self.refresh_ready();
        let result = if matches!(refreshed, Refreshed::Elsewhere) {
            CacheResult::Coalesced
        } else {
            CacheResult::Miss
        };
        self.metrics.cache(CacheEndpoint::Ready, result);
        // A round that completed inline was this request's own: its answer, however short the TTL.
        if let Refreshed::Inline(entry) = refreshed {
            return Answer::Reply(self.ready_reply(&entry.value, &request));
        }
        match self.ready.lookup() {
            Lookup::Fresh(entry) | Lookup::Stale(entry) => {
                Answer::Reply(self.ready_reply(&entry.value, &request))
            }
            Lookup::Missing => Answer::Wait,
        }
    }

    /// `/metrics`: every series, in the format the scraper asks for. Shown to whoever may see
    /// readiness details, except that `never` still serves them: they hold names and numbers, never an
    /// error text, and a scraper beyond loopback is their point.
    fn metrics_reply(self: &Arc<Self>, parts: Parts<'_>, head: bool) -> Reply {
        let guarded =
            self.details.mode() == DetailsPolicy::TOKEN && !self.metrics_public.load(Ordering::Relaxed);
        if guarded && !self.details.shown_to(parts.authorization) {
            return self.error(401);
        }
        let openmetrics = metrics::wants_openmetrics(parts.accept);
        self.keep_readiness_fresh();
        let text = self.with_own_state(|own| match self.board.get() {
            Some(board) => {
                let server = board.gather(&own);
                let checks = server.checks.iter().map(|(name, status, metrics)| CheckView {
                    name,
                    status: status.as_str(),
                    metrics,
                });
                Scrape {
                    version: env!("CARGO_PKG_VERSION"),
                    ready: server.ready,
                    draining: server.draining,
                    uptime: SystemTime::now().duration_since(server.born).unwrap_or_default(),
                    loop_lag: server.lag,
                    metrics: &server.metrics,
                    checks: checks.collect(),
                }
                .render(openmetrics)
            }
            None => Scrape {
                version: env!("CARGO_PKG_VERSION"),
                ready: own.ready == Some(true),
                draining: own.draining,
                uptime: self.started.elapsed(),
                loop_lag: own.lag,
                metrics: own.metrics,
                checks: own
                    .checks
                    .iter()
                    .map(|&(name, status, metrics)| CheckView { name, status: status.as_str(), metrics })
                    .collect(),
            }
            .render(openmetrics),
        });
        let body = Body {
            status: 200,
            content_type: if openmetrics { metrics::OPENMETRICS } else { metrics::PROMETHEUS_TEXT },
            bytes: text.into(),
        };
        Reply { response: Response::new(body), head }
    }

    /// This process's own state, as a scrape reports it or a worker publishes it.
    fn with_own_state<R>(&self, then: impl FnOnce(Worker<'_>) -> R) -> R {
        let subsystems = self.subsystems.load();
        then(Worker {
            ready: self.readiness_now(),
            draining: self.draining(),
            lag: self.heartbeat.worst().map(Duration::from_millis),
            born: self.born,
            metrics: &self.metrics,
            checks: subsystems.iter().map(|s| (s.name.as_str(), s.status(), &s.metrics)).collect(),
        })
    }

    /// Publishes this worker's metrics to the board of the server serving on `port` (every worker of it
    /// does), so that a scrape answered by any worker reports the whole server (see `metrics/board.rs`).
    pub fn share_metrics(self: &Arc<Self>, port: u16) -> io::Result<()> {
        if self.board.get().is_some() {
            return Ok(());
        }
        let _ = self.board.set(Board::open(port)?);
        self.every(metrics::board::PUBLISH_EVERY, |service| {
            if let Some(board) = service.board.get() {
                service.with_own_state(|own| board.publish(&own));
            }
        });
        Ok(())
    }

    /// Starts a readiness round when `/ready` would: a scrape or the status page must not wait for a
    /// probe to ask before it shows readiness and check statuses. A round of native checks completes
    /// here; a slower one (an `async def` check) is shown by the next look.
    fn keep_readiness_fresh(self: &Arc<Self>) {
        if self.ready.read_fresh(|_| ()).is_none() {
            self.refresh_ready();
        }
    }

    /// Whether `/ready` would answer 200 now, from the newest round.
    fn is_ready(&self) -> bool {
        self.readiness_now() == Some(true)
    }

    /// What `/ready` would answer now, from the newest round; `None` before the first round.
    fn readiness_now(&self) -> Option<bool> {
        let report = self.ready.newest().map(|entry| entry.value.report.ready())?;
        Some(report && !self.draining() && self.heartbeat.ready_stalled().is_none())
    }

    /// `/status`: the status page, or with `?format=json` its data (each subsystem with its recent
    /// runs), under the details policy.
    fn status_reply(self: &Arc<Self>, parts: Parts<'_>, head: bool) -> Reply {
        let wants_json =
            form_urlencoded::parse(parts.query.as_bytes()).any(|(k, v)| k == "format" && v == "json");
        let body = if wants_json {
            self.keep_readiness_fresh();
            let details = self.details.shown_to(parts.authorization);
            let subsystems = self.subsystems.load();
            let latest = self.ready.newest();
            let report = latest.as_ref().map(|entry| &entry.value.report);
            let status = render::StatusPage {
                ready: self.is_ready(),
                draining: self.draining(),
                uptime: self.started.elapsed(),
                version: env!("CARGO_PKG_VERSION"),
                details,
                subsystems: subsystems
                    .iter()
                    .map(|s| render::StatusOfSubsystem {
                        outcome: report.and_then(|r| r.get(&s.name)),
                        name: &s.name,
                        recent: s.recent(),
                    })
                    .collect(),
            };
            render::status_json(&status)
        } else {
            render::status_page()
        };
        Reply { response: Response::new(body), head }
    }

    /// Counts an answered request in the metrics (a no-op with metrics off).
    pub fn record(&self, method: &str, path: &str, status: u16, elapsed: Duration) {
        if self.metrics_on() {
            self.metrics.request(RouteLabel::of(crate::routes::endpoint(path)), method, status, elapsed);
        }
    }

    pub fn metrics_on(&self) -> bool {
        self.metrics_on.load(Ordering::Relaxed)
    }

    /// Serves `/metrics` without the token even when details need one (for a scraper that cannot send
    /// it; the metrics hold no error text).
    pub fn set_metrics_public(&self, public: bool) {
        self.metrics_public.store(public, Ordering::Relaxed);
    }

    /// Switches recording and `/metrics` on or off (what was recorded stays).
    pub fn set_metrics(&self, on: bool) {
        self.metrics_on.store(on, Ordering::Relaxed);
    }

    /// Answers a readiness request from the newest round whatever its age: for requests that have just
    /// waited for that round (with a TTL of 0 every entry is born stale, yet it is theirs). Never
    /// starts a round.
    pub fn ready_latest(self: &Arc<Self>, detailed: Detailed<'_>, parts: Parts<'_>) -> Reply {
        let Asks::Ready(one) = detailed.asks else {
            // Only readiness ever waits; anything else is answered as it stands.
            return match self.answer(detailed, parts) {
                Answer::Reply(reply) => reply,
                Answer::Wait => self.error(503),
            };
        };
        let request = match self.ready_request(Readiness { one, head: detailed.head }, parts) {
            Ok(request) => request,
            Err(answered) => return answered,
        };
        match self.ready.newest() {
            Some(entry) => self.ready_reply(&entry.value, &request),
            // Only if a round was abandoned before it ever produced a result.
            None => self.error(503),
        }
    }

    /// The JSON error answer for `code`.
    pub fn error(&self, code: u16) -> Reply {
        Reply {
            response: Response::new(Body {
                status: code,
                content_type: render::JSON,
                bytes: render::error(code, SystemTime::now()).into(),
            }),
            head: false,
        }
    }

    fn live(&self) -> Arc<Response> {
        match self.heartbeat.worst() {
            None => Arc::clone(&self.live),
            Some(lag_ms) => Response::new(render::live(Some(lag_ms), self.heartbeat.live_stalled(lag_ms))),
        }
    }

    fn render_health(&self) -> Arc<Response> {
        Response::new(Body {
            status: 200,
            content_type: render::JSON,
            bytes: render::health(self.started.elapsed(), SystemTime::now()).into(),
        })
    }

    fn health(&self, arrived: Instant) -> Arc<Response> {
        if let Some(hit) = self.health.read_fresh_at(arrived, Arc::clone) {
            self.metrics.cache(CacheEndpoint::Health, CacheResult::Hit);
            return hit;
        }
        let (result, response) = match (self.health.try_begin_refresh(), self.health.lookup()) {
            (Some(refresh), _) => {
                (CacheResult::Miss, Arc::clone(&refresh.finish(self.render_health()).value))
            }
            (None, Lookup::Fresh(entry) | Lookup::Stale(entry)) => {
                (CacheResult::Coalesced, Arc::clone(&entry.value))
            }
            // Someone else is rendering and nothing servable is left: rendering is cheap, so render
            // for this request only rather than wait.
            (None, Lookup::Missing) => (CacheResult::Miss, self.render_health()),
        };
        self.metrics.cache(CacheEndpoint::Health, result);
        response
    }

    /// What a readiness request asks for, or its answer when that needs no round: a 400 for a bad
    /// query, and while draining a 503, whatever the checks say.
    fn ready_request<'a>(
        &self,
        readiness: Readiness<'a>,
        parts: Parts<'_>,
    ) -> Result<ReadyRequest<'a>, Reply> {
        let query = if parts.query.is_empty() { Query::default() } else { Query::parse(parts.query) };
        if query.exclude.len() > MAX_EXCLUDE {
            return Err(self.error(400));
        }
        let format = query.format(parts.accept);
        let refusal = if self.draining() {
            Some(render::draining(format))
        } else {
            self.heartbeat.ready_stalled().map(|lag_ms| render::stalled(format, lag_ms))
        };
        if let Some(body) = refusal {
            return Err(Reply { response: Response::new(body), head: readiness.head });
        }
        let details = self.details.shown_to(parts.authorization);
        Ok(ReadyRequest { one: readiness.one, head: readiness.head, query, format, details })
    }

    fn ready_reply(&self, entry: &ReadyEntry, request: &ReadyRequest<'_>) -> Reply {
        let view = View {
            format: request.format,
            details: request.details,
            exclude: request.query.exclude.iter().map(String::as_str).collect(),
        };
        let response = match request.one {
            None if view.format == Format::Json && view.exclude.is_empty() => {
                match (&entry.public, view.details) {
                    (_, true) => Arc::clone(&entry.full),
                    (Some(public), false) => Arc::clone(public),
                    // Rendered while everyone saw details, and served after that changed.
                    (None, false) => Response::new(render::ready(&entry.report, &View::PUBLIC_JSON)),
                }
            }
            None => Response::new(render::ready(&entry.report, &view)),
            Some(name) => match entry.report.get(name) {
                Some(outcome) => Response::new(render::subsystem(outcome, &view)),
                None => return self.error(404),
            },
        };
        Reply { response, head: request.head }
    }

    fn ready_entry(&self, report: Report) -> ReadyEntry {
        let full = Response::new(render::ready(&report, &View::FULL_JSON));
        // With details always shown, every caller gets `full`; nothing else to render.
        let public = (self.details.mode() != DetailsPolicy::ALWAYS)
            .then(|| Response::new(render::ready(&report, &View::PUBLIC_JSON)));
        ReadyEntry { report, public, full }
    }

    // --- Rounds ------------------------------------------------------------------------------------

    fn lock_round(&self) -> std::sync::MutexGuard<'_, RoundState> {
        self.round.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a round now, unless one is in flight or the entry has just been refreshed.
    fn refresh_ready(self: &Arc<Self>) -> Refreshed {
        let Some(refresh) = self.ready.try_begin_refresh() else {
            return Refreshed::Elsewhere;
        };
        // The round before may have finished between the caller's look and this claim: then the
        // entry is fresh again and another round would answer the same burst twice.
        if self.ready.read_fresh(|_| ()).is_some() {
            return Refreshed::Elsewhere;
        }
        self.lock_round().in_flight = true;
        let end = RoundEnd(Arc::clone(self));
        match self.run_round() {
            RoundRun::Done(report) => Refreshed::Inline(self.finish_round(refresh, report, end)),
            RoundRun::Running(round) => {
                let this = Arc::clone(self);
                (self.runtime)().spawn(async move {
                    let report = round.await;
                    this.finish_round(refresh, report, end);
                });
                Refreshed::Started
            }
        }
    }

    fn finish_round(
        &self,
        refresh: Refresh<ReadyEntry>,
        report: Report,
        end: RoundEnd,
    ) -> Arc<Entry<ReadyEntry>> {
        let entry = refresh.finish(self.ready_entry(report));
        drop(end);
        entry
    }

    /// Starts a round if there has never been one (a caller about to wait for it).
    pub fn ensure_round(self: &Arc<Self>) {
        if self.ready.newest().is_none() {
            self.refresh_ready();
        }
    }

    /// Calls `listener` once the round in flight ends; hands it back when none is in flight (its
    /// answer is in the cache already). Listeners run on whichever thread ends the round: they must
    /// only hand work on, never block.
    pub fn when_round_ends<L: FnOnce() + Send + 'static>(&self, listener: L) -> Result<(), L> {
        let mut round = self.lock_round();
        if !round.in_flight {
            return Err(listener);
        }
        round.listeners.push(Box::new(listener));
        Ok(())
    }

    /// Starts one uncached round of every check. Checks that answer at once (most native ones) run
    /// inline on the calling thread, so a round made only of them completes here: no task, no thread
    /// hop. Otherwise the rest runs wherever the returned future is polled (on the runtime).
    pub fn run_round(&self) -> RoundRun {
        let rt = (self.runtime)();
        let _context = rt.enter();
        let subsystems = self.subsystems.load_full();
        let mut round: Pin<Box<dyn Future<Output = Report> + Send>> = Box::pin(start_round(&subsystems, &rt));
        match round.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(report) => RoundRun::Done(report),
            Poll::Pending => RoundRun::Running(round),
        }
    }

    // --- Heartbeat ---------------------------------------------------------------------------------

    /// Stamps the serving event loop's heartbeat (see `heartbeat.rs`); the first beat starts a watcher
    /// that reports the loop stalling, once per stall.
    pub fn beat(self: &Arc<Self>) {
        if let Some(stalled_ms) = self.heartbeat.beat() {
            log::info!(target: "phoenix.kernel", "event loop beats again after {stalled_ms} ms");
        }
        if !self.watching.swap(true, Ordering::AcqRel) {
            self.every(crate::heartbeat::BEAT_PERIOD, |service| {
                if let Some(lag_ms) = service.heartbeat.refresh() {
                    log::warn!(target: "phoenix.kernel", "event loop stalled: no heartbeat for {lag_ms} ms");
                }
            });
        }
    }

    /// Runs `work` on the core runtime every `period`, for as long as the service lives.
    fn every(self: &Arc<Self>, period: Duration, work: impl Fn(&Service) + Send + 'static) {
        let service = Arc::downgrade(self);
        (self.runtime)().spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(service) = service.upgrade() else { return };
                work(&service);
            }
        });
    }

    /// Shares the heartbeat with every process serving probes on `port`, so each answers for all.
    pub fn share_heartbeat(&self, port: u16) -> io::Result<()> {
        self.heartbeat.share(port)
    }

    // --- Request log -------------------------------------------------------------------------------

    /// Appends one line to the request log (see `access_log.rs`).
    pub fn log(&self, method: &str, path: &str, status: u16, elapsed: Duration, ended: Instant) {
        let log = self.access_log.get_or_init(|| {
            let log = AccessLog::new(io::stderr());
            // Without the flusher, lines still go out whenever the buffer fills and at shutdown.
            let _ = AccessLog::spawn_flusher(&log, access_log::FLUSH_EVERY);
            log
        });
        log.record(method, path, status, elapsed, ended);
    }

    /// Writes out buffered request-log lines now (at worker shutdown).
    pub fn flush_log(&self) {
        if let Some(log) = self.access_log.get() {
            let _ = log.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{CheckResult, Probe};
    use std::sync::atomic::AtomicUsize;

    const TTL: Duration = Duration::from_millis(100);

    fn service(details: Details) -> Arc<Service> {
        let rt = Handle::current();
        Service::new(
            Settings {
                health_ttl: TTL,
                ready_ttl: TTL,
                check_timeout: Duration::from_millis(500),
                details,
                live_stale: Duration::from_secs(5),
                ready_stale: Duration::from_secs(2),
                metrics: true,
            },
            move || rt.clone(),
        )
    }

    fn check(name: &str, probe: impl Probe + 'static) -> Subsystem {
        Subsystem::new(name, "metric", Policy::new(0.5, Duration::from_millis(500)), Box::new(probe))
    }

    /// A check answering `metric` after `delay` (at once when zero), counting its runs.
    fn counted(delay: Duration, metric: f64) -> (impl Probe, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let probe = FnProbe(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                CheckResult::Ok(metric)
            }
        });
        (probe, runs)
    }

    fn get(service: &Arc<Service>, path: &str, parts: Parts<'_>) -> Option<Reply> {
        match service.route("GET", path, now()) {
            Routed::Reply(reply) => Some(reply),
            Routed::Detailed(detailed) => match service.answer(detailed, parts) {
                Answer::Reply(reply) => Some(reply),
                Answer::Wait => None,
            },
        }
    }

    /// A request's arrival now, on the test's clock (paused in most).
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Waits until no round is in flight.
    async fn round_ended(service: &Service) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if service.when_round_ends(move || tx.send(()).unwrap()).is_ok() {
            rx.await.unwrap();
        }
    }

    fn json(reply: &Reply) -> serde_json::Value {
        serde_json::from_slice(&reply.response.body.bytes).unwrap()
    }

    fn readiness(service: &Service) -> Detailed<'static> {
        match service.route("GET", "/ready", now()) {
            Routed::Detailed(detailed) => detailed,
            Routed::Reply(_) => unreachable!("/ready is a readiness request"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_one_cached_response_per_ttl() {
        let service = service(Details::Always);
        let first = get(&service, "/health", Parts::default()).unwrap();
        let again = get(&service, "/health", Parts::default()).unwrap();
        assert!(Arc::ptr_eq(&first.response, &again.response));
        assert_eq!(json(&first)["status"], "healthy");
        tokio::time::advance(TTL).await;
        let later = get(&service, "/health", Parts::default()).unwrap();
        assert!(!Arc::ptr_eq(&first.response, &later.response));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_round_of_checks_that_answer_at_once_is_answered_inline() {
        let service = service(Details::Always);
        let (probe, runs) = counted(Duration::ZERO, 1.0);
        service.add(check("db", probe)).unwrap();
        let reply = get(&service, "/ready", Parts::default()).expect("no wait");
        assert_eq!(reply.status(), 200);
        assert_eq!(json(&reply)["subsystems"]["db"]["status"], "pass");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_ttl_of_zero_each_request_is_answered_by_its_own_inline_round() {
        let rt = Handle::current();
        let settings = Settings {
            ready_ttl: Duration::ZERO,
            ..Settings::from_millis(100, 0, 500, "always", None, 5000, 2000).unwrap()
        };
        let service = Service::new(settings, move || rt.clone());
        let (probe, runs) = counted(Duration::ZERO, 1.0);
        service.add(check("db", probe)).unwrap();
        let first = get(&service, "/ready", Parts::default()).expect("answered inline");
        let second = get(&service, "/ready", Parts::default()).expect("answered inline");
        assert!(!Arc::ptr_eq(&first.response, &second.response));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_burst_waits_for_one_round_and_is_told_when_it_ends() {
        let service = service(Details::Always);
        let (probe, runs) = counted(Duration::from_millis(50), 1.0);
        service.add(check("db", probe)).unwrap();
        for _ in 0..100 {
            assert!(get(&service, "/ready", Parts::default()).is_none());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "single flight");
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(service.when_round_ends(move || tx.send(()).unwrap()).is_ok());
        rx.await.unwrap();
        // Its entry is born and the clock has moved on: fresh or not, it is the waiters' answer.
        let reply = service.ready_latest(readiness(&service), Parts::default());
        assert_eq!(reply.status(), 200);
        // The round has ended: nothing to wait for, and its answer is cached.
        assert!(service.when_round_ends(|| ()).is_err());
        assert!(get(&service, "/ready", Parts::default()).is_some());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_answered_by_the_round_it_waited_for_however_late_it_runs() {
        let service = service(Details::Always);
        let (probe, runs) = counted(Duration::from_millis(50), 1.0);
        service.add(check("db", probe)).unwrap();
        assert!(get(&service, "/ready", Parts::default()).is_none(), "told to wait");
        round_ended(&service).await;
        // The waiter first runs late (a loaded machine), once that round's answer is too old to serve.
        tokio::time::sleep(service.ready_ttl() * 100).await;
        let reply = service.after_round(readiness(&service), Parts::default()).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "no second round");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_entry_is_served_while_one_refresh_runs_until_it_is_too_old() {
        let service = service(Details::Always);
        let (probe, runs) = counted(Duration::from_millis(30), 1.0);
        service.add(check("db", probe)).unwrap();
        service.ensure_round();
        round_ended(&service).await;
        let first = get(&service, "/ready", Parts::default()).unwrap();
        tokio::time::advance(TTL).await;
        // Expired: served as it is while one refresh runs, however many ask.
        for _ in 0..10 {
            let stale = get(&service, "/ready", Parts::default()).unwrap();
            assert!(Arc::ptr_eq(&stale.response, &first.response));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        round_ended(&service).await;
        let fresh = get(&service, "/ready", Parts::default()).unwrap();
        assert!(!Arc::ptr_eq(&fresh.response, &first.response));
        // Past twice the TTL nothing is servable: callers wait for the round.
        tokio::time::advance(2 * TTL).await;
        assert!(get(&service, "/ready", Parts::default()).is_none());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_answers_503_to_readiness_only() {
        let service = service(Details::Always);
        service.drain();
        let ready = get(&service, "/ready", Parts::default()).unwrap();
        assert_eq!((ready.status(), json(&ready)), (503, serde_json::json!({"status": "draining"})));
        assert_eq!(get(&service, "/health", Parts::default()).unwrap().status(), 200);
        assert_eq!(get(&service, "/live", Parts::default()).unwrap().status(), 200);
        let reply = service.ready_latest(readiness(&service), Parts::default());
        assert_eq!(reply.status(), 503);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_loop_makes_readiness_then_liveness_fail_until_it_beats_again() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        assert_eq!(
            json(&get(&service, "/live", Parts::default()).unwrap()),
            serde_json::json!({"status": "alive"})
        );
        service.beat();
        assert_eq!(get(&service, "/ready", Parts::default()).unwrap().status(), 200);
        // Behind by 3 s: past readiness' 2 s, within liveness' 5 s.
        service.heartbeat.fall_behind(3_000);
        let ready = get(&service, "/ready", Parts::default()).unwrap();
        assert_eq!((ready.status(), json(&ready)["status"].clone()), (503, serde_json::json!("stalled")));
        assert!(json(&ready)["loop_lag_ms"].as_u64().unwrap() >= 3_000);
        assert_eq!(get(&service, "/ready/db", Parts::default()).unwrap().status(), 503);
        assert_eq!(get(&service, "/live", Parts::default()).unwrap().status(), 200);
        service.heartbeat.fall_behind(6_000);
        let live = get(&service, "/live", Parts::default()).unwrap();
        assert_eq!((live.status(), json(&live)["status"].clone()), (503, serde_json::json!("stalled")));
        assert_eq!(
            get(&service, "/health", Parts::default()).unwrap().status(),
            200,
            "health never waits on the loop"
        );
        service.beat();
        assert_eq!(get(&service, "/live", Parts::default()).unwrap().status(), 200);
        assert_eq!(get(&service, "/ready", Parts::default()).unwrap().status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn details_are_shown_as_the_policy_says() {
        let service = service(Details::Token("s3cret".to_owned()));
        service.add(check("db", counted(Duration::ZERO, 0.0).0)).unwrap();
        let anonymous = get(&service, "/ready", Parts::default()).unwrap();
        assert_eq!(json(&anonymous), serde_json::json!({"status": "not_ready"}));
        let with = |authorization| Parts { authorization: Some(authorization), ..Parts::default() };
        let wrong = get(&service, "/ready", with("Bearer s3cre")).unwrap();
        assert_eq!(json(&wrong), serde_json::json!({"status": "not_ready"}));
        let right = get(&service, "/ready", with("Bearer s3cret")).unwrap();
        assert_eq!(right.status(), 503);
        assert_eq!(json(&right)["missing"], serde_json::json!(["db"]));
        service.set_details(Details::Never);
        let never = get(&service, "/ready", with("Bearer s3cret")).unwrap();
        assert_eq!(json(&never), serde_json::json!({"status": "not_ready"}));
        service.set_details(Details::Always);
        let always = get(&service, "/ready", Parts::default()).unwrap();
        assert!(json(&always)["subsystems"]["db"].is_object());
    }

    #[tokio::test(start_paused = true)]
    async fn exclusions_leave_checks_out_up_to_a_bound() {
        let service = service(Details::Always);
        service.add(check("ok", counted(Duration::ZERO, 1.0).0)).unwrap();
        service.add(check("bad", counted(Duration::ZERO, 0.0).0)).unwrap();
        assert_eq!(get(&service, "/ready", Parts::default()).unwrap().status(), 503);
        let query = |query| Parts { query, ..Parts::default() };
        let excluded = get(&service, "/ready", query("exclude=bad")).unwrap();
        assert_eq!(excluded.status(), 200);
        assert!(json(&excluded)["subsystems"].get("bad").is_none());
        let many = vec!["exclude=x"; MAX_EXCLUDE + 1].join("&");
        let refused = get(&service, "/ready", query(&many)).unwrap();
        assert_eq!((refused.status(), json(&refused)["code"].clone()), (400, 400.into()));
        let bound = vec!["exclude=bad"; MAX_EXCLUDE].join("&");
        assert_eq!(get(&service, "/ready", query(&bound)).unwrap().status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn routes_answer_one_subsystem_and_json_errors() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        let one = get(&service, "/ready/db", Parts::default()).unwrap();
        assert_eq!((one.status(), json(&one)["name"].clone()), (200, "db".into()));
        let unknown = get(&service, "/ready/nope", Parts::default()).unwrap();
        assert_eq!((unknown.status(), json(&unknown)["error"].clone()), (404, "Not Found".into()));
        assert_eq!(get(&service, "/nope", Parts::default()).unwrap().status(), 404);
        let Routed::Reply(post) = service.route("POST", "/ready", now()) else {
            panic!("a 405 is answered at once");
        };
        assert_eq!(post.status(), 405);
        let Routed::Detailed(head) = service.route("HEAD", "/ready", now()) else {
            panic!("HEAD /ready is a readiness request");
        };
        let Answer::Reply(reply) = service.answer(head, Parts::default()) else {
            panic!("answered inline");
        };
        assert!(reply.head);
    }

    #[tokio::test(start_paused = true)]
    async fn a_registered_name_is_refused_the_second_time() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        let again = service.add(check("db", counted(Duration::ZERO, 1.0).0));
        assert!(again.unwrap_err().contains("already registered"));
        assert_eq!(service.subsystem_names(), ["db"]);
    }

    #[tokio::test]
    async fn check_options_are_validated() {
        let service = service(Details::Always);
        let policy = |options| service.policy(&options);
        let base = CheckOptions::default();
        assert_eq!(policy(base).unwrap().timeout, Duration::from_millis(500));
        for (bad, why) in [
            (CheckOptions { threshold: f64::NAN, ..base }, "threshold"),
            (CheckOptions { timeout_ms: Some(0), ..base }, "timeout_ms"),
            (CheckOptions { interval_ms: Some(0), ..base }, "interval_ms"),
            (CheckOptions { warn_threshold: Some(-1.0), ..base }, "warn_threshold"),
            (CheckOptions { failures_before_unready: 0, ..base }, "failures_before_unready"),
        ] {
            assert!(policy(bad).unwrap_err().contains(why), "{why}");
        }
    }

    #[tokio::test]
    async fn dependency_checks_take_their_kinds_defaults_and_run_in_the_background() {
        let service = service(Details::Always);
        let policy = |name: &str| {
            let subsystems = service.subsystems.load();
            subsystems.iter().find(|s| s.name == name).unwrap().policy.clone()
        };
        let memory =
            |threshold, warn_threshold| DependencyOptions { threshold, warn_threshold, ..Default::default() };
        service.add_dependency("mem".into(), "memory", serde_json::Value::Null, &memory(None, None)).unwrap();
        let mem = policy("mem");
        assert_eq!((mem.threshold, mem.warn_threshold), (0.05, Some(0.10)));
        assert_eq!((mem.interval, mem.timeout), (Some(Duration::from_secs(1)), Duration::from_millis(500)));
        service
            .add_dependency("high".into(), "memory", serde_json::Value::Null, &memory(Some(0.2), None))
            .unwrap();
        assert_eq!(policy("high").warn_threshold, None, "the default warning is below the threshold given");
        service
            .add_dependency("low".into(), "memory", serde_json::Value::Null, &memory(Some(0.01), None))
            .unwrap();
        assert_eq!(policy("low").warn_threshold, Some(0.10));
        let tcp = serde_json::json!({"host": "127.0.0.1", "port": 5432});
        let options =
            DependencyOptions { timeout_ms: Some(2_000), interval_ms: Some(250), ..Default::default() };
        service.add_dependency("db".into(), "tcp", tcp.clone(), &options).unwrap();
        let db = policy("db");
        assert_eq!((db.threshold, db.warn_threshold), (0.0, None));
        assert_eq!((db.interval, db.timeout), (Some(Duration::from_millis(250)), Duration::from_secs(2)));
        let refused = |name: &str, kind, settings, options| {
            service.add_dependency(name.into(), kind, settings, &options).unwrap_err()
        };
        assert!(
            refused("db", "tcp", tcp.clone(), DependencyOptions::default()).contains("already registered")
        );
        assert!(refused("x", "mysql", tcp.clone(), DependencyOptions::default())
            .starts_with("unknown kind 'mysql'"));
        let zero = DependencyOptions { timeout_ms: Some(0), ..Default::default() };
        assert_eq!(refused("x", "tcp", tcp, zero), "timeout_ms must be positive");
        assert_eq!(service.subsystem_names(), ["mem", "high", "low", "db"]);
    }

    #[test]
    fn settings_refuse_zero_timeouts_crossed_thresholds_and_an_unknown_mode() {
        let millis =
            |check, details, live, ready| Settings::from_millis(0, 0, check, details, None, live, ready);
        assert!(millis(0, "always", 5000, 2000).unwrap_err().contains("check_timeout_ms"));
        assert!(millis(1, "often", 5000, 2000).unwrap_err().contains("often"));
        assert!(millis(1, "always", 0, 0).unwrap_err().contains("live_stale_ms"));
        assert!(millis(1, "always", 1000, 2000).unwrap_err().contains("must not exceed live_stale_ms"));
        let settings = Settings::from_millis(100, 0, 500, "never", None, 5000, 2000).unwrap();
        assert_eq!((settings.health_ttl, settings.details), (TTL, Details::Never));
    }

    #[test]
    fn details_modes_parse_or_explain() {
        assert_eq!(Details::parse("always", None), Ok(Details::Always));
        assert_eq!(Details::parse("token", Some("t".into())), Ok(Details::Token("t".into())));
        assert!(Details::parse("token", Some(String::new())).is_err());
        assert!(Details::parse("sometimes", None).unwrap_err().contains("sometimes"));
    }

    fn text(reply: &Reply) -> String {
        String::from_utf8(reply.response.body.bytes.to_vec()).unwrap()
    }

    /// The value of the one sample line starting with `series` (name and labels).
    fn sample(scrape: &str, series: &str) -> Option<f64> {
        let line =
            scrape.lines().find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_count_cache_answers_and_check_runs() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        service.add(check("slow", counted(Duration::from_secs(60), 1.0).0)).unwrap();
        // A cold cache: the first request starts the round (a miss), the second waits for it.
        assert!(get(&service, "/ready", Parts::default()).is_none());
        assert!(get(&service, "/ready", Parts::default()).is_none());
        round_ended(&service).await;
        assert_eq!(get(&service, "/ready", Parts::default()).unwrap().status(), 503);
        // The health entry rendered at start-up is stale by now: refreshed once, then a hit.
        get(&service, "/health", Parts::default()).unwrap();
        get(&service, "/health", Parts::default()).unwrap();
        let scrape = text(&get(&service, "/metrics", Parts::default()).unwrap());
        let cache = |endpoint: &str, result: &str| {
            sample(
                &scrape,
                &format!("phoenix_cache_requests_total{{endpoint=\"{endpoint}\",result=\"{result}\"}}"),
            )
        };
        assert_eq!(cache("ready", "miss"), Some(1.0), "{scrape}");
        assert_eq!(cache("ready", "coalesced"), Some(1.0));
        assert_eq!(cache("ready", "hit"), Some(1.0));
        assert_eq!((cache("health", "miss"), cache("health", "hit")), (Some(1.0), Some(1.0)));
        assert_eq!(sample(&scrape, "phoenix_check_runs_total{check=\"db\",result=\"pass\"}"), Some(1.0));
        assert_eq!(sample(&scrape, "phoenix_check_runs_total{check=\"slow\",result=\"timeout\"}"), Some(1.0));
        assert_eq!(sample(&scrape, "phoenix_check_status{check=\"slow\",status=\"fail\"}"), Some(1.0));
        assert_eq!(sample(&scrape, "phoenix_ready"), Some(0.0));
        // A timed-out run took its whole timeout.
        assert_eq!(sample(&scrape, "phoenix_check_duration_seconds_sum{check=\"slow\"}"), Some(0.5));
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_are_negotiated_guarded_by_a_token_and_can_be_switched_off() {
        let service = service(Details::Token("s3cret".to_owned()));
        let asks = |accept, authorization| Parts { query: "", accept, authorization };
        assert_eq!(get(&service, "/metrics", asks(None, None)).unwrap().status(), 401);
        let plain = get(&service, "/metrics", asks(None, Some("Bearer s3cret"))).unwrap();
        assert_eq!((plain.status(), plain.response.body.content_type), (200, metrics::PROMETHEUS_TEXT));
        let open =
            get(&service, "/metrics", asks(Some("application/openmetrics-text"), Some("Bearer s3cret")));
        let open = open.unwrap();
        assert_eq!(open.response.body.content_type, metrics::OPENMETRICS);
        assert!(text(&open).ends_with("# EOF\n"));
        service.set_metrics_public(true);
        assert_eq!(get(&service, "/metrics", asks(None, None)).unwrap().status(), 200);
        service.set_metrics(false);
        assert_eq!(get(&service, "/metrics", asks(None, Some("Bearer s3cret"))).unwrap().status(), 404);
        // "never" hides readiness details, not metrics: they hold no error text.
        let service = self::service(Details::Never);
        assert_eq!(get(&service, "/metrics", Parts::default()).unwrap().status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn answered_requests_are_counted_under_their_route_template() {
        let service = service(Details::Always);
        service.record("GET", "/ready/db", 200, Duration::from_micros(40));
        service.record("GET", "/nope", 404, Duration::from_micros(10));
        service.set_metrics(false);
        service.record("GET", "/nope", 404, Duration::from_micros(10));
        service.set_metrics(true);
        let scrape = text(&get(&service, "/metrics", Parts::default()).unwrap());
        let requests = |labels: &str| sample(&scrape, &format!("phoenix_http_requests_total{{{labels}}}"));
        assert_eq!(requests("route=\"/ready/{name}\",method=\"GET\",code=\"200\""), Some(1.0), "{scrape}");
        assert_eq!(requests("route=\"other\",method=\"GET\",code=\"404\""), Some(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_page_data_carries_each_subsystems_history_under_the_details_policy() {
        let service = service(Details::Token("s3cret".to_owned()));
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        for _ in 0..3 {
            get(&service, "/ready", Parts::default()).unwrap();
            tokio::time::advance(TTL).await;
        }
        let data = |authorization| {
            json(
                &get(&service, "/status", Parts { query: "format=json", accept: None, authorization })
                    .unwrap(),
            )
        };
        let shown = data(Some("Bearer s3cret"));
        assert_eq!(shown["status"], "ready");
        let db = &shown["subsystems"][0];
        assert_eq!((db["name"].as_str(), db["status"].as_str()), (Some("db"), Some("pass")));
        // Three rounds asked by /ready, and a fourth by the page's data itself (the entry was stale).
        assert_eq!(db["history"].as_array().unwrap().len(), 4);
        assert_eq!(db["history"][3]["status"], "pass");
        let hidden = data(None);
        assert_eq!(hidden["status"], "ready");
        assert!(hidden.get("subsystems").is_none(), "{hidden}");
        let page = get(&service, "/status", Parts::default()).unwrap();
        assert_eq!(page.response.body.content_type, render::HTML);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subsystem_remembers_only_its_latest_runs() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        for _ in 0..crate::checks::RECENT_RUNS + 5 {
            get(&service, "/ready", Parts::default()).unwrap();
            tokio::time::advance(TTL).await;
        }
        let data =
            json(&get(&service, "/status", Parts { query: "format=json", ..Parts::default() }).unwrap());
        assert_eq!(data["subsystems"][0]["history"].as_array().unwrap().len(), crate::checks::RECENT_RUNS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_refreshes_readiness_without_waiting_for_a_probe() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        let scrape = text(&get(&service, "/metrics", Parts::default()).unwrap());
        assert_eq!(sample(&scrape, "phoenix_ready"), Some(1.0), "{scrape}");
        assert_eq!(sample(&scrape, "phoenix_check_status{check=\"db\",status=\"pass\"}"), Some(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_page_data_refreshes_readiness_without_waiting_for_a_probe() {
        let service = service(Details::Always);
        service.add(check("db", counted(Duration::ZERO, 1.0).0)).unwrap();
        let data =
            json(&get(&service, "/status", Parts { query: "format=json", ..Parts::default() }).unwrap());
        assert_eq!(data["status"], "ready", "{data}");
        assert_eq!(data["subsystems"][0]["status"], "pass");
    }
}
