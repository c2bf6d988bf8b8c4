//! The workers' board. Each worker of a server publishes its metrics, once a `PUBLISH_EVERY`, to its
//! slot of a memory-mapped file that the server's workers share; a scrape answered by any one of them
//! adds its siblings' latest numbers to its own live ones, as prometheus_client's multiprocess mode
//! does with its files, with no Python and no lock on the hot path.
//!
//! - Counters and histograms are summed over every worker the server has had: a worker that died
//!   keeps its last published counts, so the sums never go down when one is replaced.
//! - Gauges come from the live workers: ready only when all are (of those that have had a readiness
//!   round), draining when any is, a check's status
//!   the worst of theirs, the loop lag the largest, the uptime the oldest's.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::MmapMut;

use super::{CheckMetrics, Metrics};
use crate::checks::Status;
use crate::heartbeat::{is_alive, map_shared, owner_of, shared_memory_path, this_process};

/// How often a worker publishes: a scrape sees its siblings' numbers at most this old.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Workers of one server that can publish: more than any server runs on one machine.
const WORKERS: usize = 64;
/// Checks a worker publishes, each with a name of up to `NAME_BYTES`; others are reported by the worker
/// that answers the scrape only.
const MAX_CHECKS: usize = 256;
const NAME_BYTES: usize = 128;
const NO_LAG: u64 = u64::MAX;
/// A worker's readiness before its first round.
const UNKNOWN: u64 = 2;

/// One worker's published state. Atomics only, laid out as in C, so it reads the same in every process.
#[repr(C)]
struct Slot {
    /// The worker (pid and start time, see `heartbeat::owner_of`), 0 when free.
    owner: AtomicU64,
    /// Its server (the parent process), whose workers add up each other's slots.
    server: AtomicU64,
    ready: AtomicU64,
    draining: AtomicU64,
    lag_ms: AtomicU64,
    /// When its kernel was created, in Unix milliseconds.
    born_ms: AtomicU64,
    metrics: Metrics,
    checks_len: AtomicU64,
    checks: [PublishedCheck; MAX_CHECKS],
}

#[repr(C)]
struct PublishedCheck {
    name_len: AtomicU64,
    name: [AtomicU8; NAME_BYTES],
    severity: AtomicU64,
    metrics: CheckMetrics,
}

/// A worker's own state, as it publishes it and as a scrape starts from.
pub struct Worker<'a> {
    /// `None` before its first readiness round: a worker no probe has reached yet has no say.
    pub ready: Option<bool>,
    pub draining: bool,
    pub lag: Option<Duration>,
    pub born: SystemTime,
    pub metrics: &'a Metrics,
    pub checks: Vec<(&'a str, Status, &'a CheckMetrics)>,
}

/// The whole server's state: one worker's own plus its siblings'.
pub struct Gathered {
    pub ready: bool,
    pub draining: bool,
    pub lag: Option<Duration>,
    pub born: SystemTime,
    pub metrics: Metrics,
    pub checks: Vec<(String, Status, CheckMetrics)>,
}

/// The board of the server serving on one port, and this worker's slot in it.
pub struct Board {
    map: MmapMut,
    mine: usize,
    server: u64,
}

impl Board {
    /// Opens (or creates) the board of the server serving on `port`, and claims a slot for this
    /// worker (its parent process is the server).
    pub fn open(port: u16) -> io::Result<Self> {
        let path = shared_memory_path(&format!("phoenix-metrics-{port}"));
        let server = owner_of(std::os::unix::process::parent_id()).unwrap_or(u64::MAX);
        Self::at(&path, server).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn at(path: &Path, server: u64) -> io::Result<Self> {
        let map = map_shared(path, WORKERS * size_of::<Slot>())?;
        let mut board = Self { map, mine: 0, server };
        board.mine = board.claim()?;
        Ok(board)
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: see `at`: the mapping holds `WORKERS` slots, suitably aligned, for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<Slot>(), WORKERS) }
    }

    /// A free slot, else one whose worker is gone: another server's first, then this server's (whose
    /// counts are then lost to the sums: only when every slot has been used).
    fn claim(&self) -> io::Result<usize> {
        let me = this_process();
        let slots = self.slots();
        let free = |slot: &Slot| slot.owner.load(Ordering::Acquire) == 0;
        let gone = |slot: &Slot, ours: bool| {
            let owner = slot.owner.load(Ordering::Acquire);
            owner != 0 && (slot.server.load(Ordering::Acquire) == self.server) == ours && !is_alive(owner)
        };
        let candidates = (0..WORKERS)
            .filter(|&i| free(&slots[i]))
            .chain((0..WORKERS).filter(|&i| gone(&slots[i], false)))
            .chain((0..WORKERS).filter(|&i| gone(&slots[i], true)));
        for i in candidates {
            let slot = &slots[i];
            let owner = slot.owner.load(Ordering::Acquire);
            if (owner == 0 || !is_alive(owner))
                && slot.owner.compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                slot.server.store(0, Ordering::Release); // nobody adds it up while it is reset
                slot.metrics.store_from(&Metrics::default());
                slot.checks_len.store(0, Ordering::Release);
                slot.server.store(self.server, Ordering::Release);
                return Ok(i);
            }
        }
        Err(io::Error::other(format!("all {WORKERS} worker slots are taken")))
    }

    /// Publishes this worker's state to its slot.
    pub fn publish(&self, worker: &Worker<'_>) {
        let slot = &self.slots()[self.mine];
        slot.ready.store(worker.ready.map_or(UNKNOWN, u64::from), Ordering::Relaxed);
        slot.draining.store(u64::from(worker.draining), Ordering::Relaxed);
        slot.lag_ms.store(worker.lag.map_or(NO_LAG, millis), Ordering::Relaxed);
        slot.born_ms.store(unix_ms(worker.born), Ordering::Relaxed);
        slot.metrics.store_from(worker.metrics);
        let published = worker.checks.iter().filter(|(name, ..)| name.len() <= NAME_BYTES).take(MAX_CHECKS);
        let mut len = 0;
        for ((name, status, metrics), cell) in published.zip(&slot.checks) {
            for (byte, to) in name.bytes().zip(&cell.name) {
                to.store(byte, Ordering::Relaxed);
            }
            cell.name_len.store(name.len() as u64, Ordering::Relaxed);
            cell.severity.store(severity(*status), Ordering::Relaxed);
            cell.metrics.store_from(metrics);
            len += 1;
        }
        slot.checks_len.store(len, Ordering::Release);
    }

    /// The server's state: `own` (this worker's, live) plus every sibling's latest publication.
    pub fn gather(&self, own: &Worker<'_>) -> Gathered {
        let metrics = Metrics::default();
        metrics.add_from(own.metrics);
        let mut checks: Vec<(String, u64, CheckMetrics)> = Vec::with_capacity(own.checks.len());
        let mut index: HashMap<String, usize> = HashMap::with_capacity(own.checks.len());
        let mut add_check = |name: String, status: Option<u64>, from: &CheckMetrics| {
            let at = *index.entry(name.clone()).or_insert_with(|| {
                checks.push((name, 0, CheckMetrics::default()));
                checks.len() - 1
            });
            let (_, worst, metrics) = &mut checks[at];
            metrics.add_from(from);
            *worst = (*worst).max(status.unwrap_or(0));
        };
        for (name, status, check) in &own.checks {
            add_check((*name).to_owned(), Some(severity(*status)), check);
        }
        let (mut ready, mut draining, mut lag, mut born) = (own.ready, own.draining, own.lag, own.born);
        let mut add_ready = |worker: Option<bool>| {
            ready = match (ready, worker) {
                (Some(all), Some(this)) => Some(all && this),
                (known, None) | (None, known) => known,
            }
        };
        for (i, slot) in self.slots().iter().enumerate() {
            let owner = slot.owner.load(Ordering::Acquire);
            if i == self.mine || owner == 0 || slot.server.load(Ordering::Acquire) != self.server {
                continue;
            }
            let alive = is_alive(owner);
            metrics.add_from(&slot.metrics);
            let len = (slot.checks_len.load(Ordering::Acquire) as usize).min(MAX_CHECKS);
            for cell in &slot.checks[..len] {
                let name_len = (cell.name_len.load(Ordering::Relaxed) as usize).min(NAME_BYTES);
                let name: Vec<u8> = cell.name[..name_len].iter().map(|b| b.load(Ordering::Relaxed)).collect();
                let status = alive.then(|| cell.severity.load(Ordering::Relaxed));
                add_check(String::from_utf8_lossy(&name).into_owned(), status, &cell.metrics);
            }
            if alive {
                add_ready(match slot.ready.load(Ordering::Relaxed) {
                    UNKNOWN => None,
                    flag => Some(flag == 1),
                });
                draining |= slot.draining.load(Ordering::Relaxed) == 1;
                let sibling_lag = slot.lag_ms.load(Ordering::Relaxed);
                if sibling_lag != NO_LAG {
                    lag = lag.max(Some(Duration::from_millis(sibling_lag)));
                }
                born = born.min(UNIX_EPOCH + Duration::from_millis(slot.born_ms.load(Ordering::Relaxed)));
            }
        }
        let checks =
            checks.into_iter().map(|(name, worst, metrics)| (name, status_of(worst), metrics)).collect();
        Gathered { ready: ready.unwrap_or(false), draining, lag, born, metrics, checks }
    }
}

/// Statuses by how bad they are, so the worst of several is the largest.
fn severity(status: Status) -> u64 {
    match status {
        Status::Pass => 0,
        Status::Warn => 1,
        Status::Pending => 2,
        Status::Fail => 3,
    }
}

fn status_of(severity: u64) -> Status {
    match severity {
        0 => Status::Pass,
        1 => Status::Warn,
        2 => Status::Pending,
        _ => Status::Fail,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(NO_LAG - 1)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{RouteLabel, RunResult};

    fn board_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("phoenix-metrics-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("board");
        let _ = std::fs::remove_file(&path);
        path
    }

    fn worker<'a>(metrics: &'a Metrics, checks: Vec<(&'a str, Status, &'a CheckMetrics)>) -> Worker<'a> {
        Worker { ready: Some(true), draining: false, lag: None, born: SystemTime::now(), metrics, checks }
    }

    #[test]
    fn a_scrape_adds_up_the_siblings_counts_and_takes_the_worst_of_their_gauges() {
        let path = board_file("sum");
        // Two workers of server 7 (both this live process, as far as the board can tell).
        let first = Board::at(&path, 7).unwrap();
        let second = Board::at(&path, 7).unwrap();
        assert_ne!(first.mine, second.mine);
        let (mine, theirs) = (Metrics::default(), Metrics::default());
        mine.request(RouteLabel::Health, "GET", 200, Duration::from_micros(30));
        theirs.request(RouteLabel::Health, "GET", 200, Duration::from_micros(30));
        theirs.request(RouteLabel::Health, "GET", 200, Duration::from_micros(30));
        let (db_mine, db_theirs, only_theirs) =
            (CheckMetrics::default(), CheckMetrics::default(), CheckMetrics::default());
        db_mine.record(RunResult::Pass, Duration::from_millis(1), SystemTime::now());
        db_theirs.record(RunResult::Timeout, Duration::from_millis(500), SystemTime::now());
        only_theirs.record(RunResult::Pass, Duration::from_millis(1), SystemTime::now());
        let mut sibling =
            worker(&theirs, vec![("db", Status::Fail, &db_theirs), ("cache", Status::Pass, &only_theirs)]);
        sibling.ready = Some(false);
        sibling.lag = Some(Duration::from_millis(2500));
        second.publish(&sibling);
        let gathered = first.gather(&worker(&mine, vec![("db", Status::Pass, &db_mine)]));
        assert_eq!(gathered.metrics.requests[RouteLabel::Health as usize][0][0].load(Ordering::Relaxed), 3);
        assert!(!gathered.ready, "one worker is not ready: the server is not");
        // A worker that has had no round yet has no say.
        sibling.ready = None;
        second.publish(&sibling);
        assert!(first.gather(&worker(&mine, Vec::new())).ready);
        assert_eq!(gathered.lag, Some(Duration::from_millis(2500)));
        let names: Vec<(&str, Status)> = gathered.checks.iter().map(|(n, s, _)| (n.as_str(), *s)).collect();
        assert_eq!(names, [("db", Status::Fail), ("cache", Status::Pass)]);
        let db = &gathered.checks[0].2;
        assert_eq!(db.runs[RunResult::Pass as usize].load(Ordering::Relaxed), 1);
        assert_eq!(db.runs[RunResult::Timeout as usize].load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_dead_workers_counts_stay_in_the_sums_but_not_its_gauges_and_other_servers_are_apart() {
        let path = board_file("dead");
        let first = Board::at(&path, 7).unwrap();
        let second = Board::at(&path, 7).unwrap();
        let stranger = Board::at(&path, 8).unwrap();
        let (mine, theirs, strangers) = (Metrics::default(), Metrics::default(), Metrics::default());
        theirs.request(RouteLabel::Ready, "GET", 503, Duration::from_micros(30));
        strangers.request(RouteLabel::Ready, "GET", 503, Duration::from_micros(30));
        let mut sibling = worker(&theirs, Vec::new());
        sibling.draining = true;
        second.publish(&sibling);
        stranger.publish(&worker(&strangers, Vec::new()));
        // The sibling's process is gone (no process has pid 0x7fff_fffe's start time).
        second.slots()[second.mine].owner.store(0x7fff_fffe << 32 | 42, Ordering::Release);
        let gathered = first.gather(&worker(&mine, Vec::new()));
        let ready_503 = |m: &Metrics| m.requests[RouteLabel::Ready as usize][0][7].load(Ordering::Relaxed);
        assert_eq!(ready_503(&gathered.metrics), 1, "the dead sibling's count, not the stranger's");
        assert!(!gathered.draining, "a dead worker's gauges are not reported");
        // Its replacement takes a fresh slot: the sums keep the dead worker's counts.
        let third = Board::at(&path, 7).unwrap();
        assert!(![first.mine, second.mine, stranger.mine].contains(&third.mine));
        assert_eq!(ready_503(&third.gather(&worker(&Metrics::default(), Vec::new())).metrics), 1);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
