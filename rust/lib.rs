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
