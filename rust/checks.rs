//! The check runner: every subsystem measured concurrently, each under its own deadline.
//!
//! A round takes as long as its slowest check, capped by that check's timeout. Each check runs as its own
//! task, so a panic stays inside that task and becomes a failing result. A check that has not returned by
//! its deadline is reported as timed out, and it is *not* started again while that run is still pending:
//! later rounds wait on the same run instead, so a hung dependency occupies one task or thread, never one
//! per round.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::{join_all, BoxFuture, FutureExt, Shared};
use tokio::runtime::Handle;

/// A metric in [0, 1] (by convention), or a short human-readable reason why there is none.
pub type CheckResult = Result<f64, String>;
pub type CheckFuture = BoxFuture<'static, CheckResult>;

/// Measures one subsystem. `start` must return at once; the measuring happens when the future runs.
pub trait Probe: Send + Sync {
    fn start(&self) -> CheckFuture;
}

/// One registered subsystem: what it measures, when it counts as ready, and how long it may take.
pub struct Subsystem {
    pub name: String,
    /// What the metric means (`integrity`, `alignment`, …); used in messages.
    pub measurement: String,
    pub threshold: f64,
    pub timeout: Duration,
    probe: Box<dyn Probe>,
    current: Mutex<Option<Run>>,
}

#[derive(Clone)]
struct Run {
    result: Shared<CheckFuture>,
    finished: Arc<AtomicBool>,
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
        threshold: f64,
        timeout: Duration,
        probe: Box<dyn Probe>,
    ) -> Self {
        Self {
            name: name.into(),
            measurement: measurement.into(),
            threshold,
            timeout,
            probe,
            current: Mutex::new(None),
        }
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
        let work = match catch_unwind(AssertUnwindSafe(|| self.probe.start())) {
            Ok(work) => work,
            Err(panic) => {
                let message = panic_message(&*panic);
                async move { Err(format!("panicked: {message}")) }.boxed()
            }
        };
        let flag = FinishedOnDrop(Arc::clone(&finished));
        let task = rt.spawn(async move {
            let _flag = flag;
            work.await
        });
        let result = async move {
            match task.await {
                Ok(result) => result,
                Err(err) if err.is_panic() => {
                    Err(format!("panicked: {}", panic_message(&*err.into_panic())))
                }
                Err(_) => Err("cancelled".to_owned()),
            }
        }
        .boxed()
        .shared();
        let run = Run { result, finished };
        *current = Some(run.clone());
        (run, false)
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// What one subsystem reported in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub measurement: String,
    pub threshold: f64,
    pub metric: Option<f64>,
    pub ready: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// One round's verdict: ready when every subsystem is (an empty kernel is ready).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ready: bool,
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn missing(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| !o.ready)
    }

    pub fn passing(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.ready)
    }
}

fn judge(
    subsystem: &Subsystem,
    result: Option<CheckResult>,
    joined: bool,
    latency: Duration,
) -> Outcome {
    let (metric, ready, error) = match result {
        None => {
            let mut why = format!("timed out after {} ms", subsystem.timeout.as_millis());
            if joined {
                why.push_str(" (still running from an earlier round)");
            }
            (None, false, Some(why))
        }
        Some(Err(why)) => (None, false, Some(why)),
        Some(Ok(metric)) if !metric.is_finite() => (
            None,
            false,
            Some(format!("{} is not a finite number", subsystem.measurement)),
        ),
        Some(Ok(metric)) if metric > subsystem.threshold => (Some(metric), true, None),
        Some(Ok(metric)) => (
            Some(metric),
            false,
            Some(format!(
                "{} {:.2} <= {:.2}",
                subsystem.measurement, metric, subsystem.threshold
            )),
        ),
    };
    Outcome {
        name: subsystem.name.clone(),
        measurement: subsystem.measurement.clone(),
        threshold: subsystem.threshold,
        metric,
        ready,
        latency,
        error,
    }
}

/// Starts every subsystem's check now (on `rt`) and returns the future of the round's report.
///
/// Starting happens synchronously so that the caller controls the context the probes start in (a probe
/// that calls into Python needs the caller's interpreter state); the returned future must be polled
/// inside a tokio runtime, because the deadlines use tokio's timer.
pub fn start_round(
    subsystems: &[Arc<Subsystem>],
    rt: &Handle,
) -> impl Future<Output = Report> + Send + 'static {
    let started = Instant::now();
    let pending: Vec<_> = subsystems
        .iter()
        .map(|subsystem| {
            let (run, joined) = subsystem.begin(rt);
            let subsystem = Arc::clone(subsystem);
            async move {
                let result = tokio::time::timeout(subsystem.timeout, run.result)
                    .await
                    .ok();
                judge(&subsystem, result, joined, started.elapsed())
            }
        })
        .collect();
    async move {
        let outcomes = join_all(pending).await;
        Report {
            ready: outcomes.iter().all(|o| o.ready),
            outcomes,
        }
    }
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
        async move {
            match tokio::task::spawn_blocking(move || measure()).await {
                Ok(result) => result,
                Err(err) if err.is_panic() => {
                    Err(format!("panicked: {}", panic_message(&*err.into_panic())))
                }
                Err(_) => Err("cancelled".to_owned()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn subsystem(
        name: &str,
        threshold: f64,
        timeout_ms: u64,
        probe: impl Probe + 'static,
    ) -> Arc<Subsystem> {
        Arc::new(Subsystem::new(
            name,
            "metric",
            threshold,
            Duration::from_millis(timeout_ms),
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

    #[tokio::test]
    async fn empty_round_is_ready() {
        let report = round(&[]).await;
        assert!(report.ready);
        assert!(report.outcomes.is_empty());
    }

    #[tokio::test]
    async fn checks_run_concurrently() {
        let subs: Vec<_> = (0..3)
            .map(|i| subsystem(&format!("s{i}"), 0.5, 1_000, sleeping(100, 1.0)))
            .collect();
        let started = Instant::now();
        let report = round(&subs).await;
        assert!(report.ready, "{report:?}");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn metric_must_be_strictly_above_threshold() {
        let subs = [
            subsystem("above", 0.9, 100, sleeping(0, 0.91)),
            subsystem("equal", 0.9, 100, sleeping(0, 0.9)),
        ];
        let report = round(&subs).await;
        assert!(!report.ready);
        assert!(report.outcomes[0].ready);
        assert!(!report.outcomes[1].ready);
        assert_eq!(
            report.outcomes[1].error.as_deref(),
            Some("metric 0.90 <= 0.90")
        );
        assert_eq!(
            report
                .missing()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>(),
            ["equal"]
        );
    }

    #[tokio::test]
    async fn nan_metric_fails() {
        let report = round(&[subsystem("nan", 0.1, 100, sleeping(0, f64::NAN))]).await;
        assert_eq!(
            report.outcomes[0].error.as_deref(),
            Some("metric is not a finite number")
        );
    }

    #[tokio::test]
    async fn error_is_reported_with_its_text() {
        let probe = FnProbe(|| async { Err::<f64, _>("disk on fire".to_owned()) });
        let report = round(&[subsystem("e", 0.1, 100, probe)]).await;
        assert!(!report.ready);
        assert_eq!(report.outcomes[0].error.as_deref(), Some("disk on fire"));
        assert_eq!(report.outcomes[0].metric, None);
    }

    #[tokio::test]
    async fn panicking_check_fails_without_taking_the_round_down() {
        let probe = FnProbe(|| async { panic!("kaboom") });
        let subs = [
            subsystem("p", 0.1, 100, probe),
            subsystem("ok", 0.1, 100, sleeping(0, 1.0)),
        ];
        let report = round(&subs).await;
        assert_eq!(
            report.outcomes[0].error.as_deref(),
            Some("panicked: kaboom")
        );
        assert!(report.outcomes[1].ready);
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
        assert_eq!(
            report.outcomes[0].error.as_deref(),
            Some("panicked: no start")
        );
    }

    #[tokio::test]
    async fn blocking_probe_panic_is_reported() {
        let probe = BlockingProbe(Arc::new(|| -> CheckResult { panic!("blocking boom") }));
        let report = round(&[subsystem("b", 0.1, 1_000, probe)]).await;
        assert_eq!(
            report.outcomes[0].error.as_deref(),
            Some("panicked: blocking boom")
        );
    }

    #[tokio::test]
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
            assert!(started.elapsed() < Duration::from_millis(150));
            let error = report.outcomes[0].error.clone().unwrap();
            assert!(error.starts_with("timed out after 50 ms"), "{error}");
            assert_eq!(error.contains("earlier round"), i > 0, "{error}");
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
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
        assert!(!round(&subs).await.ready);
        // The second round joins the pending run, which finishes within its deadline.
        assert!(round(&subs).await.ready);
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        // Once finished, the next round starts a fresh run.
        round(&subs).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }
}
