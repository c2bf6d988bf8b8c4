//! `disk`: the fraction of a file system's space still free to unprivileged users (`statvfs`'s
//! `f_bavail / f_blocks`), measured on the blocking pool: a hung mount holds one blocking thread, never
//! an async worker.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::checks::{BlockingProbe, CheckResult, Probe};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: PathBuf,
}

pub struct Disk {
    path: CString,
}

impl Disk {
    /// The path must exist now: a typo is a configuration error, not a failing check.
    pub fn parse(settings: Value) -> Result<Self, String> {
        let Settings { path } = super::settings(settings)?;
        if path.as_os_str().is_empty() {
            return Err("path must not be empty".to_owned());
        }
        if let Err(err) = std::fs::metadata(&path) {
            return Err(format!("path: cannot use '{}': {}", path.display(), super::io_reason(&err)));
        }
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "path must not contain a NUL character".to_owned())?;
        Ok(Self { path })
    }

    pub fn probe(self) -> impl Probe {
        let path = self.path;
        BlockingProbe(Arc::new(move || free_fraction(&path)))
    }
}

/// The fraction of `path`'s file system free to unprivileged users. Blocking.
fn free_fraction(path: &CString) -> CheckResult {
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` is written by statvfs before it is read.
    let stats = unsafe {
        if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
            let err = std::io::Error::last_os_error();
            // No path in the text: it would tell a caller the deployment's layout.
            return Err(format!("statvfs failed: {}", super::io_reason(&err)));
        }
        stats.assume_init()
    };
    if stats.f_blocks == 0 {
        return Err("the file system reports no blocks (not a disk?)".to_owned());
    }
    Ok(stats.f_bavail as f64 / stats.f_blocks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{start_round, Policy, Status};
    use crate::dependencies::testing::TempDir;
    use crate::dependencies::Dependency;
    use std::path::Path;
    use std::time::Duration;
    use tokio::runtime::Handle;

    fn disk(path: &Path, threshold: f64) -> Arc<crate::checks::Subsystem> {
        let dependency = Dependency::parse("disk", serde_json::json!({"path": path})).unwrap();
        Arc::new(dependency.subsystem("disk", Policy::new(threshold, Duration::from_secs(10))))
    }

    #[tokio::test]
    async fn the_metric_is_the_fraction_free_and_a_high_threshold_fails() {
        let dir = TempDir::new("disk");
        let report = start_round(&[disk(dir.path(), 0.0)], &Handle::current()).await;
        let metric = report.outcomes[0].metric.unwrap();
        assert!(metric > 0.0 && metric <= 1.0, "{metric}");
        assert_eq!(report.outcomes[0].status, Status::Pass);
        let full = start_round(&[disk(dir.path(), 0.9999)], &Handle::current()).await;
        let outcome = &full.outcomes[0];
        assert_eq!(outcome.status, Status::Fail);
        assert!(outcome.message.as_deref().unwrap().starts_with("free space "), "{outcome:?}");
    }

    #[test]
    fn the_path_must_exist_and_be_the_only_key() {
        let dir = TempDir::new("disk-keys");
        let missing = dir.path().join("nope");
        let parse = |settings| Dependency::parse("disk", settings).err().unwrap();
        let err = parse(serde_json::json!({"path": missing}));
        assert!(err.starts_with("path: cannot use '") && err.contains("No such file"), "{err}");
        assert_eq!(parse(serde_json::json!({})), "missing key 'path'");
        assert_eq!(
            parse(serde_json::json!({"path": dir.path(), "min": 1})),
            "unknown key 'min' (expected one of path)"
        );
    }
}
