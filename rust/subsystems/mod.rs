//! The Phoenix kernel's three native subsystems, and how they are brought up and checked.
//!
//! Bringing them up touches the disk (opening the store, reading axioms), so it happens in the background
//! after start-up; until it has finished every probe reports "initialising" and `/ready` stays 503.
//!
//! A store that cannot be opened (held by another process, unreadable) is not given up on: each use of
//! it (the plastic_ltm check, a `kernel.memory` call) tries again once the backoff since the last
//! failure has passed, so the kernel recovers by itself when the cause goes away.

pub mod plastic_ltm;
pub mod triune_conscience;
pub mod world_model;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use futures::FutureExt;

use crate::checks::{BlockingProbe, CheckResult, FnProbe, Gate, Policy, Subsystem};
use plastic_ltm::PlasticLtm;
use triune_conscience::AxiomSet;
use world_model::WorldModel;

pub const PLASTIC_LTM: &str = "plastic_ltm";
pub const TRIUNE_CONSCIENCE: &str = "triune_conscience";
pub const WORLD_MODEL: &str = "world_model";

/// The seed's readiness thresholds.
pub const INTEGRITY_THRESHOLD: f64 = 0.95;
pub const ALIGNMENT_THRESHOLD: f64 = 0.90;
pub const COHERENCE_THRESHOLD: f64 = 0.85;

/// How often the kernel re-records its own `system` entry; well inside the 60 s of full coherence.
pub const SYSTEM_REFRESH: Duration = Duration::from_secs(15);

/// The native checks run in the background on this period, whatever the request rate: the integrity
/// check writes and fsyncs probe records and verifies digests, so its disk work must not grow with
/// traffic. `/ready` serves their latest results, at most this period (plus the cache TTL) old.
pub const NATIVE_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// After a failed attempt to open the store, the next one waits this long, doubling after each
/// failure up to [`STORE_RETRY_MAX`].
pub const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why the store is not open: the reason the last attempt to open it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct StoreUnavailable(pub String);

/// The attempts to open the store so far, while it has not opened.
#[derive(Default)]
struct OpenAttempts {
    failures: u32,
    /// The last failure's reason, served without a new attempt until `retry_at`.
    last_failure: Option<StoreUnavailable>,
    retry_at: Option<tokio::time::Instant>,
}

impl OpenAttempts {
    fn backoff(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        (STORE_RETRY_FIRST * 2u32.pow(doublings)).min(STORE_RETRY_MAX)
    }
}

pub struct Phoenix {
    data_dir: PathBuf,
    started: SystemTime,
    memory: OnceLock<PlasticLtm>,
    /// Serialises the attempts to open the store, and orders them with the end of bring-up.
    open_attempts: Mutex<OpenAttempts>,
    conscience: OnceLock<AxiomSet>,
    world: WorldModel,
    /// [`Phoenix::initialise`] has run, so the checks run (and report a store that would not open).
    brought_up: AtomicBool,
    /// Flips to true once, when bring-up has run and the store has opened: `/startup` answers 200
    /// from then on. A watch channel so that callers can await it rather than poll.
    initialised: tokio::sync::watch::Sender<bool>,
}

impl Phoenix {
    /// Cheap: nothing is opened until [`Phoenix::initialise`], so a kernel can be built in a process
    /// that is about to fork its workers.
    pub fn new(data_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            data_dir: data_dir.to_path_buf(),
            started: SystemTime::now(),
            memory: OnceLock::new(),
            open_attempts: Mutex::new(OpenAttempts::default()),
            conscience: OnceLock::new(),
            world: WorldModel::new(),
            brought_up: AtomicBool::new(false),
            initialised: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Blocking: tries to open the store, loads the axioms and records the `system` entry, then lets
    /// the checks run. Safe to call more than once and from several threads; later calls find the
    /// work done. A store that does not open here is retried by its later uses (see [`Self::memory`]).
    pub fn initialise(&self) {
        let _ = self.memory();
        self.conscience();
        self.record_system_entry();
        let _attempts = self.lock_open_attempts();
        self.brought_up.store(true, Ordering::Release);
        if self.memory.get().is_some() {
            self.initialised.send_replace(true);
        }
    }

    /// True once [`Self::initialise`] has run and the store has opened at least once: until then a
    /// start-up probe must wait (a slow or contended first open is not a reason to restart), while
    /// `/ready` already reports why the store is unavailable.
    pub fn is_initialised(&self) -> bool {
        *self.initialised.borrow()
    }

    /// Resolves once [`Self::is_initialised`] is true.
    pub async fn wait_initialised(&self) {
        let mut seen = self.initialised.subscribe();
        // The sender lives as long as `self`, so waiting can only end by the flag turning true.
        let _ = seen.wait_for(|done| *done).await;
    }

    fn lock_open_attempts(&self) -> std::sync::MutexGuard<'_, OpenAttempts> {
        self.open_attempts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store. Blocking: until it has opened, a call opens it, or, within the backoff after a
    /// failed attempt, returns that attempt's reason at once; concurrent callers wait for one attempt.
    pub fn memory(&self) -> Result<&PlasticLtm, StoreUnavailable> {
        if let Some(store) = self.memory.get() {
            return Ok(store);
        }
        let mut attempts = self.lock_open_attempts();
        if let Some(store) = self.memory.get() {
            return Ok(store);
        }
        let now = tokio::time::Instant::now();
        if let (Some(why), Some(retry_at)) = (&attempts.last_failure, attempts.retry_at) {
            if now < retry_at {
                return Err(why.clone());
            }
        }
        match PlasticLtm::open(&self.data_dir) {
            Ok(store) => {
                if attempts.failures > 0 {
                    log::info!(
                        target: "phoenix.kernel",
                        "plastic_ltm: the store opened after {} failed attempts",
                        attempts.failures
                    );
                }
                let store = self.memory.get_or_init(|| store);
                if self.brought_up.load(Ordering::Acquire) {
                    self.initialised.send_replace(true);
                }
                Ok(store)
            }
            Err(err) => {
                let why = StoreUnavailable(err.to_string());
                attempts.failures += 1;
                attempts.retry_at = Some(now + attempts.backoff());
                // Logged when the reason changes, not at every retry.
                if attempts.last_failure.as_ref() != Some(&why) {
                    log::error!(
                        target: "phoenix.kernel",
                        "plastic_ltm unavailable: {why}; retrying with backoff up to {} s",
                        STORE_RETRY_MAX.as_secs()
                    );
                }
                attempts.last_failure = Some(why.clone());
                Err(why)
            }
        }
    }

    /// The axioms, loading them on first use. A malformed file is logged once, as one line.
    pub fn conscience(&self) -> &AxiomSet {
        self.conscience.get_or_init(|| {
            let axioms = triune_conscience::load_axioms(&self.data_dir);
            if let Some(summary) = axioms.problem_summary() {
                log::warn!(target: "phoenix.kernel", "{summary}");
            }
            axioms
        })
    }

    pub fn world(&self) -> &WorldModel {
        &self.world
    }

    fn record_system_entry(&self) {
        self.world.update("system", world_model::system_entry(self.started, std::process::id()));
    }

    /// Re-records the `system` entry every `every` until the kernel is dropped.
    pub async fn keep_system_entry_fresh(this: Weak<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match this.upgrade() {
                Some(kernel) => kernel.record_system_entry(),
                None => return,
            }
        }
    }

    /// The three checks, with the seed's thresholds and the given timeout, run in the background
    /// every [`NATIVE_CHECK_PERIOD`]. Until [`Self::initialise`] has run they report `pending`
    /// ("initialising") without running.
    pub fn subsystems(self: &Arc<Self>, timeout: Duration) -> Vec<Subsystem> {
        let check = |name: &str, measurement: &str, threshold: f64, probe: Box<dyn crate::checks::Probe>| {
            let this = Arc::clone(self);
            let gate: Gate = Arc::new(move || this.brought_up.load(Ordering::Acquire));
            let mut policy = Policy::new(threshold, timeout);
            policy.interval = Some(NATIVE_CHECK_PERIOD);
            Subsystem::new(name, measurement, policy, probe).with_gate(gate)
        };
        let memory = Arc::clone(self);
        let conscience = Arc::clone(self);
        let world = Arc::clone(self);
        vec![
            check(
                PLASTIC_LTM,
                "integrity",
                INTEGRITY_THRESHOLD,
                Box::new(BlockingProbe(Arc::new(move || memory.integrity()))),
            ),
            check(
                TRIUNE_CONSCIENCE,
                "alignment",
                ALIGNMENT_THRESHOLD,
                Box::new(FnProbe(move || {
                    let result = Ok(conscience.conscience().alignment());
                    async move { result }.boxed()
                })),
            ),
            check(
                WORLD_MODEL,
                "coherence",
                COHERENCE_THRESHOLD,
                Box::new(FnProbe(move || {
                    let result = Ok(world.world.coherence());
                    async move { result }.boxed()
                })),
            ),
        ]
    }

    fn integrity(&self) -> CheckResult {
        self.memory()
            .map_err(|why| why.0)?
            .integrity()
            .map(|integrity| integrity.metric)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Report, Status};
    use tokio::runtime::Handle;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "phoenix-subsystems-{tag}-{}-{:?}",
            std::process::id(),
            SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The kernel's checks, each run in the background on its period as the binding runs them.
    fn served(kernel: &Arc<Phoenix>) -> Vec<Arc<Subsystem>> {
        let subsystems: Vec<_> =
            kernel.subsystems(Duration::from_secs(2)).into_iter().map(Arc::new).collect();
        for subsystem in &subsystems {
            tokio::spawn(Subsystem::run_in_background(Arc::downgrade(subsystem), Handle::current()));
        }
        subsystems
    }

    async fn round(subsystems: &[Arc<Subsystem>]) -> Report {
        start_round(subsystems, &Handle::current()).await
    }

    /// The first round in which `done` holds (on the paused clock, waiting costs no real time).
    async fn round_until(subsystems: &[Arc<Subsystem>], done: impl Fn(&Report) -> bool) -> Report {
        loop {
            let report = round(subsystems).await;
            if done(&report) {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn settled(report: &Report) -> bool {
        report.outcomes.iter().all(|o| o.status != Status::Pending)
    }

    fn missing(report: &Report) -> Vec<&str> {
        report.missing().map(|o| o.name.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn everything_is_missing_until_initialised() {
        let kernel = Phoenix::new(&temp_dir("uninit"));
        let subsystems = served(&kernel);
        tokio::time::sleep(NATIVE_CHECK_PERIOD * 3).await;
        let report = round(&subsystems).await;
        assert!(!report.ready());
        assert_eq!(report.missing().count(), 3);
        assert!(report
            .outcomes
            .iter()
            .all(|o| o.status == Status::Pending && o.message.as_deref() == Some("initialising")));
        assert!(!kernel.is_initialised());
    }

    // The background loops tick before initialisation ends; the first round after it must not read
    // their "initialising" for a whole period.
    #[tokio::test(start_paused = true)]
    async fn the_first_results_follow_initialisation_at_once() {
        let kernel = Phoenix::new(&temp_dir("prompt"));
        // As in the binding: the background loops start with the kernel, before it has initialised.
        let subsystems = served(&kernel);
        tokio::time::sleep(NATIVE_CHECK_PERIOD / 10).await;
        kernel.initialise();
        let report = round(&subsystems).await;
        assert!(report.ready(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_kernel_is_ready_after_initialising() {
        let kernel = Phoenix::new(&temp_dir("fresh"));
        kernel.initialise();
        assert!(kernel.is_initialised());
        let report = round_until(&served(&kernel), settled).await;
        assert!(report.ready(), "{report:?}");
        let names: Vec<_> = report.outcomes.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, [PLASTIC_LTM, TRIUNE_CONSCIENCE, WORLD_MODEL]);
    }

    #[tokio::test(start_paused = true)]
    async fn corrupt_store_fails_only_plastic_ltm() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join(plastic_ltm::FILE_NAME), vec![0xA5; 8192]).unwrap();
        let kernel = Phoenix::new(&dir);
        kernel.initialise();
        let report = round_until(&served(&kernel), settled).await;
        assert_eq!(missing(&report), [PLASTIC_LTM]);
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_axioms_fails_only_the_conscience() {
        let dir = temp_dir("axioms");
        std::fs::write(dir.join(triune_conscience::FILE_NAME), "{ not json").unwrap();
        let kernel = Phoenix::new(&dir);
        kernel.initialise();
        let report = round_until(&served(&kernel), settled).await;
        assert_eq!(missing(&report), [TRIUNE_CONSCIENCE]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_held_elsewhere_is_reported_then_recovered_without_a_restart() {
        let dir = temp_dir("held");
        let holder = PlasticLtm::open(&dir).unwrap();
        let kernel = Phoenix::new(&dir);
        kernel.initialise();
        assert!(!kernel.is_initialised(), "start-up waits for the store");
        let subsystems = served(&kernel);

        let report = round_until(&subsystems, settled).await;
        assert_eq!(missing(&report), [PLASTIC_LTM]);
        let why = report.get(PLASTIC_LTM).unwrap().message.clone().unwrap();
        assert!(why.contains("the store is already open"), "{why}");
        let err = kernel.memory().unwrap_err();
        assert!(err.0.contains("the store is already open"), "{err}");

        // Held for a while: every retry fails, and start-up still waits.
        tokio::time::sleep(STORE_RETRY_MAX * 4).await;
        assert_eq!(missing(&round(&subsystems).await), [PLASTIC_LTM]);
        assert!(!kernel.is_initialised());

        drop(holder);
        let recovered = tokio::time::timeout(
            STORE_RETRY_MAX + NATIVE_CHECK_PERIOD * 2,
            round_until(&subsystems, Report::ready),
        );
        recovered.await.expect("ready within a backoff once released");
        assert!(kernel.is_initialised());
        assert!(kernel.memory().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn opening_is_retried_after_a_doubling_backoff_up_to_its_cap() {
        let dir = temp_dir("backoff");
        let _holder = PlasticLtm::open(&dir).unwrap();
        let kernel = Phoenix::new(&dir);
        let attempts = || kernel.lock_open_attempts().failures;
        let first = kernel.memory().unwrap_err();
        assert_eq!(attempts(), 1);
        let millis = Duration::from_millis;
        let expected_waits = [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(millis);
        for (n, wait) in expected_waits.into_iter().enumerate() {
            tokio::time::advance(wait - millis(1)).await;
            // Within the backoff: the last reason, without a new attempt.
            assert_eq!(kernel.memory().unwrap_err(), first);
            assert_eq!(attempts(), n as u32 + 1, "no attempt before {wait:?}");
            tokio::time::advance(millis(1)).await;
            assert_eq!(kernel.memory().unwrap_err(), first);
            assert_eq!(attempts(), n as u32 + 2, "an attempt after {wait:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_rounds_within_a_period_run_the_integrity_probe_once() {
        let kernel = Phoenix::new(&temp_dir("period"));
        kernel.initialise();
        let subsystems = served(&kernel);
        round_until(&subsystems, Report::ready).await;
        let store = kernel.memory().unwrap();
        assert_eq!(store.probes_run(), 1);
        // A round every 10 ms, for most of a period.
        for _ in 0..90 {
            assert!(round(&subsystems).await.ready());
            tokio::time::sleep(NATIVE_CHECK_PERIOD / 100).await;
        }
        assert_eq!(store.probes_run(), 1);
        // Then once a period, whatever the rounds.
        tokio::time::sleep(NATIVE_CHECK_PERIOD * 3).await;
        assert_eq!(store.probes_run(), 4);
    }
}
