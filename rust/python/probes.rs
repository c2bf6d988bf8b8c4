//! Checks written in Python, run so that no tokio thread ever waits for the GIL: `async def` checks
//! are started by the `phoenix-python` thread on the kernel's event loop, plain functions run on a
//! thread of their own.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use futures::future::{ready, FutureExt};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use super::bridge::{self, EXITING};
use crate::checks::{CheckFuture, CheckResult, Probe};

pub struct PyProbe {
    pub func: Arc<Py<PyAny>>,
    pub is_async: bool,
    /// The loop `async def` checks run on: the kernel's, bound when it starts.
    pub event_loop: Arc<ArcSwapOption<Py<PyAny>>>,
}

impl Probe for PyProbe {
    fn start(&self) -> CheckFuture {
        let func = Arc::clone(&self.func);
        if !self.is_async {
            let run = bridge::on_own_thread(move |py| judge(py, func.call0(py)));
            return async move { run.await.unwrap_or_else(|| Err(EXITING.to_owned())) }.boxed();
        }
        let Some(event_loop) = self.event_loop.load_full() else {
            return ready(Err("no event loop to run async checks on".to_owned())).boxed();
        };
        let (done, result) = tokio::sync::oneshot::channel();
        bridge::submit(move |py| {
            bridge::run_coroutine(py, func.bind(py).call0(), &event_loop, move |py, outcome| {
                let _ = done.send(judge(py, outcome.map(Bound::unbind)));
            });
        });
        // Dropped unsent only when the job never ran: the interpreter is exiting.
        async move { result.await.unwrap_or_else(|_| Err(EXITING.to_owned())) }.boxed()
    }
}

/// What a Python check returned (or raised), judged with the GIL.
fn judge(py: Python<'_>, returned: PyResult<Py<PyAny>>) -> CheckResult {
    match returned {
        Ok(value) => metric(value.bind(py)),
        Err(err) => Err(describe(py, &err)),
    }
}

/// `ValueError: boom`: the type and message, never a traceback.
pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let kind = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".to_owned());
    match err.value(py).str() {
        Ok(text) if !text.to_string_lossy().is_empty() => {
            format!("{kind}: {}", text.to_string_lossy())
        }
        _ => kind,
    }
}

/// A check's return value as a metric: `True`/`False` mean 1.0/0.0, numbers are taken as they are.
fn metric(value: &Bound<'_, PyAny>) -> CheckResult {
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(if flag.is_true() { 1.0 } else { 0.0 });
    }
    value.extract::<f64>().map_err(|_| {
        let kind = value.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        format!("check returned {kind}, expected a float or a bool")
    })
}
