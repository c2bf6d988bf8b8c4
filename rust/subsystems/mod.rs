//! The Phoenix kernel's three native subsystems, and how they are brought up and checked.
//!
//! Bringing them up touches the disk (opening the store, reading axioms), so it happens in the background
//! after start-up; until it has finished every probe reports "initialising" and `/ready` stays 503.

pub mod plastic_ltm;
pub mod triune_conscience;
pub mod world_model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
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

pub struct Phoenix {
    data_dir: PathBuf,
    started: SystemTime,
    memory: OnceLock<Result<PlasticLtm, String>>,
    conscience: OnceLock<AxiomSet>,
    world: WorldModel,
    /// Flips to true once; a watch channel so that callers can await it rather than poll.
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
            conscience: OnceLock::new(),
            world: WorldModel::new(),
            initialised: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Blocking: opens the store, loads the axioms and records the `system` entry. Safe to call
    /// more than once and from several threads; later calls find the work done.
    pub fn initialise(&self) {
        if let Err(why) = self.memory() {
            log::error!(target: "phoenix.kernel", "plastic_ltm unavailable: {why}");
        }
        self.conscience();
        self.record_system_entry();
        self.initialised.send_replace(true);
    }

    pub fn is_initialised(&self) -> bool {
        *self.initialised.borrow()
    }

    /// Resolves once [`Phoenix::initialise`] has finished.
    pub async fn wait_initialised(&self) {
        let mut seen = self.initialised.subscribe();
        // The sender lives as long as `self`, so waiting can only end by the flag turning true.
        let _ = seen.wait_for(|done| *done).await;
    }

    /// The store, opening it on first use; concurrent callers wait for that one opening.
    pub fn memory(&self) -> Result<&PlasticLtm, &str> {
        self.memory
            .get_or_init(|| PlasticLtm::open(&self.data_dir).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
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
        self.world.update(
            "system",
            world_model::system_entry(self.started, std::process::id()),
        );
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

    /// The three checks, with the seed's thresholds and the given timeout. Until initialisation has
    /// finished they report `pending` ("initialising") without running.
    pub fn subsystems(self: &Arc<Self>, timeout: Duration) -> Vec<Subsystem> {
        let check = |name: &str,
                     measurement: &str,
                     threshold: f64,
                     probe: Box<dyn crate::checks::Probe>| {
            let this = Arc::clone(self);
            let gate: Gate = Arc::new(move || this.is_initialised());
            Subsystem::new(name, measurement, Policy::new(threshold, timeout), probe)
                .with_gate(gate)
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
            .map_err(str::to_owned)?
            .integrity()
            .map(|integrity| integrity.metric)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::start_round;
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

    async fn round(kernel: &Arc<Phoenix>) -> crate::checks::Report {
        let subs: Vec<_> = kernel
            .subsystems(Duration::from_secs(2))
            .into_iter()
            .map(Arc::new)
            .collect();
        start_round(&subs, &Handle::current()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everything_is_missing_until_initialised() {
        let kernel = Phoenix::new(&temp_dir("uninit"));
        let report = round(&kernel).await;
        assert!(!report.ready());
        assert_eq!(report.missing().count(), 3);
        assert!(report
            .outcomes
            .iter()
            .all(|o| o.status == crate::checks::Status::Pending
                && o.message.as_deref() == Some("initialising")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_kernel_is_ready_after_initialising() {
        let kernel = Phoenix::new(&temp_dir("fresh"));
        kernel.initialise();
        let report = round(&kernel).await;
        assert!(report.ready(), "{report:?}");
        let names: Vec<_> = report.outcomes.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, [PLASTIC_LTM, TRIUNE_CONSCIENCE, WORLD_MODEL]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_store_fails_only_plastic_ltm() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join(plastic_ltm::FILE_NAME), vec![0xA5; 8192]).unwrap();
        let kernel = Phoenix::new(&dir);
        kernel.initialise();
        let report = round(&kernel).await;
        let missing: Vec<_> = report.missing().map(|o| o.name.as_str()).collect();
        assert_eq!(missing, [PLASTIC_LTM]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_few_axioms_fails_only_the_conscience() {
        let dir = temp_dir("axioms");
        std::fs::write(dir.join(triune_conscience::FILE_NAME), "{ not json").unwrap();
        let kernel = Phoenix::new(&dir);
        kernel.initialise();
        let report = round(&kernel).await;
        let missing: Vec<_> = report.missing().map(|o| o.name.as_str()).collect();
        assert_eq!(missing, [TRIUNE_CONSCIENCE]);
    }
}
