//! How Rust threads reach Python without ever waiting for the GIL themselves.
//!
//! Work that needs the interpreter (waking asyncio waiters, starting async checks, resolving
//! awaitables, writing log records) is handed to one thread of its own, `phoenix-python`, which takes
//! the GIL for it. The tokio threads only queue the work, so a busy or stalled event loop can never hold
//! up a deadline, a native check or the end of a round. Synchronous Python checks run on threads of
//! their own (`phoenix-check`), one per run, for the same reason.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyCFunction;

use super::runtime;
use crate::exit_gate::Gate;

/// Every call from a Rust thread into Python passes this gate, which closes when the interpreter
/// begins to exit. On Python < 3.14, a thread that wants the GIL back while the interpreter finalizes
/// is ended with `pthread_exit`, and that forced unwind cannot cross Rust frames: the process aborts
/// (found as a SIGABRT of `phoenix check` on a loaded machine). So `close_python_gate` runs at exit,
/// before finalization: nothing new enters, and it waits for the threads inside to leave.
static PYTHON_GATE: Gate = Gate::new();

/// How long exit waits for Rust threads to leave Python: ample for any callback, short enough that a
/// hung synchronous check cannot hold the process up.
const EXIT_PATIENCE: Duration = Duration::from_secs(1);

/// What a Python check reports when it is asked to run while the interpreter exits.
pub const EXITING: &str = "the Python interpreter is exiting";

type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send>;

/// Registered with `atexit` when the module loads, so it runs before finalization begins, and after
/// any exit hook registered later (which may still use a kernel).
#[pyfunction]
pub fn close_python_gate(py: Python<'_>) {
    py.detach(|| PYTHON_GATE.close(EXIT_PATIENCE));
}

/// `Python::attach` for a thread of the core's own, through the gate: `None` once exiting.
pub fn attach<R>(work: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    PYTHON_GATE.pass(|| Python::attach(work))
}

/// Queues `job` for the `phoenix-python` thread; returns at once. The thread starts on first use,
/// inside the process that serves (never in a parent about to fork).
pub fn submit(job: impl for<'py> FnOnce(Python<'py>) + Send + 'static) {
    static QUEUE: OnceLock<Sender<Job>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("phoenix-python".to_owned())
            .spawn(move || run_jobs(&jobs))
            .expect("cannot start the phoenix-python thread");
        queue
    });
    // Fails only if the thread has ended, which it does once the interpreter exits.
    let _ = queue.send(Box::new(job));
}

fn run_jobs(jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        // Everything queued meanwhile runs under the same acquisition of the GIL.
        let ran = attach(|py| {
            let mut next = Some(first);
            while let Some(job) = next {
                // A job's panic must not end the thread every later job depends on.
                let _ = catch_unwind(AssertUnwindSafe(|| job(py)));
                next = jobs.try_recv().ok();
            }
        });
        if ran.is_none() {
            return;
        }
    }
}

/// Runs `work` with the GIL on a new `phoenix-check` thread, and resolves with its result.
pub fn on_own_thread<T: Send + 'static>(
    work: impl for<'py> FnOnce(Python<'py>) -> T + Send + 'static,
) -> impl Future<Output = Option<T>> + Send {
    let (done, result) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name("phoenix-check".to_owned())
        .spawn(move || {
            if let Some(value) = attach(work) {
                let _ = done.send(value);
            }
        });
    async move {
        started.ok()?;
        result.await.ok()
    }
}

/// The event loop running on this thread.
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("asyncio")?.call_method0("get_running_loop")
}

/// Sets `future`'s result (or exception, when `value` is one) unless it is done already (cancelled by
/// its awaiter). Called on the future's own loop.
#[pyfunction]
pub fn settle(future: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if value.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        future.call_method1("set_exception", (value,))?;
    } else {
        future.call_method1("set_result", (value,))?;
    }
    Ok(())
}

/// Settles `future` on `event_loop` from any thread holding the GIL. A closed loop has no one left to
/// tell, so failing to schedule is not an error.
pub fn settle_later(
    py: Python<'_>,
    event_loop: &Py<PyAny>,
    future: &Py<PyAny>,
    value: PyResult<Py<PyAny>>,
) {
    let value = value.unwrap_or_else(|err| err.into_value(py).into_any());
    let scheduled = wrap_pyfunction!(settle, py).and_then(|settle| {
        event_loop
            .bind(py)
            .call_method1("call_soon_threadsafe", (settle, future, value))
    });
    drop(scheduled);
}

/// An asyncio future of the running loop, resolved with `convert(output)` once `work` completes on
/// the runtime. The conversion runs on the `phoenix-python` thread, never on the runtime's.
pub fn awaitable<T: Send + 'static>(
    py: Python<'_>,
    work: impl Future<Output = T> + Send + 'static,
    convert: impl for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> PyResult<Py<PyAny>> {
    let event_loop = running_loop(py)?.unbind();
    let future = event_loop.call_method0(py, "create_future")?;
    let (event_loop, resolved) = (Arc::new(event_loop), future.clone_ref(py));
    runtime().spawn(async move {
        let output = work.await;
        submit(move |py| {
            let value = convert(py, output);
            settle_later(py, &event_loop, &resolved, value);
        });
    });
    Ok(future)
}

/// An asyncio future of the running loop that is already resolved with `value`.
pub fn resolved(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
    let future = running_loop(py)?.call_method0("create_future")?;
    future.call_method1("set_result", (value,))?;
    Ok(future.unbind())
}

/// Runs `coroutine` on `event_loop` and calls `done` with the result, on that loop's thread.
pub fn run_coroutine(
    py: Python<'_>,
    coroutine: Bound<'_, PyAny>,
    event_loop: &Py<PyAny>,
    done: impl for<'py> FnOnce(Python<'py>, PyResult<Bound<'py, PyAny>>) + Send + 'static,
) -> PyResult<()> {
    let running = py
        .import("asyncio")?
        .call_method1("run_coroutine_threadsafe", (coroutine, event_loop))?;
    let done = std::sync::Mutex::new(Some(done));
    let callback = PyCFunction::new_closure(py, None, None, move |args, _| {
        let outcome = args.get_item(0).and_then(|f| f.call_method0("result"));
        if let Some(done) = done.lock().ok().and_then(|mut d| d.take()) {
            done(args.py(), outcome);
        }
    })?;
    running.call_method1("add_done_callback", (callback,))?;
    Ok(())
}

/// pyo3-log's logger, fed through the `phoenix-python` thread: a record logged on a tokio thread (a
/// status change at the end of a round) must not wait for the GIL.
pub struct QueuedLogger(pub Arc<pyo3_log::Logger>);

impl log::Log for QueuedLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // Decided by Python's logging when the record arrives; asking now would take the GIL.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let logger = Arc::clone(&self.0);
        let (level, target, message) = (
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        );
        submit(move |_| {
            log::Log::log(
                &*logger,
                &log::Record::builder()
                    .level(level)
                    .target(&target)
                    .args(format_args!("{message}"))
                    .build(),
            );
        });
    }

    fn flush(&self) {}
}
