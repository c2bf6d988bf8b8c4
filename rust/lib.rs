//! The Rust core of Phoenix. Everything but `python` is plain Rust, tested with `cargo test`;
//! `python` is the one thin layer that converts types, releases the GIL and bridges async.

pub mod access_log;
pub mod cache;
pub mod checks;
pub mod dependencies;
pub mod exit_gate;
pub mod heartbeat;
pub mod metrics;
pub mod probe;
pub mod redact;
pub mod render;
pub mod routes;
pub mod service;
pub mod subsystems;

#[cfg(feature = "python")]
mod python;

/// Every allocation of the core's own (Python's objects keep Python's allocator): mimalloc frees to
/// per-thread lists, where glibc's frees past its small per-thread cache take an arena lock once a
/// process has several threads, as every Phoenix process has. Serving a cached probe allocates a
/// handful of times; head to head the probe listener answered 1.1 % more requests.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
