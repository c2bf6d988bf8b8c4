//! A TTL cache with lock-free reads and single-flight refresh.
//!
//! Readers never take a lock: the current entry lives in an `ArcSwapOption`, and a hit is one atomic load
//! plus a clock read. When the entry has expired, exactly one caller wins the right to refresh it (an
//! atomic compare-and-swap); everyone else keeps being served the previous entry while that refresh is
//! in flight, as long as the entry is no older than `ttl + stale_for`. Past that bound (or when there has
//! never been an entry) callers wait for the refresh instead, so a probe that arrives after a long quiet
//! spell never sees a result from minutes ago. Either way the computation runs once per window, however
//! many requests arrive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

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
    filled: Notify,
}

impl<T> TtlCache<T> {
    pub fn new(ttl: Duration, stale_for: Duration) -> Self {
        Self {
            ttl,
            stale_for,
            slot: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            filled: Notify::new(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The hot path: reads the fresh value through `read` without touching any reference count.
    #[inline]
    pub fn read_fresh<R>(&self, read: impl FnOnce(&T) -> R) -> Option<R> {
        let guard = self.slot.load();
        match guard.as_ref() {
            Some(entry) if entry.born.elapsed() < self.ttl => Some(read(&entry.value)),
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

    /// Claims the single refresh of this window. `None` means another caller already holds it.
    pub fn try_begin_refresh(self: &Arc<Self>) -> Option<Refresh<T>> {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Refresh {
                cache: Arc::clone(self),
            })
    }

    /// Installs `value` directly; used to prime a cache that must never be cold.
    pub fn insert(&self, value: T) -> Arc<Entry<T>> {
        let entry = Arc::new(Entry {
            value,
            born: Instant::now(),
        });
        self.slot.store(Some(Arc::clone(&entry)));
        entry
    }

    /// Waits for the refresh in flight and returns what it produced, however short the TTL (with a TTL
    /// of zero every entry is born stale, yet the requests that waited for it must get it). Returns
    /// `None` if that refresh was abandoned. The caller must make sure a refresh is under way (see
    /// [`TtlCache::try_begin_refresh`]).
    pub async fn wait_servable(&self) -> Option<Arc<Entry<T>>> {
        let since = Instant::now();
        let notified = self.filled.notified();
        tokio::pin!(notified);
        // Registering before looking closes the window where a refresh finishes between the two.
        notified.as_mut().enable();
        match self.lookup() {
            Lookup::Fresh(entry) | Lookup::Stale(entry) => return Some(entry),
            Lookup::Missing => {}
        }
        notified.await;
        self.slot.load_full().filter(|entry| entry.born >= since)
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
        self.cache.filled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache(ttl_ms: u64, stale_ms: u64) -> Arc<TtlCache<u32>> {
        Arc::new(TtlCache::new(
            Duration::from_millis(ttl_ms),
            Duration::from_millis(stale_ms),
        ))
    }

    #[test]
    fn empty_cache_has_nothing_fresh() {
        let c = cache(100, 100);
        assert!(c.read_fresh(|v| *v).is_none());
        assert!(matches!(c.lookup(), Lookup::Missing));
    }

    #[test]
    fn inserted_value_is_fresh_until_ttl_then_stale_then_missing() {
        let c = cache(30, 30);
        c.insert(7);
        assert_eq!(c.read_fresh(|v| *v), Some(7));
        std::thread::sleep(Duration::from_millis(35));
        assert!(c.read_fresh(|v| *v).is_none());
        assert!(matches!(c.lookup(), Lookup::Stale(e) if e.value == 7));
        std::thread::sleep(Duration::from_millis(35));
        assert!(matches!(c.lookup(), Lookup::Missing));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_cold_waiters_share_one_computation() {
        let c = cache(1_000, 1_000);
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let c = Arc::clone(&c);
            let runs = Arc::clone(&runs);
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Some(refresh) = c.try_begin_refresh() {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return refresh.finish(42).value;
                    }
                    if let Some(entry) = c.wait_servable().await {
                        return entry.value;
                    }
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn zero_ttl_waiter_gets_the_entry_it_waited_for() {
        let c = cache(0, 0);
        let refresh = c.try_begin_refresh().unwrap();
        let waiter = {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.wait_servable().await.map(|e| e.value) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        refresh.finish(5);
        assert_eq!(waiter.await.unwrap(), Some(5));
        assert!(matches!(c.lookup(), Lookup::Missing));
    }

    #[tokio::test]
    async fn waiter_wakes_when_refresh_is_abandoned() {
        let c = cache(1_000, 1_000);
        let refresh = c.try_begin_refresh().unwrap();
        let waiter = {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.wait_servable().await.map(|e| e.value) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(refresh);
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter must wake")
            .unwrap();
        assert_eq!(got, None);
    }
}
