//! How the core's threads reach Python without ever waiting for the GIL: work that needs the
//! interpreter (waking waiters, starting async checks, resolving awaitables, log records) is queued for
//! one thread of its own, `phoenix-python`, so a busy or stalled event loop can never hold up a
//! deadline or a round. Synchronous Python checks run on a `phoenix-check` thread per run.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::PyCFunction;

use super::runtime;
use crate::exit_gate::Gate;

/// Every entry of a core thread into Python passes this gate, closed when the interpreter begins to
/// exit: on Python < 3.14 a thread taking the GIL during finalization is ended by `pthread_exit`,
/// whose unwind cannot cross Rust frames, and the process aborts (seen as `phoenix check` SIGABRTs).
static PYTHON_GATE: Gate = Gate::new();

/// What a Python check reports when it is asked to run while the interpreter exits.
pub const EXITING: &str = "the Python interpreter is exiting";

type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send>;

/// Registered with `atexit` at import: runs before finalization, after hooks registered later (which may
/// use a kernel), and waits up to 1 s (a hung sync check must not hold the exit) for threads inside.
#[pyfunction]
pub fn close_python_gate(py: Python<'_>) {
    py.detach(|| PYTHON_GATE.close(Duration::from_secs(1)));
}

/// Queues `job` for the `phoenix-python` thread and returns at once. The thread starts on first use,
/// inside the process that serves (never in a parent about to fork).
pub fn submit(job: impl for<'py> FnOnce(Python<'py>) + Send + 'static) {
    static QUEUE: OnceLock<Sender<Job>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new().name("phoenix-python".to_owned());
        thread.spawn(move || run_jobs(&jobs)).expect("cannot start the phoenix-python thread");
        queue
    });
    // Fails only once the thread has ended, at exit.
    let _ = queue.send(Box::new(job));
}

fn run_jobs(jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        // Everything queued meanwhile runs under the same acquisition of the GIL.
        let ran = PYTHON_GATE.pass(|| {
            Python::attach(|py| {
                let mut next = Some(first);
                while let Some(job) = next {
                    // A job's panic must not end the thread every later job depends on.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(py)));
                    next = jobs.try_recv().ok();
                }
            })
        });
        if ran.is_none() {
            return;
        }
    }
}

/// Runs `work` with the GIL on a new `phoenix-check` thread; resolves with its result, or `None` when
/// the interpreter is exiting.
pub fn on_own_thread<T: Send + 'static>(
    work: impl for<'py> FnOnce(Python<'py>) -> T + Send + 'static,
) -> impl Future<Output = Option<T>> + Send {
    let (done, result) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("phoenix-check".to_owned());
    let started = thread.spawn(move || PYTHON_GATE.pass(|| done.send(Python::attach(work))).map(drop));
    async move {
        started.ok()?;
        result.await.ok()
    }
}

pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("asyncio")?.call_method0("get_running_loop")
}

/// Sets `future`'s result (or exception) on its own loop, unless its awaiter has cancelled it.
#[pyfunction]
fn settle(future: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if !future.call_method0("done")?.is_truthy()? {
        let how = if value.is_instance_of::<PyBaseException>() { "set_exception" } else { "set_result" };
        future.call_method1(how, (value,))?;
    }
    Ok(())
}

/// Settles `future` from any thread; a closed loop has no one left to tell, so that is no error.
pub fn settle_later(py: Python<'_>, event_loop: &Py<PyAny>, future: &Py<PyAny>, value: PyResult<Py<PyAny>>) {
    let value = value.unwrap_or_else(|err| err.into_value(py).into_any());
    let settle = wrap_pyfunction!(settle, py);
    let _ = settle
        .and_then(|settle| event_loop.bind(py).call_method1("call_soon_threadsafe", (settle, future, value)));
}

/// A future of the running loop, settled with `convert(output)` (on `phoenix-python`) once `work` ends.
pub fn awaitable<T: Send + 'static>(
    py: Python<'_>,
    work: impl Future<Output = T> + Send + 'static,
    convert: impl for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> PyResult<Py<PyAny>> {
    let event_loop = running_loop(py)?.unbind();
    let future = event_loop.call_method0(py, "create_future")?;
    let resolved = future.clone_ref(py);
    runtime().spawn(async move {
        let output = work.await;
        submit(move |py| settle_later(py, &event_loop, &resolved, convert(py, output)));
    });
    Ok(future)
}

/// An asyncio future of the running loop, already resolved with `value`.
pub fn resolved(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
    let future = running_loop(py)?.call_method0("create_future")?;
    future.call_method1("set_result", (value,))?;
    Ok(future.unbind())
}

/// Runs `coroutine` (or reports why there is none) on `event_loop`; `done` gets its outcome, on that
/// loop's thread, or here if it cannot be scheduled.
pub fn run_coroutine(
    py: Python<'_>,
    coroutine: PyResult<Bound<'_, PyAny>>,
    event_loop: &Py<PyAny>,
    done: impl for<'py> FnOnce(Python<'py>, PyResult<Bound<'py, PyAny>>) + Send + 'static,
) {
    let asyncio = py.import("asyncio");
    let running = coroutine.and_then(|c| asyncio?.call_method1("run_coroutine_threadsafe", (c, event_loop)));
    let running = match running {
        Ok(running) => running,
        Err(err) => return done(py, Err(err)),
    };
    // Python may call a callback any number of times; `done` runs on the first.
    let done = Mutex::new(Some(done));
    let callback = PyCFunction::new_closure(py, None, None, move |args, _| {
        let outcome = args.get_item(0).and_then(|f| f.call_method0("result"));
        if let Some(done) = done.lock().ok().and_then(|mut d| d.take()) {
            done(args.py(), outcome);
        }
    });
    // Fails only when out of memory; the check then reports the interpreter as gone.
    let _ = callback.and_then(|callback| running.call_method1("add_done_callback", (callback,)));
}

/// Rust log records go to Python's `logging` (under their target's name) through `phoenix-python`: a
/// status change logged on a tokio thread must not wait for the GIL. Python's configuration filters.
pub struct PythonLogger;

impl log::Log for PythonLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Python's numeric levels: DEBUG 10 ... ERROR 40; trace is below DEBUG.
        let level = 50 - 10 * record.level() as u8;
        let (target, message) = (record.target().to_owned(), record.args().to_string());
        submit(move |py| {
            let logger = py.import("logging").and_then(|l| l.call_method1("getLogger", (target,)));
            let _ = logger.and_then(|l| l.call_method1("log", (level, message)));
        });
    }

    fn flush(&self) {}
}
