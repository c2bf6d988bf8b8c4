//! A gate that threads pass through to do a piece of work, and that can be closed: after that no one
//! passes, and whoever closed it waits, up to a bound, for those still inside to leave.
//!
//! The binding layer puts every call from a Rust thread into Python behind one, closed when the
//! interpreter begins to exit (see `python/bridge.rs` for why).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub struct Gate {
    state: Mutex<State>,
    left: Condvar,
}

struct State {
    open: bool,
    inside: usize,
}

impl Gate {
    pub const fn new() -> Self {
        Self { state: Mutex::new(State { open: true, inside: 0 }), left: Condvar::new() }
    }

    /// Runs `work` unless the gate is closed (then `None`, and `work` is dropped unrun).
    pub fn pass<R>(&self, work: impl FnOnce() -> R) -> Option<R> {
        let _inside = self.enter()?;
        Some(work())
    }

    /// Closes the gate and waits until no one is inside, or until `patience` has passed; true when
    /// everyone left in time.
    pub fn close(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        let mut state = self.lock();
        state.open = false;
        while state.inside > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return false;
            }
            state = self.left.wait_timeout(state, remaining).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    fn enter(&self) -> Option<Inside<'_>> {
        let mut state = self.lock();
        if !state.open {
            return None;
        }
        state.inside += 1;
        Some(Inside(self))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// One passage through the gate; leaving happens on drop, so work that panics still leaves.
struct Inside<'a>(&'a Gate);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.inside -= 1;
        if state.inside == 0 {
            self.0.left.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;

    #[test]
    fn an_open_gate_runs_the_work() {
        let gate = Gate::new();
        assert_eq!(gate.pass(|| 7), Some(7));
        assert_eq!(gate.pass(|| gate.pass(|| 8)), Some(Some(8)), "passages nest");
        assert!(gate.close(Duration::ZERO), "no one is left inside");
    }

    #[test]
    fn a_closed_gate_runs_nothing() {
        let gate = Gate::new();
        assert!(gate.close(Duration::from_secs(1)));
        let ran = AtomicBool::new(false);
        assert_eq!(gate.pass(|| ran.store(true, Ordering::SeqCst)), None);
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn closing_waits_for_work_already_inside() {
        let gate = Arc::new(Gate::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered) = mpsc::channel();
        let worker = {
            let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
            thread::spawn(move || {
                gate.pass(|| {
                    entered_tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(100));
                    finished.store(true, Ordering::SeqCst);
                })
            })
        };
        entered.recv().unwrap();
        assert!(gate.close(Duration::from_secs(30)));
        assert!(finished.load(Ordering::SeqCst), "close returned while work was still inside");
        assert_eq!(worker.join().unwrap(), Some(()));
    }

    #[test]
    fn closing_gives_up_on_work_that_never_leaves() {
        let gate = Arc::new(Gate::new());
        let (entered_tx, entered) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let worker = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                gate.pass(|| {
                    entered_tx.send(()).unwrap();
                    released.recv().unwrap();
                })
            })
        };
        entered.recv().unwrap();
        assert!(!gate.close(Duration::from_millis(50)));
        release.send(()).unwrap();
        worker.join().unwrap();
        assert!(gate.close(Duration::ZERO), "the worker left after all");
    }

    #[test]
    fn work_that_panics_still_leaves() {
        let gate = Gate::new();
        let result = std::panic::catch_unwind(|| gate.pass(|| panic!("check blew up")));
        assert!(result.is_err());
        assert!(gate.close(Duration::ZERO));
    }
}
