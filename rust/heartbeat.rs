//! The event-loop heartbeat. The loop serving the kernel stamps its slot every `BEAT_PERIOD`; how far
//! the newest stamp is behind tells whether that loop is stalled, whatever holds it (a blocking call in
//! an `async def`, the GIL, a GC pause), and the answer comes from a plain atomic load: a probe thread
//! never needs the loop, or the GIL, to see it.
//!
//! The slots live on a board. A process alone has a board of its own; processes that share a probe
//! port (the workers of one server) share a board too, a memory-mapped file named after the port, so
//! whichever of them a probe reaches reports the worst loop of all: a wedged worker cannot hide
//! behind healthy ones.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use memmap2::MmapMut;

/// How often the serving loop stamps its heartbeat.
pub const BEAT_PERIOD: Duration = Duration::from_millis(100);
const BEAT_PERIOD_MS: u64 = BEAT_PERIOD.as_millis() as u64;
/// Processes that can share one board: more workers than any server runs on one machine.
const SLOTS: usize = 64;

/// One process's heartbeat. `owner` names the process (pid and start time, so a reused pid is not
/// taken for the process that died) and `server` its parent, the server whose workers share a board;
/// `beat_ms` is its newest stamp on the system-wide monotonic clock, 0 before the first. All are
/// atomics, so they work the same on the heap and in a shared mapping.
#[repr(C)]
struct Slot {
    owner: AtomicU64,
    server: AtomicU64,
    beat_ms: AtomicU64,
}

enum Memory {
    Own(Box<Slot>),
    Shared(MmapMut),
}

/// Slots, and which one is this process's.
struct Board {
    memory: Memory,
    mine: usize,
}

impl Board {
    fn own() -> Self {
        let slot = Slot {
            owner: AtomicU64::new(this_process()),
            server: AtomicU64::new(0),
            beat_ms: AtomicU64::new(0),
        };
        Self { memory: Memory::Own(Box::new(slot)), mine: 0 }
    }

    /// Opens (or creates) the shared board at `path` and claims a slot in it (a free one, or one whose
    /// process has gone) for a worker of `server`. Refuses when a live process of another server holds
    /// a slot: it serves probes on the same port, and the two would split the probes between them.
    fn shared(path: &Path, server: u64) -> io::Result<Self> {
        let map = map_shared(path, SLOTS * size_of::<Slot>())?;
        let mut board = Self { memory: Memory::Shared(map), mine: 0 };
        let me = this_process();
        board.mine = board
            .slots()
            .iter()
            .position(|slot| {
                let owner = slot.owner.load(Ordering::Acquire);
                (owner == 0 || !is_alive(owner))
                    && slot.owner.compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire).is_ok()
            })
            .ok_or_else(|| {
                io::Error::other(format!("all {SLOTS} heartbeat slots of {} are taken", path.display()))
            })?;
        let mine = board.mine();
        mine.beat_ms.store(0, Ordering::Release);
        mine.server.store(server, Ordering::Release);
        let foreign = board.slots().iter().find(|slot| {
            let (owner, other) = (slot.owner.load(Ordering::Acquire), slot.server.load(Ordering::Acquire));
            other != 0 && other != server && is_alive(owner)
        });
        if let Some(slot) = foreign {
            mine.owner.store(0, Ordering::Release);
            let pid = slot.owner.load(Ordering::Acquire) >> 32;
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another server (process {pid}) already serves probes there"),
            ));
        }
        Ok(board)
    }

    fn slots(&self) -> &[Slot] {
        match &self.memory {
            Memory::Own(slot) => std::slice::from_ref(slot),
            // SAFETY: see `shared`: the mapping holds `SLOTS` slots, suitably aligned, and lives as long
            // as `self`.
            Memory::Shared(map) => unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<Slot>(), SLOTS) },
        }
    }

    fn mine(&self) -> &Slot {
        &self.slots()[self.mine]
    }
}

/// The heartbeat of the loop serving a kernel, and the thresholds it is judged by.
pub struct Heartbeat {
    own: Board,
    shared: OnceLock<Board>,
    /// Slots of other live processes on the shared board, one bit each, as `refresh` last found them
    /// (reading `/proc` per request would cost more than the answer).
    siblings: AtomicU64,
    live_stale_ms: u64,
    ready_stale_ms: u64,
    /// Whether this process's loop has been reported stalled, so each transition is logged once.
    reported_stalled: AtomicBool,
}

impl Heartbeat {
    pub fn new(live_stale: Duration, ready_stale: Duration) -> Self {
        Self {
            own: Board::own(),
            shared: OnceLock::new(),
            siblings: AtomicU64::new(0),
            live_stale_ms: millis(live_stale),
            ready_stale_ms: millis(ready_stale),
            reported_stalled: AtomicBool::new(false),
        }
    }

    fn board(&self) -> &Board {
        self.shared.get().unwrap_or(&self.own)
    }

    /// Moves this process's heartbeat to the board shared by every process serving probes on `port`.
    pub fn share(&self, port: u16) -> io::Result<()> {
        if self.shared.get().is_some() {
            return Ok(());
        }
        let path = board_path(port);
        // The workers of one server are the children of one process.
        let server = owner_of(std::os::unix::process::parent_id()).unwrap_or(u64::MAX);
        let board = Board::shared(&path, server).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => e,
            kind => io::Error::new(kind, format!("{}: {e}", path.display())),
        })?;
        board.mine().beat_ms.store(self.own.mine().beat_ms.load(Ordering::Acquire), Ordering::Release);
        let _ = self.shared.set(board);
        self.refresh();
        Ok(())
    }

    /// Stamps the heartbeat; called by the serving loop every `BEAT_PERIOD`. Returns how long the loop
    /// had been stalled when this beat ends a stall that was reported.
    pub fn beat(&self) -> Option<u64> {
        let now = now_ms();
        let previous = self.board().mine().beat_ms.swap(now, Ordering::AcqRel);
        self.reported_stalled.swap(false, Ordering::AcqRel).then(|| lag(now, previous))
    }

    /// Re-reads which other processes on the shared board are alive, and returns how far this process's
    /// own loop is behind when it has just become stalled (to be reported once). Called every
    /// `BEAT_PERIOD` by a watcher.
    pub fn refresh(&self) -> Option<u64> {
        if let Some(board) = self.shared.get() {
            let mut siblings = 0u64;
            for (i, slot) in board.slots().iter().enumerate() {
                let owner = slot.owner.load(Ordering::Acquire);
                if i != board.mine && owner != 0 && is_alive(owner) {
                    siblings |= 1 << i;
                }
            }
            self.siblings.store(siblings, Ordering::Release);
        }
        let own = self.board().mine().beat_ms.load(Ordering::Acquire);
        let lag_ms = lag(now_ms(), own);
        let stalled = own != 0 && lag_ms > self.live_stale_ms;
        (stalled && !self.reported_stalled.swap(true, Ordering::AcqRel)).then_some(lag_ms)
    }

    /// The worst lag among the loops that beat (this process's and its live siblings'), in ms, or
    /// `None` while none has beaten yet.
    pub fn worst(&self) -> Option<u64> {
        let now = now_ms();
        let board = self.board();
        let siblings = self.siblings.load(Ordering::Acquire);
        let slots = board.slots();
        let beats = std::iter::once(board.mine)
            .chain((0..slots.len()).filter(|i| siblings & (1 << i) != 0))
            .map(|i| slots[i].beat_ms.load(Ordering::Acquire))
            .filter(|&beat| beat != 0);
        beats.map(|beat| lag(now, beat)).max()
    }

    /// Makes this process's loop look `lag_ms` behind, for tests of what depends on it.
    #[cfg(test)]
    pub(crate) fn fall_behind(&self, lag_ms: u64) {
        self.board().mine().beat_ms.store(now_ms() - lag_ms - BEAT_PERIOD_MS, Ordering::Release);
    }

    /// Whether the worst loop, `lag_ms` behind, is stalled past the liveness threshold.
    pub fn live_stalled(&self, lag_ms: u64) -> bool {
        lag_ms > self.live_stale_ms
    }

    /// `Some(lag)` when the worst loop is stalled past the (smaller) readiness threshold.
    pub fn ready_stalled(&self) -> Option<u64> {
        self.worst().filter(|&lag_ms| lag_ms > self.ready_stale_ms)
    }
}

/// How far a loop whose newest stamp is `beat` is behind its heartbeat at `now`: the time since that
/// stamp, less the period it had to stamp again.
fn lag(now: u64, beat: u64) -> u64 {
    now.saturating_sub(beat).saturating_sub(BEAT_PERIOD_MS)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn board_path(port: u16) -> PathBuf {
    shared_memory_path(&format!("phoenix-probe-{port}"))
}

/// Maps the file at `path` (created if need be, readable by this user only), at least `size` bytes,
/// for processes to share. Whatever lives in it must be accessed only through atomics (`repr(C)`
/// structs of them): a mapping is page-aligned, so they are aligned too.
pub(crate) fn map_shared(path: &Path, size: usize) -> io::Result<MmapMut> {
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
    if file.metadata()?.len() < size as u64 {
        file.set_len(size as u64)?;
    }
    // SAFETY: the file is at least `size` bytes; see above for how it is accessed.
    unsafe { MmapMut::map_mut(&file) }
}

/// Where a board shared by the processes of one machine lives: shared memory when there is some.
pub(crate) fn shared_memory_path(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    dir.join(name)
}

/// The monotonic clock in ms: system-wide, so stamps from different processes compare.
fn now_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    // Never 0, which means "no beat yet".
    (now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000).max(1)
}

/// This process as a slot owner: its pid and (the low half of) its start time.
pub(crate) fn this_process() -> u64 {
    owner_of(std::process::id()).unwrap_or(u64::from(std::process::id()) << 32)
}

pub(crate) fn owner_of(pid: u32) -> Option<u64> {
    // The 22nd field of /proc/<pid>/stat, after the command name in parentheses (which may hold spaces).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let started: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    Some(u64::from(pid) << 32 | (started & 0xffff_ffff))
}

/// Whether the process that claimed a slot as `owner` still runs (and is the same process).
pub(crate) fn is_alive(owner: u64) -> bool {
    owner_of((owner >> 32) as u32) == Some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> Heartbeat {
        Heartbeat::new(Duration::from_millis(5000), Duration::from_millis(2000))
    }

    #[test]
    fn lag_is_the_time_since_the_stamp_beyond_one_period() {
        assert_eq!(lag(1_000, 1_000), 0);
        assert_eq!(lag(1_100, 1_000), 0);
        assert_eq!(lag(4_100, 1_000), 3_000);
        assert_eq!(lag(900, 1_000), 0, "a stamp newer than the clock read is no lag");
    }

    #[test]
    fn no_lag_is_reported_before_the_first_beat_and_none_right_after_one() {
        let heartbeat = heartbeat();
        assert_eq!(heartbeat.worst(), None);
        assert_eq!(heartbeat.ready_stalled(), None);
        assert_eq!(heartbeat.beat(), None);
        let lag = heartbeat.worst().expect("a loop beats");
        assert!(!heartbeat.live_stalled(lag));
        assert_eq!(heartbeat.ready_stalled(), None);
    }

    #[test]
    fn a_stale_stamp_is_stalled_for_readiness_then_liveness_and_each_transition_is_reported_once() {
        let heartbeat = heartbeat();
        // A stamp 3 s old: past readiness' 2 s, within liveness' 5 s.
        heartbeat.fall_behind(3_000);
        assert!(heartbeat.ready_stalled().is_some_and(|lag| lag >= 3_000));
        assert!(!heartbeat.live_stalled(heartbeat.worst().unwrap()));
        assert_eq!(heartbeat.refresh(), None, "not stalled for liveness: nothing to report");
        heartbeat.fall_behind(6_000);
        assert!(heartbeat.live_stalled(heartbeat.worst().unwrap()));
        assert!(heartbeat.refresh().is_some_and(|lag| lag >= 6_000), "the stall is reported");
        assert_eq!(heartbeat.refresh(), None, "and only once");
        assert!(heartbeat.beat().is_some_and(|lag| lag >= 6_000), "the recovery is reported");
        assert_eq!(heartbeat.beat(), None, "and only once");
        assert!(!heartbeat.live_stalled(heartbeat.worst().unwrap()));
    }

    #[test]
    fn processes_sharing_a_board_see_each_others_stalls_and_ignore_the_dead() {
        let dir = std::env::temp_dir().join(format!("phoenix-heartbeat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("board");
        let _ = std::fs::remove_file(&path);
        let first = Board::shared(&path, 7).unwrap();
        // A second claim by a worker of the same server (here, this same live process) takes another slot.
        let second = Board::shared(&path, 7).unwrap();
        assert_ne!(first.mine, second.mine);
        let heartbeat = heartbeat();
        let _ = heartbeat.shared.set(first);
        heartbeat.beat();
        heartbeat.refresh();
        assert_eq!(heartbeat.siblings.load(Ordering::Acquire), 1 << second.mine);
        // The sibling's loop is 3 s behind: this process reports it.
        second.mine().beat_ms.store(now_ms() - 3_000 - BEAT_PERIOD_MS, Ordering::Release);
        assert!(heartbeat.ready_stalled().is_some_and(|lag| lag >= 3_000));
        // A slot whose process is gone (no process has pid 0x7fff_fffe's start time) is ignored,
        // and taken by the next claimer.
        second.mine().owner.store(0x7fff_fffe << 32 | 42, Ordering::Release);
        heartbeat.refresh();
        assert_eq!(heartbeat.siblings.load(Ordering::Acquire), 0);
        assert_eq!(heartbeat.ready_stalled(), None);
        let third = Board::shared(&path, 7).unwrap();
        assert_eq!(third.mine, second.mine);
        // A worker of another server is refused while one of this server's lives, and claims nothing.
        let refused = Board::shared(&path, 8).err().expect("another server's worker is refused");
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        let claimed =
            |board: &Board| board.slots().iter().filter(|s| s.owner.load(Ordering::Acquire) != 0).count();
        assert_eq!(claimed(&third), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
