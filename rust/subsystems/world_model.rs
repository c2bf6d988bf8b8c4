//! The kernel's picture of the world: the latest value reported for each key, and when it arrived.
//!
//! Values are arbitrary JSON so that any subsystem can publish what it knows without this module
//! having to know its shape. Update times are kept because a model that has not been refreshed in
//! a while is a worse guide to the present, which is what [`WorldModel::coherence`] measures.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Updates younger than this mean the model is being actively fed.
const FRESH: Duration = Duration::from_secs(60);

/// Updates younger than this (but not fresh) mean the model is somewhat behind.
const RECENT: Duration = Duration::from_secs(3600);

/// Shared between the kernel's threads, so every method takes `&self`; the lock is held only for
/// map operations, never while doing anything slow.
#[derive(Debug, Default)]
pub struct WorldModel {
    // A BTreeMap keeps keys sorted, so listing them needs no extra sort.
    entries: RwLock<BTreeMap<String, (Value, SystemTime)>>,
}

impl WorldModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stamped with the current time, which is what live callers want.
    pub fn update(&self, key: &str, value: Value) {
        self.update_at(key, value, SystemTime::now());
    }

    /// Takes the time explicitly so that recorded events can be replayed and ages can be tested
    /// without sleeping.
    pub fn update_at(&self, key: &str, value: Value, at: SystemTime) {
        self.write().insert(key.to_string(), (value, at));
    }

    /// Returns a copy rather than a reference so that no caller can keep the lock held.
    pub fn get(&self, key: &str) -> Option<(Value, SystemTime)> {
        self.read().get(key).cloned()
    }

    /// Returns whether the key was present, so callers can tell a stale removal from a real one.
    pub fn remove(&self, key: &str) -> bool {
        self.write().remove(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Sorted, so that listings and snapshots are stable from one call to the next.
    pub fn keys(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The latest time anything was learnt; a linear scan, because the model is small and keeping
    /// a running maximum correct across removals would cost more than it saves.
    pub fn newest_update(&self) -> Option<SystemTime> {
        self.read().values().map(|(_, at)| *at).max()
    }

    /// How far the kernel can trust the model to describe the present.
    pub fn coherence(&self) -> f64 {
        self.coherence_at(SystemTime::now())
    }

    /// Judged by the newest update alone: one live feed is enough to show the model is being kept
    /// current, while old entries for things that rarely change should not count against it.
    /// An update stamped in the future (clock skew between sources) counts as brand new rather than
    /// as an error, since it can only mean the data is recent.
    pub fn coherence_at(&self, now: SystemTime) -> f64 {
        let Some(newest) = self.newest_update() else {
            return 0.0;
        };
        let age = now.duration_since(newest).unwrap_or(Duration::ZERO);
        if age < FRESH {
            1.0
        } else if age < RECENT {
            0.8
        } else {
            0.5
        }
    }

    /// A panic elsewhere while holding the lock leaves the map itself intact (every mutation is a
    /// single map call), so the data is still usable and the kernel should keep running.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, (Value, SystemTime)>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, (Value, SystemTime)>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The kernel describes itself in its own world model, so anything reading the model can tell
/// which process produced it, since when, and that it is still alive.
pub fn system_entry(started: SystemTime, pid: u32) -> Value {
    system_entry_at(started, pid, SystemTime::now())
}

fn system_entry_at(started: SystemTime, pid: u32, now: SystemTime) -> Value {
    json!({
        "kernel": "phoenix",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": pid,
        "started": rfc3339(started),
        "refreshed": rfc3339(now),
    })
}

/// humantime panics on times before 1970, which only a badly wrong clock can produce; clamping
/// keeps the kernel alive and the output obviously wrong rather than crashing.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn model_updated_at(when: SystemTime) -> WorldModel {
        let model = WorldModel::new();
        model.update_at("sensor", json!(1), when);
        model
    }

    #[test]
    fn world_model_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<WorldModel>();
    }

    #[test]
    fn new_model_is_empty() {
        let model = WorldModel::new();
        assert!(model.is_empty());
        assert_eq!(model.len(), 0);
        assert!(model.keys().is_empty());
        assert_eq!(model.newest_update(), None);
        assert_eq!(model.get("anything"), None);
    }

    #[test]
    fn update_stores_the_value_with_the_current_time() {
        let model = WorldModel::new();
        let before = SystemTime::now();
        model.update("weather", json!({"sky": "clear"}));
        let after = SystemTime::now();
        let (value, when) = model.get("weather").expect("stored");
        assert_eq!(value, json!({"sky": "clear"}));
        assert!(before <= when && when <= after);
        assert_eq!(model.len(), 1);
        assert!(!model.is_empty());
    }

    #[test]
    fn later_update_replaces_value_and_time() {
        let model = WorldModel::new();
        model.update_at("k", json!("old"), at(0));
        model.update_at("k", json!("new"), at(5));
        assert_eq!(model.get("k"), Some((json!("new"), at(5))));
        assert_eq!(model.len(), 1);
    }

    #[test]
    fn keys_are_sorted() {
        let model = WorldModel::new();
        for key in ["zeta", "alpha", "Mid", "beta"] {
            model.update_at(key, Value::Null, at(0));
        }
        assert_eq!(model.keys(), ["Mid", "alpha", "beta", "zeta"]);
    }

    #[test]
    fn remove_reports_whether_the_key_existed() {
        let model = WorldModel::new();
        model.update_at("a", json!(1), at(0));
        model.update_at("b", json!(2), at(1));
        assert!(model.remove("a"));
        assert!(!model.remove("a"));
        assert!(!model.remove("never"));
        assert_eq!(model.get("a"), None);
        assert_eq!(model.keys(), ["b"]);
        assert_eq!(model.len(), 1);
    }

    #[test]
    fn newest_update_is_the_latest_time_regardless_of_insert_order() {
        let model = WorldModel::new();
        model.update_at("a", json!(1), at(30));
        model.update_at("b", json!(2), at(90));
        model.update_at("c", json!(3), at(10));
        assert_eq!(model.newest_update(), Some(at(90)));
    }

    #[test]
    fn removing_the_newest_entry_falls_back_to_the_next_newest() {
        let model = WorldModel::new();
        model.update_at("old", json!(1), at(0));
        model.update_at("new", json!(2), at(100));
        assert!(model.remove("new"));
        assert_eq!(model.newest_update(), Some(at(0)));
        assert!(model.remove("old"));
        assert_eq!(model.newest_update(), None);
    }

    #[test]
    fn coherence_is_zero_when_empty() {
        assert_eq!(WorldModel::new().coherence_at(at(0)), 0.0);
        assert_eq!(WorldModel::new().coherence(), 0.0);
    }

    #[test]
    fn coherence_drops_to_zero_once_the_last_entry_is_removed() {
        let model = model_updated_at(at(0));
        assert!(model.remove("sensor"));
        assert_eq!(model.coherence_at(at(0)), 0.0);
    }

    #[test]
    fn coherence_is_full_just_after_an_update() {
        let model = WorldModel::new();
        model.update("live", json!(true));
        assert_eq!(model.coherence(), 1.0);
        assert_eq!(model_updated_at(at(0)).coherence_at(at(0)), 1.0);
    }

    #[test]
    fn coherence_stays_full_just_under_a_minute() {
        let model = model_updated_at(at(0));
        assert_eq!(model.coherence_at(at(59)), 1.0);
        assert_eq!(model.coherence_at(at(60) - Duration::from_nanos(1)), 1.0);
    }

    #[test]
    fn coherence_drops_to_0_8_after_a_minute() {
        let model = model_updated_at(at(0));
        assert_eq!(model.coherence_at(at(60)), 0.8);
        assert_eq!(model.coherence_at(at(61)), 0.8);
    }

    #[test]
    fn coherence_stays_0_8_just_under_an_hour() {
        let model = model_updated_at(at(0));
        assert_eq!(model.coherence_at(at(3600) - Duration::from_nanos(1)), 0.8);
    }

    #[test]
    fn coherence_drops_to_0_5_after_an_hour() {
        let model = model_updated_at(at(0));
        assert_eq!(model.coherence_at(at(3600)), 0.5);
        assert_eq!(model.coherence_at(at(86_400 * 365)), 0.5);
    }

    #[test]
    fn coherence_follows_the_newest_update_not_the_oldest() {
        let model = WorldModel::new();
        model.update_at("stale", json!(1), at(0));
        model.update_at("fresh", json!(2), at(7200));
        assert_eq!(model.coherence_at(at(7210)), 1.0);
    }

    #[test]
    fn future_update_counts_as_brand_new() {
        let model = model_updated_at(at(10_000));
        assert_eq!(model.coherence_at(at(0)), 1.0);
    }

    #[test]
    fn concurrent_updates_from_many_threads_are_all_kept() {
        let model = Arc::new(WorldModel::new());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let model = Arc::clone(&model);
                thread::spawn(move || {
                    for i in 0..50 {
                        model.update(&format!("t{t}-k{i}"), json!(i));
                        let _ = model.coherence();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(model.len(), 8 * 50);
    }

    #[test]
    fn a_poisoned_lock_does_not_take_the_model_down() {
        let model = Arc::new(WorldModel::new());
        model.update_at("kept", json!("yes"), at(0));
        let poisoner = Arc::clone(&model);
        let result = thread::spawn(move || {
            let _guard = poisoner.entries.write().unwrap();
            panic!("deliberate panic while holding the lock");
        })
        .join();
        assert!(result.is_err());
        assert!(model.entries.is_poisoned());

        assert_eq!(model.get("kept"), Some((json!("yes"), at(0))));
        model.update_at("after", json!(2), at(1));
        assert_eq!(model.keys(), ["after", "kept"]);
        assert!(model.remove("kept"));
        assert_eq!(model.coherence_at(at(1)), 1.0);
    }

    #[test]
    fn system_entry_describes_the_kernel() {
        let started = UNIX_EPOCH + Duration::from_millis(1_700_000_000_750);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_123);
        let entry = system_entry_at(started, 4242, now);
        assert_eq!(
            entry,
            json!({
                "kernel": "phoenix",
                "version": env!("CARGO_PKG_VERSION"),
                "pid": 4242,
                "started": "2023-11-14T22:13:20Z",
                "refreshed": "2023-11-14T22:15:23Z",
            })
        );
    }

    #[test]
    fn system_entry_is_refreshed_with_the_current_time() {
        let before = SystemTime::now() - Duration::from_secs(1);
        let entry = system_entry(at(0), 1);
        let after = SystemTime::now() + Duration::from_secs(1);
        let refreshed = humantime::parse_rfc3339(entry["refreshed"].as_str().unwrap()).unwrap();
        assert!(before <= refreshed && refreshed <= after, "{refreshed:?}");
        let started = humantime::parse_rfc3339(entry["started"].as_str().unwrap()).unwrap();
        assert_eq!(started, at(0));
        assert_eq!(entry["pid"], json!(1));
    }

    #[test]
    fn system_entry_survives_a_clock_before_1970() {
        let entry = system_entry_at(UNIX_EPOCH - Duration::from_secs(10), 1, UNIX_EPOCH);
        assert_eq!(entry["started"], json!("1970-01-01T00:00:00Z"));
    }
}
