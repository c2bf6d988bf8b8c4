//! `memory`: the fraction of this process's memory limit still free.
//!
//! The limit is cgroup v2's: `memory.max` of the process's cgroup or of any ancestor that sets one (a
//! container's limit often sits on a parent), judged against that cgroup's use; the tightest wins. Use is
//! `memory.current` less the inactive file cache of `memory.stat`, which the kernel reclaims before it
//! runs out (the kubelet's "working set"): page cache alone must not make a busy service look full. With
//! no limit anywhere ("max") or no cgroup v2, it is the host's `MemAvailable / MemTotal`.
//!
//! These are reads of in-memory kernel files that never block, so the check answers at once.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::checks::{CheckResult, FnProbe, Probe};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {}

pub struct Memory {
    /// Where `/proc` is mounted.
    proc: PathBuf,
    /// Where the cgroup v2 hierarchy is mounted.
    cgroup: PathBuf,
}

impl Memory {
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings {} = super::settings(settings)?;
        Ok(Self::with_roots("/proc", "/sys/fs/cgroup"))
    }

    /// Reads `/proc` and the cgroup hierarchy from other roots (tests give it fake ones).
    pub fn with_roots(proc: impl Into<PathBuf>, cgroup: impl Into<PathBuf>) -> Self {
        Self { proc: proc.into(), cgroup: cgroup.into() }
    }

    pub fn probe(self) -> impl Probe {
        let memory = std::sync::Arc::new(self);
        FnProbe(move || futures::future::ready(memory.free_fraction()))
    }

    pub fn free_fraction(&self) -> CheckResult {
        match self.cgroup_free()? {
            Some(free) => Ok(free),
            None => self.host_free(),
        }
    }

    /// The least free fraction among this process's cgroup and its ancestors that set a limit; `None`
    /// when none does, or without cgroup v2.
    fn cgroup_free(&self) -> Result<Option<f64>, String> {
        let Ok(membership) = std::fs::read_to_string(self.proc.join("self/cgroup")) else {
            return Ok(None);
        };
        // cgroup v2's line is `0::<path>`; v1 controllers have their own lines, which this ignores.
        let Some(own) = membership.lines().find_map(|line| line.strip_prefix("0::")) else {
            return Ok(None);
        };
        let own = Path::new(own.trim().trim_start_matches('/'));
        // A path outside this namespace's root (`/../x`) names nothing mounted here.
        if own.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Ok(None);
        }
        let mut tightest: Option<f64> = None;
        for level in own.ancestors() {
            if let Some(free) = level_free(&self.cgroup.join(level))? {
                tightest = Some(tightest.map_or(free, |t| t.min(free)));
            }
        }
        Ok(tightest)
    }

    fn host_free(&self) -> CheckResult {
        let meminfo = std::fs::read_to_string(self.proc.join("meminfo"))
            .map_err(|err| format!("cannot read meminfo: {}", super::io_reason(&err)))?;
        let field = |name: &str| {
            meminfo.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
        };
        match (field("MemAvailable"), field("MemTotal")) {
            (Some(available), Some(total)) if total > 0 => Ok((available as f64 / total as f64).min(1.0)),
            _ => Err("meminfo has no MemAvailable and MemTotal".to_owned()),
        }
    }
}

/// The free fraction of the cgroup at `dir`, or `None` when it sets no limit.
fn level_free(dir: &Path) -> Result<Option<f64>, String> {
    let limit = match std::fs::read_to_string(dir.join("memory.max")) {
        Ok(limit) => limit,
        // The root cgroup has no memory.max, and a level may lack the memory controller.
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read memory.max: {}", super::io_reason(&err))),
    };
    let limit = limit.trim();
    if limit == "max" {
        return Ok(None);
    }
    let limit: u64 = limit.parse().map_err(|_| format!("memory.max is not a number of bytes: '{limit}'"))?;
    let current = std::fs::read_to_string(dir.join("memory.current"))
        .map_err(|err| format!("cannot read memory.current: {}", super::io_reason(&err)))?;
    let current: u64 = current
        .trim()
        .parse()
        .map_err(|_| format!("memory.current is not a number of bytes: '{}'", current.trim()))?;
    // Optional: without memory.stat, all of memory.current counts as used.
    let inactive_file = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines().find_map(|line| line.strip_prefix("inactive_file ")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    if limit == 0 {
        return Ok(Some(0.0));
    }
    let used = current.saturating_sub(inactive_file);
    Ok(Some((1.0 - used as f64 / limit as f64).clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dependencies::testing::TempDir;
    use crate::dependencies::Dependency;

    const MEMINFO: &str = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";

    /// Fake `/proc` (with `meminfo`) and cgroup roots, the process in cgroup `/app/worker`.
    fn roots(name: &str) -> (TempDir, Memory) {
        let dir = TempDir::new(name);
        dir.write("proc/self/cgroup", "0::/app/worker\n");
        dir.write("proc/meminfo", MEMINFO);
        std::fs::create_dir_all(dir.path().join("cgroup/app/worker")).unwrap();
        let memory = Memory::with_roots(dir.path().join("proc"), dir.path().join("cgroup"));
        (dir, memory)
    }

    #[test]
    fn the_own_cgroups_limit_gives_one_minus_current_over_max() {
        let (dir, memory) = roots("own");
        dir.write("cgroup/app/worker/memory.max", "1000\n");
        dir.write("cgroup/app/worker/memory.current", "250\n");
        assert_eq!(memory.free_fraction(), Ok(0.75));
    }

    #[test]
    fn inactive_file_cache_does_not_count_as_used() {
        let (dir, memory) = roots("cache");
        dir.write("cgroup/app/worker/memory.max", "1000\n");
        dir.write("cgroup/app/worker/memory.current", "900\n");
        dir.write(
            "cgroup/app/worker/memory.stat",
            "anon 200\nfile 700\ninactive_file 600\nactive_file 100\n",
        );
        assert_eq!(memory.free_fraction(), Ok(0.7));
    }

    #[test]
    fn a_parents_tighter_limit_wins() {
        let (dir, memory) = roots("parent");
        dir.write("cgroup/app/worker/memory.max", "max\n");
        dir.write("cgroup/app/worker/memory.current", "100\n");
        dir.write("cgroup/app/memory.max", "1000\n");
        dir.write("cgroup/app/memory.current", "900\n");
        let free = memory.free_fraction().unwrap();
        assert!((free - 0.1).abs() < 1e-9, "{free}");
    }

    #[test]
    fn no_limit_falls_back_to_the_hosts_meminfo() {
        let (dir, memory) = roots("max");
        dir.write("cgroup/app/worker/memory.max", "max\n");
        dir.write("cgroup/app/worker/memory.current", "250\n");
        assert_eq!(memory.free_fraction(), Ok(0.4));
    }

    #[test]
    fn without_cgroup_v2_it_is_the_hosts_meminfo() {
        let (dir, memory) = roots("v1");
        dir.write("proc/self/cgroup", "4:memory:/docker/abc\n1:cpu:/\n");
        assert_eq!(memory.free_fraction(), Ok(0.4));
    }

    #[test]
    fn unreadable_numbers_are_errors_not_guesses() {
        let (dir, memory) = roots("bad");
        dir.write("cgroup/app/worker/memory.max", "lots\n");
        assert_eq!(memory.free_fraction(), Err("memory.max is not a number of bytes: 'lots'".to_owned()));
        dir.write("proc/self/cgroup", "0::/\n");
        dir.write("proc/meminfo", "MemTotal: 1000 kB\n");
        assert_eq!(memory.free_fraction(), Err("meminfo has no MemAvailable and MemTotal".to_owned()));
    }

    #[test]
    fn this_machines_memory_is_a_fraction() {
        let memory = Memory::with_roots("/proc", "/sys/fs/cgroup");
        let free = memory.free_fraction().unwrap();
        assert!(free > 0.0 && free <= 1.0, "{free}");
    }

    #[test]
    fn memory_takes_no_keys() {
        let err = Dependency::parse("memory", serde_json::json!({"limit": 1})).err().unwrap();
        assert_eq!(err, "unknown key 'limit' (this kind has no keys)");
        assert!(Dependency::parse("memory", serde_json::json!({})).is_ok());
    }
}
