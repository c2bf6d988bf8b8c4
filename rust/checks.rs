//! The check runner: every subsystem measured concurrently, each under its own deadline.
//!
//! A round takes as long as its slowest check, capped by that check's timeout. Each check runs as its own
//! task, so a panic stays inside that task and becomes a failing result. A check that has not returned by
//! its deadline is reported as timed out, and it is *not* started again while that run is still pending:
//! later rounds wait on the same run instead, so a hung dependency occupies one task or thread, never one
//! per round.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

// tokio's clock, so that tests can pause it; outside tests it is the system's monotonic clock.
use tokio::time::Instant;

use arc_swap::ArcSwapOption;
use futures::future::{join_all, BoxFuture, FutureExt, Shared};
use tokio::runtime::Handle;
use tokio::task::JoinError;

use crate::metrics::{CheckMetrics, RunResult};

/// A metric in [0, 1] (by convention), or a short human-readable reason why there is none.
pub type CheckResult = Result<f64, String>;
pub type CheckFuture = BoxFuture<'static, CheckResult>;

/// Measures one subsystem. `start` must return at once; the measuring happens when the future runs.
pub trait Probe: Send + Sync {
    fn start(&self) -> CheckFuture;
}

/// How a subsystem is judged and scheduled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Ready only when the metric is strictly above this.
    pub threshold: f64,
    /// A metric above `threshold` but not above this is `warn`: still ready, but flagged.
    pub warn_threshold: Option<f64>,
    pub timeout: Duration,
    /// Checked in the background on this period instead of per round; rounds read the latest result.
    pub interval: Option<Duration>,
    /// Readiness flips to not-ready only after this many failures in a row (at least 1), and flips
    /// back on the first success. Tolerated failures are reported as `warn`.
    pub failures_before_unready: u32,
}

impl Policy {
    pub fn new(threshold: f64, timeout: Duration) -> Self {
        Self { threshold, warn_threshold: None, timeout, interval: None, failures_before_unready: 1 }
    }
}

/// A subsystem's state as reported: pass and warn are ready, fail and pending are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// No result yet: still initialising, or a background check that has not reported.
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Pending => "pending",
        }
    }

    pub fn is_ready(self) -> bool {
        matches!(self, Status::Pass | Status::Warn)
    }
}

/// A run's metric, status and message.
type Verdict = (Option<f64>, Status, Option<String>);

/// Whether a subsystem can be checked yet (e.g. its native state has finished initialising).
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// One registered subsystem: what it measures, how it is judged, and its recent history.
pub struct Subsystem {
    pub name: String,
    /// What the metric means (`integrity`, `alignment`, …); used in messages.
    pub measurement: String,
    pub policy: Policy,
    probe: Box<dyn Probe>,
    gate: Option<Gate>,
    current: Mutex<Option<Run>>,
    history: Mutex<History>,
    latest: ArcSwapOption<Outcome>,
    pub metrics: CheckMetrics,
}

#[derive(Clone)]
struct Run {
    result: Shared<CheckFuture>,
    finished: Arc<AtomicBool>,
    /// What the run's result was judged to be, by the first measurement to see it: a round that joins
    /// the background run reports the same outcome without recording the run a second time.
    outcome: Arc<OnceLock<Outcome>>,
}

struct History {
    status: Status,
    consecutive_failures: u32,
    /// The latest runs, oldest first, for the status page.
    recent: VecDeque<Mark>,
}

/// How many runs a subsystem remembers for the status page.
pub const RECENT_RUNS: usize = 30;

/// One past run, as the status page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub status: Status,
    pub metric: Option<f64>,
    pub latency: Duration,
    pub at: SystemTime,
}

/// Marks a run finished when its task ends, whether it returned or unwound.
struct FinishedOnDrop(Arc<AtomicBool>);

impl Drop for FinishedOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Subsystem {
    pub fn new(
        name: impl Into<String>,
        measurement: impl Into<String>,
        policy: Policy,
        probe: Box<dyn Probe>,
    ) -> Self {
        Self {
            name: name.into(),
            measurement: measurement.into(),
            policy,
            probe,
            gate: None,
            current: Mutex::new(None),
            history: Mutex::new(History {
                status: Status::Pending,
                consecutive_failures: 0,
                recent: VecDeque::with_capacity(RECENT_RUNS),
            }),
            latest: ArcSwapOption::empty(),
            metrics: CheckMetrics::default(),
        }
    }

    /// Reports `pending` ("initialising") without running the probe until `gate` returns true.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    fn gate_open(&self) -> bool {
        self.gate.as_ref().is_none_or(|gate| gate())
    }

    /// Starts a run on `rt`, or joins the previous one if it is still pending. Returns the run and
    /// whether it was joined rather than started.
    fn begin(&self, rt: &Handle) -> (Run, bool) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = current.as_ref() {
            if !run.finished.load(Ordering::Acquire) {
                return (run.clone(), true);
            }
        }
        let finished = Arc::new(AtomicBool::new(false));
        let mut work = match catch_unwind(AssertUnwindSafe(|| self.probe.start())) {
            Ok(work) => work,
            Err(panic) => {
                let why = panicked(&*panic);
                async move { Err(why) }.boxed()
            }
        };
        // A probe that can answer at once (most native checks) answers here, on the calling thread:
        // spawning it would cost a task and a thread hop for nothing. Any other is polled again, with
        // a real waker, by its task.
        let at_once =
            catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut Context::from_waker(Waker::noop()))));
        let answered = match at_once {
            Ok(Poll::Ready(result)) => Some(result),
            Ok(Poll::Pending) => None,
            Err(panic) => Some(Err(panicked(&*panic))),
        };
        if let Some(result) = answered {
            finished.store(true, Ordering::Release);
            let run = Run {
                result: futures::future::ready(result).boxed().shared(),
                finished,
                outcome: Arc::default(),
            };
            *current = Some(run.clone());
            return (run, false);
        }
        let flag = FinishedOnDrop(Arc::clone(&finished));
        let task = rt.spawn(async move {
            let _flag = flag;
            work.await
        });
        let result = async move { task_result(task.await) }.boxed().shared();
        let run = Run { result, finished, outcome: Arc::default() };
        *current = Some(run.clone());
        (run, false)
    }

    /// Measures now (joining a pending run), judges the result and records it. Starting happens
    /// synchronously, in the caller's context; the future needs a tokio runtime for its deadline.
    fn measure(self: &Arc<Self>, rt: &Handle) -> impl Future<Output = Outcome> + Send + 'static {
        let this = Arc::clone(self);
        let gate_open = self.gate_open();
        let started = Instant::now();
        let run = gate_open.then(|| self.begin(rt));
        async move {
            // Not a result: the first measurement after the gate opens is.
            let Some((run, joined)) = run else {
                return this.pending_outcome("initialising");
            };
            let result = tokio::time::timeout(this.policy.timeout, run.result).await.ok();
            let conclude = |result| {
                let (ended, verdict) = this.judge(result, joined);
                let outcome = this.record(verdict, started.elapsed());
                // Counted by how the run ended: a tolerated failure is reported as `warn`, yet failed.
                this.metrics.record(ended, outcome.latency, outcome.at);
                this.latest.store(Some(Arc::new(outcome.clone())));
                outcome
            };
            match result {
                Some(result) => run.outcome.get_or_init(|| conclude(Some(result))).clone(),
                // Each measurement that gave up waiting reports its own timeout.
                None => conclude(None),
            }
        }
    }

    fn pending_outcome(&self, why: &str) -> Outcome {
        Outcome {
            name: self.name.clone(),
            measurement: self.measurement.clone(),
            threshold: self.policy.threshold,
            metric: None,
            status: Status::Pending,
            latency: Duration::ZERO,
            message: Some(why.to_owned()),
            at: SystemTime::now(),
        }
    }

    /// How the run ended, and the verdict on it.
    fn judge(&self, result: Option<CheckResult>, joined: bool) -> (RunResult, Verdict) {
        let policy = &self.policy;
        let what = &self.measurement;
        match result {
            None => {
                let mut why = timed_out(policy.timeout);
                if joined {
                    why.push_str(" (still running from an earlier round)");
                }
                (RunResult::Timeout, (None, Status::Fail, Some(why)))
            }
            Some(Err(why)) => (RunResult::Error, (None, Status::Fail, Some(crate::redact::redact(&why)))),
            Some(Ok(metric)) if !metric.is_finite() => {
                (RunResult::Error, (None, Status::Fail, Some(format!("{what} is not a finite number"))))
            }
            Some(Ok(metric)) if metric <= policy.threshold => (
                RunResult::Fail,
                (Some(metric), Status::Fail, Some(format!("{what} {metric:.2} <= {:.2}", policy.threshold))),
            ),
            Some(Ok(metric)) => match policy.warn_threshold {
                Some(warn) if metric <= warn => (
                    RunResult::Warn,
                    (Some(metric), Status::Warn, Some(format!("{what} {metric:.2} <= warn {warn:.2}"))),
                ),
                _ => (RunResult::Pass, (Some(metric), Status::Pass, None)),
            },
        }
    }

    /// Applies the failure tolerance, logs a change of status once, and builds the outcome.
    fn record(&self, verdict: Verdict, latency: Duration) -> Outcome {
        let (metric, mut status, mut message) = verdict;
        let mut history = self.lock_history();
        if status == Status::Fail {
            history.consecutive_failures += 1;
            let limit = self.policy.failures_before_unready.max(1);
            if history.status.is_ready() && history.consecutive_failures < limit {
                status = Status::Warn;
                message = Some(format!(
                    "failure {} of {limit} tolerated: {}",
                    history.consecutive_failures,
                    message.as_deref().unwrap_or("failed")
                ));
            }
        } else {
            history.consecutive_failures = 0;
        }
        if history.status != status {
            let change = format!(
                "{}: {} -> {}{}",
                self.name,
                history.status.as_str(),
                status.as_str(),
                message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            );
            if status.is_ready() {
                log::info!(target: "phoenix.kernel", "{change}");
            } else {
                log::warn!(target: "phoenix.kernel", "{change}");
            }
            history.status = status;
        }
        let at = SystemTime::now();
        if history.recent.len() == RECENT_RUNS {
            history.recent.pop_front();
        }
        history.recent.push_back(Mark { status, metric, latency, at });
        Outcome {
            name: self.name.clone(),
            measurement: self.measurement.clone(),
            threshold: self.policy.threshold,
            metric,
            status,
            latency,
            message,
            at,
        }
    }

    /// The status last reported.
    pub fn status(&self) -> Status {
        self.lock_history().status
    }

    /// The latest runs, oldest first (at most `RECENT_RUNS`).
    pub fn recent(&self) -> Vec<Mark> {
        self.lock_history().recent.iter().cloned().collect()
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest background result, or `pending` while the gate keeps the first one back.
    fn latest_outcome(&self) -> Outcome {
        match self.latest.load_full() {
            Some(outcome) => Outcome::clone(&outcome),
            None => self.pending_outcome("initialising"),
        }
    }

    /// Checks `this` every `policy.interval` until the subsystem is dropped. A run that hangs past
    /// its deadline is joined by the next tick, never duplicated.
    pub async fn run_in_background(this: Weak<Self>, rt: Handle) {
        let Some(every) = this.upgrade().and_then(|s| s.policy.interval) else {
            return;
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(subsystem) = this.upgrade() else {
                return;
            };
            let measuring = subsystem.measure(&rt);
            drop(subsystem);
            measuring.await;
        }
    }
}

/// A run that took longer than `timeout`, as every check reports it.
pub fn timed_out(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}

/// A panic as a check's error text: `panicked: <its message>`.
fn panicked(panic: &(dyn Any + Send)) -> String {
    let message = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s,
        (_, Some(s)) => s.as_str(),
        _ => "unknown panic",
    };
    format!("panicked: {message}")
}

/// The result of a check's task: its own, or why it has none.
fn task_result(joined: Result<CheckResult, JoinError>) -> CheckResult {
    match joined {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(panicked(&*err.into_panic())),
        Err(_) => Err("cancelled".to_owned()),
    }
}

/// What one subsystem reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub measurement: String,
    pub threshold: f64,
    pub metric: Option<f64>,
    pub status: Status,
    pub latency: Duration,
    /// Why it failed, what it warns about, or why it is pending.
    pub message: Option<String>,
    /// When the result was recorded.
    pub at: SystemTime,
}

impl Outcome {
    pub fn ready(&self) -> bool {
        self.status.is_ready()
    }
}

/// One round's outcomes, in registration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Ready when every subsystem not in `excluded` is (an empty kernel is ready).
    pub fn ready_without(&self, excluded: &[&str]) -> bool {
        self.included(excluded).all(Outcome::ready)
    }

    pub fn ready(&self) -> bool {
        self.ready_without(&[])
    }

    pub fn included<'a>(&'a self, excluded: &'a [&str]) -> impl Iterator<Item = &'a Outcome> + 'a {
        self.outcomes.iter().filter(move |o| !excluded.contains(&o.name.as_str()))
    }

    pub fn missing(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| !o.ready())
    }

    pub fn passing(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.ready())
    }

    pub fn get(&self, name: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.name == name)
    }
}

/// Starts every on-demand subsystem's check now (on `rt`) and returns the future of the round's
/// report; background subsystems contribute their latest result.
///
/// Starting happens synchronously so that the caller controls the context the probes start in (a probe
/// that calls into Python needs the caller's interpreter state); the returned future must be polled
/// inside a tokio runtime, because the deadlines use tokio's timer.
pub fn start_round(
    subsystems: &[Arc<Subsystem>],
    rt: &Handle,
) -> impl Future<Output = Report> + Send + 'static {
    let pending: Vec<_> = subsystems
        .iter()
        .map(|subsystem| {
            // A background subsystem with no result yet (just started, or its gate just opened) is
            // measured by the round, joining the background run if one is pending: the first answer
            // after start-up reports the real state rather than "no result yet".
            let first_result = subsystem.latest.load().is_none() && subsystem.gate_open();
            if subsystem.policy.interval.is_some() && !first_result {
                let latest = subsystem.latest_outcome();
                async move { latest }.boxed()
            } else {
                subsystem.measure(rt).boxed()
            }
        })
        .collect();
    async move { Report { outcomes: join_all(pending).await } }
}

/// A probe made from a closure returning a future; handy for native checks and tests.
pub struct FnProbe<F>(pub F);

impl<F, Fut> Probe for FnProbe<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    fn start(&self) -> CheckFuture {
        (self.0)().boxed()
    }
}

/// A probe whose measurement is blocking work (disk I/O, locks); it runs on the blocking pool so that it
/// never stalls the async workers.
pub struct BlockingProbe<F>(pub Arc<F>);

impl<F> Probe for BlockingProbe<F>
where
    F: Fn() -> CheckResult + Send + Sync + 'static,
{
    fn start(&self) -> CheckFuture {
        let measure = Arc::clone(&self.0);
        async move { task_result(tokio::task::spawn_blocking(move || measure()).await) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn subsystem(name: &str, threshold: f64, timeout_ms: u64, probe: impl Probe + 'static) -> Arc<Subsystem> {
        Arc::new(Subsystem::new(
            name,
            "metric",
            Policy::new(threshold, Duration::from_millis(timeout_ms)),
            Box::new(probe),
        ))
    }

    fn sleeping(ms: u64, metric: f64) -> impl Probe {
        FnProbe(move || async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(metric)
        })
    }

    async fn round(subsystems: &[Arc<Subsystem>]) -> Report {
        start_round(subsystems, &Handle::current()).await
    }

    fn with_policy(name: &str, policy: Policy, probe: impl Probe + 'static) -> Arc<Subsystem> {
        Arc::new(Subsystem::new(name, "metric", policy, Box::new(probe)))
    }

    /// A probe whose metrics come from a shared script, one per run (the last repeats).
    fn scripted(metrics: &[f64]) -> (impl Probe, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let metrics = metrics.to_vec();
        let probe = FnProbe(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let metric = metrics[n.min(metrics.len() - 1)];
            async move { Ok(metric) }
        });
        (probe, runs)
    }

    #[tokio::test]
    async fn warn_threshold_gives_warn_and_stays_ready() {
        let mut policy = Policy::new(0.5, Duration::from_millis(100));
        policy.warn_threshold = Some(0.8);
        let subs = [
            with_policy("pass", policy.clone(), sleeping(0, 0.81)),
            with_policy("warn", policy.clone(), sleeping(0, 0.8)),
            with_policy("fail", policy, sleeping(0, 0.5)),
        ];
        let report = round(&subs).await;
        let statuses: Vec<_> = report.outcomes.iter().map(|o| o.status).collect();
        assert_eq!(statuses, [Status::Pass, Status::Warn, Status::Fail]);
        assert_eq!(report.outcomes[1].message.as_deref(), Some("metric 0.80 <= warn 0.80"));
        assert!(report.ready_without(&["fail"]));
        assert!(!report.ready());
    }

    #[tokio::test]
    async fn readiness_flips_only_after_n_failures_in_a_row_and_back_on_success() {
        let mut policy = Policy::new(0.5, Duration::from_millis(100));
        policy.failures_before_unready = 3;
        let (probe, _) = scripted(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        let subs = [with_policy("db", policy, probe)];
        let mut seen = Vec::new();
        for _ in 0..7 {
            seen.push(round(&subs).await.outcomes[0].status);
        }
        use Status::{Fail, Pass, Warn};
        assert_eq!(seen, [Pass, Warn, Warn, Pass, Warn, Warn, Fail]);
    }

    #[tokio::test]
    async fn a_subsystem_that_never_passed_fails_at_once() {
        let mut policy = Policy::new(0.5, Duration::from_millis(100));
        policy.failures_before_unready = 3;
        let subs = [with_policy("db", policy, sleeping(0, 0.0))];
        assert_eq!(round(&subs).await.outcomes[0].status, Status::Fail);
    }

    #[tokio::test]
    async fn closed_gate_reports_pending_without_running_the_probe() {
        let (probe, runs) = scripted(&[1.0]);
        let open = Arc::new(AtomicBool::new(false));
        let gate_flag = Arc::clone(&open);
        let sub =
            Subsystem::new("native", "metric", Policy::new(0.5, Duration::from_millis(100)), Box::new(probe))
                .with_gate(Arc::new(move || gate_flag.load(Ordering::SeqCst)));
        let subs = [Arc::new(sub)];
        let outcome = round(&subs).await.outcomes[0].clone();
        assert_eq!((outcome.status, outcome.message.as_deref()), (Status::Pending, Some("initialising")));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        open.store(true, Ordering::SeqCst);
        assert_eq!(round(&subs).await.outcomes[0].status, Status::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn background_check_runs_on_its_own_and_rounds_read_its_latest_result() {
        let mut policy = Policy::new(0.5, Duration::from_millis(100));
        policy.interval = Some(Duration::from_millis(30));
        let (probe, runs) = scripted(&[0.0, 0.0, 1.0]);
        let sub = with_policy("bg", policy, probe);
        let subs = [Arc::clone(&sub)];
        // No result yet: the round measures it rather than answering "pending".
        assert_eq!(round(&subs).await.outcomes[0].status, Status::Fail);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(round(&subs).await.outcomes[0].status, Status::Fail);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "once there is a result, rounds only read it");
        tokio::spawn(Subsystem::run_in_background(Arc::downgrade(&sub), Handle::current()));
        // Ticks at 0, 30, 60, ... ms of the paused clock: the second run fails, the third passes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(round(&subs).await.outcomes[0].status, Status::Fail);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(round(&subs).await.outcomes[0].status, Status::Pass);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_joins_the_first_background_run_and_it_is_recorded_once() {
        let mut policy = Policy::new(0.5, Duration::from_millis(100));
        policy.interval = Some(Duration::from_secs(60));
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&starts);
        let probe = FnProbe(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(1.0)
            }
        });
        let sub = with_policy("bg", policy, probe);
        tokio::spawn(Subsystem::run_in_background(Arc::downgrade(&sub), Handle::current()));
        // Let the first tick start its run, which is still sleeping when the round comes.
        tokio::task::yield_now().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let outcome = round(&[Arc::clone(&sub)]).await.outcomes[0].clone();
        assert_eq!(outcome.status, Status::Pass);
        assert_eq!(starts.load(Ordering::SeqCst), 1, "the round joined the background run");
        // Let the background measurement see the same run end.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(sub.recent().len(), 1, "one run, recorded once");
    }

    #[tokio::test]
    async fn empty_round_is_ready() {
        let report = round(&[]).await;
        assert!(report.ready());
        assert!(report.outcomes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_concurrently() {
        let subs: Vec<_> =
            (0..3).map(|i| subsystem(&format!("s{i}"), 0.5, 1_000, sleeping(100, 1.0))).collect();
        let started = Instant::now();
        let report = round(&subs).await;
        assert!(report.ready(), "{report:?}");
        // On the paused clock: one check's 100 ms, not three times that.
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_probe_that_answers_at_once_completes_the_round_inline() {
        let probe = FnProbe(|| futures::future::ready(Ok(1.0)));
        let subs = [subsystem("now", 0.5, 100, probe)];
        let mut round = Box::pin(start_round(&subs, &Handle::current()));
        let polled = round.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Ready(report) if report.ready()));
    }

    #[tokio::test]
    async fn metric_must_be_strictly_above_threshold() {
        let subs =
            [subsystem("above", 0.9, 100, sleeping(0, 0.91)), subsystem("equal", 0.9, 100, sleeping(0, 0.9))];
        let report = round(&subs).await;
        assert!(!report.ready());
        assert!(report.outcomes[0].ready());
        assert!(!report.outcomes[1].ready());
        assert_eq!(report.outcomes[1].message.as_deref(), Some("metric 0.90 <= 0.90"));
        assert_eq!(report.missing().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["equal"]);
    }

    #[tokio::test]
    async fn nan_metric_fails() {
        let report = round(&[subsystem("nan", 0.1, 100, sleeping(0, f64::NAN))]).await;
        assert_eq!(report.outcomes[0].message.as_deref(), Some("metric is not a finite number"));
    }

    #[tokio::test]
    async fn error_is_reported_with_its_text() {
        let probe = FnProbe(|| async { Err::<f64, _>("disk on fire".to_owned()) });
        let report = round(&[subsystem("e", 0.1, 100, probe)]).await;
        assert!(!report.ready());
        assert_eq!(report.outcomes[0].message.as_deref(), Some("disk on fire"));
        assert_eq!(report.outcomes[0].metric, None);
    }

    #[tokio::test]
    async fn panicking_check_fails_without_taking_the_round_down() {
        let probe = FnProbe(|| async { panic!("kaboom") });
        let subs = [subsystem("p", 0.1, 100, probe), subsystem("ok", 0.1, 100, sleeping(0, 1.0))];
        let report = round(&subs).await;
        assert_eq!(report.outcomes[0].message.as_deref(), Some("panicked: kaboom"));
        assert!(report.outcomes[1].ready());
    }

    struct PanicsOnStart;
    impl Probe for PanicsOnStart {
        fn start(&self) -> CheckFuture {
            panic!("no start")
        }
    }

    #[tokio::test]
    async fn probe_that_panics_while_starting_fails() {
        let report = round(&[subsystem("p", 0.1, 100, PanicsOnStart)]).await;
        assert_eq!(report.outcomes[0].message.as_deref(), Some("panicked: no start"));
    }

    #[tokio::test]
    async fn blocking_probe_panic_is_reported() {
        let probe = BlockingProbe(Arc::new(|| -> CheckResult { panic!("blocking boom") }));
        let report = round(&[subsystem("b", 0.1, 1_000, probe)]).await;
        assert_eq!(report.outcomes[0].message.as_deref(), Some("panicked: blocking boom"));
    }

    #[tokio::test(start_paused = true)]
    async fn hung_check_times_out_and_is_not_started_again() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&starts);
        let probe = FnProbe(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            futures::future::pending::<CheckResult>()
        });
        let subs = [subsystem("hung", 0.1, 50, probe)];
        for i in 0..5 {
            let started = Instant::now();
            let report = round(&subs).await;
            assert_eq!(started.elapsed(), Duration::from_millis(50), "round {i}");
            let error = report.outcomes[0].message.clone().unwrap();
            assert!(error.starts_with("timed out after 50 ms"), "{error}");
            assert_eq!(error.contains("earlier round"), i > 0, "{error}");
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_check_is_joined_and_its_late_result_used() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&starts);
        let probe = FnProbe(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(80)).await;
                Ok(1.0)
            }
        });
        let subs = [subsystem("slow", 0.1, 50, probe)];
        assert!(!round(&subs).await.ready());
        // The second round joins the pending run, which finishes within its deadline.
        assert!(round(&subs).await.ready());
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        // Once finished, the next round starts a fresh run.
        round(&subs).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }
}
