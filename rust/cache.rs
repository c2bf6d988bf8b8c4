//! A TTL cache with lock-free reads and single-flight refresh.
//!
//! Readers never take a lock: the current entry lives in an `ArcSwapOption`, and a hit is one atomic load
//! plus a clock read. When the entry has expired, exactly one caller wins the right to refresh it (an
//! atomic compare-and-swap); everyone else keeps being served the previous entry while that refresh is
//! in flight, as long as the entry is no older than `ttl + stale_for`. Past that bound (or when there has
//! never been an entry) callers wait for the refresh instead, so a probe that arrives after a long quiet
//! spell never sees a result from minutes ago. Either way the computation runs once per window, however
//! many requests arrive. How callers wait for a refresh is theirs to choose (the binding shares one
//! asyncio future per refresh); this module only guarantees that one of them runs it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so that tests can pause and advance it; outside tests it is the system's monotonic clock.
use tokio::time::Instant;

use arc_swap::ArcSwapOption;

/// A cached value and the moment it was computed.
#[derive(Debug)]
pub struct Entry<T> {
    pub value: T,
    pub born: Instant,
}

/// What a lookup found, so that the caller decides how to refresh (inline, or on a runtime).
pub enum Lookup<T> {
    /// Younger than the TTL.
    Fresh(Arc<Entry<T>>),
    /// Expired but still servable while a refresh is in flight.
    Stale(Arc<Entry<T>>),
    /// Nothing servable: no entry yet, or one too old to serve.
    Missing,
}

pub struct TtlCache<T> {
    ttl: Duration,
    stale_for: Duration,
    slot: ArcSwapOption<Entry<T>>,
    refreshing: AtomicBool,
}

impl<T> TtlCache<T> {
    pub fn new(ttl: Duration, stale_for: Duration) -> Self {
        Self { ttl, stale_for, slot: ArcSwapOption::empty(), refreshing: AtomicBool::new(false) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Reads the fresh value through `read` without touching any reference count.
    #[inline]
    pub fn read_fresh<R>(&self, read: impl FnOnce(&T) -> R) -> Option<R> {
        self.read_fresh_at(Instant::now().into_std(), read)
    }

    /// The hot path: `read_fresh` as of `at`, an instant the caller has read anyway (a request's
    /// arrival), sparing a clock read per request.
    #[inline]
    pub fn read_fresh_at<R>(&self, at: std::time::Instant, read: impl FnOnce(&T) -> R) -> Option<R> {
        let guard = self.slot.load();
        match guard.as_ref() {
            // An entry born after `at` (refreshed meanwhile by another thread) is as fresh as can be.
            Some(entry) if Instant::from_std(at).saturating_duration_since(entry.born) < self.ttl => {
                Some(read(&entry.value))
            }
            _ => None,
        }
    }

    pub fn lookup(&self) -> Lookup<T> {
        match self.slot.load_full() {
            Some(entry) => {
                let age = entry.born.elapsed();
                if age < self.ttl {
                    Lookup::Fresh(entry)
                } else if age < self.ttl + self.stale_for {
                    Lookup::Stale(entry)
                } else {
                    Lookup::Missing
                }
            }
            None => Lookup::Missing,
        }
    }

    /// The newest entry, however old.
    pub fn newest(&self) -> Option<Arc<Entry<T>>> {
        self.slot.load_full()
    }

    /// Claims the single refresh of this window. `None` means another caller already holds it.
    pub fn try_begin_refresh(self: &Arc<Self>) -> Option<Refresh<T>> {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Refresh { cache: Arc::clone(self) })
    }

    /// Forgets the entry: the next caller refreshes.
    pub fn clear(&self) {
        self.slot.store(None);
    }

    /// Installs `value` directly; used to prime a cache that must never be cold.
    pub fn insert(&self, value: T) -> Arc<Entry<T>> {
        let entry = Arc::new(Entry { value, born: Instant::now() });
        self.slot.store(Some(Arc::clone(&entry)));
        entry
    }
}

/// The right to refresh a cache. Finishing installs the new entry; dropping it unfinished (an
/// abandoned or panicked computation) releases the right so that the next caller can try again.
pub struct Refresh<T> {
    cache: Arc<TtlCache<T>>,
}

impl<T> Refresh<T> {
    /// Installs the new entry; the right itself is released when `self` drops right after.
    pub fn finish(self, value: T) -> Arc<Entry<T>> {
        self.cache.insert(value)
    }
}

impl<T> Drop for Refresh<T> {
    fn drop(&mut self) {
        self.cache.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache(ttl_ms: u64, stale_ms: u64) -> Arc<TtlCache<u32>> {
        Arc::new(TtlCache::new(Duration::from_millis(ttl_ms), Duration::from_millis(stale_ms)))
    }

    #[test]
    fn empty_cache_has_nothing_fresh() {
        let c = cache(100, 100);
        assert!(c.read_fresh(|v| *v).is_none());
        assert!(matches!(c.lookup(), Lookup::Missing));
    }

    #[tokio::test(start_paused = true)]
    async fn inserted_value_is_fresh_until_ttl_then_stale_then_missing() {
        let c = cache(30, 30);
        c.insert(7);
        assert_eq!(c.read_fresh(|v| *v), Some(7));
        tokio::time::advance(Duration::from_millis(29)).await;
        assert_eq!(c.read_fresh(|v| *v), Some(7));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(c.read_fresh(|v| *v).is_none());
        assert!(matches!(c.lookup(), Lookup::Stale(e) if e.value == 7));
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(matches!(c.lookup(), Lookup::Stale(_)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(c.lookup(), Lookup::Missing));
        assert_eq!(c.newest().map(|e| e.value), Some(7), "the newest entry is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_is_judged_at_the_instant_given() {
        let c = cache(30, 30);
        let before_the_entry = Instant::now().into_std();
        tokio::time::advance(Duration::from_millis(5)).await;
        c.insert(7);
        assert_eq!(c.read_fresh_at(before_the_entry, |v| *v), Some(7), "born after the request arrived");
        let arrived = Instant::now().into_std();
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(c.read_fresh(|v| *v).is_none());
        assert_eq!(c.read_fresh_at(arrived, |v| *v), Some(7), "fresh when the request arrived");
        assert!(c.read_fresh_at(arrived + Duration::from_millis(30), |v| *v).is_none());
    }

    #[test]
    fn only_one_caller_wins_the_refresh() {
        let c = cache(100, 100);
        let first = c.try_begin_refresh();
        assert!(first.is_some());
        assert!(c.try_begin_refresh().is_none());
        first.unwrap().finish(1);
        assert!(c.try_begin_refresh().is_some());
    }

    #[test]
    fn abandoned_refresh_releases_the_right() {
        let c = cache(100, 100);
        drop(c.try_begin_refresh().unwrap());
        assert!(c.try_begin_refresh().is_some());
        assert!(matches!(c.lookup(), Lookup::Missing));
    }

    #[test]
    fn of_many_threads_racing_for_a_refresh_exactly_one_wins() {
        let c = cache(100, 100);
        let winners = Arc::new(AtomicUsize::new(0));
        // Every thread tries while the winner still holds the right: no one can win after it is done.
        let all_tried = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let c = Arc::clone(&c);
                let winners = Arc::clone(&winners);
                let all_tried = Arc::clone(&all_tried);
                std::thread::spawn(move || {
                    let refresh = c.try_begin_refresh();
                    all_tried.wait();
                    if let Some(refresh) = refresh {
                        winners.fetch_add(1, Ordering::SeqCst);
                        refresh.finish(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(winners.load(Ordering::SeqCst), 1);
        assert_eq!(c.read_fresh(|v| *v), Some(1));
    }

    #[test]
    fn cleared_cache_has_nothing_servable() {
        let c = cache(100, 100);
        c.insert(1);
        c.clear();
        assert!(matches!(c.lookup(), Lookup::Missing));
        assert!(c.newest().is_none());
    }
}
